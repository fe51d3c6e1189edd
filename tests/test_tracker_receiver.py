"""Receiver side of the disposition tracker: what we owe, retries, policy and the checks of
RFC 5438 §7.2.1 and §14.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Any

import pytest
from tracker_helpers import drain, make_tracker

from sipimdn.errors import LocalProtocolError
from sipimdn.imdn.tracker import (
    PEER_NO_IMDN,
    DeclineReason,
    DisplayPolicy,
    DispositionTracker,
    NotificationAbandoned,
    NotificationOwed,
    NotificationsDeclined,
    OwedNotification,
    TrackerEvent,
)

ALICE = "<sip:alice@example.com>"  # CPIM From of the IM
ALICE_SIP = "sip:alice@example.com;transport=tcp"  # its SIP From URI
ME = "sip:bob@127.0.0.1"
FULL = ("positive-delivery", "negative-delivery", "display")


def owed(events: list[TrackerEvent]) -> list[OwedNotification]:
    return [e.notification for e in events if isinstance(e, NotificationOwed)]


def declined(events: list[TrackerEvent]) -> list[tuple[tuple[str, ...], DeclineReason]]:
    return [(e.kinds, e.reason) for e in events if isinstance(e, NotificationsDeclined)]


def receive(
    tracker: DispositionTracker,
    message_id: str = "m1",
    requested: tuple[str, ...] = FULL,
    now: float = 0.0,
    **kw: Any,
) -> tuple[str, ...]:
    kw.setdefault("sender", ALICE)
    kw.setdefault("sip_from", ALICE_SIP)
    reception = tracker.record_received(
        message_id=message_id,
        requested=requested,
        now=now,
        recipient=ME,
        datetime="2018-02-16T01:42:50+5:30",
        subject="hello",
        **kw,
    )
    assert not reception.duplicate
    return reception.requested


# --- what is owed --------------------------------------------------------------------------------------


def test_positive_delivery_owed_after_2xx_with_everything_to_build_it() -> None:
    """RFC 5438 §7.2.1.1, §7.2.1: after a 2xx, a delivered IMDN addressed per §7.2.1 / §12.1.3.1."""
    tracker = make_tracker()
    assert receive(tracker) == ("display", "negative-delivery", "positive-delivery")
    assert owed(drain(tracker)) == []
    tracker.message_answered("m1", ALICE, 200, 1.0)
    [n] = owed(drain(tracker))
    assert (n.kind, n.status, n.notification_id, n.attempt) == ("delivery", "delivered", "n1", 1)
    assert n.request_uri == ALICE_SIP and n.sip_to == ALICE_SIP  # the IM's SIP From
    assert n.cpim_to == ALICE and n.cpim_from == ME and n.recipient_uri == ME
    assert n.datetime == "2018-02-16T01:42:50+5:30"  # echoed raw (real peers send bad offsets)
    assert n.subject == "hello" and n.imdn_route == () and n.in_flight
    assert tracker.owed() == (n,)


def test_auto_delivered_off_waits_for_the_application() -> None:
    tracker = make_tracker(auto_delivered=False)
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert owed(drain(tracker)) == []
    n = tracker.report_disposition("m1", "delivery", "delivered", 2.0)
    assert n is not None and n.status == "delivered"
    assert owed(drain(tracker)) == [n]


def test_non_2xx_answer_owes_nothing_ever() -> None:
    """RFC 5438 §7.2.1.1: no negative delivery IMDN after a non-2xx final response."""
    tracker = make_tracker()
    receive(tracker)
    tracker.message_answered("m1", ALICE, 486, 1.0)
    assert owed(drain(tracker)) == []
    assert tracker.received("m1") is None
    assert tracker.mark_displayed("m1", 2.0) is None
    with pytest.raises(LocalProtocolError, match=r"RFC 5438 §7\.2\.1\.1"):
        tracker.report_disposition("m1", "delivery", "failed", 2.0)
    with pytest.raises(LocalProtocolError, match=r"RFC 5438 §7\.2\.1\.1"):
        tracker.report_disposition("m1", "delivery", "failed", 2.0, sender=ALICE)
    assert tracker.owed() == ()


def test_mark_displayed_owes_displayed_once() -> None:
    """RFC 5438 §7.2: delivery and display IMDNs for one IM, at most one of each."""
    tracker = make_tracker()
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    drain(tracker)
    n = tracker.mark_displayed("m1", 5.0)
    assert n is not None and (n.kind, n.status) == ("display", "displayed")
    assert owed(drain(tracker)) == [n]
    assert tracker.mark_displayed("m1", 6.0) is None
    # Everything requested is owed: the message is forgotten and nothing is ever owed twice.
    assert tracker.received("m1") is None
    assert tracker.report_disposition("m1", "display", "error", 6.0) is None
    assert owed(drain(tracker)) == []


def test_second_different_notification_of_a_type_is_misuse() -> None:
    """RFC 5438 §7.2, while the message is still open for another type."""
    tracker = make_tracker(auto_delivered=False)
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert tracker.mark_displayed("m1", 2.0) is not None
    with pytest.raises(LocalProtocolError, match=r"RFC 5438 §7\.2"):
        tracker.report_disposition("m1", "display", "error", 3.0)
    assert tracker.report_disposition("m1", "display", "displayed", 3.0) is None  # same again: no-op


def test_reports_before_the_answer_are_decided_at_once_and_owed_with_the_2xx() -> None:
    """RFC 5438 §7.2.1.2: a display IMDN only after a 2xx; the report made before is kept for it."""
    tracker = make_tracker()
    receive(tracker, requested=("positive-delivery", "display"))
    shown = tracker.mark_displayed("m1", 1.0)
    assert shown is not None and (shown.kind, shown.status) == ("display", "displayed")
    # Negative delivery was not requested: the same answer before and after the 2xx.
    assert tracker.report_disposition("m1", "delivery", "failed", 1.0) is None
    assert owed(drain(tracker)) == [] and tracker.owed() == ()
    tracker.message_answered("m1", ALICE, 200, 2.0)
    handed = owed(drain(tracker))
    assert [(n.kind, n.status) for n in handed] == [("delivery", "delivered"), ("display", "displayed")]
    assert handed[1].notification_id == shown.notification_id


def test_display_not_requested() -> None:
    tracker = make_tracker()
    receive(tracker, requested=("positive-delivery",))
    tracker.message_answered("m1", ALICE, 200, 1.0)
    drain(tracker)
    assert tracker.mark_displayed("m1", 2.0) is None
    assert tracker.received("m1") is None  # nothing more can be owed: forgotten


def test_display_policy_forbidden_answers_at_once() -> None:
    """RFC 5438 §14.2: the user never reveals display; forbidden goes out with the delivery IMDN."""
    tracker = make_tracker(display_policy=DisplayPolicy.FORBIDDEN)
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert [(n.kind, n.status) for n in owed(drain(tracker))] == [
        ("delivery", "delivered"),
        ("display", "forbidden"),
    ]
    assert tracker.mark_displayed("m1", 2.0) is None


def test_display_policy_silent_declines() -> None:
    """RFC 5438 §7.2.1.2, §14.2: a recipient may silently ignore display requests."""
    tracker = make_tracker(display_policy="silent")
    assert receive(tracker) == ("negative-delivery", "positive-delivery")
    assert declined(drain(tracker)) == [(("display",), DeclineReason.PRIVACY)]
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert [n.kind for n in owed(drain(tracker))] == ["delivery"]
    assert tracker.mark_displayed("m1", 2.0) is None


def test_per_message_policy_accepts_the_ua_enum() -> None:
    class DisplayPrivacy(StrEnum):  # the shape of sipimdn.config.DisplayPrivacy
        SILENT = "silent"

    tracker = make_tracker()
    assert receive(tracker, requested=("display",), display_policy=DisplayPrivacy.SILENT) == ()
    assert tracker.received("m1") is None


def test_negative_only_and_success_sends_nothing() -> None:
    """RFC 5438 §7.2.1.1: silence on success; a later failure may still be reported."""
    tracker = make_tracker()
    receive(tracker, requested=("negative-delivery",))
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert owed(drain(tracker)) == []
    assert tracker.report_disposition("m1", "delivery", "delivered", 2.0) is None  # positive not requested
    n = tracker.report_disposition("m1", "delivery", "failed", 3.0)
    assert n is not None and n.status == "failed"
    assert tracker.received("m1") is None


def test_negative_after_auto_delivered_is_refused() -> None:
    """RFC 5438 §7.2: no delivered then failed."""
    tracker = make_tracker()
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    with pytest.raises(LocalProtocolError, match=r"RFC 5438 §7\.2"):
        tracker.report_disposition("m1", "delivery", "failed", 2.0)


@pytest.mark.parametrize(
    ("kind", "status"),
    [("processing", "processed"), ("delivery", "displayed"), ("display", "failed"), ("read", "read")],
)
def test_report_disposition_misuse(kind: str, status: str) -> None:
    """RFC 5438 §7.2: a recipient never sends processing notifications; statuses belong to kinds."""
    tracker = make_tracker()
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    with pytest.raises(LocalProtocolError):
        tracker.report_disposition("m1", kind, status, 2.0)


def test_unknown_and_processing_requests_are_ignored() -> None:
    """RFC 5438 §6.2: unknown tokens ignored; §7.2: processing is for intermediaries."""
    tracker = make_tracker()
    assert receive(tracker, requested=("processing", "read", "Display")) == ()
    assert tracker.received("m1") is None
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert owed(drain(tracker)) == []


def test_ambiguous_message_id_needs_the_sender() -> None:
    tracker = make_tracker()
    receive(tracker)
    receive(tracker, sender="sip:carol@example.org", sip_from="sip:carol@example.org")
    tracker.message_answered("m1", ALICE, 200, 1.0)
    tracker.message_answered("m1", "sip:carol@example.org", 200, 1.0)
    with pytest.raises(LocalProtocolError):
        tracker.mark_displayed("m1", 2.0)
    assert tracker.received("m1") is None
    n = tracker.mark_displayed("m1", 2.0, sender="sip:carol@example.org")
    assert n is not None and n.cpim_to == "sip:carol@example.org"


def test_provisional_answer_is_misuse() -> None:
    tracker = make_tracker()
    receive(tracker)
    with pytest.raises(LocalProtocolError):
        tracker.message_answered("m1", ALICE, 180, 1.0)


# --- dedup ---------------------------------------------------------------------------------------------


def test_dedup_by_sender_and_message_id() -> None:
    """Dedup on (sender, imdn.Message-ID), never Call-ID alone (RFC 5438 §6.3: the Message-ID is the key)."""
    tracker = make_tracker()
    receive(tracker)
    again = tracker.record_received(message_id="m1", sender="sip:alice@EXAMPLE.com:5060", now=1.0)
    assert again.duplicate and again.previous_status is None
    tracker.message_answered("m1", ALICE, 202, 1.0)
    again = tracker.record_received(message_id="m1", sender=ALICE, now=2.0, requested=FULL)
    assert again.duplicate and again.previous_status == 202
    assert len(owed(drain(tracker))) == 1  # the copy created no second obligation
    assert tracker.is_duplicate("m1", ALICE)
    assert not tracker.is_duplicate("m1", "sip:carol@example.org")
    assert not tracker.record_received(message_id="m1", sender="sip:carol@example.org", now=2.0).duplicate


def test_dedup_entry_expires() -> None:
    tracker = make_tracker(dedup_ttl=10.0)
    receive(tracker, requested=())
    tracker.handle_timer(10.0)
    assert not tracker.is_duplicate("m1", ALICE)


# --- declines (RFC 5438 §7.2.1, §12.1.1, §14) --------------------------------------------------------


def test_never_notify_a_notification() -> None:
    """RFC 5438 §7.2.1: loop guard."""
    tracker = make_tracker()
    assert receive(tracker, is_notification=True) == ()
    assert declined(drain(tracker)) == [
        (("display", "negative-delivery", "positive-delivery"), DeclineReason.LOOP_GUARD)
    ]
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert owed(drain(tracker)) == []


ANONYMOUS = "<sip:anonymous@anonymous.invalid>"


def test_anonymous_sender_declined() -> None:
    """RFC 5438 §12.1.1: requests from anonymous senders may be ignored."""
    tracker = make_tracker()
    assert receive(tracker, sender=ANONYMOUS, sip_from=None) == ()
    assert receive(tracker, message_id="m2", sender=ALICE, sip_from=ANONYMOUS) == ()
    assert [r for _, r in declined(drain(tracker))] == [DeclineReason.ANONYMOUS] * 2
    tracker2 = make_tracker(decline_anonymous=False)
    assert receive(tracker2, sender=ANONYMOUS, sip_from=None) != ()


def test_anonymous_cpim_from_with_real_sip_from_is_served() -> None:
    """RCS clients send an anonymous CPIM From; route on the SIP From, never on CPIM."""
    tracker = make_tracker()
    assert receive(tracker, sender=ANONYMOUS) == FULL_SORTED
    tracker.message_answered("m1", ANONYMOUS, 200, 1.0)
    [n] = owed(drain(tracker))
    assert n.request_uri == ALICE_SIP and n.sip_to == ALICE_SIP and n.cpim_to == ANONYMOUS
    assert tracker.mark_displayed("m1", 2.0, sender=ANONYMOUS) is not None


def test_untrusted_route_is_not_honoured() -> None:
    """RFC 5438 §14.1: a forged IMDN-Record-Route must not turn us into a flood source."""
    tracker = make_tracker()
    receive(tracker, imdn_route=["sip:victim@target.example"])
    assert declined(drain(tracker)) == [(FULL_SORTED, DeclineReason.ROUTE_UNTRUSTED)]
    tracker.message_answered("m1", ALICE, 200, 1.0)
    [n] = owed(drain(tracker))
    assert n.request_uri == ALICE_SIP and n.imdn_route == ()


FULL_SORTED = ("display", "negative-delivery", "positive-delivery")


def test_trusted_route_is_followed_and_copied() -> None:
    """RFC 5438 §7.2.1: IMDN goes to the top IMDN-Route; IMDN-Route copies the IM's Record-Routes in order."""
    route = ["sip:as1@example.net", "sip:as2@example.net"]
    tracker = make_tracker()
    receive(tracker, imdn_route=route, route_trusted=True)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    [n] = owed(drain(tracker))
    assert n.request_uri == route[0] and n.imdn_route == tuple(route)
    assert n.sip_to == ALICE_SIP  # SIP To stays the IM's SIP From


def test_route_count_is_capped() -> None:
    """An IMDN-Record-Route list longer than ``max_imdn_route`` is declined, even when trusted."""
    tracker = make_tracker(trust_imdn_route=True, max_imdn_route=1)
    receive(tracker, imdn_route=["sip:a@x", "sip:b@x"])
    assert declined(drain(tracker)) == [(FULL_SORTED, DeclineReason.ROUTE_TOO_LONG)]
    tracker.message_answered("m1", ALICE, 200, 1.0)
    assert owed(drain(tracker))[0].request_uri == ALICE_SIP


def test_rate_limit_per_peer() -> None:
    """RFC 5438 §14: at most ``rate_limit`` notifications per peer in a sliding window."""
    tracker = make_tracker(rate_limit=2, rate_window=60.0)
    for i in range(3):
        receive(tracker, message_id=f"m{i}", requested=("positive-delivery",))
        tracker.message_answered(f"m{i}", ALICE, 200, 1.0)
    events = drain(tracker)
    assert len(owed(events)) == 2
    assert declined(events) == [(("positive-delivery",), DeclineReason.RATE_LIMITED)]
    # Another peer is not affected; the window slides.
    receive(tracker, message_id="c1", requested=("positive-delivery",), sender="sip:carol@x", sip_from=None)
    tracker.message_answered("c1", "sip:carol@x", 200, 1.0)
    receive(tracker, message_id="m9", requested=("positive-delivery",), now=61.0)
    tracker.message_answered("m9", ALICE, 200, 61.0)
    assert len(owed(drain(tracker))) == 2


# --- sending what is owed: retries, 415 memory -----------------------------------------------------------


def owe_one(**config: Any) -> tuple[DispositionTracker, OwedNotification]:
    tracker = make_tracker(**config)
    receive(tracker, requested=("positive-delivery",))
    tracker.message_answered("m1", ALICE, 200, 0.0)
    [n] = owed(drain(tracker))
    return tracker, n


def test_acknowledged_notification_is_forgotten() -> None:
    tracker, n = owe_one()
    tracker.notification_outcome(n.notification_id, 200, 0.5)
    assert tracker.owed() == ()
    assert drain(tracker) == []


@pytest.mark.parametrize("failure", [None, 408, 500, 503])
def test_retry_with_backoff_then_give_up(failure: int | None) -> None:
    # A timeout (None) also parks the destination (park_base doubling to park_cap), here in step
    # with the backoff, so every failure retries on the same schedule.
    tracker, n = owe_one(max_attempts=4, retry_base=1.0, retry_cap=3.0, park_base=1.0, park_cap=3.0)
    now = 0.0
    sent_at = [now]
    for _ in range(3):
        tracker.notification_outcome(n.notification_id, failure, now)
        timer = tracker.get_timer()
        assert timer is not None
        now = timer
        tracker.handle_timer(now)
        [again] = owed(drain(tracker))
        assert again.notification_id == n.notification_id  # stable across retries
        sent_at.append(now)
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [1.0, 2.0, 3.0]  # doubling, capped
    tracker.notification_outcome(n.notification_id, failure, now)
    assert drain(tracker) == [NotificationAbandoned(n.notification_id, "m1", "attempts-exhausted")]
    assert tracker.owed() == ()


@pytest.mark.parametrize("code", [403, 404, 481, 603, 302])
def test_hard_failure_abandons(code: int) -> None:
    tracker, n = owe_one()
    tracker.notification_outcome(n.notification_id, code, 1.0)
    assert drain(tracker) == [NotificationAbandoned(n.notification_id, "m1", f"rejected-{code}")]


def test_provisional_and_late_outcomes_are_ignored() -> None:
    tracker, n = owe_one()
    tracker.notification_outcome(n.notification_id, 100, 0.1)
    assert tracker.owed()[0].in_flight
    tracker.notification_outcome("unknown", 200, 0.2)
    tracker.notification_outcome(n.notification_id, 503, 0.3)  # now queued, not in flight
    tracker.notification_outcome(n.notification_id, 200, 0.4)  # a stale outcome: ignored
    assert len(tracker.owed()) == 1


def test_missing_outcome_counts_as_timeout() -> None:
    tracker, _ = owe_one(in_flight_timeout=40.0, retry_base=2.0, park_base=2.0)
    assert tracker.get_timer() == 40.0
    tracker.handle_timer(40.0)
    assert drain(tracker) == []
    assert tracker.get_timer() == 42.0
    tracker.handle_timer(42.0)
    assert owed(drain(tracker))[0].attempt == 2


def test_owed_notification_expires() -> None:
    tracker, n = owe_one(owed_ttl=10.0, retry_base=20.0, retry_cap=20.0)
    tracker.notification_outcome(n.notification_id, 503, 1.0)
    assert tracker.get_timer() == 10.0
    tracker.handle_timer(10.0)
    assert drain(tracker) == [NotificationAbandoned(n.notification_id, "m1", "expired")]


@pytest.mark.parametrize("code", [415, 488])
def test_peer_refusing_imdn_gets_no_more(code: int) -> None:
    """No IMDN floods towards peers that reject them."""
    tracker = make_tracker()
    receive(tracker, message_id="a")
    receive(tracker, message_id="b")
    tracker.message_answered("a", ALICE, 200, 0.0)
    tracker.message_answered("b", ALICE, 200, 0.0)
    first, second = owed(drain(tracker))
    tracker.notification_outcome(first.notification_id, code, 1.0)
    events = drain(tracker)
    assert {e.notification_id for e in events if isinstance(e, NotificationAbandoned)} == {
        first.notification_id,
        second.notification_id,
    }
    assert tracker.owed() == ()
    assert PEER_NO_IMDN in tracker.peer_flags("sip:alice@example.com")
    # Pending display obligations go nowhere either, and new messages are declined up front.
    assert tracker.mark_displayed("a", 2.0) is None
    assert declined(drain(tracker)) == [(("display",), DeclineReason.PEER_REFUSES_IMDN)]
    receive(tracker, message_id="c")
    assert declined(drain(tracker))[-1] == (FULL_SORTED, DeclineReason.PEER_REFUSES_IMDN)


def test_peer_flags_expire_and_can_be_cleared() -> None:
    tracker = make_tracker(peer_flag_ttl=100.0)
    tracker.set_peer_flag("sip:alice@example.com", PEER_NO_IMDN, True, 0.0)
    assert tracker.peer_flags(ALICE) == {PEER_NO_IMDN}
    tracker.set_peer_flag(ALICE, PEER_NO_IMDN, False, 1.0)
    assert tracker.peer_flags(ALICE) == frozenset()
    tracker.set_peer_flag(ALICE, "no-cpim", True, 2.0)
    tracker.handle_timer(102.0)
    assert tracker.peer_flags(ALICE) == frozenset()


def test_received_record_expires() -> None:
    tracker = make_tracker(received_ttl=50.0)
    receive(tracker)
    tracker.message_answered("m1", ALICE, 200, 1.0)
    drain(tracker)
    tracker.handle_timer(50.0)
    assert tracker.received("m1") is None
    assert tracker.mark_displayed("m1", 51.0) is None


def test_unparseable_senders_do_not_collide() -> None:
    """A raw sender key keeps (sender, Message-ID) pairs apart even with spaces in both."""
    tracker = make_tracker()
    tracker.record_received(message_id="y z", sender="x", now=0.0)
    assert not tracker.record_received(message_id="z", sender="x y", now=0.0).duplicate
    assert tracker.record_received(message_id="y z", sender=" x ", now=0.0).duplicate
