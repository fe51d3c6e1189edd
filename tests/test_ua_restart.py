"""Persistence: a user agent restarted on the same SQLite file resumes what it owes and awaits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ua_helpers import RawPeer, Recorder, ua_config

from sipimdn import TransportError, UserAgent
from sipimdn.events import DispositionChanged, DispositionState, NotificationSent
from sipimdn.store import PeerRecord, Put, SqliteStore, Store
from sipimdn.ua import IncomingMessage
from sipimdn.ua._persist import StoreWriter

S = DispositionState
BOTH = {"positive-delivery", "display"}


async def test_store_writer_with_sqlite_file_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "ua.sqlite")
    writer = StoreWriter()
    await writer.open(lambda: SqliteStore(path))
    writer.submit(
        [Put(PeerRecord(peer_key="sip:bob@h", flags=("no-imdn",), updated_at=0.0, expires_at=100.0))]
    )
    await writer.close()
    again = StoreWriter()
    opened: list[Store] = []

    def factory() -> Store:
        store = SqliteStore(path)
        opened.append(store)
        return store

    await again.open(factory)
    assert [p.peer_key for p in (await again.load(0.0)).peers] == ["sip:bob@h"]
    again.purge(1000.0)
    await again.flush()
    assert (await again.load(0.0)).peers == ()
    await again.close()
    assert len(opened) == 1


async def test_restart_between_receive_and_mark_displayed(tmp_path: Path) -> None:
    """Bob receives, stops before showing the message; the next run marks it displayed."""
    bob_store = str(tmp_path / "bob.sqlite")
    received: list[IncomingMessage] = []
    async with UserAgent(ua_config("alice")) as alice:
        async with UserAgent(ua_config("bob", store_path=bob_store)) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                received.append(message)

            handle = await alice.send_message(
                bob.aor, "read me later", notify={"positive-delivery", "display"}
            )
            assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
        # Bob is down; a new run on the same file can still send "displayed".
        async with UserAgent(ua_config("bob", store_path=bob_store)) as bob_again:
            assert await bob_again.mark_displayed(received[0].message_id or "") is True
            assert await handle.await_disposition("displayed", timeout=5) is S.DISPLAYED
            # A second mark changes nothing and owes nothing.
            assert await bob_again.mark_displayed(received[0].message_id or "") is False


async def test_restart_between_send_and_the_notification(tmp_path: Path) -> None:
    """Alice stops after sending; bob's display IMDN is retried until alice is back on the same file."""
    alice_store = str(tmp_path / "alice.sqlite")
    received: list[IncomingMessage] = []
    # A silent destination is parked (RFC 5438 §14: no transaction after transaction into the
    # void); short here, so the retry finds alice soon after she is back.
    bob_config = ua_config("bob", imdn_retry_base=0.2, imdn_retry_cap=0.4, imdn_max_attempts=20,
                           imdn_park_base=0.2, imdn_park_cap=0.4)
    bob_notes = Recorder()
    async with UserAgent(bob_config) as bob:
        bob.on_notification(bob_notes)

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            received.append(message)

        async with UserAgent(ua_config("alice", store_path=alice_store)) as alice:
            port = alice.endpoints[0].port
            handle = await alice.send_message(bob.aor, "hi", notify={"positive-delivery", "display"})
            assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
            message_id = handle.message_id
        # Alice is down when bob shows the message: the IMDN fails and is retried.
        assert await received[0].mark_displayed() is True
        sent = await bob_notes.wait_for(NotificationSent, count=2)  # delivered, then displayed
        assert (sent[1].status, sent[1].sip_status) == ("displayed", None)  # failed: alice is down
        events = Recorder()
        restarted = ua_config("alice", store_path=alice_store, port=port)
        alice_again = UserAgent(restarted)
        alice_again.on_disposition(events)  # before start: nothing resumed is missed
        async with alice_again:
            await events.wait_for(DispositionChanged, timeout=10)
            change = events.of(DispositionChanged)[0]
            assert (change.message_id, change.previous, change.state) == (
                message_id,
                S.DELIVERED,
                S.DISPLAYED,
            )


async def test_owed_imdn_is_sent_when_the_owing_side_restarts(tmp_path: Path) -> None:
    """Bob owes "displayed" to an unreachable alice, stops, and sends it on his next start."""
    bob_store = str(tmp_path / "bob.sqlite")
    alice_store = str(tmp_path / "alice.sqlite")
    received: list[IncomingMessage] = []
    bob_config = ua_config(
        "bob", store_path=bob_store, imdn_retry_base=1.0, imdn_park_base=1.0, close_grace=0.1
    )
    async with UserAgent(ua_config("alice", store_path=alice_store)) as alice:
        port = alice.endpoints[0].port
        async with UserAgent(bob_config) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                received.append(message)

            handle = await alice.send_message(bob.aor, "hi", notify=BOTH)
            assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
            message_id = handle.message_id
    # Alice is gone when bob shows the message: the IMDN fails and is queued for a retry 1 s later.
    bob_notes = Recorder()
    async with UserAgent(bob_config) as bob:
        bob.on_notification(bob_notes)
        assert await bob.mark_displayed(received[0].message_id or "") is True
        (failed,) = await bob_notes.wait_for(NotificationSent)
        assert (failed.status, failed.sip_status) == ("displayed", None)  # alice is gone
    events = Recorder()
    alice_again = UserAgent(ua_config("alice", store_path=alice_store, port=port))
    alice_again.on_disposition(events)
    async with alice_again:
        # Bob's next run sends what it still owes. A queued retry keeps its schedule across the
        # restart (the tracker's restart tests pin that: a peer's back-off or Retry-After still
        # holds), so it leaves once the 1 s back-off has passed, not at once.
        async with UserAgent(bob_config):
            await events.wait_for(DispositionChanged, timeout=10)
        change = events.of(DispositionChanged)[0]
        assert change.message_id == message_id
        assert change.state is S.DISPLAYED


async def test_close_fails_what_is_still_in_flight() -> None:
    silent = await RawPeer.open()  # never answers
    try:
        async with UserAgent(ua_config("alice", close_grace=0.1)) as alice:
            handle = await alice.send_message(f"sip:nobody@{silent.address[0]}:{silent.address[1]}", "x")
            await asyncio.sleep(0.05)
        assert handle.response_done
        with pytest.raises(TransportError):
            await handle.final_response()
    finally:
        silent.close()
