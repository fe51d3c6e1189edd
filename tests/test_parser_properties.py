"""Property tests: whatever the bytes, parsing ends in a message or a SipParseError."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipimdn import Headers, Request, Response, SipParseError, parse_message, salvage_reply_headers
from sipimdn.message import Message

DATA = Path(__file__).parent / "data"
CORPUS = [p.read_bytes() for p in sorted((DATA / "rfc4475").glob("*.sip"))] + [
    (DATA / "message_cpim.sip").read_bytes()
]

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exercise(message: Message) -> None:
    """Touch everything a consumer might read; only SipParseError may escape."""
    for accessor in (
        "vias",
        "top_via",
        "call_id",
        "cseq",
        "from_",
        "to",
        "max_forwards",
        "content_type",
        "contact",
        "route",
        "record_route",
        "expires",
        "content_length",
    ):
        with contextlib.suppress(SipParseError):
            getattr(message, accessor)
    with contextlib.suppress(SipParseError):
        message.validate()
    for name in list(message.headers):
        message.headers.get_all(name)
    wire = message.to_bytes()
    # what we write we can read back, with the same header rows and body
    again = parse_message(wire)
    assert list(again.headers.items())[: len(message.headers)] == list(message.headers.items())
    assert again.body == message.body


def parse_or_error(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status_code <= 599
        assert exc.reason
        salvage_reply_headers(data)  # must not raise either
        return
    assert isinstance(message, (Request, Response))
    exercise(message)


@SETTINGS
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_sip_parse_error(data: bytes) -> None:
    parse_or_error(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus message with a few bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 34, 37, 44, 58, 59, 60, 62, 64, 91, 93, 92, 255, 65]))
        if op == "replace" and data:
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif data:
            del data[pos]
    return bytes(data)


@SETTINGS
@given(mutated())
def test_mutated_torture_messages_parse_or_raise(data: bytes) -> None:
    parse_or_error(data)


token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1
)
value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\x00"), max_size=40
).map(str.strip)


@SETTINGS
@given(
    method=token,
    extra=st.lists(st.tuples(token, value), max_size=8),
    body=st.binary(max_size=300),
)
def test_built_request_round_trips(method: str, extra: list[tuple[str, str]], body: bytes) -> None:
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx"),
            ("From", "<sip:a@example.com>;tag=1"),
            ("To", "<sip:b@example.com>"),
            ("Call-ID", "id@example.com"),
            ("CSeq", f"1 {method}"),
            *[(name, v) for name, v in extra if name.lower() not in ("content-length", "l")],
        ]
    )
    request = Request(method, "sip:b@example.com", headers, body)
    wire = request.to_bytes()
    parsed = parse_message(wire)
    assert isinstance(parsed, Request)
    assert parsed.method == method and parsed.body == body
    assert list(parsed.headers.items())[:-1] == list(request.headers.items())
    assert parsed.to_bytes() == wire
