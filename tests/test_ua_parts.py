"""The user agent's store writer and send handle, driven directly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from sipimdn.events import DispositionState, NotificationSent
from sipimdn.store import MemoryStore, PeerRecord, Put, Snapshot, StoreOp
from sipimdn.ua._persist import StoreWriter
from sipimdn.ua.outgoing import SentMessage, reached

S = DispositionState


def _peer(name: str, now: float = 0.0) -> PeerRecord:
    return PeerRecord(peer_key=f"sip:{name}@h", flags=("no-imdn",), updated_at=now, expires_at=now + 100.0)


class _ThreadRecordingStore(MemoryStore):
    """A MemoryStore noting which thread each call ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.applies = 0

    def apply(self, ops: Sequence[StoreOp]) -> None:
        self.threads.add(threading.get_ident())
        self.applies += 1
        super().apply(ops)

    def load(self, now: float) -> Snapshot:
        self.threads.add(threading.get_ident())
        return super().load(now)


async def test_store_writer_applies_in_order_off_the_loop() -> None:
    store = _ThreadRecordingStore()
    writer = StoreWriter()
    await writer.open(lambda: store)
    for i in range(50):
        writer.submit([Put(_peer(f"p{i}"))])
    writer.submit([Put(PeerRecord(peer_key="sip:p0@h", flags=(), updated_at=1.0, expires_at=100.0))])
    await writer.flush()
    snapshot = await writer.load(0.0)
    peers = {p.peer_key: p for p in snapshot.peers}
    assert len(peers) == 50
    assert peers["sip:p0@h"].flags == ()  # the later write won: order kept
    assert threading.get_ident() not in store.threads
    assert len(store.threads) == 1
    assert store.applies < 51  # batched: far fewer store transactions than submissions
    await writer.close()
    with pytest.raises(RuntimeError):
        writer.submit([Put(_peer("late"))])


async def test_store_writer_logs_a_failing_write_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(MemoryStore):
        def apply(self, ops: Sequence[StoreOp]) -> None:
            if any(isinstance(op, Put) and op.record.key == "sip:bad@h" for op in ops):
                raise OSError("disk full")
            super().apply(ops)

    store = Failing()
    writer = StoreWriter()
    await writer.open(lambda: store)
    writer.submit([Put(_peer("bad"))])
    writer.submit([Put(_peer("good"))])
    await writer.flush()
    assert writer.failures == 1
    assert "store write" in caplog.text
    assert [p.peer_key for p in (await writer.load(0.0)).peers] == ["sip:good@h"]
    await writer.close()


def test_reached_follows_the_positive_chain_only() -> None:
    assert reached(S.DISPLAYED, S.DELIVERED)
    assert reached(S.DELIVERED, S.ACCEPTED)
    assert not reached(S.ACCEPTED, S.DELIVERED)
    assert reached(S.FAILED, S.FAILED)
    assert not reached(S.FAILED, S.ACCEPTED)
    assert not reached(S.EXPIRED, S.DELIVERED)


async def test_sent_message_await_disposition() -> None:
    handle = SentMessage(message_id="m1", to="sip:bob@h", notify=frozenset({"display"}))
    waiter = asyncio.ensure_future(handle.await_disposition("delivered", timeout=1.0))
    await asyncio.sleep(0)
    handle._set_state(S.ACCEPTED)
    await asyncio.sleep(0)
    assert not waiter.done()
    handle._set_state(S.DISPLAYED)  # displayed implies delivered
    assert await waiter == S.DISPLAYED
    assert handle.reached("delivered")
    with pytest.raises(TimeoutError):
        await SentMessage(message_id="m2", to="sip:bob@h", notify=frozenset()).await_disposition(
            "delivered", timeout=0.01
        )


async def test_sent_message_failure_settles_waiters_and_response() -> None:
    handle = SentMessage(message_id="m1", to="sip:bob@h", notify=frozenset({"display"}))
    waiter = asyncio.ensure_future(handle.await_disposition("displayed", timeout=1.0))
    await asyncio.sleep(0)
    handle._set_state(S.FAILED)
    assert await waiter == S.FAILED
    assert not handle.reached("displayed")
    handle._set_failure(TimeoutError("no answer"))
    assert handle.response_done
    with pytest.raises(TimeoutError):
        await handle.final_response()


def test_notification_sent_is_a_frozen_event() -> None:
    event = NotificationSent(
        notification_id="n",
        message_id="m",
        kind="delivery",
        status="delivered",
        to="sip:a@h",
        sip_status=200,
        attempt=1,
    )
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]
