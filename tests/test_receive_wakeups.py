"""Loop wake-ups and tasks of the receive path: the stack's timer slots, the UA's handler
deadlines and the store writer's callback group commit.

Under steady load every answered MESSAGE leaves a Timer J behind (and, in the user agent, a
handler deadline). Without coalescing, each would wake the event loop on its own a few ms after
the previous one; these tests pin the mechanisms that share wake-ups, and that no deadline is
ever run early or skipped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from ua_helpers import RawPeer, ua_config

from sipimdn import UserAgent
from sipimdn.dialog.factory import build_request
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import TransactionTimeout
from sipimdn.headers import NameAddr
from sipimdn.imdn import build_im
from sipimdn.stack import SipStack
from sipimdn.store import MemoryStore, PeerRecord, Put, StoreOp
from sipimdn.ua import IncomingMessage
from sipimdn.ua._deadline import DeadlineQueue
from sipimdn.ua._persist import StoreWriter
from sipimdn.uri import Uri


async def test_stack_loop_timer_is_armed_on_a_slot_never_before_the_deadline() -> None:
    async with SipStack() as stack:
        assert stack.timer_slot == stack.timers.t1 / 25
        slot = stack.timer_slot
        deadlines = iter([100.001, 100.0005, 99.99])
        stack.layer.get_timer = lambda: next(deadlines)  # type: ignore[method-assign]
        stack._arm_timer()
        first = stack._timer.at
        assert first is not None and first >= 100.001 and first - 100.001 < slot + 1e-9
        # A deadline in the same slot leaves the armed timer alone (shared wake-up).
        stack._arm_timer()
        assert stack._timer.at == first
        # An earlier slot moves it earlier.
        stack._arm_timer()
        at = stack._timer.at
        assert at is not None and 99.99 <= at < first
        stack._timer.cancel()


async def test_stack_timer_slot_zero_keeps_exact_deadlines() -> None:
    async with SipStack(timers=TimerConfig(t1=0.5)) as stack:
        stack.timer_slot = 0
        stack.layer.get_timer = lambda: 123.4567  # type: ignore[method-assign]
        stack._arm_timer()
        assert stack._timer.at == 123.4567
        stack._timer.cancel()


async def test_stack_timers_still_run_with_slots() -> None:
    # A request nobody answers: Timer E retransmits and Timer F ends it, through slotted wake-ups.
    async with SipStack(timers=TimerConfig(t1=0.02, t2=0.08, t4=0.1)) as a:
        assert a.timer_slot > 0
        loop = asyncio.get_running_loop()
        sink = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transport = sink[0]
        try:
            port = transport.get_extra_info("sockname")[1]
            target = Uri.parse(f"sip:b@127.0.0.1:{port}")
            request = build_request(
                "MESSAGE", target, NameAddr(Uri.parse("sip:a@127.0.0.1")), NameAddr(target)
            )
            started = loop.time()
            try:
                async with asyncio.timeout(5):
                    await a.send_request(request)
            except TransactionTimeout:
                pass
            else:  # pragma: no cover
                raise AssertionError("expected Timer F")
            elapsed = loop.time() - started
            assert elapsed >= 64 * 0.02  # Timer F never early
            assert a.layer.transaction_count == 0
        finally:
            transport.close()


async def test_deadline_queue_drops_settled_items_without_waking_for_them() -> None:
    fired: list[int] = []
    settled: set[int] = set()
    queue: DeadlineQueue[int] = DeadlineQueue(0.05, fired.append, settled=settled.__contains__)
    for i in range(5):
        queue.add(i)
    settled.update({0, 1, 3})
    await asyncio.sleep(0.02)
    queue.add(5)
    settled.add(5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    while len(fired) < 2 and loop.time() - start < 2.0:
        await asyncio.sleep(0.01)
    assert fired == [2, 4]  # only the items still waiting expired, in order
    await asyncio.sleep(0.02)
    # 5 was settled: it was dropped at the last run, before its deadline, and no timer is left.
    assert len(queue) == 0 and queue._handle is None and fired == [2, 4]
    queue.close()


async def test_deadline_queue_rearms_for_the_first_item_still_waiting() -> None:
    fired: list[int] = []
    settled: set[int] = set()
    queue: DeadlineQueue[int] = DeadlineQueue(0.05, fired.append, settled=settled.__contains__)
    queue.add(0)
    await asyncio.sleep(0.03)
    queue.add(1)  # due 30 ms after 0
    settled.add(0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not fired and loop.time() - start < 2.0:
        await asyncio.sleep(0.005)
    assert fired == [1]
    assert loop.time() - start >= 0.04  # 1 kept its own full delay (0 was dropped, not 1 fired early)
    queue.close()


async def test_deadline_queue_discard_forgets_an_item_at_once() -> None:
    fired: list[int] = []
    queue: DeadlineQueue[int] = DeadlineQueue(0.05, fired.append)
    for i in range(4):
        queue.add(i)
    queue.discard(0)
    queue.discard(2)
    queue.discard(7)  # never added: nothing
    assert len(queue) == 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    while len(fired) < 2 and loop.time() - start < 2.0:
        await asyncio.sleep(0.01)
    assert fired == [1, 3]
    assert len(queue) == 0 and queue._handle is None
    queue.close()


async def test_deadline_queue_expiry_may_discard_or_add_items() -> None:
    # Items due together expire in order; one an earlier expiry discarded does not, and an item
    # added by an expiry gets its own full delay under one timer.
    fired: list[int] = []

    def on_expiry(item: int) -> None:
        fired.append(item)
        if item == 0:
            queue.discard(1)
            queue.add(9)

    queue: DeadlineQueue[int] = DeadlineQueue(0.03, on_expiry)

    for i in range(3):
        queue.add(i)
    loop = asyncio.get_running_loop()
    start = loop.time()
    while len(fired) < 3 and loop.time() - start < 2.0:
        await asyncio.sleep(0.005)
    assert fired == [0, 2, 9]
    assert loop.time() - start >= 0.055
    assert len(queue) == 0 and queue._handle is None
    queue.close()


def _peer(name: str) -> PeerRecord:
    return PeerRecord(peer_key=f"sip:{name}@h", flags=("no-imdn",), updated_at=0.0, expires_at=1e12)


class _GatedStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.applied: list[int] = []

    def apply(self, ops: Sequence[StoreOp]) -> None:
        self.gate.wait(5)
        self.applied.append(len(ops))
        super().apply(ops)


async def test_when_written_calls_back_after_the_batch_in_order_without_a_task() -> None:
    store = _GatedStore()
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: store)
    calls: list[str] = []
    writer.when_written(lambda: calls.append("idle"))
    assert calls == ["idle"]  # nothing outstanding: at once
    store.gate.clear()
    writer.submit([Put(_peer("a"))])
    writer.when_written(lambda: calls.append("a"))  # starts the batch at once (no batch_delay)

    def failing() -> None:
        raise RuntimeError("boom")

    writer.when_written(failing)
    writer.submit([Put(_peer("b"))])  # buffered behind the batch in flight
    writer.when_written(lambda: calls.append("b"))
    await asyncio.sleep(0.05)
    assert calls == ["idle"]  # the store has not written "a" yet
    store.gate.set()
    for _ in range(200):
        if len(calls) == 3:
            break
        await asyncio.sleep(0.01)
    assert calls == ["idle", "a", "b"]  # the failing callback stranded nobody
    assert {p.peer_key for p in (await writer.load(0.0)).peers} == {"sip:a@h", "sip:b@h"}
    await writer.written()  # the awaitable form still works
    await writer.close()
    writer.when_written(lambda: calls.append("closed"))
    assert calls[-1] == "closed"


async def _send_ims(bob: UserAgent, raw: RawPeer, ids: list[str]) -> list[int]:
    host, port = bob.endpoints[0].host, bob.endpoints[0].port
    sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
    statuses = []
    for message_id in ids:
        im = build_im(from_=sender, to=bob.aor, body=b"x", now=time.time(), message_id=message_id)
        body = im.to_bytes()
        data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="message/cpim", body=body)
        statuses.append((await raw.transact(data, branch, (host, port))).status_code)
    return statuses


async def test_handler_tasks_end_however_they_end_and_a_late_one_is_not_protocol_work() -> None:
    raw = await RawPeer.open()
    bob = UserAgent(ua_config("bob", handler_deadline=0.2, close_grace=5.0))
    try:
        await bob.start()
        before = asyncio.all_tasks()
        cancelled = asyncio.Event()

        @bob.on_message
        async def handler(message: IncomingMessage) -> int:
            if message.message_id == "boom":
                raise RuntimeError("handler bug")
            if message.message_id == "slow":
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            return 202 if message.message_id == "queued" else 200

        assert await _send_ims(bob, raw, ["ok", "queued", "boom", "slow"]) == [200, 202, 500, 202]
        # "slow" missed its deadline (the stack answered deadline_status) and still runs; the
        # others' tasks are gone, however they ended.
        assert len(asyncio.all_tasks() - before) == 1
        # Answered, it is no longer protocol work: close() gives it no close_grace but cancels it.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await bob.close()
        assert loop.time() - started < 2.0
        assert cancelled.is_set() and not asyncio.all_tasks() - before
    finally:
        await bob.close()
        raw.close()
