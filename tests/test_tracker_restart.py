"""A tracker rebuilt from the store resumes: the write-behind operations are complete.

Each test drives a tracker, applies its ``writes_to_apply()`` to a store after
every call (as the user agent does), throws the tracker away, reopens the same
SQLite file and checks the new tracker carries on.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tracker_helpers import drain

from sipimdn.imdn.tracker import (
    PEER_NO_IMDN,
    DeclineReason,
    DispositionChanged,
    DispositionState,
    DispositionTracker,
    NotificationOwed,
    NotificationsDeclined,
    TrackerConfig,
    TrackerEvent,
    TrackingEnded,
)
from sipimdn.store import MemoryStore, SqliteStore, Store

ALICE = "sip:alice@example.com"
BOB = "sip:bob@127.0.0.1:5070"


def flush(tracker: DispositionTracker, store: Store) -> list[TrackerEvent]:
    store.apply(tracker.writes_to_apply())
    return drain(tracker)


def restart(
    path: Path, now: float, config: TrackerConfig | None = None
) -> tuple[DispositionTracker, SqliteStore]:
    store = SqliteStore(str(path))
    return DispositionTracker(config, snapshot=store.load(now), now=now), store


def test_awaited_notification_still_correlates_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "ua.db"
    store = SqliteStore(str(db))
    tracker = DispositionTracker(now=0.0)
    tracker.register_sent(
        message_id="m1",
        recipients=[BOB],
        requested=["positive-delivery", "display"],
        now=0.0,
        metadata={"text": "hi"},
    )
    tracker.response_received("m1", 200, 1.0)
    flush(tracker, store)
    store.close()

    tracker, store = restart(db, 100.0)
    record = tracker.sent("m1")
    assert record is not None and record.recipients[0].state == "accepted"
    assert record.metadata == (("text", "hi"),)
    assert tracker.notification_received(
        message_id="m1", kind="delivery", status="delivered", now=101.0, sender="sip:bob@127.0.0.1"
    )
    events = flush(tracker, store)
    assert [(e.previous, e.state) for e in events if isinstance(e, DispositionChanged)] == [
        (DispositionState.ACCEPTED, DispositionState.DELIVERED)
    ]
    store.close()

    tracker, store = restart(db, 200.0)
    record = tracker.sent("m1")
    assert record is not None and record.recipients[0].delivery == "delivered"
    # After a restart a report from a non-recipient is still refused (RFC 5438 §14.1) and a
    # second report of one type still a duplicate (RFC 5438 §7.2).
    assert not tracker.notification_received(
        message_id="m1", kind="display", status="displayed", now=201.0, sender="sip:mallory@x"
    )
    assert not tracker.notification_received(
        message_id="m1", kind="delivery", status="delivered", now=201.0, sender=BOB
    )
    store.close()


def test_owed_notifications_are_resent_with_the_same_id(tmp_path: Path) -> None:
    db = tmp_path / "ua.db"
    store = SqliteStore(str(db))
    ids = itertools.count(1)
    tracker = DispositionTracker(now=0.0, id_factory=lambda: f"n{next(ids)}")
    tracker.record_received(
        message_id="m1",
        sender=ALICE,
        requested=["positive-delivery", "display"],
        recipient=BOB,
        datetime="2024-01-01T00:00:00Z",
        now=0.0,
    )
    tracker.message_answered("m1", ALICE, 200, 1.0)
    [first] = [e.notification for e in flush(tracker, store) if isinstance(e, NotificationOwed)]
    store.close()  # crash before the IMDN was acknowledged

    tracker, store = restart(db, 50.0)
    [again] = [e.notification for e in flush(tracker, store) if isinstance(e, NotificationOwed)]
    assert again.notification_id == first.notification_id == "n1"
    assert again.attempt == 2 and again.datetime == "2024-01-01T00:00:00Z"
    tracker.notification_outcome("n1", 200, 51.0)
    # The message received before the restart can still be marked displayed.
    shown = tracker.mark_displayed("m1", 60.0)
    assert shown is not None and shown.kind == "display"
    flush(tracker, store)
    store.close()

    tracker, store = restart(db, 70.0)
    assert [o.notification_id for o in tracker.owed()] == [shown.notification_id]
    assert tracker.received("m1") is None
    assert tracker.record_received(message_id="m1", sender=ALICE, now=70.0).duplicate  # dedup survives
    store.close()


def test_queued_retry_keeps_its_schedule(tmp_path: Path) -> None:
    db = tmp_path / "ua.db"
    store = SqliteStore(str(db))
    tracker = DispositionTracker(TrackerConfig(retry_base=10.0), now=0.0)
    tracker.record_received(message_id="m1", sender=ALICE, requested=["positive-delivery"], now=0.0)
    tracker.message_answered("m1", ALICE, 200, 0.0)
    [n] = [e.notification for e in flush(tracker, store) if isinstance(e, NotificationOwed)]
    tracker.notification_outcome(n.notification_id, 503, 1.0)
    flush(tracker, store)
    store.close()
    tracker, store = restart(db, 5.0, TrackerConfig(retry_base=10.0))
    assert drain(tracker) == []
    assert tracker.get_timer() == 11.0
    tracker.handle_timer(11.0)
    assert [e.notification.attempt for e in drain(tracker) if isinstance(e, NotificationOwed)] == [2]
    store.close()


def test_peer_flags_survive(tmp_path: Path) -> None:
    db = tmp_path / "ua.db"
    store = SqliteStore(str(db))
    tracker = DispositionTracker(now=0.0)
    tracker.record_received(message_id="m1", sender=ALICE, requested=["positive-delivery"], now=0.0)
    tracker.message_answered("m1", ALICE, 200, 0.0)
    [n] = [e.notification for e in flush(tracker, store) if isinstance(e, NotificationOwed)]
    tracker.notification_outcome(n.notification_id, 415, 1.0)
    flush(tracker, store)
    store.close()
    tracker, store = restart(db, 10.0)
    assert PEER_NO_IMDN in tracker.peer_flags(ALICE)
    tracker.record_received(message_id="m2", sender=ALICE, requested=["positive-delivery"], now=10.0)
    assert [e.reason for e in drain(tracker) if isinstance(e, NotificationsDeclined)] == [
        DeclineReason.PEER_REFUSES_IMDN
    ]
    store.close()


def test_expiry_that_fell_while_down_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "ua.db"
    store = SqliteStore(str(db))
    tracker = DispositionTracker(now=0.0)
    tracker.register_sent(message_id="m1", recipients=[BOB], requested=["display"], now=0.0, expires_at=100.0)
    tracker.response_received("m1", 200, 1.0)
    flush(tracker, store)
    store.close()
    tracker, store = restart(db, 500.0)
    assert tracker.get_timer() == 100.0
    tracker.handle_timer(500.0)
    events = flush(tracker, store)
    assert events[-1] == TrackingEnded("m1", ((BOB, DispositionState.EXPIRED),))
    assert store.load(500.0).sent == ()
    store.close()


def test_store_mirrors_tracker_after_a_busy_run() -> None:
    """After every batch is applied, the store holds exactly what the tracker holds."""
    store = MemoryStore()
    tracker = DispositionTracker(TrackerConfig(tracking_ttl=30.0, received_ttl=40.0, dedup_ttl=45.0), now=0.0)
    for i in range(20):
        now = float(i)
        tracker.register_sent(
            message_id=f"s{i}", recipients=[BOB], requested=["positive-delivery", "display"], now=now
        )
        tracker.response_received(f"s{i}", 200 if i % 3 else 404, now)
        if i % 2:
            tracker.notification_received(
                message_id=f"s{i}", kind="delivery", status="delivered", now=now, sender=BOB
            )
        tracker.record_received(
            message_id=f"r{i}", sender=ALICE, requested=["positive-delivery", "display"], now=now
        )
        tracker.message_answered(f"r{i}", ALICE, 200, now)
        for event in flush(tracker, store):
            if isinstance(event, NotificationOwed) and i % 4 == 0:
                tracker.notification_outcome(event.notification.notification_id, 200, now)
        if i % 5 == 0:
            tracker.mark_displayed(f"r{i}", now)
        tracker.handle_timer(now)
        flush(tracker, store)
    for when in (35.0, 50.0, 70.0):
        tracker.handle_timer(when)
        flush(tracker, store)
        live = tracker.snapshot()
        stored = store.load(when)
        for name in ("sent", "owed", "received", "seen", "peers"):
            assert set(getattr(stored, name)) == set(getattr(live, name)), name
