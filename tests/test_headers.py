"""Typed header values: NameAddr, Via, CSeq, ContentType; names and comma lists."""

from __future__ import annotations

import pytest

from sipimdn import ContentType, CSeq, NameAddr, SipParseError, Uri, Via
from sipimdn.headers import canonical_name, header_key, split_comma_list


@pytest.mark.parametrize(
    ("compact", "long"),
    [
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("e", "Content-Encoding"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("f", "From"),
        ("s", "Subject"),
        ("k", "Supported"),
        ("t", "To"),
        ("v", "Via"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("x", "Session-Expires"),
        ("b", "Referred-By"),
        ("y", "Identity"),
        ("a", "Accept-Contact"),
        ("j", "Reject-Contact"),
        ("d", "Request-Disposition"),
        ("n", "Identity-Info"),
    ],
)
def test_compact_forms(compact: str, long: str) -> None:
    assert header_key(compact) == header_key(long) == long.lower()
    assert header_key(compact.upper()) == long.lower()
    assert canonical_name(compact) == long


def test_canonical_spelling() -> None:
    assert canonical_name("CALL-ID") == "Call-ID"
    assert canonical_name("cseq") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("x-my-header") == "X-My-Header"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a, b,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ("<sip:a@x;p=1,2>, <sip:b@y>", ["<sip:a@x;p=1,2>", "<sip:b@y>"]),
        ('"quote \\" , inside" <sip:a@x>', ['"quote \\" , inside" <sip:a@x>']),
        ("a,,b,", ["a", "b"]),
        ("  ", []),
    ],
)
def test_split_comma_list(value: str, expected: list[str]) -> None:
    assert split_comma_list(value) == expected


class TestNameAddr:
    def test_quoted_display_name_and_tag(self) -> None:
        na = NameAddr.parse('"Alice \\"A\\" Liddell" <sip:alice@atlanta.com;transport=tcp>;tag=9fxced76sl;x')
        assert na.display_name == 'Alice "A" Liddell'
        assert na.uri == Uri.parse("sip:alice@atlanta.com;transport=tcp")
        assert na.tag == "9fxced76sl"
        assert dict(na.params) == {"tag": "9fxced76sl", "x": None}
        assert NameAddr.parse(str(na)) == na

    def test_token_display_name(self) -> None:
        na = NameAddr.parse("Bob  Smith <sip:bob@biloxi.com>")
        assert na.display_name == "Bob Smith"
        assert na.tag is None

    def test_addr_spec_params_belong_to_header(self) -> None:
        na = NameAddr.parse("sip:bob@biloxi.com;tag=a73kszlfl")
        assert na.tag == "a73kszlfl"
        assert dict(na.uri.params) == {}

    def test_bracketed_uri_params_belong_to_uri(self) -> None:
        na = NameAddr.parse("<sip:proxy.example.com;lr>")
        assert dict(na.uri.params) == {"lr": None}
        assert dict(na.params) == {}

    def test_quoted_param_value_with_angle_brackets(self) -> None:
        na = NameAddr.parse('<sip:a@x>;+sip.instance="<urn:uuid:1234>";expires=60')
        assert na.params["+sip.instance"] == "<urn:uuid:1234>"
        assert NameAddr.parse(str(na)) == na

    def test_with_tag_copies(self) -> None:
        na = NameAddr.parse("<sip:bob@biloxi.com>")
        tagged = na.with_tag("abc")
        assert tagged.tag == "abc" and na.tag is None
        assert str(tagged) == "<sip:bob@biloxi.com>;tag=abc"

    @pytest.mark.parametrize(
        "text",
        [
            '"unterminated <sip:a@b>',
            "<sip:a@b",
            "<sip:a@b>;tag=x;tag=y",
            "Bad\\Name <sip:a@b>",
            "sip:a@b?x=y",
            '"x" sip:a@b',
            "<sip:a@b> junk",
            "<not a uri>",
            "",
        ],
    )
    def test_malformed(self, text: str) -> None:
        with pytest.raises(SipParseError) as info:
            NameAddr.parse(text)
        assert info.value.status_code == 400


class TestVia:
    def test_all_fields(self) -> None:
        via = Via.parse(
            "SIP/2.0/udp 192.0.2.1:5060;branch=z9hG4bK776;received=198.51.100.7;rport=5070"
            ";ttl=16;maddr=239.1.1.1"
        )
        assert via.transport == "UDP"
        assert via.sent_by == ("192.0.2.1", 5060)
        assert via.branch == "z9hG4bK776"
        assert via.received == "198.51.100.7"
        assert via.rport == 5070 and via.has_rport
        assert via.ttl == 16
        assert via.maddr == "239.1.1.1"

    def test_rport_without_value(self) -> None:
        via = Via.parse("SIP/2.0/TCP client.example.com;rport;branch=z9hG4bKx")
        assert via.has_rport and via.rport is None
        assert via.port is None
        assert str(via) == "SIP/2.0/TCP client.example.com;rport;branch=z9hG4bKx"

    def test_ipv6_sent_by_and_received(self) -> None:
        via = Via.parse("SIP/2.0/TLS [2001:db8::9:1]:5061;branch=z9hG4bKas;received=2001:db8::9:255")
        assert via.host == "2001:db8::9:1"
        assert via.port == 5061
        assert via.received == "2001:db8::9:255"
        assert str(via).startswith("SIP/2.0/TLS [2001:db8::9:1]:5061;")
        assert Via.parse(str(via)) == via

    def test_whitespace_inside(self) -> None:
        via = Via.parse("SIP / 2.0 / UDP   host.example.com : 5060 ; branch = z9hG4bK1")
        assert via.sent_by == ("host.example.com", 5060)
        assert via.branch == "z9hG4bK1"

    def test_with_params_for_received_and_rport(self) -> None:
        via = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport")
        updated = via.with_params(received="192.0.2.9", rport="40000")
        assert str(updated) == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=40000;received=192.0.2.9"
        assert via.rport is None

    @pytest.mark.parametrize(
        "text",
        [
            "SIP/2.0/UDP",
            "SIP/3.0/UDP host",
            "SIP/2.0 UDP host",
            "SIP/2.0/UDP host:70000",
            "SIP/2.0/UDP host;ttl=300",
            "SIP/2.0/UDP host;rport=x",
            "SIP/2.0/UDP host;received=notanip",
            "SIP/2.0/UDP [::zz]",
            "SIP/2.0/UDP host;branch",
            "SIP/2.0/UDP 300.1.1.1",
            "SIP/2.0/UDP host junk",
        ],
    )
    def test_malformed(self, text: str) -> None:
        with pytest.raises(SipParseError):
            Via.parse(text)


class TestCSeqAndContentType:
    def test_cseq(self) -> None:
        assert CSeq.parse("4711  MESSAGE") == CSeq(4711, "MESSAGE")
        assert str(CSeq(1, "MESSAGE")) == "1 MESSAGE"

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "MESSAGE",
            "1",
            "-1 MESSAGE",
            "2147483648 MESSAGE",
            "1 MES SAGE",
            "36893488147419103232 REGISTER",
        ],
    )
    def test_bad_cseq(self, text: str) -> None:
        with pytest.raises(SipParseError):
            CSeq.parse(text)

    def test_content_type(self) -> None:
        ct = ContentType.parse('Message/CPIM ; charset="UTF-8";x=y')
        assert ct.mime == "message/cpim"
        assert ct.charset == "utf-8"
        assert dict(ct.params) == {"charset": "UTF-8", "x": "y"}
        assert ContentType.parse(str(ct)) == ct

    @pytest.mark.parametrize("text", ["text", "text/", "/plain", "text/plain;charset", "text/plain junk"])
    def test_bad_content_type(self, text: str) -> None:
        with pytest.raises(SipParseError):
            ContentType.parse(text)
