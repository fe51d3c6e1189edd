"""The user agent's own building blocks: per-destination queue,
bounded inflation and the handler deadline."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from sipimdn._inflate import inflate
from sipimdn._pacing import DestinationQueue
from sipimdn.errors import RemoteProtocolError
from sipimdn.ua._deadline import Decision, normalize_decision, outcome_of

# -- RFC 3428 §8 per-destination queue -------------------------------------------------------


async def test_one_pending_transaction_per_destination_in_fifo_order() -> None:
    queue = DestinationQueue()
    order: list[str] = []
    in_flight: dict[str, int] = {"bob": 0, "carol": 0}
    peak: dict[str, int] = {"bob": 0, "carol": 0}

    async def send(dest: str, name: str) -> None:
        async with queue.turn(dest):
            in_flight[dest] += 1
            peak[dest] = max(peak[dest], in_flight[dest])
            order.append(name)
            await asyncio.sleep(0.01)
            in_flight[dest] -= 1

    await asyncio.wait_for(asyncio.gather(*(send("bob", f"b{i}") for i in range(4)), send("carol", "c0")), 2)
    assert peak == {"bob": 1, "carol": 1}
    assert [n for n in order if n.startswith("b")] == ["b0", "b1", "b2", "b3"]
    # carol never waited behind bob: it started before bob's second message.
    assert order.index("c0") < order.index("b1")
    assert len(queue) == 0  # free destinations are forgotten


async def test_cancelled_waiter_does_not_block_the_destination() -> None:
    queue = DestinationQueue()
    await queue.acquire("bob")
    waiter = asyncio.ensure_future(queue.acquire("bob"))
    third = asyncio.ensure_future(queue.acquire("bob"))
    await asyncio.sleep(0)
    assert not waiter.done() and not third.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    queue.release("bob")
    await asyncio.wait_for(third, 1)
    assert len(queue) == 1  # third holds the turn
    queue.release("bob")
    assert len(queue) == 0


async def test_turn_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    queue = DestinationQueue()
    await queue.acquire("bob")
    second = asyncio.ensure_future(queue.acquire("bob"))
    third = asyncio.ensure_future(queue.acquire("bob"))
    await asyncio.sleep(0)
    queue.release("bob")  # hands the turn to `second`...
    second.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.wait_for(third, 1)
    queue.release("bob")
    assert len(queue) == 0


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        DestinationQueue().release("nobody")


# -- bounded inflation -----------------------------------------------------------------------


def test_inflate_deflate_zlib_raw_and_gzip() -> None:
    text = b"hello " * 100
    raw = zlib.compressobj(wbits=-15)
    raw_data = raw.compress(text) + raw.flush()
    assert inflate(zlib.compress(text), "deflate", 10_000) == text
    assert inflate(raw_data, "deflate", 10_000) == text
    assert inflate(gzip.compress(text), "gzip", 10_000) == text
    assert inflate(text, None, 10) == text
    assert inflate(text, "identity", 10) == text
    assert inflate(gzip.compress(zlib.compress(text)), "deflate, gzip", 10_000) == text


def test_inflate_bomb_is_refused_with_413() -> None:
    bomb = zlib.compress(b"\0" * 10_000_000)
    with pytest.raises(RemoteProtocolError) as info:
        inflate(bomb, "deflate", 1024)
    assert info.value.status_code == 413


@pytest.mark.parametrize(
    ("body", "coding", "status"),
    [
        (b"x", "br", 415),
        (b"not deflate at all", "deflate", 400),
        (zlib.compress(b"abc")[:-3], "deflate", 400),
    ],
)
def test_inflate_errors_carry_a_status(body: bytes, coding: str, status: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        inflate(body, coding, 1024)
    assert info.value.status_code == status


# -- handler decision and deadline -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, Decision(200)),
        (202, Decision(202)),
        (486, Decision(486)),
        ((603, "Declined"), Decision(603, "Declined")),
        (Decision(480, "Later"), Decision(480, "Later")),
    ],
)
def test_normalize_decision(value: object, expected: Decision) -> None:
    assert normalize_decision(value) == expected


@pytest.mark.parametrize("value", [100, 180, 408, 700, True, "200", (200,), (486, "bad\r\nX: y")])
def test_normalize_decision_refuses(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        normalize_decision(value)


def test_a_handler_answer_in_time_decides() -> None:
    outcome = outcome_of(486, None)
    assert outcome.decision == Decision(486)
    assert outcome.by_handler and outcome.error is None


def test_raising_or_invalid_handler_gets_500(caplog: pytest.LogCaptureFixture) -> None:
    error = RuntimeError("boom")
    outcome = outcome_of(None, error)
    assert outcome.decision.status == 500 and not outcome.by_handler
    assert outcome.error is error
    outcome = outcome_of("yes", None)
    assert outcome.decision.status == 500
    assert isinstance(outcome.error, TypeError)
    assert "raised" in caplog.text and "invalid decision" in caplog.text
