"""The receiver side's state machine on the sans-IO tracker, with a fake clock.

What the user agent used to keep beside the tracker now lives here: reports
made before the answer, notifications held until the 2xx is out, which
dedup entries reach the store, and plain-text dedup. Every answer a report
gets is exactly what is handed out.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_helpers import make_tracker

from sipimdn.errors import LocalProtocolError
from sipimdn.imdn.tracker import (
    RECEIVER_TRANSITIONS,
    DispositionTracker,
    NotificationOwed,
    OwedNotification,
    ReceiptInput,
    ReceiptState,
    TrackerEvent,
)
from sipimdn.store import Delete, MemoryStore, Put

ALICE = "sip:alice@example.com"
ME = "sip:bob@127.0.0.1"


def owed(tracker: DispositionTracker) -> list[OwedNotification]:
    events: list[TrackerEvent] = []
    while (event := tracker.next_event()) is not None:
        events.append(event)
    return [e.notification for e in events if isinstance(e, NotificationOwed)]


def receive(tracker: DispositionTracker, *requested: str, message_id: str = "m1", now: float = 0.0) -> None:
    reception = tracker.record_received(
        message_id=message_id, sender=ALICE, requested=requested, recipient=ME, now=now
    )
    assert not reception.duplicate


# --- reports before the answer: the same decision, owed with the 2xx --------------------------------


@pytest.mark.parametrize(
    ("requested", "kind", "status", "sent"),
    [
        # forbidden/error answer either delivery request (RFC 5438 §7.2.1.1)
        (("positive-delivery",), "delivery", "forbidden", True),
        (("negative-delivery",), "delivery", "error", True),
        (("positive-delivery",), "delivery", "failed", False),
        (("negative-delivery",), "delivery", "delivered", False),
        (("display",), "delivery", "forbidden", False),
        (("display",), "display", "error", True),
        (("positive-delivery",), "display", "displayed", False),
    ],
)
@pytest.mark.parametrize("before_answer", [True, False])
def test_a_report_is_owed_exactly_when_the_tracker_says_so(
    requested: tuple[str, ...], kind: str, status: str, sent: bool, before_answer: bool
) -> None:
    tracker = make_tracker(auto_delivered=False)
    receive(tracker, *requested)
    if not before_answer:
        tracker.message_answered("m1", ALICE, 200, 1.0)
    decided = tracker.report_disposition("m1", kind, status, 1.0, sender=ALICE)
    if before_answer:
        assert owed(tracker) == []  # nothing before the answer
        tracker.message_answered("m1", ALICE, 200, 1.0)
    handed = owed(tracker)
    assert (decided is not None) is sent
    assert [(n.kind, n.status) for n in handed] == ([(kind, status)] if sent else [])
    if decided is not None:
        assert handed[0].notification_id == decided.notification_id


def test_an_early_report_is_dropped_by_a_non_2xx_answer() -> None:
    tracker = make_tracker()
    receive(tracker, "positive-delivery", "display")
    assert tracker.mark_displayed("m1", 0.5, sender=ALICE) is not None
    assert tracker.receipt_state("m1", ALICE) is ReceiptState.DECIDING
    tracker.message_answered("m1", ALICE, 486, 1.0)
    assert owed(tracker) == [] and tracker.owed() == ()
    assert tracker.receipt_state("m1", ALICE) is ReceiptState.CLOSED
    assert all(not isinstance(op, Put) or op.record.TABLE != "owed" for op in tracker.writes_to_apply())


def test_an_early_delivery_report_replaces_the_automatic_delivered() -> None:
    tracker = make_tracker()
    receive(tracker, "positive-delivery", "negative-delivery")
    assert tracker.report_disposition("m1", "delivery", "failed", 0.5) is not None
    # A second, different delivery report is refused at once, as after the answer.
    with pytest.raises(LocalProtocolError, match=r"RFC 5438 §7\.2"):
        tracker.report_disposition("m1", "delivery", "error", 0.6)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert [(n.kind, n.status) for n in owed(tracker)] == [("delivery", "failed")]


def test_display_forbidden_by_policy_is_not_reported_twice() -> None:
    tracker = make_tracker(display_policy="forbidden")
    receive(tracker, "display")
    assert tracker.mark_displayed("m1", 0.5) is None
    assert tracker.report_disposition("m1", "display", "forbidden", 0.5) is None
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert [(n.kind, n.status) for n in owed(tracker)] == [("display", "forbidden")]


# --- the answer waits for the store; hand-outs wait for the answer -----------------------------------


def test_notifications_are_held_until_the_answer_is_sent() -> None:
    tracker = make_tracker()
    receive(tracker, "positive-delivery", "display")
    assert tracker.message_answered("m1", ALICE, 200, 1.0, sent=False) is True
    assert tracker.receipt_state("m1", ALICE) is ReceiptState.ANSWERING
    # What the answer commits us to is written before it goes out...
    assert [op.record.TABLE for op in tracker.writes_to_apply() if isinstance(op, Put)].count("owed") == 1
    # ...and handed out only after.
    assert owed(tracker) == []
    shown = tracker.mark_displayed("m1", 1.5)
    assert shown is not None and owed(tracker) == []
    tracker.answer_sent("m1", ALICE)
    assert [(n.kind, n.status) for n in owed(tracker)] == [
        ("delivery", "delivered"),
        ("display", "displayed"),
    ]
    assert tracker.receipt_state("m1", ALICE) is ReceiptState.CLOSED  # everything requested is owed
    tracker.answer_sent("m1", ALICE)  # a stray second call changes nothing
    assert owed(tracker) == []


def test_a_notification_released_by_its_destination_still_waits_for_its_answer() -> None:
    # The first IMDN to a host not yet proven alive is in flight; one to another user there
    # waits for that one's answer. If the answer releases it while its own message's 2xx is
    # still waiting for the store, it goes only once that 2xx is out (its 200 first).
    carol = "sip:carol@example.com"
    tracker = make_tracker()
    receive(tracker, "positive-delivery", message_id="m1")
    tracker.message_answered("m1", ALICE, 200, 1.0)
    (first,) = owed(tracker)
    tracker.record_received(
        message_id="m2", sender=carol, requested=("positive-delivery",), recipient=ME, now=1.0
    )
    assert tracker.message_answered("m2", carol, 200, 1.1, sent=False) is True
    waiting = next(o for o in tracker.owed() if o.message_id == "m2")
    assert not waiting.in_flight  # behind the first one, whose destination is unproven
    tracker.notification_outcome(first.notification_id, 200, 1.2)
    assert owed(tracker) == []  # released by the destination, held by its own answer
    assert tracker.receipt_state("m2", carol) is ReceiptState.ANSWERING
    tracker.answer_sent("m2", carol)
    assert [(n.message_id, n.kind, n.status) for n in owed(tracker)] == [("m2", "delivery", "delivered")]
    # It was in flight from its release on: its outcome settles it as for any other.
    (record,) = tracker.owed()
    assert record.in_flight and record.attempts == 1
    tracker.notification_outcome(record.notification_id, 200, 1.3)
    assert tracker.owed() == ()


def test_nothing_is_held_when_nothing_can_be_owed() -> None:
    tracker = make_tracker()
    receive(tracker, "negative-delivery")
    assert tracker.message_answered("m1", ALICE, 486, 1.0, sent=False) is False
    receive(tracker, message_id="m2")
    assert tracker.message_answered("m2", ALICE, 200, 1.0, sent=False) is False


# --- which dedup entries reach the store --------------------------------------------------------------


def test_dedup_of_a_message_owed_nothing_stays_in_memory() -> None:
    store = MemoryStore()
    tracker = make_tracker()
    receive(tracker, message_id="plain")  # no notification requested
    receive(tracker, "display", message_id="asked")
    tracker.message_answered("plain", ALICE, 200, 1.0)
    tracker.message_answered("asked", ALICE, 200, 1.0)
    store.apply(tracker.writes_to_apply())
    assert {s.message_id for s in store.load(2.0).seen} == {"asked"}
    assert {s.message_id for s in tracker.snapshot().seen} == {"asked"}
    # Both are duplicates for this run, answered with the first copy's status.
    for message_id in ("plain", "asked"):
        again = tracker.record_received(message_id=message_id, sender=ALICE, now=3.0)
        assert again.duplicate and again.previous_status == 200
    # After a restart only the one owed a notification is still known.
    restarted = DispositionTracker(tracker.config, snapshot=store.load(4.0), now=4.0)
    assert restarted.is_duplicate("asked", ALICE) and not restarted.is_duplicate("plain", ALICE)
    # The in-memory entry expires with the dedup window, and writes nothing then either.
    tracker.handle_timer(tracker.config.dedup_ttl + 1.0)
    assert not tracker.is_duplicate("plain", ALICE)
    assert tracker.writes_to_apply() == [Delete("received", f"{ALICE} asked")]


# --- plain text: dedup by SIP transaction, bounded, in memory ------------------------------------------


def test_plain_text_dedup_remembers_the_answer_and_expires() -> None:
    tracker = make_tracker(plain_dedup_ttl=5.0)
    assert not tracker.record_plain(ALICE, "c1 t1 1", 0.0).duplicate
    again = tracker.record_plain(ALICE, "c1 t1 1", 1.0)
    assert again.duplicate and again.previous_status is None  # still being decided
    tracker.plain_answered(ALICE, "c1 t1 1", 200)
    assert tracker.record_plain(ALICE, "c1 t1 1", 2.0).previous_status == 200
    assert not tracker.record_plain("sip:carol@example.com", "c1 t1 1", 2.0).duplicate  # other sender
    assert not tracker.record_plain(ALICE, "c1 t1 1", 5.5).duplicate  # expired: counts as new
    assert tracker.writes_to_apply() == []


def test_plain_text_refused_may_be_sent_again() -> None:
    tracker = make_tracker()
    tracker.record_plain(ALICE, "c1 t1 1", 0.0)
    tracker.plain_answered(ALICE, "c1 t1 1", 486)
    assert not tracker.record_plain(ALICE, "c1 t1 1", 1.0).duplicate


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 10)), max_size=60), st.integers(1, 8))
def test_plain_text_dedup_is_bounded_and_flags_only_recent_repeats(
    entries: list[tuple[int, float]], capacity: int
) -> None:
    tracker = make_tracker(plain_dedup_capacity=capacity, plain_dedup_ttl=5.0)
    now = 0.0
    for key, step in entries:
        now += step
        tracker.record_plain(ALICE, str(key), now)
        # What was just recorded is remembered.
        assert tracker.record_plain(ALICE, str(key), now).duplicate
    # Never more than ``capacity`` remembered: the oldest of capacity + 1 fresh keys is forgotten.
    for extra in range(100, 101 + capacity):
        tracker.record_plain(ALICE, str(extra), now)
    assert not tracker.record_plain(ALICE, "100", now).duplicate


# --- the table -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(ReceiptState))
@pytest.mark.parametrize("step", list(ReceiptInput))
def test_the_table_only_closes_or_moves_forward(state: ReceiptState, step: ReceiptInput) -> None:
    order = list(ReceiptState)
    after = RECEIVER_TRANSITIONS.get((state, step))
    assert state is not ReceiptState.CLOSED or after is None  # closed is final
    assert after is None or order.index(after) >= order.index(state)
