"""identity_key (sipimdn.uri): the address comparison behind notification correlation (RFC 5438 §7.1.1)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sipimdn import uri
from sipimdn.imdn.tracker import is_anonymous
from sipimdn.uri import identity_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:bob@example.com", "SIP:bob@EXAMPLE.COM"),  # scheme and host are case-insensitive
        ("sip:bob@example.com", "<sip:bob@example.com;transport=tcp>"),  # params dropped
        ("sip:bob@example.com", '"Bob" <sip:bob@example.com>;tag=x'),  # name-addr
        ("sip:bob@example.com", "sip:bob:secret@example.com?Subject=hi"),  # password, headers dropped
        ("sip:bob@example.com", "sips:bob@example.com"),  # one identity family
        ("sip:bob@example.com", "im:bob@example.com"),  # CPIM identities
        ("sip:bob@example.com", "pres:bob@example.com"),
        ("sip:b%6Fb@example.com", "sip:bob@example.com"),  # escaped user
        ("sip:bob@example.com.", "sip:bob@example.com"),  # trailing root dot
        ("sip:bob@127.0.0.1", "sip:bob@127.0.0.1:5070"),  # ports ignored by default
        ("sip:bob@[::1]:5060", "sip:bob@[0:0:0::1]"),  # canonical IPv6
        ("sip:+1-555-0100@x;user=phone", "sip:+1-555-0100@x"),
        ("tel:+1-555-0100", "tel:+1.555.0100;phone-context=x"),
        ("sip:example.com", "sip:EXAMPLE.com"),  # no user part
    ],
)
def test_same_identity(a: str, b: str) -> None:
    assert identity_key(a) is not None
    assert identity_key(a) == identity_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:bob@example.com", "sip:Bob@example.com"),  # the user part is case-sensitive (RFC 3261 §19.1.4)
        ("sip:bob@example.com", "sip:bob@example.org"),
        ("sip:bob@example.com", "sip:alice@example.com"),
        ("sip:bob@example.com", "sip:example.com"),
        ("sip:bob@example.com", "tel:bob"),
        ("sip:bob@example.com", "mailto:bob@example.com"),
    ],
)
def test_different_identity(a: str, b: str) -> None:
    assert identity_key(a) != identity_key(b)


def test_ports_when_compared_default_per_scheme() -> None:
    assert identity_key("sip:bob@h", compare_ports=True) == identity_key("sip:bob@h:5060", compare_ports=True)
    assert identity_key("sips:bob@h", compare_ports=True) == identity_key(
        "sip:bob@h:5061", compare_ports=True
    )
    assert identity_key("sip:bob@h", compare_ports=True) != identity_key("sip:bob@h:5070", compare_ports=True)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "bob",
        "sip:",
        "sip:@host",
        "<sip:bob@host",
        "sip:bob@",
        "sip:bob@host:99999",
        "sip:bob@host:abc",
        "sip:bob@[::1",
        "sip:bob@[::1]x",
        "1ab:c",
        "sip:bob@:5060",
    ],
)
def test_not_an_identity(text: str | None) -> None:
    assert identity_key(text) is None


@pytest.mark.parametrize(
    ("uri", "anonymous"),
    [
        ("<sip:anonymous@anonymous.invalid>", True),
        ("sip:Anonymous@example.com", True),
        ("sip:thisis@invalid", True),
        ("not a uri", True),
        ("sip:alice@example.com", False),
    ],
)
def test_is_anonymous(uri: str, anonymous: bool) -> None:
    assert is_anonymous(uri) is anonymous


# --- the memoised host canonicalisation against the computation it memoises ------------------


def _reference_host(host: str) -> str:
    """What identity_key did to a host before hosts were memoised (the ipaddress parse each time)."""
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed
    return f"[{host}]" if ":" in host else host


_HOST_TEXT = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
    st.from_regex(r"[0-9a-fA-F:.]{1,40}", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9.-]{1,30}", fullmatch=True),
)


@settings(max_examples=400, deadline=None)
@given(host=_HOST_TEXT, user=st.sampled_from(["", "bob@", "a%40b@"]), port=st.sampled_from(["", ":5070"]))
def test_host_memo_matches_the_direct_parse(host: str, user: str, port: str) -> None:
    lowered = host.lower().rstrip(".")
    assume(lowered)
    expected_host = _reference_host(lowered)
    text = f"sip:{user}[{host}]{port}" if ":" in host else f"sip:{user}{host}{port}"
    uri._HOSTS.clear()
    uri._IDENTITIES.clear()
    assert uri._identity_host(lowered) == expected_host  # computed
    assert uri._identity_host(lowered) == expected_host  # memoised
    key = identity_key(text)
    assert key is None or key.endswith(f"@{expected_host}" if user else f":{expected_host}")


_ADDR_TEXT = st.one_of(
    st.builds(
        "{}:{}{}{}".format,
        st.sampled_from(["sip", "SIP", "sips", "im", "tel", "mailto", "x y"]),
        st.sampled_from(["", "bob@", "B%6Fb@", "+1-555@", "a:pw@"]),
        st.sampled_from(["example.com", "127.0.0.1", "[::1]", "EXAMPLE.com.", "h"]),
        st.sampled_from(["", ":5070", ";transport=tcp", "?x=y", ":bad"]),
    ),
    st.text(alphabet="<>: sip@;", max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(
    addr=_ADDR_TEXT, display=st.sampled_from(["", '"Bob" ', "Bob "]), params=st.sampled_from(["", ";tag=1"])
)
def test_name_addr_and_its_addr_spec_memoised_together_match_cold_answers(
    addr: str, display: str, params: str
) -> None:
    name_addr = f"{display}<{addr}>{params}"
    cold: dict[tuple[str, bool], str | None] = {}
    for text in (name_addr, addr):
        for ports in (False, True):
            uri._IDENTITIES.clear()
            uri._PORT_IDENTITIES.clear()
            cold[text, ports] = identity_key(text, compare_ports=ports)
    for order in ((name_addr, addr), (addr, name_addr)):
        uri._IDENTITIES.clear()
        uri._PORT_IDENTITIES.clear()
        for _ in range(2):  # computed, then memoised
            for text in order:
                for ports in (False, True):
                    assert identity_key(text, compare_ports=ports) == cold[text, ports]
