"""The message model: Headers, Request, Response, serialization, make_response."""

from __future__ import annotations

import pytest

from sipimdn import (
    Headers,
    LocalProtocolError,
    Request,
    Response,
    SipParseError,
    Uri,
    Via,
    make_response,
    parse_message,
)

RAW = (
    b"MESSAGE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport, "
    b"SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb\r\n"
    b"Via: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKc\r\n"
    b"Max-Forwards: 70\r\n"
    b"f: Alice <sip:alice@atlanta.example.com>;tag=1928\r\n"
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 MESSAGE\r\n"
    b'Contact: <sip:a@x>, "B, b" <sip:b@y>\r\n'
    b"Route: <sip:p1.example.com;lr>\r\n"
    b"Route: <sip:p2.example.com;lr>\r\n"
    b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    b'WWW-Authenticate: Digest realm="a", nonce="b"\r\n'
    b"X-Unknown:   kept   as is\r\n"
    b"Content-Type: text/plain;charset=utf-8\r\n"
    b"Content-Length:   5\r\n"
    b"\r\n"
    b"hello"
)


def parse_request(data: bytes = RAW) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def test_typed_accessors() -> None:
    msg = parse_request()
    assert msg.method == "MESSAGE"
    assert msg.uri == Uri.parse("sip:bob@biloxi.example.com")
    assert [v.branch for v in msg.vias] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]
    assert msg.top_via.has_rport
    assert msg.from_.tag == "1928" and msg.from_.display_name == "Alice"
    assert msg.to.tag is None
    assert msg.call_id == "a84b4c76e66710"
    assert (msg.cseq.number, msg.cseq.method) == (314159, "MESSAGE")
    assert msg.max_forwards == 70
    assert msg.content_type is not None and msg.content_type.mime == "text/plain"
    assert [c.uri.host for c in msg.contact] == ["x", "y"]
    assert [r.uri.host for r in msg.route] == ["p1.example.com", "p2.example.com"]
    assert msg.record_route == []
    assert msg.expires is None
    assert msg.content_length == 5
    assert msg.body == b"hello"
    msg.validate()


def test_headers_lookup_and_lists() -> None:
    h = parse_request().headers
    assert (
        h.get("VIA")
        == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport, SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb"
    )
    assert len(h.get_all("v")) == 3
    assert h.get("from") == h.get("f")
    assert "F" in h and "Subject" not in h
    # never split: Date (single valued) and the authentication headers
    assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert h.get_all("www-authenticate") == ['Digest realm="a", nonce="b"']
    assert h.get_all("x-unknown") == ["kept   as is"]
    assert list(h)[:2] == ["via", "Via"]


def test_round_trip_keeps_untouched_rows_byte_identical() -> None:
    assert parse_request().to_bytes() == RAW
    assert bytes(parse_request()) == RAW


def test_content_length_recomputed_in_bytes() -> None:
    msg = parse_request()
    msg.body = "héllo ☃".encode()
    out = msg.to_bytes()
    assert b"\r\nContent-Length: 10\r\n\r\n" in out
    assert parse_message(out).body == "héllo ☃".encode()


def test_set_top_via_rewrites_only_the_first_element() -> None:
    msg = parse_request()
    via = msg.top_via.with_params(received="203.0.113.5", rport="33333")
    msg.set_top_via(via)
    assert msg.top_via.received == "203.0.113.5"
    assert msg.top_via.rport == 33333
    out = msg.to_bytes()
    assert (
        b"via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport=33333;received=203.0.113.5, "
        b"SIP/2.0/TCP proxy.example.com;branch=z9hG4bKb\r\n" in out
    )
    assert b"Via: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKc\r\n" in out
    again = parse_request(out)
    assert [v.branch for v in again.vias] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]


def test_header_mutation_invalidates_typed_cache() -> None:
    msg = parse_request()
    assert msg.max_forwards == 70
    msg.headers.set("Max-Forwards", "69")
    assert msg.max_forwards == 69
    msg.headers.prepend("Via", "SIP/2.0/TCP new.example.com;branch=z9hG4bKnew")
    assert msg.top_via.host == "new.example.com"
    assert len(msg.vias) == 4
    assert msg.headers.remove("Route") == 2
    assert msg.route == []
    msg.headers.add("Record-Route", "<sip:rr.example.com;lr>")
    assert [r.uri.host for r in msg.record_route] == ["rr.example.com"]


def test_cached_top_via_follows_header_changes() -> None:
    msg = parse_request()
    assert msg.top_via.branch == "z9hG4bKa"
    msg.headers.prepend("Via", "SIP/2.0/TCP new.example.com;branch=z9hG4bKnew")
    assert msg.top_via.branch == "z9hG4bKnew"
    msg.headers.remove("Via")
    with pytest.raises(SipParseError, match="missing Via"):
        _ = msg.top_via
    assert msg.vias == []


def test_copy_is_independent() -> None:
    original = parse_request()
    clone = original.copy()
    clone.headers.set("CSeq", "314160 MESSAGE")
    clone.set_top_via(clone.top_via.with_params(branch="z9hG4bKretry"))
    assert (original.cseq.number, original.top_via.branch) == (314159, "z9hG4bKa")
    assert (clone.cseq.number, clone.top_via.branch) == (314160, "z9hG4bKretry")
    assert original.to_bytes() == RAW
    response = make_response(original, 200)
    assert response.copy().to_bytes() == response.to_bytes()


def test_headers_reject_injection() -> None:
    h = Headers()
    with pytest.raises(LocalProtocolError):
        h.add("Subject", "x\r\nVia: evil")
    with pytest.raises(LocalProtocolError):
        h.add("Bad Name", "x")


def test_missing_and_bad_headers_raise_on_access() -> None:
    msg = parse_request(RAW.replace(b"CSeq: 314159 MESSAGE", b"CSeq: 314159 INVITE"))
    with pytest.raises(SipParseError, match="does not match"):
        _ = msg.cseq
    msg = parse_request(RAW.replace(b"Call-ID: a84b4c76e66710\r\n", b""))
    with pytest.raises(SipParseError, match="missing Call-ID"):
        msg.validate()
    msg = parse_request(RAW.replace(b"Max-Forwards: 70", b"Max-Forwards: x"))
    with pytest.raises(SipParseError) as info:
        msg.validate()
    assert info.value.status_code == 400


def test_build_request_from_scratch() -> None:
    req = Request(
        "MESSAGE",
        "sip:bob@example.com",
        [
            ("Via", str(Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bKabc", "rport": None}))),
            ("Max-Forwards", "70"),
            ("From", "<sip:alice@example.com>;tag=x"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", "text/plain"),
        ],
        b"hi",
    )
    wire = req.to_bytes()
    assert wire.startswith(
        b"MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"
    )
    assert wire.endswith(b"Content-Length: 2\r\n\r\nhi")
    parsed = parse_message(wire)
    assert isinstance(parsed, Request)
    parsed.validate()
    assert parsed.headers.remove("Content-Length") == 1  # added on writing
    assert parsed.headers == req.headers


def test_invalid_construction() -> None:
    with pytest.raises(LocalProtocolError):
        Request("BAD METHOD", "sip:a@b")
    with pytest.raises(LocalProtocolError):
        Response(99)
    with pytest.raises(LocalProtocolError):
        Response(200, "OK\r\nX: y")


def test_make_response() -> None:
    req = parse_request()
    resp = make_response(req, 200)
    assert resp.reason == "OK"
    assert [v.branch for v in resp.vias] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]
    assert resp.from_ == req.from_
    assert resp.call_id == req.call_id
    assert resp.cseq == req.cseq
    tag = resp.to.tag
    assert tag
    assert resp.to.uri == req.to.uri
    # the derived tag is stable for the same request (retransmissions, 4xx after 1xx)
    assert make_response(req, 404).to.tag == tag
    assert make_response(req, 202, "Stored", to_tag="mine").to.tag == "mine"
    assert make_response(req, 100).to.tag is None
    wire = resp.to_bytes()
    assert wire.startswith(b"SIP/2.0 200 OK\r\n")
    assert wire.endswith(b"Content-Length: 0\r\n\r\n")
    parsed = parse_message(wire)
    assert isinstance(parsed, Response) and parsed.status_code == 200
    parsed.validate()


def test_make_response_keeps_existing_to_tag_and_copies_timestamp() -> None:
    req = parse_request(
        RAW.replace(b"To: <sip:bob@biloxi.example.com>", b"To: <sip:bob@biloxi.example.com>;tag=zz").replace(
            b"X-Unknown", b"Timestamp: 54\r\nX-Unknown"
        )
    )
    assert make_response(req, 200, to_tag="other").to.tag == "zz"
    trying = make_response(req, 100)
    assert trying.headers.get("Timestamp") == "54"
    assert trying.reason == "Trying"


def test_make_response_needs_the_copied_headers() -> None:
    req = parse_request(RAW.replace(b"CSeq: 314159 MESSAGE\r\n", b""))
    with pytest.raises(SipParseError, match="CSeq"):
        make_response(req, 400)
