"""StreamFramer: Content-Length framing, keep-alives, limits, chunking."""

from __future__ import annotations

import pytest

from sipimdn import KeepAliveReceived, Limits, Request, Response, SipParseError, StreamFramer

REQ = (
    b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@example.com>;tag=a\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: c@h\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"hello"
)
RESP = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"


def drain(framer: StreamFramer) -> list[Request | Response | KeepAliveReceived]:
    return list(framer)


def test_two_messages_in_one_chunk() -> None:
    f = StreamFramer()
    f.feed(REQ + RESP)
    events = drain(f)
    assert [type(e) for e in events] == [Request, Response]
    assert isinstance(events[0], Request) and events[0].body == b"hello"
    assert f.buffered == 0
    assert f.next_event() is None


def test_byte_at_a_time() -> None:
    f = StreamFramer()
    out: list[object] = []
    for i in range(len(REQ)):
        f.feed(REQ[i : i + 1])
        out.extend(drain(f))
    assert len(out) == 1 and isinstance(out[0], Request)
    assert out[0].to_bytes() == REQ


def test_keepalives_ping_and_pong() -> None:
    f = StreamFramer()
    f.feed(b"\r\n\r\n")
    events = drain(f)
    assert events == [KeepAliveReceived(1), KeepAliveReceived(2)]
    assert [e.is_ping for e in events if isinstance(e, KeepAliveReceived)] == [False, True]
    f.feed(REQ + b"\r\n")
    events = drain(f)
    assert isinstance(events[0], Request)
    assert events[1] == KeepAliveReceived(1)  # a pong after a message restarts the run


def test_lone_cr_waits_for_lf() -> None:
    f = StreamFramer()
    f.feed(b"\r")
    assert f.next_event() is None
    f.feed(b"\n")
    assert f.next_event() == KeepAliveReceived(1)


def test_content_length_required() -> None:
    f = StreamFramer()
    f.feed(REQ.replace(b"l: 5\r\n", b""))
    with pytest.raises(SipParseError, match="Content-Length is required") as info:
        f.next_event()
    assert info.value.status_code == 400
    # the error is final and the failing bytes are kept for a stateless reply
    assert f.failed_data is not None and f.failed_data.startswith(b"MESSAGE ")
    with pytest.raises(SipParseError):
        f.next_event()
    with pytest.raises(SipParseError):
        f.feed(b"more")


def test_oversize_body_is_413_before_reading_it() -> None:
    f = StreamFramer(Limits(max_body=4))
    f.feed(REQ[: REQ.index(b"\r\n\r\n") + 4])
    with pytest.raises(SipParseError) as info:
        f.next_event()
    assert info.value.status_code == 413


def test_endless_header_section_is_513() -> None:
    f = StreamFramer(Limits(max_header_bytes=1000))
    f.feed(b"MESSAGE sip:bob@example.com SIP/2.0\r\n")
    with pytest.raises(SipParseError) as info:
        for _ in range(100):
            f.feed(b"X-Filler: " + b"x" * 50 + b"\r\n")
            assert f.next_event() is None
    assert info.value.status_code == 513


def test_endless_start_line_is_513() -> None:
    f = StreamFramer(Limits(max_start_line=100))
    f.feed(b"MESSAGE sip:" + b"a" * 200)
    with pytest.raises(SipParseError) as info:
        f.next_event()
    assert info.value.status_code == 513


def test_bare_cr_between_messages() -> None:
    f = StreamFramer()
    f.feed(b"\rMESSAGE")
    with pytest.raises(SipParseError):
        f.next_event()


def test_many_messages_compact_the_buffer() -> None:
    f = StreamFramer()
    count = 0
    for _ in range(2000):
        f.feed(REQ)
        for event in drain(f):
            assert isinstance(event, Request)
            count += 1
    assert count == 2000
    assert f.buffered == 0
