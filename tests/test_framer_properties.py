"""Property tests: the framer's output does not depend on how the stream is chunked."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipimdn import KeepAliveReceived, Limits, SipParseError, StreamFramer, parse_message

DATA = Path(__file__).parent / "data"
# Every parseable corpus message, written with a Content-Length as a stream needs.
MESSAGES = []
for path in [*sorted((DATA / "rfc4475").glob("*.sip")), DATA / "message_cpim.sip"]:
    with contextlib.suppress(SipParseError):
        MESSAGES.append(parse_message(path.read_bytes()).to_bytes())

PIECES = st.one_of(
    st.sampled_from(MESSAGES),
    st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n"]),
)
GARBAGE = st.sampled_from(
    [b"", b"", b"garbage\r\n\r\n", b"\r", b"\rX", b"MESSAGE sip:a@b SIP/2.0\r\n\r\n", b"\x00\xff"]
)

Outcome = tuple[list[tuple[str, bytes | int]], tuple[int, str] | None]


def run(framer: StreamFramer, chunks: list[bytes]) -> Outcome:
    events: list[tuple[str, bytes | int]] = []
    for chunk in chunks:
        try:
            framer.feed(chunk)
            while (event := framer.next_event()) is not None:
                if isinstance(event, KeepAliveReceived):
                    events.append(("keepalive", event.run))
                else:
                    events.append((type(event).__name__, event.to_bytes()))
        except SipParseError as exc:
            return events, (exc.status_code, exc.reason)
    return events, None


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks, last = [], 0
    for point in points:
        chunks.append(stream[last:point])
        last = point
    chunks.append(stream[last:])
    return chunks


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(PIECES, max_size=6),
    tail=GARBAGE,
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=40),
)
def test_random_chunking_gives_the_same_events(pieces: list[bytes], tail: bytes, cuts: list[int]) -> None:
    stream = b"".join(pieces) + tail
    whole = run(StreamFramer(), [stream])
    chunked = run(StreamFramer(), split(stream, cuts))
    assert chunked == whole
    messages = [e for e in whole[0] if e[0] != "keepalive"]
    assert len(messages) == sum(1 for p in pieces if p in MESSAGES)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MESSAGES), st.integers(min_value=0, max_value=3))
def test_byte_at_a_time(message: bytes, keepalives: int) -> None:
    stream = b"\r\n\r\n" * keepalives + message
    assert run(StreamFramer(), [stream[i : i + 1] for i in range(len(stream))]) == run(
        StreamFramer(), [stream]
    )


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=600),
    st.lists(st.integers(min_value=0, max_value=700), max_size=20),
)
def test_arbitrary_bytes_with_small_limits(stream: bytes, cuts: list[int]) -> None:
    limits = Limits(max_start_line=64, max_header_bytes=256, max_headers=8, max_body=64, max_message=400)
    whole = run(StreamFramer(limits), [stream])
    chunked = run(StreamFramer(limits), split(stream, cuts))
    # Limits are checked in the same order on an incomplete head as on a
    # complete one, so even errors are identical.
    assert chunked == whole
