"""P-Asserted-Identity (RFC 3325 §9.1) and whose assertion is believed (RFC 3325 §4, §9.1).

The parser is sans-IO header code: one or two values, name-addr or addr-spec, at most one
sip/sips and one tel URI; anything else raises SipParseError, which the user agent treats as
no assertion at all. Trust is decided by the request's transport source against
``TrustedAsserters``; Via never counts.
"""

from __future__ import annotations

import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn import SipParseError, Uri
from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.headers import AssertedIdentity, NameAddr
from sipimdn.message import Request
from sipimdn.transport.flow import Transport
from sipimdn.trust import TrustedAsserters, asserted_identity, withholds_identity

SETTINGS = settings(max_examples=200, deadline=None)

LOWER = "abcdefghijklmnopqrstuvwxyz"
user_text = st.text(alphabet=LOWER + "0123456789+-._~!$&'()*=,;?/ %", min_size=1, max_size=12)
host_text = st.one_of(
    st.lists(st.text(alphabet=LOWER + "0123456789", min_size=1, max_size=8), min_size=1, max_size=3).map(
        lambda labels: ".".join([*labels, "example"])
    ),
    st.ip_addresses().map(str),
)
param_value = st.text(alphabet=LOWER + "0123456789", min_size=1, max_size=6)
uri_params = st.dictionaries(st.text(alphabet=LOWER + "-", min_size=1, max_size=6),
                             st.one_of(st.none(), param_value), max_size=3)
sip_uris = st.builds(
    lambda scheme, user, host, port, params: Uri(scheme, user, None, host, port, params),
    st.sampled_from(["sip", "sips"]), st.one_of(st.none(), user_text), host_text,
    st.one_of(st.none(), st.integers(1, 65535)), uri_params,
)


def parse(*values: str) -> AssertedIdentity | None:
    return AssertedIdentity.parse(values)


# -- the header --------------------------------------------------------------------------------


def test_name_addr_and_addr_spec() -> None:
    one = parse('"Bob Smith" <sip:bob@ims.example.com>')
    assert one is not None
    assert one.uris == ("sip:bob@ims.example.com",)
    assert one.uri == "sip:bob@ims.example.com"
    assert one.display_name == "Bob Smith"
    bare = parse("sip:+12025550123@ims.example.com;user=phone")
    assert bare is not None
    # An addr-spec's parameters are the URI's: the grammar has no header parameters.
    assert Uri.parse(bare.uri).params == {"user": "phone"}
    assert bare.display_name is None


@pytest.mark.parametrize(
    "values",
    [
        ("<tel:+12025550123>, <sip:bob@ims.example.com>",),  # one header, two values
        ("tel:+12025550123", "<sip:bob@ims.example.com>"),  # two header fields
    ],
)
def test_a_sip_and_a_tel_uri_sip_first(values: tuple[str, ...]) -> None:
    identity = AssertedIdentity.parse(values)
    assert identity is not None
    assert identity.uris == ("sip:bob@ims.example.com", "tel:+12025550123")
    assert identity.uri == "sip:bob@ims.example.com"
    assert [str(v.uri) for v in identity.values] == ["tel:+12025550123", "sip:bob@ims.example.com"]


def test_tel_alone_and_sips() -> None:
    tel = parse("<tel:+12025550123>")
    assert tel is not None and tel.uri == "tel:+12025550123"
    sips = parse("<sips:bob@ims.example.com>")
    assert sips is not None and sips.uri == "sips:bob@ims.example.com"


def test_no_value_is_none() -> None:
    assert AssertedIdentity.parse([]) is None
    assert parse("", " , ") is None


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (("<sip:a@x>, <tel:+1>, <sip:b@x>",), "more than two"),
        (("<sip:a@x>", "<sips:b@x>"), "one sip/sips URI and one tel"),
        (("<tel:+1>", "tel:+2"), "one sip/sips URI and one tel"),
        (("<http://example.com/bob>",), "sip, sips or tel"),
        (("<im:bob@example.com>",), "sip, sips or tel"),
        (("<sip:bob@example.com>;tag=1",), "no header parameters"),
        (("Bob sip:bob@example.com",), "invalid URI"),
        (("<sip:bob@example.com",), "missing '>'"),
        (('"Bob <sip:bob@example.com>',), "unterminated"),
        (("sip:",), "invalid URI"),
    ],
)
def test_malformed_values_raise(values: tuple[str, ...], why: str) -> None:
    with pytest.raises(SipParseError, match=why) as caught:
        AssertedIdentity.parse(values)
    assert caught.value.status_code == 400


@SETTINGS
@given(st.lists(st.text(max_size=80), max_size=3))
def test_any_text_parses_or_raises_sip_parse_error(values: list[str]) -> None:
    try:
        identity = AssertedIdentity.parse(values)
    except SipParseError:
        return
    if identity is None:
        return
    assert 1 <= len(identity.values) <= 2
    schemes = [Uri.parse(uri).scheme for uri in identity.uris]
    assert schemes.count("tel") <= 1 and len(schemes) - schemes.count("tel") <= 1
    assert all(scheme in ("sip", "sips", "tel") for scheme in schemes)


@SETTINGS
@given(
    sip_uris,
    st.one_of(st.none(), st.from_regex(r"\+[1-9][0-9]{3,14}", fullmatch=True)),
    st.one_of(st.none(), st.text(alphabet="abcdefghij ,;<>\"\\", min_size=1, max_size=12)),
)
def test_written_identity_reads_back(uri: Uri, tel: str | None, display: str | None) -> None:
    # RFC 3261 §20.10: a URI with a comma or question mark is written as a name-addr.
    text = f"<{uri}>" if any(c in str(uri) for c in ",?") else str(uri)
    written = AssertedIdentity.parse([text] + ([f"tel:{tel}"] if tel else []))
    assert written is not None
    if display is not None:
        # A display name (quoted when written) survives the round trip too.
        written = AssertedIdentity((NameAddr(uri, display), *written.values[1:]))
    again = AssertedIdentity.parse([str(written)])
    assert again is not None
    assert [Uri.parse(u) for u in again.uris] == [Uri.parse(u) for u in written.uris]
    assert again.display_name == written.display_name


# -- whose assertion is believed -----------------------------------------------------------------


def test_trusted_asserters_entries() -> None:
    trusted = TrustedAsserters.parse(["10.0.0.5", "192.0.2.0/24", "[2001:db8::5]", "2001:db8:1::/48",
                                      "Proxy.Example.COM."])
    assert trusted.names == ("proxy.example.com",)
    assert trusted.networks[0] == ipaddress.ip_network("10.0.0.5/32")
    for host in ("10.0.0.5", "192.0.2.77", "2001:db8::5", "[2001:db8::5]", "2001:db8:1:ff::1",
                 "::ffff:10.0.0.5"):
        assert trusted.trusts(host), host
    for host in ("10.0.0.6", "198.51.100.1", "2001:db8::6", "not-an-ip", ""):
        assert not trusted.trusts(host), host
    assert bool(TrustedAsserters.parse(["proxy.example.com"]))
    assert not TrustedAsserters.parse([])
    assert not TrustedAsserters.parse([]).trusts("127.0.0.1")


def test_host_names_become_addresses_when_resolved() -> None:
    named = TrustedAsserters.parse(["proxy.example.com", "10.0.0.1"])
    assert not named.trusts("203.0.113.9")  # not resolved yet: trusts only the literal
    resolved = named.with_addresses(["203.0.113.9", "fe80::1%eth0"])
    assert resolved.names == ()
    assert resolved.trusts("203.0.113.9") and resolved.trusts("10.0.0.1") and resolved.trusts("fe80::1")


@pytest.mark.parametrize("entry", ["10.0.0.1:5060", "proxy.example.com:5060", "a b", "1.2.3", "-x.example",
                                   "10.0.0.0/33", ""])
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="trusted_asserters"):
        TrustedAsserters.parse([entry])


def test_one_string_is_not_a_list_of_entries() -> None:
    with pytest.raises(ValueError, match="not one string"):
        TrustedAsserters.parse("10.0.0.1")


def request(*extra: tuple[str, str]) -> Request:
    return build_request("MESSAGE", "sip:alice@example.com", "<sip:bob@example.com>",
                         "<sip:alice@example.com>", headers=extra, body=b"hi", content_type="text/plain")


TRUSTED = TrustedAsserters.parse(["192.0.2.10"])
PAI = ("P-Asserted-Identity", '"Bob" <sip:bob@ims.example.com>, <tel:+12025550123>')


def test_believed_only_from_a_trusted_source() -> None:
    with_pai = request(PAI)
    stamp_via(with_pai, Transport.UDP, ("192.0.2.10", 5060))  # a Via naming the trusted proxy
    identity = asserted_identity(with_pai, "192.0.2.10", TRUSTED)
    assert identity is not None and identity.uris == ("sip:bob@ims.example.com", "tel:+12025550123")
    # The source decides, not Via (written by the sender, so whatever a forger likes).
    assert asserted_identity(with_pai, "198.51.100.7", TRUSTED) is None
    assert asserted_identity(with_pai, "192.0.2.10", TrustedAsserters()) is None
    assert asserted_identity(request(), "192.0.2.10", TRUSTED) is None


def test_a_malformed_assertion_is_no_assertion(caplog: pytest.LogCaptureFixture) -> None:
    bad = request(("P-Asserted-Identity", "<sip:a@x>, <sip:b@x>"))
    with caplog.at_level(logging.INFO, logger="sipimdn.trust"):
        assert asserted_identity(bad, "192.0.2.10", TRUSTED) is None
    assert "ignored as malformed" in caplog.text


@pytest.mark.parametrize(
    ("privacy", "withheld"),
    [(None, False), ("id", True), ("header;id", True), ("ID", True), ("none", False),
     ("header, user", False)],
)
def test_privacy_id(privacy: str | None, withheld: bool) -> None:
    extra = [("Privacy", privacy)] if privacy is not None else []
    assert withholds_identity(request(*extra)) is withheld
