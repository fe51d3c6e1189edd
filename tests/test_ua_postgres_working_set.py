"""The bounded working set with a PostgreSQL store (tests/_postgres.py).

Sent records leave memory with PostgreSQL too: a notification about one is kept in the store
for the worker owning the record (whichever worker received it, that one included), which
reads the record back and applies it. A restarted worker loads only its working set, of the
records it owns; a survivor taking over a stopped worker's records never holds more than the cap.
test_ua_working_set.py is the SQLite version; test_ua_workers.py has the other shared paths.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_store import sent
from test_ua_workers import LEASE, answer, dest, next_request, worker
from ua_helpers import RawPeer, ua_config

from sipimdn import UserAgent, cpim, imdn
from sipimdn.errors import StoreError
from sipimdn.events import DispositionState
from sipimdn.store import Put, SentRecord
from sipimdn.store.postgres import PostgresStore
from sipimdn.ua import IncomingMessage, SentMessage

CAP = 20
BOTH = ("positive-delivery", "display")
#: The notification budgets per destination (RFC 5438 §14) lifted: one sender sends a hundred.
UNLIMITED = {"imdn_rate_limit": 10**6, "imdn_byte_budget": 10**9}
DELIVERED, DISPLAYED = DispositionState.DELIVERED, DispositionState.DISPLAYED


async def wait_for(condition: object, timeout: float) -> None:
    """Poll ``condition()`` (bounded) until true."""
    end = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_evicted_sent_records_correlate_on_postgres(postgres_url: str) -> None:
    """Alice (PostgreSQL, cap 20) sends 100 messages; their delivery and, later, display
    notifications correlate although most of her records left memory."""
    received: list[IncomingMessage] = []
    store = PostgresStore(postgres_url, worker_id="alice-1")
    try:
        async with (
            asyncio.timeout(90),
            UserAgent(ua_config("bob", **UNLIMITED)) as bob,
            UserAgent(ua_config("alice", working_set_max=CAP), store=store) as alice,
        ):

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                received.append(message)

            handles = await asyncio.gather(
                *(alice.send_message(bob.aor, f"m{n}", notify=BOTH) for n in range(100))
            )
            await wait_for(lambda: all(h.state is DELIVERED for h in handles), 30)
            stats = alice.stats()
            assert stats.working_set_evictions >= 80 and alice.tracker.tracked_sent <= CAP
            assert len(store.load_own(time.time()).sent) == 100  # the store holds them all
            first = handles[0]
            assert alice.tracker.sent(first.message_id) is None
            reads = alice.stats().working_set_reads
            assert await bob.mark_displayed(received[0].message_id or "") is True
            # Kept in the store for the record's owner (alice herself), read back, applied.
            assert await first.await_disposition("displayed", timeout=10) is DISPLAYED
            assert alice.stats().working_set_reads > reads
            assert alice.stats().notifications_rejected == 0
    finally:
        store.close()


@pytest.mark.parametrize("read_fails", [False, True], ids=["read", "first-read-fails"])
async def test_a_notification_forwarded_from_another_worker_reads_the_record_back(
    postgres_url: str, read_fails: bool
) -> None:
    """w1 (cap 5) sends 15 messages; a display notification about an early, evicted one lands on
    w2: forwarded to w1, which reads the record back and applies it. When that read fails, the
    notification stays in the store and is applied on a later lease tick."""
    raw = await RawPeer.open()
    store = PostgresStore(postgres_url, worker_id="w1", lease=LEASE)
    reads = {"failed": 0}
    load_sent = store.load_sent

    def flaky_load_sent(message_id: str, now: float) -> SentRecord | None:
        if read_fails and not reads["failed"] and message_id == handles[0].message_id:
            reads["failed"] += 1
            raise StoreError("store read failed: connection lost (simulated)")
        return load_sent(message_id, now)

    store.load_sent = flaky_load_sent  # type: ignore[method-assign]
    handles: list[SentMessage] = []
    try:
        async with (
            asyncio.timeout(60),
            UserAgent(ua_config("alice", worker_lease=LEASE, working_set_max=5), store=store) as w1,
            worker(postgres_url, "w2", aor="alice", working_set_max=5) as w2,
        ):
            target = f"sip:bob@{raw.address[0]}:{raw.address[1]}"
            bodies = {}
            for n in range(15):
                handles.append(await w1.send_message(target, f"m{n}", notify={"display"}))
                request = await next_request(raw)
                answer(raw, request, dest(w1))
                bodies[handles[-1].message_id] = request.body
            await wait_for(lambda: w1.stats().working_set_evictions >= 10, 10)
            first = handles[0]
            assert w1.tracker.sent(first.message_id) is None
            before = w1.stats().working_set_reads
            report = imdn.build_imdn(
                cpim.parse(bodies[first.message_id]), kind="display", status="displayed", now=time.time()
            ).to_bytes()
            data, branch = raw.request_bytes(
                "MESSAGE", w2.aor, from_uri=target, content_type="message/cpim", body=report
            )
            assert (await raw.transact(data, branch, dest(w2))).status_code == 200
            assert await first.await_disposition("displayed", timeout=10) is DISPLAYED
            assert w1.stats().working_set_reads > before
            assert reads["failed"] == (1 if read_fails else 0)
            assert w1.stats().notifications_rejected == 0
            assert w2.tracker.sent(first.message_id) is None  # never w2's to track
    finally:
        store.close()
        raw.close()


async def test_a_restarted_worker_loads_its_own_working_set_only(postgres_url: str) -> None:
    async with asyncio.timeout(60), UserAgent(ua_config("bob", auto_delivery=False, **UNLIMITED)) as bob:

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            pass

        async with worker(postgres_url, "w1", aor="alice", working_set_max=CAP) as w1:
            await asyncio.gather(*(w1.send_message(bob.aor, f"m{n}", notify=BOTH) for n in range(100)))
            await wait_for(lambda: w1.stats().working_set_evictions >= 80, 20)
        async with worker(postgres_url, "w1", aor="alice", working_set_max=CAP) as again:
            assert again.tracker.tracked_sent == CAP  # of 100 in the store
            assert len(again.tracker.leased_keys("sent")) == CAP
        # Another worker resumes none of them (w1's, until its lease runs out).
        async with worker(postgres_url, "w2", aor="alice", working_set_max=CAP) as other:
            assert other.tracker.tracked_sent == 0


async def test_a_take_over_is_bounded_by_the_cap(postgres_url: str) -> None:
    """A stopped worker left 200 awaited messages; the survivor owns them all in the end, never
    holding more than the cap of them in memory."""
    now = time.time()
    dead = PostgresStore(postgres_url, worker_id="dead", lease=0.3)
    try:
        dead.apply([Put(sent(f"d{n}", expires_at=now + 3600 + n)) for n in range(200)])
    finally:
        dead.close()
    check = PostgresStore(postgres_url, worker_id="dead")
    try:
        async with (
            asyncio.timeout(60),
            worker(postgres_url, "survivor", aor="alice", working_set_max=CAP) as ua,
        ):
            most = 0
            end = time.monotonic() + 30
            while check.load_own(time.time()).sent:
                most = max(most, ua.tracker.tracked_sent)
                assert time.monotonic() < end, "not taken over in time"
                await asyncio.sleep(0.1)
            # The last batch is committed before the survivor's loop adopts it.
            await wait_for(lambda: ua.stats().working_set_evictions >= 200 - CAP, 10)
            assert most <= CAP and ua.tracker.tracked_sent <= CAP
            survivor = PostgresStore(postgres_url, worker_id="survivor")
            try:
                assert len(survivor.load_own(time.time()).sent) == 200
            finally:
                survivor.close()
    finally:
        check.close()
