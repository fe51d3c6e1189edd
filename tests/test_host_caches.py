"""The bounded caches of IP-literal checks give what parsing every time gives (differential tests)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.transport import flow
from sipimdn.transport.flow import is_ip_literal
from sipimdn.ua import request_uri


def _reference_is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _reference_host_key(host: str) -> str:
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return host.lower().rstrip(".")


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=6).map(lambda ip: f"{ip}%" + "e" * 40),  # scoped, past the cached length
    st.sampled_from(["127.0.0.1", "::1", "[::1]", "FE80::1", "Example.COM.", "0.0.0.0", "::", "1.2.3", ""]),
    st.from_regex(r"[A-Za-z0-9.\-:\[\]%]{0,80}", fullmatch=True),
    st.text(max_size=100),
)


@settings(max_examples=500, deadline=None)
@given(host=hosts)
def test_cached_answers_equal_parsing_every_time(host: str) -> None:
    for _ in range(2):  # the second call is answered from the cache when the host is short
        assert is_ip_literal(host) is _reference_is_ip(host)
        assert request_uri._host_key(host) == _reference_host_key(host)
        assert request_uri._is_ip(host) is _reference_is_ip(host)


def test_long_hosts_are_parsed_every_time_and_the_caches_stay_bounded() -> None:
    cached = flow._is_ip_literal_cached
    scoped = "fe80::1%" + "x" * 100  # a valid scoped IPv6 literal longer than the cache takes
    before = cached.cache_info()
    assert is_ip_literal(scoped) is True
    assert request_uri._host_key(scoped) == _reference_host_key(scoped)
    after = cached.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # not looked up at all
    for n in range(3000):  # more distinct short hosts than the cache holds
        assert is_ip_literal(f"host{n}.example") is False
        request_uri._host_key(f"host{n}.example")
    assert cached.cache_info().currsize <= 1024
    assert request_uri._canonical_ip_cached.cache_info().currsize <= 1024
