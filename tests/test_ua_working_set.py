"""The working set on loopback: two user agents on SQLite files with a small ``working_set_max``.

Alice sends thousands of messages asking for delivery and display; bob answers them and his
delivery notifications reach her, so both sides end with thousands of records that only await
a display notification: at most the cap of them stay in memory. Marking an early (evicted)
message displayed later reads bob's record back, and the display notification reaches alice,
whose record of it was evicted too and is read back: it correlates, the events fire. A copy of an
evicted message is still a duplicate, never handed to the application again. Restarted, a user
agent loads only its working set; the deadline of an evicted sent message is still reported.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ua_helpers import Recorder, ua_config

from sipimdn import UserAgent, cpim
from sipimdn.dialog.factory import build_request
from sipimdn.events import DispositionChanged, DispositionState, TrackingEnded
from sipimdn.stack import SipStack
from sipimdn.store import SqliteStore
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage, SentMessage

CAP = 200
COUNT = 2000
BOTH = ("positive-delivery", "display")
#: The notification budgets per destination (RFC 5438 §14) lifted: one sender sends thousands.
UNLIMITED = {"imdn_rate_limit": 10**6, "imdn_byte_budget": 10**9}


async def wait_for(condition: object, timeout: float) -> None:
    """Poll ``condition()`` (bounded) until true."""
    end = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_evicted_records_are_read_back_and_correlate(tmp_path: Path) -> None:
    alice_store, bob_store = str(tmp_path / "alice.sqlite"), str(tmp_path / "bob.sqlite")
    received: list[IncomingMessage] = []
    dispositions = Recorder()
    alice = UserAgent(ua_config("alice", store_path=alice_store, working_set_max=CAP))
    bob = UserAgent(ua_config("bob", store_path=bob_store, working_set_max=CAP, **UNLIMITED))
    alice.on_disposition(dispositions)

    @bob.on_message
    async def receive(message: IncomingMessage) -> None:
        received.append(message)

    async with asyncio.timeout(120), alice, bob:
        handles: list[SentMessage] = []
        for start in range(0, COUNT, 100):
            batch = [alice.send_message(bob.aor, f"m{n}", notify=BOTH) for n in range(start, start + 100)]
            handles.extend(await asyncio.gather(*batch))
            await wait_for(lambda: alice.stats().notifications_accepted >= len(handles), 30)
        await wait_for(lambda: bob.tracker.owed_count == 0, 10)
        assert len(received) == COUNT
        for ua in (alice, bob):
            stats = ua.stats()
            assert stats.working_set_evictions >= COUNT - CAP - 10
            assert stats.tracked_messages <= CAP and stats.tracked_received <= CAP
        await bob.flush()
        with SqliteStore(bob_store) as store:
            assert len(store.load(time.time()).received) == COUNT  # the store holds them all

        # An early message, evicted on both sides: marked displayed by Message-ID alone (the
        # store's Message-ID index) and through the IncomingMessage (sender given).
        first, second = received[0], received[1]
        assert first.message_id is not None and second.message_id is not None
        assert bob.tracker.received(first.message_id) is None
        assert alice.tracker.sent(first.message_id) is None
        reads = bob.stats().working_set_reads
        assert await bob.mark_displayed(first.message_id) is True
        assert await second.mark_displayed() is True
        assert bob.stats().working_set_reads == reads + 2
        # A second mark owes nothing: the record is in memory again, display owed.
        assert await bob.mark_displayed(first.message_id) is False
        assert await bob.mark_displayed("no-such-message") is False
        for message in (first, second):
            handle = next(h for h in handles if h.message_id == message.message_id)
            assert await handle.await_disposition("displayed", timeout=10) is DispositionState.DISPLAYED
            assert DispositionState.DISPLAYED in dispositions.states(message.message_id or "")
        assert alice.stats().working_set_reads >= 2
        # The sent record read back, now settled, is gone from the store too.
        await alice.flush()
        with SqliteStore(alice_store) as store:
            assert store.load_sent(first.message_id, time.time()) is None

        # A copy of an evicted message (a resend in a new transaction): answered as the first
        # copy was, never handed up again, while its dedup entry lives.
        third = received[2]
        assert third.message_id is not None and bob.tracker.received(third.message_id) is None
        resender = SipStack([ListenSpec(Transport.UDP, "127.0.0.1", 0, None)])
        body = cpim.build_message(
            [("From", f"<{alice.aor}>"), ("To", f"<{bob.aor}>"), ("NS", "imdn <urn:ietf:params:imdn>"),
             ("imdn.Message-ID", third.message_id), ("DateTime", third.datetime or ""),
             ("imdn.Disposition-Notification", "positive-delivery, display")],
            content_type="text/plain; charset=utf-8", body=b"again").to_bytes()
        async with resender:
            request = build_request("MESSAGE", bob.aor, f"<{alice.aor}>", f"<{bob.aor}>",
                                    body=body, content_type="message/cpim")
            assert (await resender.send_request(request)).status_code == 200
        assert len(received) == COUNT
        assert bob.stats().duplicates_received == 1


async def test_restart_loads_the_working_set_and_reports_evicted_deadlines(tmp_path: Path) -> None:
    alice_store = str(tmp_path / "alice.sqlite")
    async with asyncio.timeout(60):
        # Bob sends no delivery notification: alice's messages stay accepted, awaiting news.
        async with UserAgent(ua_config("bob", auto_delivery=False, **UNLIMITED)) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                pass

            # Tracked for 3 s: long enough to be evicted, short enough to expire in this test.
            config = ua_config("alice", store_path=alice_store, working_set_max=20, state_expiry=3.0)
            alice = UserAgent(config)
            dispositions = Recorder()
            alice.on_disposition(dispositions)
            async with alice:
                sends = [alice.send_message(bob.aor, f"m{n}", notify=BOTH) for n in range(100)]
                ids = {h.message_id for h in await asyncio.gather(*sends)}
                await wait_for(lambda: alice.stats().working_set_evictions >= 80, 20)
                assert alice.stats().tracked_messages == 20
                # Every deadline passes: the evicted ones are read back and expire like the rest,
                # with the same events.
                def ended() -> set[str]:
                    return {e.message_id for e in dispositions.events if isinstance(e, TrackingEnded)}

                await wait_for(lambda: ended() >= ids, 15)
                expired = [
                    e.message_id for e in dispositions.events
                    if isinstance(e, DispositionChanged) and e.state is DispositionState.EXPIRED
                ]
                assert sorted(expired) == sorted(ids)
                await alice.flush()
            with SqliteStore(alice_store) as store:
                assert store.load(time.time()).sent == ()  # ended: the rows are gone

            # Restart with many idle records in the store: only the working set is loaded.
            again = UserAgent(ua_config("alice", store_path=alice_store, working_set_max=20))
            async with again:
                await asyncio.gather(*(again.send_message(bob.aor, f"n{n}", notify=BOTH) for n in range(100)))
                await wait_for(lambda: again.stats().working_set_evictions >= 80, 20)
            restarted = UserAgent(ua_config("alice", store_path=alice_store, working_set_max=20))
            async with restarted:
                assert restarted.tracker.tracked_sent == 20
                with SqliteStore(alice_store) as store:
                    assert len(store.load(time.time()).sent) == 100
