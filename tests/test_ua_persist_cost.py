"""What the receive path writes to the store, and how the writer batches it.

One store write per received message at most: dedup entries of messages that asked for no
notification stay in memory (this run only), a message owed a notification is written once
per batch (its reception and answer coalesced), and a busy writer gathers what arrives while
it writes into one next batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from ua_helpers import RawPeer, ua_config

from sipimdn import UserAgent
from sipimdn.imdn import build_im
from sipimdn.store import Delete, MemoryStore, PeerRecord, Put, StoreOp
from sipimdn.ua import IncomingMessage
from sipimdn.ua._deadline import DeadlineQueue
from sipimdn.ua._persist import StoreWriter, coalesce


def _peer(name: str, flags: tuple[str, ...] = ("no-imdn",)) -> PeerRecord:
    return PeerRecord(peer_key=f"sip:{name}@h", flags=flags, updated_at=0.0, expires_at=100.0)


class _CountingStore(MemoryStore):
    """A MemoryStore recording every apply call's operations."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[StoreOp]] = []
        self.gate = threading.Event()
        self.gate.set()

    def apply(self, ops: Sequence[StoreOp]) -> None:
        self.gate.wait(5.0)
        self.calls.append(list(ops))
        super().apply(ops)


def test_coalesce_keeps_the_last_operation_of_each_record_in_order() -> None:
    a1, b, a2 = Put(_peer("a")), Put(_peer("b")), Put(_peer("a", ()))
    gone = Delete("peer", "sip:b@h")
    assert coalesce([a1, b, a2]) == [b, a2]
    assert coalesce([a1, b, gone]) == [a1, gone]
    assert coalesce([gone, b]) == [b]
    assert coalesce([a1]) == [a1] and coalesce([]) == []


async def test_writes_arriving_while_a_batch_is_written_go_as_one_batch() -> None:
    store = _CountingStore()
    writer = StoreWriter(batch_delay=0.001)
    await writer.open(lambda: store)
    store.gate.clear()  # the worker blocks inside the first batch
    writer.submit([Put(_peer("first"))])
    await asyncio.sleep(0.05)
    for i in range(20):
        writer.submit([Put(_peer(f"p{i}"))])
        await asyncio.sleep(0.002)  # each one past batch_delay: without gating, 20 batches
    store.gate.set()
    await writer.flush()
    assert [len(ops) for ops in store.calls] == [1, 20]
    assert len((await writer.load(0.0)).peers) == 21
    await writer.close()


async def test_load_sees_writes_buffered_behind_a_batch_in_flight() -> None:
    store = _CountingStore()
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: store)
    store.gate.clear()
    writer.submit([Put(_peer("a"))])
    writer._send_now()
    writer.submit([Put(_peer("b"))])  # buffered, the worker busy with "a"
    store.gate.set()
    assert {p.peer_key for p in (await writer.load(0.0)).peers} == {"sip:a@h", "sip:b@h"}
    await writer.close()


async def test_deadline_queue_fires_in_order_with_one_timer() -> None:
    fired: list[int] = []
    queue: DeadlineQueue[int] = DeadlineQueue(0.05, fired.append)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(5):
        queue.add(i)
    await asyncio.sleep(0.02)
    queue.add(5)
    assert fired == [] and len(queue) == 6
    while len(fired) < 6 and loop.time() - start < 2.0:
        await asyncio.sleep(0.01)
    assert fired == [0, 1, 2, 3, 4, 5]
    assert loop.time() - start >= 0.07  # the late one kept its own full delay
    queue.add(6)
    queue.close()
    await asyncio.sleep(0.1)
    assert fired == [0, 1, 2, 3, 4, 5] and len(queue) == 0


async def _send_ims(bob: UserAgent, raw: RawPeer, notify: list[str], ids: list[str]) -> list[int]:
    host, port = bob.endpoints[0].host, bob.endpoints[0].port
    sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
    statuses = []
    for message_id in ids:
        body = build_im(
            from_=sender, to=bob.aor, body=b"x", now=time.time(), message_id=message_id, notify=notify
        ).to_bytes()
        data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="message/cpim", body=body)
        statuses.append((await raw.transact(data, branch, (host, port))).status_code)
    return statuses


async def test_dedup_of_messages_owed_nothing_is_not_written_but_still_works() -> None:
    store = _CountingStore()
    seen: list[str] = []
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob"), store=store) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                seen.append(message.message_id or "")

            assert await _send_ims(bob, raw, [], ["q1", "q2", "q1"]) == [200, 200, 200]
            assert seen == ["q1", "q2"]  # the resend of q1 was recognised, in memory
            await bob.flush()
            written = [op for ops in store.calls for op in ops]
            assert written == []  # nothing owed: nothing a restart needs
            # Owed a display notification: its dedup entry and reception are written, once each.
            assert await _send_ims(bob, raw, ["display"], ["n1"]) == [200]
            await bob.flush()
            written = [op for ops in store.calls for op in ops]
            tables = sorted(op.record.TABLE for op in written if isinstance(op, Put))
            assert tables == ["received", "seen"]
            seen_puts = [op.record for op in written if isinstance(op, Put) and op.record.TABLE == "seen"]
            assert [getattr(r, "status", None) for r in seen_puts] == [200]  # the answered state
        snapshot = store.load(time.time())
        assert [r.message_id for r in snapshot.seen] == ["n1"]
        assert [r.message_id for r in snapshot.received] == ["n1"]
    finally:
        raw.close()


async def test_answer_waits_for_the_store_and_the_imdn_waits_for_the_answer() -> None:
    """A message owed a notification is answered only once its records are written (a crash
    after the 2xx must not lose what the 2xx promised), and its IMDN never overtakes that 2xx."""
    store = _CountingStore()
    raw = await RawPeer.open()
    arrivals: list[str] = []
    original = raw.datagram_received

    def record(data: bytes, addr: tuple[str | object, int]) -> None:
        arrivals.append(data.split(b"\r\n", 1)[0].decode())
        original(data, addr)  # type: ignore[arg-type]

    raw.datagram_received = record  # type: ignore[method-assign]
    try:
        async with UserAgent(ua_config("bob"), store=store) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                pass

            host, port = bob.endpoints[0].host, bob.endpoints[0].port
            sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
            body = build_im(from_=sender, to=bob.aor, body=b"x", now=time.time(), message_id="d1",
                            notify=["positive-delivery"]).to_bytes()
            data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="message/cpim", body=body)
            store.gate.clear()  # the store stalls: nothing is durable yet
            answer = asyncio.ensure_future(raw.transact(data, branch, (host, port), timeout=5.0))
            await asyncio.sleep(0.4)
            assert not answer.done()
            assert [a for a in arrivals if not a.startswith("SIP/2.0 100")] == []
            store.gate.set()
            assert (await answer).status_code == 200
            imdn = await asyncio.wait_for(raw.requests.get(), 5.0)
            assert imdn.method == "MESSAGE"
            finals = [a for a in arrivals if not a.startswith("SIP/2.0 100")]
            assert finals[0] == "SIP/2.0 200 OK" and finals[1].startswith("MESSAGE ")
            written = [op.record.TABLE for ops in store.calls for op in ops if isinstance(op, Put)]
            assert "owed" in written  # what the 2xx promised was durable first
    finally:
        raw.close()


async def test_written_waits_for_earlier_writes_only_and_commits_as_a_group() -> None:
    store = _CountingStore()
    writer = StoreWriter(batch_delay=10.0)  # no timed batch: only written() moves the writes
    await writer.open(lambda: store)
    await writer.written()  # nothing submitted: returns at once
    writer.submit([Put(_peer("a"))])
    await asyncio.wait_for(writer.written(), 2.0)  # idle worker: written now, not in 10 s
    assert [len(ops) for ops in store.calls] == [1]
    # The worker busy on "b": c, d and e each wait, and go together as the next batch.
    store.gate.clear()
    writer.submit([Put(_peer("b"))])
    first = asyncio.ensure_future(writer.written())
    await asyncio.sleep(0.05)
    waiters = []
    for name in "cde":
        writer.submit([Put(_peer(name))])
        waiters.append(asyncio.ensure_future(writer.written()))
    await asyncio.sleep(0.05)
    assert not first.done() and not any(w.done() for w in waiters)
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiters), 2.0)
    assert [len(ops) for ops in store.calls] == [1, 1, 3]
    await writer.close()


async def test_written_is_not_starved_by_a_steady_stream_of_writes() -> None:
    store = _CountingStore()
    writer = StoreWriter(batch_delay=0.001)
    await writer.open(lambda: store)
    stop = asyncio.Event()

    async def stream() -> None:
        i = 0
        while not stop.is_set():
            writer.submit([Put(_peer(f"s{i}"))])
            i += 1
            await asyncio.sleep(0)

    producer = asyncio.ensure_future(stream())
    try:
        await asyncio.sleep(0.02)
        writer.submit([Put(_peer("mine"))])
        await asyncio.wait_for(writer.written(), 2.0)
        assert any(isinstance(op, Put) and op.record.key == "sip:mine@h" for ops in store.calls for op in ops)
    finally:
        stop.set()
        await producer
        await writer.close()
