"""Writes made on the event loop's thread (InlineStore) beside the store writer's worker.

A write someone waits on (``written``, ``when_written``) goes inline when the worker is idle
and the store takes it without waiting; everything else keeps to the worker. These tests hold
the two paths to the same outcome: order, failures, durability before a 2xx, a bounded WAL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ua_helpers import RawPeer, ua_config

from sipimdn import UserAgent
from sipimdn.errors import StoreError
from sipimdn.imdn import build_im
from sipimdn.store import (
    Delete,
    InlineStore,
    MemoryStore,
    PeerRecord,
    PostgresStore,
    Put,
    Snapshot,
    SqliteStore,
    StoreOp,
)
from sipimdn.ua import IncomingMessage
from sipimdn.ua._persist import StoreWriter


def _peer(name: str, stamp: float = 0.0) -> PeerRecord:
    return PeerRecord(peer_key=f"sip:{name}@h", flags=(), updated_at=stamp, expires_at=1e12)


class _Recording(MemoryStore):
    """A MemoryStore logging each operation it applies with the thread that applied it.

    ``decline`` makes try_apply answer "would have to wait"; a Put of ``sip:bad@h`` fails.
    Overrides try_apply (still an InlineStore: apply is MemoryStore's own).
    """

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[StoreOp, int]] = []
        self.decline: list[bool] = []  # consumed one per try_apply call; empty: accept
        self.upkeeps = 0

    def _record(self, ops: Sequence[StoreOp]) -> None:
        if any(isinstance(op, Put) and op.record.key == "sip:bad@h" for op in ops):
            raise StoreError("bad record")
        self.log.extend((op, threading.get_ident()) for op in ops)

    def try_apply(self, ops: Sequence[StoreOp]) -> bool:
        if self.decline and self.decline.pop(0):
            return False
        self._record(ops)
        return super().try_apply(ops)

    @property
    def inline_writes(self) -> bool:
        return True  # also for _WorkerRecording, whose apply only logs


class _WorkerRecording(_Recording):
    """The same log for the worker's writes (apply)."""

    def apply(self, ops: Sequence[StoreOp]) -> None:
        self._record(ops)
        super().apply(ops)


async def test_a_write_waited_on_goes_inline_when_the_worker_is_idle() -> None:
    store = _WorkerRecording()
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: store)
    calls: list[str] = []
    writer.submit([Put(_peer("a"))])
    writer.when_written(lambda: calls.append("a"))
    assert calls == ["a"]  # applied and called back before returning
    assert [(op.record.key, thread) for op, thread in store.log] == [  # type: ignore[union-attr]
        ("sip:a@h", threading.get_ident())
    ]
    await asyncio.sleep(0)  # the next loop turn: inline again
    writer.submit([Put(_peer("b"))])
    await writer.written()
    assert store.log[-1][1] == threading.get_ident()
    assert writer.inline_writes == 2 and writer.writes == 2 and writer.failures == 0
    await writer.close()


async def test_a_write_waited_on_goes_to_the_worker_while_it_is_busy_or_the_turn_had_one() -> None:
    store = _WorkerRecording()
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: store)
    here = threading.get_ident()
    # A second write waited on in the same loop turn rides the worker (group commit).
    writer.submit([Put(_peer("a"))])
    writer.when_written(lambda: None)
    writer.submit([Put(_peer("b"))])
    second: list[str] = []
    writer.when_written(lambda: second.append("b"))
    assert second == []  # handed to the worker, not written here
    await writer.written()
    assert second == ["b"] and store.log[-1][1] != here
    # The worker busy with a read queued before: the write waits behind it, on the worker.
    release = threading.Event()
    read = asyncio.ensure_future(writer.read(release.wait, 5.0))
    await asyncio.sleep(0.01)
    writer.submit([Put(_peer("c"))])
    done: list[str] = []
    writer.when_written(lambda: done.append("c"))
    assert done == []
    release.set()
    await read
    await writer.written()
    assert done == ["c"] and store.log[-1][1] != here
    await writer.close()


async def test_a_store_that_would_wait_hands_the_write_to_the_worker() -> None:
    store = _WorkerRecording()
    store.decline = [True]
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: store)
    writer.submit([Put(_peer("a"))])
    await writer.written()
    assert [(op.record.key, t != threading.get_ident()) for op, t in store.log] == [  # type: ignore[union-attr]
        ("sip:a@h", True)
    ]
    await writer.close()


async def test_a_failing_inline_write_is_logged_counted_and_the_others_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _Recording()
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: store)
    writer.submit([Put(_peer("good1"))])
    writer.submit([Put(_peer("bad"))])
    writer.submit([Put(_peer("good2")), Delete("peer", "sip:good1@h")])
    calls: list[str] = []
    with caplog.at_level(logging.ERROR, logger="sipimdn.ua.store"):
        writer.when_written(lambda: calls.append("through"))
    assert calls == ["through"]  # a failed write counts as through, as on the worker
    assert writer.failures == 1
    assert "store write of 1 operation(s) failed" in caplog.text
    assert {p.peer_key for p in (await writer.load(0.0)).peers} == {"sip:good2@h"}
    assert all(thread == threading.get_ident() for _, thread in store.log)  # retried inline
    await writer.close()


async def test_stores_that_are_not_local_and_short_never_go_inline(tmp_path: Path) -> None:
    assert not hasattr(PostgresStore, "try_apply")  # network round trips: always the worker

    class Wrapped(MemoryStore):  # an apply of its own: the class cannot vouch for it
        def apply(self, ops: Sequence[StoreOp]) -> None:
            super().apply(ops)

    assert MemoryStore().inline_writes and not Wrapped().inline_writes
    with SqliteStore(":memory:") as memory, SqliteStore(str(tmp_path / "x.sqlite")) as disk:
        assert memory.inline_writes and isinstance(memory, InlineStore)
        assert not disk.inline_writes  # a file's commit may wait on the disk: asked for only
        assert disk.try_apply([Put(_peer("a"))]) is False and disk.load(0.0).peers == ()
    with SqliteStore(str(tmp_path / "y.sqlite"), inline_writes=True) as wal:
        assert wal.inline_writes
    with SqliteStore(":memory:", inline_writes=False) as declined:
        assert not declined.inline_writes
    # A store fencing its writes (several workers) reports the fence from the worker's writes.
    applied_on: list[int] = []

    class Spy(SqliteStore):
        def apply_owned(self, ops: Sequence[StoreOp]) -> tuple[StoreOp, ...]:
            applied_on.append(threading.get_ident())
            return super().apply_owned(ops)

    spy = Spy(":memory:")
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: spy)
    writer.on_fenced(lambda ops: None)
    writer.submit([Put(_peer("a"))])
    await writer.written()
    assert applied_on and threading.get_ident() not in applied_on
    await writer.close()


# -- order across the two paths, against a reference log ------------------------------------------

_KEYS = ("a", "b", "c", "bad")
# (key, put?): the bad record is only ever put (a later Delete in the same batch would spare it).
_op = st.one_of(st.tuples(st.sampled_from(_KEYS[:3]), st.booleans()), st.just(("bad", True)))
_action = st.one_of(
    st.tuples(st.just("submit"), st.lists(_op, min_size=1, max_size=3)),
    st.tuples(st.just("wait"), st.none()),
    st.tuples(st.just("written"), st.none()),
    st.tuples(st.just("block"), st.none()),
    st.tuples(st.just("release"), st.none()),
    st.tuples(st.just("turn"), st.none()),
    st.tuples(st.just("sleep"), st.none()),
    st.tuples(st.just("load"), st.none()),
    st.tuples(st.just("peek"), st.none()),
    st.tuples(st.just("decline"), st.lists(st.booleans(), max_size=3)),
)


def _key(op: StoreOp) -> str:
    return op.record.key if isinstance(op, Put) else op.key


def _bad(ops: Sequence[StoreOp]) -> bool:
    return any(isinstance(op, Put) and op.record.key == "sip:bad@h" for op in ops)


async def _run_order(actions: list[tuple[str, object]]) -> set[bool]:
    """Run ``actions`` against the reference; return which paths wrote (True: inline)."""
    store = _WorkerRecording()
    writer = StoreWriter(batch_delay=0.001)
    await writer.open(lambda: store)
    submissions: list[list[StoreOp]] = []
    index: dict[int, int] = {}  # id(op) -> its submission's number
    blocker: threading.Event | None = None
    blocked: asyncio.Future[bool] | None = None
    waited = 0
    problems: list[str] = []  # from callbacks (the writer logs what they raise)
    peeks: list[tuple[asyncio.Future[Snapshot], dict[str, float]]] = []

    def expected_state(upto: int) -> dict[str, float]:
        """The reference: the good submissions applied one by one, in order."""
        state: dict[str, float] = {}
        for number, ops in enumerate(submissions[:upto]):
            if _bad(ops):
                continue  # fails as a whole
            for op in ops:
                if isinstance(op, Put):
                    state[op.record.key] = number
                else:
                    state.pop(_key(op), None)
        return state

    def check_through(upto: int) -> None:
        """The newest operation applied on each record is no older than its newest in the
        first ``upto`` good submissions (a batch applies only each record's last)."""
        nonlocal waited
        waited -= 1
        latest: dict[str, int] = {}
        for op, _thread in store.log:
            latest[_key(op)] = index[id(op)]
        for number, ops in enumerate(submissions[:upto]):
            if not _bad(ops) and any(latest.get(_key(op), -1) < number for op in ops):
                problems.append(f"submission {number} not through for a waiter of {upto}")

    async def unblock() -> None:
        nonlocal blocker, blocked
        if blocker is not None and blocked is not None:
            blocker.set()
            await blocked
        blocker = blocked = None

    for kind, arg in actions:
        if kind == "submit":
            assert isinstance(arg, list)
            number = len(submissions)
            ops: list[StoreOp] = [
                Put(_peer(key, float(number))) if put else Delete("peer", f"sip:{key}@h") for key, put in arg
            ]
            for op in ops:
                index[id(op)] = number
            submissions.append(ops)
            writer.submit(ops)
        elif kind == "wait":
            waited += 1
            upto = len(submissions)
            writer.when_written(lambda upto=upto: check_through(upto))  # type: ignore[misc]
        elif kind == "written":
            await unblock()
            waited += 1
            await writer.written()
            check_through(len(submissions))
        elif kind == "block" and blocker is None:
            blocker = threading.Event()
            blocked = asyncio.ensure_future(writer.read(blocker.wait, 5.0))
        elif kind == "release":
            await unblock()
        elif kind == "turn":
            await asyncio.sleep(0)
        elif kind == "sleep":
            await asyncio.sleep(0.003)
        elif kind == "load":
            await unblock()
            # Runs after every write submitted before and before any submitted after: exact.
            loaded = {p.peer_key: p.updated_at for p in (await writer.load(0.0)).peers}
            assert loaded == expected_state(len(submissions))
        elif kind == "peek":
            # A load left running (behind a blocked worker, maybe) while writes go on: it
            # must see exactly what was submitted before it, none of what comes after.
            peek = asyncio.ensure_future(writer.load(0.0))
            await asyncio.sleep(0)  # started: queued on the worker now
            peeks.append((peek, expected_state(len(submissions))))
        elif kind == "decline":
            assert isinstance(arg, list)
            store.decline = list(arg)
    await unblock()
    for peek, expected in peeks:
        assert {p.peer_key: p.updated_at for p in (await peek).peers} == expected
    await writer.flush()
    assert problems == [] and waited == 0  # every waiter called, each after its writes
    # Same final state as the reference, each bad submission counted once, and the applied
    # operations in submission order across both threads.
    final = {p.peer_key: p.updated_at for p in (await writer.load(0.0)).peers}
    assert final == expected_state(len(submissions))
    assert writer.failures == sum(_bad(ops) for ops in submissions)
    numbers = [index[id(op)] for op, _ in store.log]
    assert numbers == sorted(numbers)
    await writer.close()
    here = threading.get_ident()
    return {thread == here for _, thread in store.log}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_action, max_size=25))
def test_inline_and_worker_writes_apply_in_submission_order(actions: list[tuple[str, object]]) -> None:
    asyncio.run(_run_order(actions))


def test_order_holds_with_both_paths_taken_and_a_decline_midway() -> None:
    """A fixed run through both paths: inline, the turn's second waiter on the worker, a write
    behind a read, a failing submission retried one by one with the store declining midway."""
    actions: list[tuple[str, object]] = [
        ("submit", [("a", True)]), ("wait", None), ("submit", [("b", True)]), ("wait", None),
        ("turn", None), ("block", None), ("submit", [("a", False), ("c", True)]), ("wait", None),
        ("release", None), ("turn", None), ("decline", [False, False, True]),
        ("submit", [("a", True)]), ("submit", [("bad", True)]), ("submit", [("b", False)]),
        ("wait", None), ("written", None), ("load", None),
    ]
    assert asyncio.run(_run_order(actions)) == {True, False}


def test_a_write_waited_on_never_overtakes_a_read_queued_before_it() -> None:
    actions: list[tuple[str, object]] = [
        ("submit", [("a", True)]), ("written", None), ("turn", None), ("block", None),
        ("peek", None), ("submit", [("b", True)]), ("wait", None), ("turn", None),
        ("submit", [("a", False)]), ("wait", None), ("release", None),
        ("peek", None), ("submit", [("c", True)]), ("wait", None), ("written", None),
    ]
    asyncio.run(_run_order(actions))


# -- SQLite: no waiting on the loop, checkpoints on the worker, a bounded WAL -------------------------


def _received_like(i: int) -> list[StoreOp]:
    # A few rows with indexes, as a received message's records are.
    return [Put(_peer(f"m{i}-{j}", float(i))) for j in range(3)]


def test_sqlite_try_apply_does_not_wait_for_another_process_holding_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sqlite")
    with SqliteStore(path, timeout=5.0, inline_writes=True) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another worker process would
        try:
            started = time.monotonic()
            assert store.try_apply([Put(_peer("a"))]) is False
            assert store.try_apply(_received_like(1)) is False
            assert time.monotonic() - started < 0.5  # not the 5 s busy timeout
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.try_apply([Put(_peer("a"))]) is True
        store.apply([Put(_peer("b"))])  # the waiting form still waits (its timeout is back)
        assert {p.peer_key for p in store.load(0.0).peers} == {"sip:a@h", "sip:b@h"}


def test_sqlite_try_apply_does_not_wait_for_another_thread() -> None:
    with SqliteStore(":memory:") as store:
        store._lock.acquire()  # another thread inside a store call (no public way to hold it)
        try:
            assert store.try_apply([Put(_peer("a"))]) is False
        finally:
            store._lock.release()
        assert store.try_apply([Put(_peer("a"))]) is True
        with pytest.raises(StoreError):
            store.try_apply([Put(_peer("a")), "not an operation"])  # type: ignore[list-item]
    with pytest.raises(StoreError):
        store.try_apply([Put(_peer("a"))])  # closed


async def test_busy_file_sends_the_write_to_the_worker_without_blocking_the_loop(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sqlite")
    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: SqliteStore(path, timeout=5.0, inline_writes=True))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    calls: list[str] = []
    started = time.monotonic()
    writer.submit([Put(_peer("a"))])
    writer.when_written(lambda: calls.append("a"))
    assert time.monotonic() - started < 0.5 and calls == []
    await asyncio.sleep(0.2)
    other.execute("ROLLBACK")  # the worker's busy wait gets the lock now
    other.close()
    await asyncio.wait_for(writer.written(), 5.0)
    assert calls == ["a"] and writer.failures == 0
    assert [p.peer_key for p in (await writer.load(0.0)).peers] == ["sip:a@h"]
    await writer.close()


async def test_wal_stays_bounded_with_checkpoints_on_the_worker(tmp_path: Path) -> None:
    path = str(tmp_path / "wal.sqlite")
    upkeep_threads: list[int] = []

    class Watched(SqliteStore):
        def upkeep(self) -> None:
            upkeep_threads.append(threading.get_ident())
            super().upkeep()

    writer = StoreWriter(batch_delay=10.0)
    await writer.open(lambda: Watched(path, inline_writes=True))
    largest = 0
    for i in range(3000):
        writer.submit(_received_like(i))
        await writer.written()
        await asyncio.sleep(0)  # next turn: the next one may go inline too
        if i % 100 == 0:
            largest = max(largest, os.path.getsize(path + "-wal"))
    assert writer.inline_writes > 2000  # (during a checkpoint the worker is busy: it writes)
    assert upkeep_threads and threading.get_ident() not in upkeep_threads
    # About 1000 frames of 4 KiB between checkpoints (SQLite's own default); 3000 commits of
    # three rows without checkpoints make a WAL several times that.
    largest = max(largest, os.path.getsize(path + "-wal"))
    assert largest < 8 << 20
    await writer.close()


def test_sqlite_inline_commits_never_checkpoint_and_upkeep_does(tmp_path: Path) -> None:
    path = str(tmp_path / "wal.sqlite")
    with SqliteStore(path, inline_writes=True) as store:
        for i in range(600):
            assert store.try_apply(_received_like(i))
        assert store.upkeep_due
        grown = os.path.getsize(path + "-wal")
        assert grown > 4 << 20  # past SQLite's automatic threshold, and not checkpointed
        store.upkeep()
        assert not store.upkeep_due
        for i in range(100):
            assert store.try_apply(_received_like(i))
        assert os.path.getsize(path + "-wal") == grown  # the checkpointed WAL is reused
        # The waiting path checkpoints by itself when due.
        for i in range(1000):
            store.apply(_received_like(i))
        assert not store.upkeep_due and os.path.getsize(path + "-wal") == grown


def test_sqlite_checkpoints_stay_due_when_commits_change_size(tmp_path: Path) -> None:
    """Calibrated on large batches (the worker under load), then small inline commits: the
    WAL still stays near SQLite's own threshold (a row in a small commit costs more frames)."""
    path = str(tmp_path / "wal.sqlite")
    with SqliteStore(path, inline_writes=True) as store:
        for i in range(40):
            store.apply([Put(_peer(f"big{i}-{j}", float(i))) for j in range(300)])
        largest = 0
        for i in range(3000):
            assert store.try_apply(_received_like(i))
            if store.upkeep_due:
                store.upkeep()  # (the writer queues it to its worker)
            if i % 50 == 0:
                largest = max(largest, os.path.getsize(path + "-wal"))
        assert largest < 8 << 20


# -- the user agent: a message's records are in the file before its 200 leaves --------------------


async def test_the_200_leaves_after_its_records_are_in_the_file_written_inline(tmp_path: Path) -> None:
    path = str(tmp_path / "bob.sqlite")
    inline_on: list[int] = []

    class Watched(SqliteStore):
        def try_apply(self, ops: Sequence[StoreOp]) -> bool:
            done = super().try_apply(ops)
            if done:
                inline_on.append(threading.get_ident())
            return done

    store = Watched(path, inline_writes=True)
    raw = await RawPeer.open()
    at_200: list[list[str]] = []
    original = raw.datagram_received

    def on_datagram(data: bytes, addr: tuple[str | object, int]) -> None:
        if data.startswith(b"SIP/2.0 200"):
            # Another connection, as a restarted process would read the file.
            reader = sqlite3.connect(path)
            try:
                at_200.append([
                    f"{table} {row[0]}" for table in ("seen", "received", "owed")
                    for row in reader.execute(f"SELECT key FROM {table}")
                ])
            finally:
                reader.close()
        original(data, addr)  # type: ignore[arg-type]

    raw.datagram_received = on_datagram  # type: ignore[method-assign]
    try:
        async with UserAgent(ua_config("bob"), store=store) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                pass

            host, port = bob.endpoints[0].host, bob.endpoints[0].port
            sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
            for message_id in ("d1", "d2"):
                body = build_im(from_=sender, to=bob.aor, body=b"x", now=time.time(),
                                message_id=message_id, notify=["positive-delivery"]).to_bytes()
                data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="message/cpim", body=body)
                assert (await raw.transact(data, branch, (host, port))).status_code == 200
                imdn = await asyncio.wait_for(raw.requests.get(), 5.0)
                assert imdn.method == "MESSAGE"
        # At each 200: the message's dedup entry and the delivery notification it owes.
        assert len(at_200) == 2
        for number, keys in enumerate(at_200, 1):
            assert f"seen sip:raw@127.0.0.1 d{number}" in keys
            assert sum(key.startswith("owed ") for key in keys) == number
        assert inline_on and set(inline_on) == {threading.get_ident()}
    finally:
        raw.close()
        store.close()
