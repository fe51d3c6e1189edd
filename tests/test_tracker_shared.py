"""The tracker's part in several workers sharing a store: dedup claims, take-over, withdrawal.

Sans-IO: two trackers stand for two workers, a MemoryStore for the database they share; time
is passed in by hand.
"""

from __future__ import annotations

import pytest
from tracker_helpers import drain

from sipimdn.imdn.tracker import (
    DispositionChanged,
    DispositionState,
    DispositionTracker,
    NotificationOwed,
)
from sipimdn.store import Delete, MemoryStore, Put, SeenRecord, Snapshot

ALICE = "sip:alice@example.com"
BOB = "sip:bob@127.0.0.1:5070"


def receive(tracker: DispositionTracker, message_id: str = "m1", now: float = 1.0) -> None:
    reception = tracker.record_received(
        message_id=message_id, sender=ALICE, now=now, requested=["positive-delivery"], sip_from=ALICE
    )
    assert not reception.duplicate


def test_the_claimed_entry_is_the_one_the_tracker_writes() -> None:
    """Same key and expiry: the tracker's own write of the dedup entry replaces the claim."""
    tracker = DispositionTracker(now=0.0)
    claim = tracker.dedup_record("m1", "sip:alice@EXAMPLE.com", 1.0)  # same identity
    receive(tracker)
    written = [op.record for op in tracker.writes_to_apply() if isinstance(op, Put)]
    seen = [r for r in written if isinstance(r, SeenRecord)]
    assert seen == [claim]
    assert claim.status is None and claim.expires_at == 1.0 + tracker.config.dedup_ttl


def test_adopted_sent_message_correlates_its_notifications() -> None:
    """Worker A sent m1 and died; worker B adopts the record and applies the IMDN itself."""
    a, store = DispositionTracker(now=0.0), MemoryStore()
    a.register_sent(message_id="m1", recipients=[BOB], requested=["positive-delivery", "display"], now=0.0)
    a.response_received("m1", 200, 0.5)
    store.apply(a.writes_to_apply())
    b = DispositionTracker(now=0.0)
    assert b.adopt(Snapshot(sent=store.load(1.0).sent), 1.0) == ("m1",)
    assert b.writes_to_apply() == []  # adopting writes nothing: the store has the records
    assert b.notification_received(message_id="m1", kind="delivery", status="delivered", now=2.0, sender=BOB)
    changes = [e for e in drain(b) if isinstance(e, DispositionChanged)]
    assert [(c.state, c.event_id) for c in changes] == [(DispositionState.DELIVERED, f"m1 {BOB} delivered")]
    # A record already tracked is left to its tracker (still tracked: display is awaited).
    assert b.adopt(Snapshot(sent=store.load(1.0).sent), 3.0) == ()


def test_adopted_owed_notification_in_flight_is_due_at_once() -> None:
    a, store = DispositionTracker(now=0.0), MemoryStore()
    receive(a)
    a.message_answered("m1", ALICE, 200, 1.5)
    owed = [e for e in drain(a) if isinstance(e, NotificationOwed)]
    assert len(owed) == 1  # handed out: in flight when A dies
    store.apply(a.writes_to_apply())
    b = DispositionTracker(now=0.0)
    b.adopt(Snapshot(owed=store.load(10.0).owed), 10.0)
    resent = [e for e in drain(b) if isinstance(e, NotificationOwed)]
    assert [e.notification.notification_id for e in resent] == [owed[0].notification.notification_id]
    assert resent[0].notification.attempts == 2
    # Nothing is adopted twice, and what expired is not adopted at all.
    b.adopt(Snapshot(owed=store.load(10.0).owed), 11.0)
    assert drain(b) == []
    c = DispositionTracker(now=0.0)
    c.adopt(Snapshot(owed=store.load(10.0).owed), owed[0].notification.expires_at)
    assert drain(c) == [] and c.owed() == ()


def test_withdrawn_answer_forgets_the_message_and_releases_its_claim() -> None:
    """The 2xx's records could not be stored: nothing held behind it is sent, the message is
    not a duplicate any more, and a Delete of its dedup entry is queued."""
    tracker = DispositionTracker(now=0.0)
    receive(tracker)
    assert tracker.message_answered("m1", ALICE, 200, 1.5, sent=False) is True
    tracker.writes_to_apply()
    tracker.withdraw_answer("m1", ALICE)
    tracker.answer_sent("m1", ALICE)  # too late: nothing is held any more
    assert drain(tracker) == []
    assert tracker.owed() == () and tracker.received("m1", ALICE) is None
    assert not tracker.is_duplicate("m1", ALICE)
    writes = tracker.writes_to_apply()
    assert Delete("seen", tracker.dedup_record("m1", ALICE, 0.0).key) in writes
    assert {op.table for op in writes if isinstance(op, Delete)} >= {"owed", "seen"}
    # Received again afresh.
    receive(tracker, now=5.0)


def test_released_records_are_neither_sent_nor_written() -> None:
    """Worker A lost m1 (sent) and its owed notification to another worker: it stops tracking
    both, writes nothing about them, and a hand-out still queued finds nothing to send."""
    a = DispositionTracker(now=0.0)
    a.register_sent(message_id="out", recipients=[BOB], requested=["positive-delivery"], now=0.0)
    receive(a)
    a.message_answered("m1", ALICE, 200, 1.5)
    owed = [e.notification for e in drain(a) if isinstance(e, NotificationOwed)]
    assert len(owed) == 1
    a.writes_to_apply()
    assert sorted(a.leased_keys("sent")) == ["out"] and a.leased_keys("owed") == [owed[0].notification_id]
    assert a.release("owed", [owed[0].notification_id, "unknown"], 2.0) == [owed[0].notification_id]
    assert a.release("sent", ["out"], 2.0) == ["out"]
    assert a.release("sent", ["out"], 2.0) == []  # released once
    assert a.owed() == () and a.sent("out") is None and a.writes_to_apply() == []
    assert a.notification_held(owed[0].notification_id, 2.5)  # the queued hand-out: not sent
    a.notification_outcome(owed[0].notification_id, 200, 3.0)  # a late outcome changes nothing
    a.handle_timer(owed[0].expires_at + 1.0)  # its stale timers fire nothing
    assert a.writes_to_apply() == [] and [e for e in drain(a) if isinstance(e, NotificationOwed)] == []
    with pytest.raises(ValueError):
        a.release("seen", ["x"], 3.0)  # no owner in that table


def test_a_held_notification_is_due_again_later_without_counting_the_attempt() -> None:
    tracker = DispositionTracker(now=0.0)
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.5)
    [owed] = [e.notification for e in drain(tracker) if isinstance(e, NotificationOwed)]
    assert tracker.hold_notification(owed.notification_id, 5.0)
    assert not tracker.hold_notification(owed.notification_id, 6.0)  # not in flight any more
    assert tracker.get_timer() == 5.0
    tracker.handle_timer(5.0)
    [again] = [e.notification for e in drain(tracker) if isinstance(e, NotificationOwed)]
    assert again.notification_id == owed.notification_id and again.attempts == owed.attempts
    assert not tracker.hold_notification("unknown", 6.0)
