"""A table of raw messages real senders produce, checked both ways (parse, write, re-parse)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipimdn import Request, Response, SipParseError, Uri, parse_message
from sipimdn.message import Message

BASE = (
    "MESSAGE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@example.com>;tag=a\r\n"
    "To: <sip:bob@example.com>\r\n"
    "Call-ID: c@h\r\n"
    "CSeq: 1 MESSAGE\r\n"
)


def req(text: str) -> Request:
    return _as_request(parse_message(text.encode("utf-8")))


def _as_request(message: Message) -> Request:
    assert isinstance(message, Request)
    return message


def check_compact(m: Message) -> None:
    assert m.call_id == "compact@h"
    assert m.from_.tag == "ft" and m.to.uri.user == "bob"
    assert m.top_via.branch == "z9hG4bKc"
    assert m.content_type is not None and m.content_type.mime == "text/plain"
    assert m.headers.get("Subject") == "hi" and m.headers.get("Content-Encoding") == "gzip"
    assert m.headers.get_all("Supported") == ["100rel", "path"]
    assert [c.uri.user for c in m.contact] == ["alice"]
    assert m.body == b"hello"


def check_folded(m: Message) -> None:
    assert m.headers.get("Subject") == "a long subject that goes on"
    assert m.top_via.branch == "z9hG4bKfold"
    assert m.from_.tag == "folded"


def check_bare_lf(m: Message) -> None:
    assert m.call_id == "lf@h" and m.body == b"body"


def check_colon_spacing(m: Message) -> None:
    assert m.call_id == "sp@h" and m.cseq.number == 7
    assert m.headers.get("X-Thing") == "value"


def check_sipp_padding(m: Message) -> None:
    assert m.content_length == 13 and m.body == b"Hello, world!"


def check_ipv6(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.uri.host == "2001:db8::1" and m.uri.port == 5070
    assert m.top_via.sent_by == ("2001:db8::10", 5060)
    assert m.top_via.received == "2001:db8::99"
    assert m.from_.uri.host == "::1"


def check_escaped(m: Message) -> None:
    assert isinstance(m, Request)
    assert m.uri.user == "bob smith" and m.uri == Uri.parse("sip:bob%20smith@example.com")
    assert m.from_.uri.user == "alice@home"
    assert m.to.uri.params["x"] == "a;b"


def check_utf8_body(m: Message) -> None:
    text = "Привет, 世界! ☃"
    assert m.body == text.encode("utf-8")
    assert m.content_length == len(text.encode("utf-8")) != len(text)


def check_utf8_header(m: Message) -> None:
    assert m.from_.display_name == "Zoë Ångström"
    assert m.headers.get("Subject") == "café ☕"


def check_surplus(m: Message) -> None:
    assert m.body == b"12345"


def check_no_length(m: Message) -> None:
    assert m.body == b"runs to the end\r\n"


def check_unknown(m: Message) -> None:
    assert isinstance(m, Request) and m.method == "FOOBAR"
    assert m.headers.get("X-Custom-Header") == "anything; goes, here"
    assert m.headers.get_all("x-custom-header") == ["anything; goes", "here"]


def check_multi_rows(m: Message) -> None:
    assert [r.uri.host for r in m.record_route] == ["p1", "p2", "p3"]
    assert [v.branch for v in m.vias] == ["z9hG4bK1", "z9hG4bK2"]


def check_response(m: Message) -> None:
    assert isinstance(m, Response) and m.status_code == 202 and m.reason == "Accepted"
    assert m.to.tag == "t" and m.cseq.method == "MESSAGE"


def check_rport(m: Message) -> None:
    via = m.top_via
    assert via.has_rport and via.rport is None and via.transport == "TCP"
    assert m.vias[1].rport == 5061 and m.vias[1].has_rport


TABLE: list[tuple[str, str, Callable[[Message], None]]] = [
    (
        "compact forms",
        "MESSAGE sip:bob@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKc\r\nf: <sip:a@h>;tag=ft\r\n"
        "t: sip:bob@example.com\r\ni: compact@h\r\nCSeq: 1 MESSAGE\r\nc: text/plain\r\ns: hi\r\ne: gzip\r\n"
        "k: 100rel, path\r\nm: <sip:alice@h>\r\nl: 5\r\n\r\nhello",
        check_compact,
    ),
    (
        "folded lines",
        BASE.replace("Call-ID", "Subject: a long subject\r\n  that goes on\r\nCall-ID")
        .replace(
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
            "Via: SIP/2.0/UDP 192.0.2.1:5060\r\n\t;branch=z9hG4bKfold",
        )
        .replace("From: <sip:alice@example.com>;tag=a", "From:\r\n <sip:alice@example.com>\r\n ;tag=folded")
        + "Content-Length: 0\r\n\r\n",
        check_folded,
    ),
    (
        "bare LF line ends",
        BASE.replace("\r\n", "\n").replace("c@h", "lf@h") + "Content-Length: 4\n\nbody",
        check_bare_lf,
    ),
    (
        "mixed CRLF and LF",
        BASE.replace("c@h", "lf@h").replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\n")
        + "Content-Length: 4\n\r\nbody",
        check_bare_lf,
    ),
    (
        "whitespace around the colon",
        BASE.replace("Call-ID: c@h", "Call-ID\t :   sp@h").replace("CSeq: 1", "CSeq  :7")
        + "X-Thing   :value\r\nContent-Length: 0\r\n\r\n",
        check_colon_spacing,
    ),
    (
        "SIPp's space-padded Content-Length",
        BASE + "Content-Length:   13\r\n\r\nHello, world!",
        check_sipp_padding,
    ),
    (
        "IPv6 Via, Request-URI and From",
        BASE.replace("sip:bob@example.com SIP", "sip:bob@[2001:db8::1]:5070 SIP")
        .replace(
            "192.0.2.1:5060;branch=z9hG4bK1", "[2001:db8::10]:5060;branch=z9hG4bK1;received=2001:db8::99"
        )
        .replace("sip:alice@example.com", "sip:alice@[::1]")
        + "Content-Length: 0\r\n\r\n",
        check_ipv6,
    ),
    (
        "escaped URIs",
        BASE.replace("sip:bob@example.com SIP", "sip:bob%20smith@example.com SIP")
        .replace("<sip:alice@example.com>", "<sip:alice%40home@example.com>")
        .replace("To: <sip:bob@example.com>", "To: <sip:bob@example.com;x=a%3Bb>")
        + "Content-Length: 0\r\n\r\n",
        check_escaped,
    ),
    (
        "UTF-8 body, Content-Length in bytes",
        BASE + "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 25\r\n\r\nПривет, 世界! ☃",
        check_utf8_body,
    ),
    (
        "UTF-8 in header values",
        BASE.replace("From: <", 'From: "Zoë Ångström" <') + "Subject: café ☕\r\nContent-Length: 0\r\n\r\n",
        check_utf8_header,
    ),
    (
        "surplus bytes after the body are discarded",
        BASE + "Content-Length: 5\r\n\r\n12345trailing junk",
        check_surplus,
    ),
    ("no Content-Length on a datagram", BASE + "\r\nruns to the end\r\n", check_no_length),
    (
        "unknown method and headers",
        BASE.replace("MESSAGE", "FOOBAR")
        + "X-Custom-Header: anything; goes, here\r\nContent-Length: 0\r\n\r\n",
        check_unknown,
    ),
    (
        "repeated rows and comma lists",
        BASE.replace("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", "Via: SIP/2.0/UDP a;branch=z9hG4bK1")
        + "Via: SIP/2.0/UDP b;branch=z9hG4bK2\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\n"
        "Record-Route: <sip:p3;lr>\r\nContent-Length: 0\r\n\r\n",
        check_multi_rows,
    ),
    (
        "a response",
        "SIP/2.0 202 Accepted\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=f\r\n"
        "To: <sip:b@h>;tag=t\r\nCall-ID: x\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        check_response,
    ),
    (
        "rport with and without value",
        BASE.replace(
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
            "Via: SIP/2.0/TCP c.example.com;rport;branch=z9hG4bK1, SIP/2.0/UDP d;rport=5061;branch=z9hG4bK2",
        )
        + "Content-Length: 0\r\n\r\n",
        check_rport,
    ),
]


@pytest.mark.parametrize(("raw", "check"), [pytest.param(r, c, id=i) for i, r, c in TABLE])
def test_raw_message_both_ways(raw: str, check: Callable[[Message], None]) -> None:
    message = parse_message(raw.encode("utf-8"))
    message.validate()
    check(message)
    wire = message.to_bytes()
    again = parse_message(wire)
    again.validate()
    check(again)
    assert again.to_bytes() == wire


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        pytest.param(BASE + "Content-Length: 10\r\n\r\n12345", 400, "shorter", id="too few body bytes"),
        pytest.param(BASE + "Content-Length: 5\r\n\r\n", 400, "shorter", id="no body at all"),
        pytest.param(BASE + "Content-Length: 5x\r\n\r\n12345", 400, "Content-Length", id="junk in length"),
        pytest.param(BASE.replace("SIP/2.0\r\n", "SIP/2.1\r\n", 1), 505, "version", id="SIP/2.1"),
        pytest.param(BASE + "Bad Header: x\r\n\r\n", 400, "header name", id="space in header name"),
        pytest.param(BASE + "X: a\rb\r\n\r\n", 400, "bare CR", id="bare CR"),
        pytest.param(BASE + "X: a\x01b\r\n\r\n", 400, "control", id="control character"),
    ],
)
def test_rejected_raw_messages(raw: str, status: int, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(raw.encode("utf-8"))
    assert info.value.status_code == status
    assert fragment in str(info.value)


def test_sipp_sample_file_keeps_its_padding() -> None:
    message = req(BASE + "Content-Length:   13\r\n\r\nHello, world!")
    assert b"Content-Length:   13\r\n" in message.to_bytes()
    message.body = b"Hi"
    assert b"Content-Length: 2\r\n" in message.to_bytes()
