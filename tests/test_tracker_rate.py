"""RFC 5438 §14: the rate limit on IMDN generation.

Sent straight back, notifications are counted per destination address (a forger varies the user
part at will). Through a trusted IMDN-Record-Route hop (list server, store-and-forward relaying
for many senders) they are counted per originator of the IM: one budget for the relay would
decline the IMDNs of everyone behind a busy one. One sender flooding is still limited.
"""

from __future__ import annotations

import pytest
from tracker_helpers import drain, make_tracker

from sipimdn.imdn.tracker import (
    DeclineReason,
    DispositionTracker,
    NotificationOwed,
    NotificationsDeclined,
    TrackerEvent,
)
from sipimdn.imdn.tracker import dispatch as tracker_dispatch

RELAY = "sip:relay@intermediary.example"
ME = "sip:bob@127.0.0.1"


def deliver(
    tracker: DispositionTracker,
    message_id: str,
    sender: str,
    sip_from: str | None,
    *,
    now: float = 1.0,
    route: tuple[str, ...] = (RELAY,),
) -> None:
    """Receive one IM asking for positive delivery and answer it 200."""
    tracker.record_received(
        message_id=message_id,
        sender=sender,
        sip_from=sip_from,
        now=now,
        requested=("positive-delivery",),
        recipient=ME,
        imdn_route=route,
        route_trusted=True,
    )
    tracker.message_answered(message_id, sender, 200, now)


def tally(events: list[TrackerEvent]) -> tuple[int, list[DeclineReason]]:
    owed = sum(isinstance(e, NotificationOwed) for e in events)
    return owed, [e.reason for e in events if isinstance(e, NotificationsDeclined)]


def test_300_senders_through_one_relay_are_not_declined() -> None:
    """The bench_relay scenario: 300 IMs via one IMDN-Route hop, 120 per 60 s allowed."""
    tracker = make_tracker(rate_limit=120, rate_window=60.0)
    for i in range(300):
        sender = f"sip:user{i}@example.com"
        deliver(tracker, f"m{i}", sender, sender, now=1.0 + i / 100)
    events = drain(tracker)
    assert tally(events) == (300, [])
    # Every IMDN still goes to the relay (top IMDN-Route), only the budget is per originator.
    assert {e.notification.request_uri for e in events if isinstance(e, NotificationOwed)} == {RELAY}


def test_one_sender_flooding_through_a_relay_is_still_limited() -> None:
    tracker = make_tracker(rate_limit=120, rate_window=60.0)
    for i in range(300):
        deliver(tracker, f"m{i}", "sip:flood@example.com", "sip:flood@example.com", now=1.0 + i / 100)
    assert tally(drain(tracker)) == (120, [DeclineReason.RATE_LIMITED] * 180)
    # Other senders behind the same relay keep their own budget.
    deliver(tracker, "x1", "sip:carol@example.com", "sip:carol@example.com", now=5.0)
    assert tally(drain(tracker)) == (1, [])
    # The window slides for the flooder too.
    deliver(tracker, "late", "sip:flood@example.com", "sip:flood@example.com", now=70.0)
    assert tally(drain(tracker)) == (1, [])


def test_the_sip_from_is_the_originator_when_cpim_from_varies() -> None:
    """RCS-style: the CPIM From may vary (or be shared); the SIP From decides the budget."""
    tracker = make_tracker(rate_limit=3)
    for i in range(5):
        deliver(tracker, f"m{i}", f"<im:alias{i}@example.com>", "sip:mallory@evil.example", route=())
    assert tally(drain(tracker)) == (3, [DeclineReason.RATE_LIMITED] * 2)


def test_cpim_from_is_the_originator_without_a_sip_from() -> None:
    tracker = make_tracker(rate_limit=2)
    for i in range(3):
        deliver(tracker, f"a{i}", "sip:alice@example.com", None)
    deliver(tracker, "c1", "sip:carol@example.com", None)
    # Identity keys fold sip:/im: and ports: the same AOR shares one budget.
    deliver(tracker, "c2", "<im:carol@example.com>", None)
    deliver(tracker, "c3", "sip:carol@EXAMPLE.com:5070", None)
    assert tally(drain(tracker)) == (
        4,
        [DeclineReason.RATE_LIMITED, DeclineReason.RATE_LIMITED],
    )


def test_limiter_memory_is_bounded_by_active_originators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle destinations are forgotten; the limiter holds at most about twice the active ones."""
    monkeypatch.setattr(tracker_dispatch, "_RATE_PRUNE_MIN", 8)  # prune early instead of after 16k keys
    tracker = make_tracker(rate_limit=1, rate_window=10.0)
    for i in range(20):
        deliver(tracker, f"old{i}", f"sip:old@h{i}.example.com", None, now=1.0, route=())
    # One window later a new crowd arrives: the old one, idle since, is dropped on the way.
    for i in range(40):
        deliver(tracker, f"new{i}", f"sip:new@n{i}.example.com", None, now=100.0, route=())
    assert tally(drain(tracker)) == (60, [])
    kept = set(tracker._rate)  # white-box: the memory bound is the point of this test
    assert kept <= {f"sip:n{i}.example.com:5060" for i in range(40)}
    assert len(kept) <= 2 * 40
    # The budget of a destination still active survives the pruning (any user part at it).
    deliver(tracker, "again", "sip:other@n0.example.com", None, now=101.0, route=())
    assert tally(drain(tracker)) == (0, [DeclineReason.RATE_LIMITED])
