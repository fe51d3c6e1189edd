"""parse_message: one datagram; start lines, header lines, Content-Length, limits."""

from __future__ import annotations

import pytest

from sipimdn import Limits, Request, Response, SipParseError, parse_message, salvage_reply_headers

HEAD = (
    "MESSAGE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@example.com>;tag=a\r\n"
    "To: <sip:bob@example.com>\r\n"
    "Call-ID: c@h\r\n"
    "CSeq: 1 MESSAGE\r\n"
)


def msg(extra: str = "", body: bytes = b"", length: int | None = None) -> bytes:
    cl = "" if length is None else f"Content-Length: {length}\r\n"
    return (HEAD + extra + cl + "\r\n").encode() + body


def test_request_and_response() -> None:
    req = parse_message(msg(length=0))
    assert isinstance(req, Request) and req.method == "MESSAGE"
    resp = parse_message(b"SIP/2.0 202 Accepted for delivery\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(resp, Response)
    assert (resp.status_code, resp.reason) == (202, "Accepted for delivery")


def test_empty_reason_phrase() -> None:
    for line in (b"SIP/2.0 200 ", b"SIP/2.0 200"):
        resp = parse_message(line + b"\r\nContent-Length: 0\r\n\r\n")
        assert isinstance(resp, Response) and resp.reason == ""


def test_unknown_method_is_accepted() -> None:
    data = msg(length=0).replace(b"MESSAGE", b"NEWMETHOD")
    req = parse_message(data)
    assert isinstance(req, Request) and req.method == "NEWMETHOD"
    req.validate()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"MESSAGE sip:bob@example.com SIP/3.0\r\n\r\n", 505),
        (b"SIP/1.0 200 OK\r\n\r\n", 505),
        (b"MESSAGE sip:bob@example.com HTTP/1.1\r\n\r\n", 400),
        (b"MESSAGE  sip:bob@example.com SIP/2.0\r\n\r\n", 400),
        (b"MESSAGE sip:bob@example.com\r\n\r\n", 400),
        (b"MESS<AGE sip:bob@example.com SIP/2.0\r\n\r\n", 400),
        (b"MESSAGE bob@example.com SIP/2.0\r\n\r\n", 400),
        (b"SIP/2.0 20 OK\r\n\r\n", 400),
        (b"SIP/2.0 099 Low\r\n\r\n", 400),
        (b"\r\n\r\n", 400),
        (b"", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\nVia", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\nNoColon\r\n\r\n", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\nBad Name: x\r\n\r\n", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\n: x\r\n\r\n", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\n folded-first: x\r\n\r\n", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\nX: a\x00b\r\n\r\n", 400),
        (b"MESSAGE sip:bob@example.com SIP/2.0\r\nX: a\rb\r\n\r\n", 400),
    ],
)
def test_bad_start_and_header_lines(data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status_code == status
    assert str(info.value).endswith(f"(SIP {status})")


def test_content_length_rules() -> None:
    # surplus bytes after the body are discarded (RFC 3261 §18.3)
    assert parse_message(msg(body=b"helloEXTRA", length=5)).body == b"hello"
    # without Content-Length the body runs to the end of the datagram
    assert parse_message(msg(body=b"whole body")).body == b"whole body"
    # too few bytes: error
    with pytest.raises(SipParseError, match="shorter"):
        parse_message(msg(body=b"hell", length=5))
    # two equal Content-Length rows are tolerated, different ones are not
    assert parse_message(msg("Content-Length: 5\r\n", b"hello", 5)).body == b"hello"
    with pytest.raises(SipParseError, match="conflicting"):
        parse_message(msg("l: 4\r\n", b"hello", 5))
    for bad in ("-1", "abc", "1 2", "٣"):
        with pytest.raises(SipParseError, match="Content-Length"):
            parse_message(msg(f"Content-Length: {bad}\r\n"))


def test_limits() -> None:
    limits = Limits(max_start_line=100, max_header_bytes=400, max_headers=10, max_body=10, max_message=600)
    with pytest.raises(SipParseError) as info:
        parse_message(b"MESSAGE sip:" + b"a" * 200 + b"@example.com SIP/2.0\r\n\r\n", limits)
    assert info.value.status_code == 513
    with pytest.raises(SipParseError) as info:
        parse_message(msg("X: " + "y" * 400 + "\r\n", length=0), limits)
    assert info.value.status_code == 513
    with pytest.raises(SipParseError) as info:
        parse_message(msg("X: y\r\n" * 10, length=0), limits)
    assert info.value.status_code == 513
    with pytest.raises(SipParseError) as info:
        parse_message(msg(body=b"b" * 11, length=11), limits)
    assert info.value.status_code == 413
    with pytest.raises(SipParseError) as info:
        parse_message(msg(body=b"b" * 11), limits)
    assert info.value.status_code == 413
    with pytest.raises(SipParseError) as info:
        parse_message(msg(body=b"b" * 700), limits)
    assert info.value.status_code == 513
    assert parse_message(msg(body=b"b" * 10, length=10), limits).body == b"b" * 10


def test_leading_crlf_and_missing_final_empty_line() -> None:
    assert isinstance(parse_message(b"\r\n\r\n" + msg(length=0)), Request)
    bodiless = HEAD.encode()  # ends after the last header line's CRLF
    req = parse_message(bodiless)
    assert isinstance(req, Request) and req.body == b""


def test_salvage_reply_headers() -> None:
    broken = msg("Bad Header Line\r\n", length=0)
    with pytest.raises(SipParseError):
        parse_message(broken)
    rows = salvage_reply_headers(broken)
    assert rows is not None
    assert [name for name, _ in rows] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert rows[0][1] == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"
    assert salvage_reply_headers(b"\x00\x01garbage") is None
    assert salvage_reply_headers(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n") is None
    assert salvage_reply_headers(b"MESSAGE sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\n\r\n") is None


def test_parser_caches_stay_bounded() -> None:
    """Peers choose the start lines, URIs and header names; the caches must not grow with them."""
    from sipimdn import parser, uri

    for i in range(3000):
        parse_message(msg(f"X-Name-{i}: v\r\n", length=0).replace(b"sip:bob@", b"sip:bob%d@" % i, 1))
    assert len(parser._START_LINES) <= parser._START_LINES_MAX
    assert len(uri._CACHE) <= uri._CACHE_MAX
    assert len(parser._NAME_KEYS) <= parser._NAME_KEYS_MAX
    long_line = "MESSAGE sip:" + "a" * 600 + "@example.com SIP/2.0"
    parse_message(msg(length=0).replace(b"MESSAGE sip:bob@example.com SIP/2.0", long_line.encode()))
    assert long_line not in parser._START_LINES
