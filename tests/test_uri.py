"""Uri parsing, writing and RFC 3261 §19.1.4 equality."""

from __future__ import annotations

import uuid

import pytest

from sipimdn import SipParseError, Uri, parse_uri
from sipimdn import uri as uri_module
from sipimdn.uri import identity_key


def test_full_sip_uri() -> None:
    uri = Uri.parse(
        "sips:alice:secret@[2001:db8::10]:5061;transport=TCP;lr;maddr=239.255.255.1?subject=hi&x=%41"
    )
    assert uri.scheme == "sips"
    assert uri.secure
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "2001:db8::10"
    assert uri.port == 5061
    assert dict(uri.params) == {"transport": "TCP", "lr": None, "maddr": "239.255.255.1"}
    assert uri.transport == "tcp"
    assert dict(uri.headers) == {"subject": "hi", "x": "A"}
    assert (
        str(uri)
        == "sips:alice:secret@[2001:db8::10]:5061;transport=TCP;lr;maddr=239.255.255.1?subject=hi&x=A"
    )


def test_escaped_user_is_unescaped_and_written_back_escaped() -> None:
    uri = parse_uri("sip:sip%3Auser%40example.com@example.net;user=ip")
    assert uri.user == "sip:user@example.com"
    assert uri.host == "example.net"
    assert Uri.parse(str(uri)) == uri
    assert "%3A" in str(uri) or "%3a" in str(uri)


def test_user_part_may_hold_semicolon_and_question_mark() -> None:
    uri = Uri.parse("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com"
    assert dict(uri.params) == {}


def test_scheme_is_case_insensitive_and_stored_lower() -> None:
    assert Uri.parse("SIP:bob@Example.COM").scheme == "sip"


@pytest.mark.parametrize(
    "text",
    [
        "tel:+1-201-555-0123",
        "tel:7042;phone-context=example.com",
        "im:alice@atlanta.example.com",
        "pres:bob@biloxi.example.com",
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "mailto:alice@example.com",
        "nobodyKnowsThisScheme:totallyopaquecontent",
    ],
)
def test_other_schemes_round_trip(text: str) -> None:
    uri = Uri.parse(text)
    scheme, _, rest = text.partition(":")
    assert str(uri) == f"{scheme.lower()}:{rest}"  # the scheme is stored lower-case
    assert Uri.parse(str(uri)) == uri


def test_tel_number_in_user() -> None:
    uri = Uri.parse("tel:+1-201-555-0123;ext=22")
    assert uri.scheme == "tel"
    assert uri.user == "+1-201-555-0123"
    assert uri.params["ext"] == "22"
    # RFC 3966 §4: visual separators do not matter
    assert uri == Uri.parse("tel:+12015550123;ext=22")


def test_im_uri() -> None:
    uri = Uri.parse("im:alice@atlanta.example.com")
    assert (uri.user, uri.host, uri.port) == ("alice", "atlanta.example.com", None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bob@example.com",
        "sip:",
        "sip:bob@",
        "sip:bob@exa mple.com",
        "sip:bob@example.com:99999",
        "sip:bob@256.1.1.1",
        "sip:bob@[2001:db8::zz]",
        "sip:bob@[::1",
        "sip:bob@example.com;",
        "sip:bob@example.com?",
        "sip:bob@1.2.3",
        "sip:bob@example.com:port",
        "sip:b<o>b@example.com",
        "1sip:bob@example.com",
        "tel:",
        "tel:+",
        "other:has space",
    ],
)
def test_malformed_uris_raise_400(text: str) -> None:
    with pytest.raises(SipParseError) as info:
        Uri.parse(text)
    assert info.value.status_code == 400
    assert "URI" in str(info.value)


# RFC 3261 §19.1.4, the equal and unequal examples given there.
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
        ("sip:bob@[2001:db8:0:0:0:0:0:1]", "sip:bob@[2001:db8::1]"),
    ],
)
def test_equal_uris(a: str, b: str) -> None:
    ua, ub = Uri.parse(a), Uri.parse(b)
    assert ua == ub
    assert hash(ua) == hash(ub)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
        ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
        ("sip:alice:pw@atlanta.com", "sip:alice:PW@atlanta.com"),
    ],
)
def test_unequal_uris(a: str, b: str) -> None:
    assert Uri.parse(a) != Uri.parse(b)


def test_uri_is_immutable_and_helpers_copy() -> None:
    uri = Uri.parse("sip:bob@example.com;transport=tcp")
    with pytest.raises(AttributeError):
        uri.host = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        uri.params["lr"] = None  # type: ignore[index]
    routed = uri.with_params(lr=None)
    assert str(routed) == "sip:bob@example.com;transport=tcp;lr"
    assert str(routed.without_params("transport")) == "sip:bob@example.com;lr"
    assert str(uri) == "sip:bob@example.com;transport=tcp"


def test_constructed_uri_writes_brackets_for_ipv6() -> None:
    uri = Uri("sip", "bob", host="::1", port=5070, params={"transport": "tcp"})
    assert str(uri) == "sip:bob@[::1]:5070;transport=tcp"
    assert uri.host_port == "[::1]:5070"
    assert Uri.parse(str(uri)) == uri


def test_identity_key_and_uri_equality_agree_on_tel_separators() -> None:
    # One table of RFC 3966 visual separators serves both comparisons.
    assert Uri.parse("tel:+1-202-555-0100") == Uri.parse("tel:+1.202.555(0100)")
    assert identity_key("tel:+1-202-555-0100") == identity_key("<tel:+1.202.555(0100)>") == "tel:+12025550100"


def test_identity_key_gives_back_a_normal_form_string_and_stays_bounded() -> None:
    # A user part no other test uses: the table is process-wide, and an equal string cached
    # earlier by another test would be given back instead of this very object.
    text = f"sip:carol-{uuid.uuid4().hex}@example.com"
    assert identity_key(text) is text
    assert identity_key(text.replace("example.com", "EXAMPLE.com;transport=tcp")) == text
    assert identity_key("sip:carol@example.com", compare_ports=True) == "sip:carol@example.com:5060"
    assert identity_key("not a uri") is None and identity_key(None) is None
    for i in range(5000):
        identity_key(f"sip:user{i}@example.com")
    long_text = "sip:" + "u" * 400 + "@example.com"
    assert identity_key(long_text) == long_text
    assert len(uri_module._IDENTITIES) <= 4096 and long_text not in uri_module._IDENTITIES
