"""RFC 5438 §14 on the sans-IO tracker: notification budgets per destination address.

A fake clock (plain floats); each test drives the tracker through its public API: received
messages, answers, outcomes, ``handle_timer``.
"""

from __future__ import annotations

from tracker_helpers import drain, make_tracker

from sipimdn.imdn.tracker import (
    DeclineReason,
    DispositionTracker,
    NotificationOwed,
    NotificationsDeclined,
    OwedNotification,
    TrackerEvent,
)

ME = "sip:bob@example.org"
SILENT = "192.0.2.7:5060"


def owed(events: list[TrackerEvent]) -> list[OwedNotification]:
    return [e.notification for e in events if isinstance(e, NotificationOwed)]


def declined(events: list[TrackerEvent]) -> list[DeclineReason]:
    return [e.reason for e in events if isinstance(e, NotificationsDeclined)]


def forged(tracker: DispositionTracker, index: int, now: float, host: str = SILENT) -> None:
    """A message from a fresh user part at ``host`` asking for positive delivery, answered 200."""
    sender = f"sip:victim{index}@{host}"
    tracker.record_received(
        message_id=f"m{index}", sender=sender, sip_from=sender, now=now,
        requested=("positive-delivery",), recipient=ME,
    )
    tracker.message_answered(f"m{index}", sender, 200, now)


def test_one_uri_at_a_time_until_the_address_answers() -> None:
    tracker = make_tracker()
    for index in range(5):
        forged(tracker, index, 0.0)
    [first] = owed(drain(tracker))  # the others wait: the address has not answered yet
    assert first.request_uri == f"sip:victim0@{SILENT}"
    assert len(tracker.owed()) == 5
    # It answers (any final status): the address is alive, the others go at once.
    tracker.notification_outcome(first.notification_id, 200, 0.1)
    assert sorted(n.message_id for n in owed(drain(tracker))) == ["m1", "m2", "m3", "m4"]
    assert tracker.notifications_suppressed == 0


def test_a_silent_address_is_parked_and_its_notifications_wait() -> None:
    tracker = make_tracker(park_base=60.0, park_cap=240.0, max_attempts=3)
    for index in range(3):
        forged(tracker, index, 0.0)
    [first] = owed(drain(tracker))
    tracker.notification_outcome(first.notification_id, None, 32.0)  # no answer at all
    assert tracker.destination_parked_until(f"sip:anyone@{SILENT}", 33.0) == 92.0
    # Nothing goes out while parked; new requests for that address are declined and counted.
    tracker.handle_timer(91.0)
    assert owed(drain(tracker)) == []
    forged(tracker, 9, 50.0)
    assert declined(drain(tracker)) == [DeclineReason.DESTINATION_SILENT]
    assert tracker.notifications_suppressed == 1
    # At the end of the parking, one probe; silent again: parked twice as long.
    tracker.handle_timer(92.0)
    [probe] = owed(drain(tracker))
    tracker.notification_outcome(probe.notification_id, None, 124.0)
    assert tracker.destination_parked_until(f"sip:anyone@{SILENT}", 124.0) == 244.0
    # Another address is not affected.
    forged(tracker, 20, 125.0, host="198.51.100.1")
    assert [n.message_id for n in owed(drain(tracker))] == ["m20"]


def test_a_silence_rewrites_only_the_probe_not_those_waiting() -> None:
    """Thousands may wait behind a silent address. Parking it changes nothing durable about
    them (they wait for the probe's answer either way), so neither the silence nor the end of
    the parking rewrites their records: each message answered meanwhile waits for the store
    batch before its 2xx. The probe's answer still hands them all out."""
    tracker = make_tracker(park_base=60.0, park_cap=3600.0, rate_limit=1 << 30)
    for index in range(200):
        forged(tracker, index, index / 100)
    [first] = owed(drain(tracker))
    tracker.writes_to_apply()
    tracker.notification_outcome(first.notification_id, None, 32.0)
    [write] = tracker.writes_to_apply()  # the probe's retry, at the end of the parking
    assert getattr(write, "record", None) is not None
    assert write.record.key == first.notification_id and write.record.next_attempt_at == 92.0
    tracker.handle_timer(92.0)
    [probe] = owed(drain(tracker))
    assert probe.notification_id == first.notification_id and probe.attempt == 2
    assert len(tracker.writes_to_apply()) == 1  # the probe in flight; the others untouched
    tracker.notification_outcome(probe.notification_id, 200, 92.1)
    assert len(owed(drain(tracker))) == 199


def test_a_probe_given_up_hands_the_probe_to_the_oldest_waiting() -> None:
    tracker = make_tracker(park_base=10.0, park_cap=3600.0, max_attempts=1)
    for index in range(3):
        forged(tracker, index, float(index))
    [first] = owed(drain(tracker))
    tracker.notification_outcome(first.notification_id, None, 32.0)
    assert [getattr(e, "reason", None) for e in drain(tracker)] == ["attempts-exhausted"]
    tracker.handle_timer(41.9)
    assert owed(drain(tracker)) == []
    tracker.handle_timer(42.0)  # the parking ends: one probe, the oldest of those waiting
    assert [n.message_id for n in owed(drain(tracker))] == ["m1"]


def test_a_probe_expiring_while_parked_hands_the_probe_on() -> None:
    tracker = make_tracker(park_base=10.0, park_cap=3600.0, owed_ttl=40.0)
    forged(tracker, 0, 0.0)
    forged(tracker, 1, 20.0)
    forged(tracker, 2, 21.0)
    [first] = owed(drain(tracker))
    tracker.notification_outcome(first.notification_id, None, 32.0)  # parked until 42
    tracker.handle_timer(40.0)  # the probe expires before its retry
    assert [getattr(e, "reason", None) for e in drain(tracker)] == ["expired"]
    tracker.handle_timer(42.0)
    assert [n.message_id for n in owed(drain(tracker))] == ["m1"]


def test_a_missing_outcome_parks_the_address_too() -> None:
    tracker = make_tracker(in_flight_timeout=64.0, park_base=60.0)
    forged(tracker, 0, 0.0)
    [_] = owed(drain(tracker))
    tracker.handle_timer(64.0)
    assert tracker.destination_parked_until(f"sip:x@{SILENT}", 64.0) == 124.0


def test_attempts_stay_capped_and_parking_ends_in_abandon() -> None:
    tracker = make_tracker(park_base=10.0, park_cap=10.0, max_attempts=2)
    forged(tracker, 0, 0.0)
    [n] = owed(drain(tracker))
    tracker.notification_outcome(n.notification_id, None, 1.0)
    tracker.handle_timer(11.0)
    [again] = owed(drain(tracker))
    assert again.attempt == 2
    tracker.notification_outcome(n.notification_id, None, 12.0)
    assert [getattr(e, "reason", None) for e in drain(tracker)] == ["attempts-exhausted"]
    assert tracker.owed() == ()


def test_the_count_limit_is_per_address_whatever_the_user_part() -> None:
    tracker = make_tracker(rate_limit=3, rate_window=60.0)
    for index in range(5):
        forged(tracker, index, 1.0)
    assert declined(drain(tracker)) == [DeclineReason.RATE_LIMITED] * 2
    assert tracker.notifications_suppressed == 2
    forged(tracker, 5, 62.0)  # a window later
    assert declined(drain(tracker)) == []


def test_the_byte_budget_per_address() -> None:
    tracker = make_tracker(byte_budget=2000, rate_window=60.0)
    forged(tracker, 0, 0.0)
    [first] = owed(drain(tracker))
    tracker.notification_sent(first.notification_id, 1500, 0.0)
    tracker.notification_outcome(first.notification_id, 200, 0.1)
    forged(tracker, 1, 1.0)
    [second] = owed(drain(tracker))
    tracker.notification_sent(second.notification_id, 1500, 1.0)
    tracker.notification_outcome(second.notification_id, 200, 1.1)
    forged(tracker, 2, 2.0)  # 3000 bytes sent within the window: over budget
    assert declined(drain(tracker)) == [DeclineReason.BYTE_BUDGET]
    forged(tracker, 3, 61.0)  # the first 1500 left the window
    assert [n.message_id for n in owed(drain(tracker))] == ["m3"]


def test_a_turn_that_comes_while_parked_is_held_not_counted() -> None:
    """Two notifications to one URI (delivered, displayed): both handed out, the adapter runs
    them one at a time (RFC 3428 §8). The first gets no answer: the second is held back."""
    tracker = make_tracker(park_base=30.0)
    sender = f"sip:alice@{SILENT}"
    tracker.record_received(message_id="m1", sender=sender, sip_from=sender, now=0.0,
                            requested=("positive-delivery", "display"), recipient=ME)
    tracker.message_answered("m1", sender, 200, 0.0)
    tracker.mark_displayed("m1", 0.0)
    delivered, displayed = owed(drain(tracker))
    assert not tracker.notification_held(displayed.notification_id, 0.0)  # not parked: send it
    tracker.notification_outcome(delivered.notification_id, None, 32.0)
    assert tracker.notification_held(displayed.notification_id, 32.0)
    tracker.handle_timer(61.0)
    assert owed(drain(tracker)) == []
    tracker.handle_timer(62.0)
    # Both again, for the one URI: the adapter runs them in turn, and holds the second back
    # again if the first meets silence once more.
    again = owed(drain(tracker))
    assert sorted(n.notification_id for n in again) == sorted(
        (delivered.notification_id, displayed.notification_id)
    )
    # The held turn did not count as an attempt.
    assert [n.attempt for n in again if n.notification_id == displayed.notification_id] == [1]


def test_through_a_trusted_relay_the_count_is_per_originator() -> None:
    """A list server relays for many senders: its budget is theirs, one each."""
    tracker = make_tracker(rate_limit=1)
    relay = "sip:relay@lists.example"
    for index in range(3):
        sender = f"sip:user{index}@example.com"
        tracker.record_received(message_id=f"m{index}", sender=sender, sip_from=sender, now=0.0,
                                requested=("positive-delivery",), recipient=ME,
                                imdn_route=(relay,), route_trusted=True)
        tracker.message_answered(f"m{index}", sender, 200, 0.0)
    events = drain(tracker)
    assert declined(events) == []
    assert len(owed(events)) == 3  # one URI (the relay): all handed out


def test_those_waiting_go_when_the_one_in_flight_expires() -> None:
    tracker = make_tracker(owed_ttl=10.0, in_flight_timeout=64.0)
    forged(tracker, 0, 0.0)
    forged(tracker, 1, 5.0)  # another URI at the same address: waits for the first
    [first] = owed(drain(tracker))
    tracker.handle_timer(10.0)  # the first expires in flight, never answered
    events = drain(tracker)
    assert [getattr(e, "reason", None) for e in events if not isinstance(e, NotificationOwed)] == ["expired"]
    assert [n.message_id for n in owed(events)] == ["m1"]
    assert first.message_id == "m0"
