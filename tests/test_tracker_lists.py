"""Messages sent to a URI list: every member's notification is applied until the deadline.

The sender never learns how many members a list has (RFC 5438 §7.1.4), so the first
member's notification must not end tracking; the others (parts 2..n of an aggregated IMDN, or
later relayed ones) are applied each to its own member entry, each checked as any notification
is (a Message-ID we sent, a sender we may hear from, a type we requested).
Rules are those of RFC 5438 §7.1.2 and §7.1.4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_helpers import drain

from sipimdn.imdn.tracker import (
    STATE_RANK,
    TERMINAL_STATES,
    DispositionChanged,
    DispositionState,
    DispositionTracker,
    NotificationAccepted,
    NotificationRejected,
    RejectReason,
    TrackerConfig,
    TrackerEvent,
    TrackingEnded,
    identity_key,
)
from sipimdn.store import MemoryStore

S = DispositionState
LIST = "sip:friends@lists.example"
LIST_SERVER_FROM = "<sip:friends@lists.example>"
MEMBERS = ("sip:bob@example.org", "sip:carol@example.org", "sip:dave@example.org")
TTL = 3600.0


def changes(events: list[TrackerEvent]) -> list[tuple[str, S, S]]:
    return [(e.recipient, e.previous, e.state) for e in events if isinstance(e, DispositionChanged)]


def rejections(events: list[TrackerEvent]) -> list[tuple[RejectReason, str]]:
    return [(e.reason, e.detail) for e in events if isinstance(e, NotificationRejected)]


def sent_to_list(
    requested: tuple[str, ...] = ("positive-delivery",), *, expect_members: bool = False, **config: Any
) -> DispositionTracker:
    tracker = DispositionTracker(TrackerConfig(tracking_ttl=TTL, **config), now=0.0)
    tracker.register_sent(
        message_id="m1", recipients=[LIST], requested=requested, now=0.0, expect_members=expect_members
    )
    drain(tracker)
    return tracker


def member_part(
    tracker: DispositionTracker, member: str, status: str = "delivered", now: float = 2.0, **kw: Any
) -> bool:
    """One part of the list server's aggregated IMDN: From the list, about one member."""
    kw.setdefault("kind", "delivery")
    kw.setdefault("sender", LIST_SERVER_FROM)
    kw.setdefault("original_recipient_uri", LIST)
    return tracker.notification_received(
        message_id="m1", status=status, now=now, recipient_uri=member, **kw
    )


def states(tracker: DispositionTracker) -> dict[str, tuple[S, str | None]]:
    record = tracker.sent("m1")
    assert record is not None
    return {entry.uri: (S(entry.state), entry.via) for entry in record.recipients}


# --- the intermediary engineer's scenario (requests-for-tracker.md §1) ---------------------------------


def test_aggregated_imdn_with_three_parts_positive_delivery_only() -> None:
    """Parts 2 and 3 used to be rejected as unknown-message once part 1 settled the list entry."""
    tracker = sent_to_list()
    assert tracker.response_received("m1", 202, 1.0)  # the list server relays (RFC 3428 §7)
    drain(tracker)
    list_key = identity_key(LIST)
    # The UA applies the parts of one aggregated IMDN one after another, sharing its Message-ID
    # only at the outer level: each part is checked on its own.
    for index, member in enumerate(MEMBERS):
        assert member_part(tracker, member, notification_id=f"agg1#{index}")  # ids as the UA forms them
    events = drain(tracker)
    assert rejections(events) == []
    assert changes(events) == [
        (MEMBERS[0], S.ACCEPTED, S.DELIVERED),
        (LIST, S.ACCEPTED, S.DELIVERED),  # the list's entry takes the first news
        (MEMBERS[1], S.ACCEPTED, S.DELIVERED),
        (MEMBERS[2], S.ACCEPTED, S.DELIVERED),
    ]
    assert states(tracker) == {
        LIST: (S.DELIVERED, None),
        **{member: (S.DELIVERED, list_key) for member in MEMBERS},
    }
    assert not [e for e in events if isinstance(e, TrackingEnded)]
    # The same aggregated IMDN again (a retransmission) changes nothing.
    for index, member in enumerate(MEMBERS):
        assert not member_part(tracker, member, now=3.0, notification_id=f"agg1#{index}")
    assert [r for r, _ in rejections(drain(tracker))] == [RejectReason.DUPLICATE] * 3
    # A member relayed later, on its own, still counts (RFC 5438 §7.1.4: be ready for several).
    assert member_part(tracker, "sip:erin@example.org", now=600.0, sender="sip:erin@example.org")
    assert changes(drain(tracker)) == [("sip:erin@example.org", S.ACCEPTED, S.DELIVERED)]
    # The deadline ends it; delivered entries stay delivered.
    assert tracker.get_timer() == TTL
    tracker.handle_timer(TTL)
    events = drain(tracker)
    assert changes(events) == []
    assert events == [
        TrackingEnded(
            "m1",
            (
                (LIST, S.DELIVERED),
                *((member, S.DELIVERED) for member in (*MEMBERS, "sip:erin@example.org")),
            ),
        )
    ]
    assert tracker.sent("m1") is None
    assert not member_part(tracker, "sip:frank@example.org", now=TTL + 1)
    assert [r for r, _ in rejections(drain(tracker))] == [RejectReason.UNKNOWN_MESSAGE]  # RFC 5438 §7.1.3


def test_members_before_the_202_keep_the_record_open() -> None:
    """liblinphone-style order: the list's members report before its 202 arrives."""
    tracker = sent_to_list()
    assert member_part(tracker, MEMBERS[0], now=0.5)
    assert tracker.response_received("m1", 202, 1.0)
    assert member_part(tracker, MEMBERS[1], now=1.5)
    events = drain(tracker)
    assert not [e for e in events if isinstance(e, TrackingEnded)]
    assert states(tracker)[MEMBERS[0]][0] is S.DELIVERED
    assert states(tracker)[MEMBERS[1]][0] is S.DELIVERED


def test_list_failing_at_sip_level_still_ends_tracking() -> None:
    """After a non-2xx final answer no member can report (RFC 5438 §7.2.1.1): nothing is held open."""
    tracker = sent_to_list()
    assert member_part(tracker, MEMBERS[0], now=0.5)
    drain(tracker)
    assert tracker.response_received("m1", 404, 1.0)
    events = drain(tracker)
    assert isinstance(events[-1], TrackingEnded)
    assert tracker.sent("m1") is None


# --- each member is checked on its own (RFC 5438 §7.1.2, §7.2, §14.1) ------------------------------


def test_each_member_has_its_own_monotonic_state_and_one_per_type() -> None:
    tracker = sent_to_list(("positive-delivery", "negative-delivery", "display"))
    tracker.response_received("m1", 202, 1.0)
    assert member_part(tracker, MEMBERS[0])
    assert member_part(tracker, MEMBERS[1], "failed")
    assert member_part(tracker, MEMBERS[0], kind="display", status="displayed", now=3.0)
    drain(tracker)
    # RFC 5438 §7.2: a second delivery notification for one member is refused, the other is untouched.
    assert not member_part(tracker, MEMBERS[0], "failed", now=4.0)
    assert not member_part(tracker, MEMBERS[1], now=4.0)
    events = drain(tracker)
    assert [r for r, _ in rejections(events)] == [RejectReason.DUPLICATE, RejectReason.DUPLICATE]
    assert changes(events) == []
    got = states(tracker)
    assert got[MEMBERS[0]][0] is S.DISPLAYED
    assert got[MEMBERS[1]][0] is S.FAILED
    # The list's entry took the first news of each type and nothing else.
    assert got[LIST][0] is S.DISPLAYED
    record = tracker.sent("m1")
    assert record is not None
    assert record.recipients[0].delivery == "delivered"


def test_member_notification_of_a_type_not_requested_is_refused() -> None:
    """A type not requested is refused for members too: only positive delivery was asked for."""
    tracker = sent_to_list()
    tracker.response_received("m1", 202, 1.0)
    assert member_part(tracker, MEMBERS[0])
    drain(tracker)
    assert not member_part(tracker, MEMBERS[1], kind="display", status="displayed")
    assert not member_part(tracker, MEMBERS[2], "failed")
    events = drain(tracker)
    assert [r for r, _ in rejections(events)] == [RejectReason.NOT_REQUESTED] * 2
    assert set(states(tracker)) == {LIST, MEMBERS[0]}


def test_member_must_be_reached_through_a_recipient_we_addressed() -> None:
    """RFC 5438 §14.1: original-recipient-uri must name the list we sent to, not a stranger nor a member."""
    tracker = sent_to_list()
    tracker.response_received("m1", 202, 1.0)
    assert member_part(tracker, MEMBERS[0])
    drain(tracker)
    before = tracker.sent("m1")
    # A stranger's "list".
    assert not member_part(
        tracker, MEMBERS[1], sender="sip:mallory@evil.example", original_recipient_uri="sip:x@evil.example"
    )
    # A member vouching for a further "member" (Original-To is what the sender addressed, §6.4).
    assert not member_part(tracker, "sip:mallory@evil.example", original_recipient_uri=MEMBERS[0])
    events = drain(tracker)
    assert [r for r, _ in rejections(events)] == [RejectReason.NOT_A_RECIPIENT] * 2
    assert tracker.sent("m1") == before


def test_member_cap_rejects_with_a_clear_reason_and_keeps_tracking() -> None:
    tracker = sent_to_list(max_recipients=3)  # the list and two members
    tracker.response_received("m1", 202, 1.0)
    assert member_part(tracker, MEMBERS[0])
    assert member_part(tracker, MEMBERS[1])
    drain(tracker)
    assert not member_part(tracker, MEMBERS[2])
    [(reason, detail)] = rejections(drain(tracker))
    assert reason is RejectReason.TOO_MANY_RECIPIENTS
    assert MEMBERS[2] in detail and "max_recipients=3" in detail
    # Members already tracked are still served; the record stays until its deadline.
    assert member_part(tracker, MEMBERS[0], kind="delivery", status="delivered") is False
    assert [r for r, _ in rejections(drain(tracker))] == [RejectReason.DUPLICATE]
    assert len(states(tracker)) == 3
    tracker.handle_timer(TTL)
    assert isinstance(drain(tracker)[-1], TrackingEnded)


def test_a_flood_of_forged_members_stays_bounded() -> None:
    tracker = sent_to_list(max_recipients=50)
    tracker.response_received("m1", 202, 1.0)
    for i in range(500):
        member_part(tracker, f"sip:m{i}@example.org", now=2.0 + i / 1000)
    events = drain(tracker)
    accepted = [e.recipient for e in events if isinstance(e, NotificationAccepted)]
    # The first member's news is also the list's; 49 members fill the cap of 50 with the list.
    assert accepted == ["sip:m0@example.org", LIST, *(f"sip:m{i}@example.org" for i in range(1, 49))]
    assert [r for r, _ in rejections(events)] == [RejectReason.TOO_MANY_RECIPIENTS] * 451
    assert len(states(tracker)) == 50


# --- expect_members: the application knows the target is a list ----------------------------------------


def test_expect_members_keeps_tracking_after_the_list_itself_reports() -> None:
    """Without it, a list's own delivered (no member named yet) would end tracking."""
    for expect, still_tracked in ((False, False), (True, True)):
        tracker = sent_to_list(expect_members=expect)
        tracker.response_received("m1", 202, 1.0)
        assert tracker.notification_received(
            message_id="m1", kind="delivery", status="delivered", now=2.0, sender=LIST_SERVER_FROM
        )
        drain(tracker)
        assert (tracker.sent("m1") is not None) is still_tracked
    assert member_part(tracker, MEMBERS[0], now=3.0)
    assert states(tracker)[MEMBERS[0]] == (S.DELIVERED, identity_key(LIST))


def test_expect_members_survives_a_restart() -> None:
    store = MemoryStore()
    tracker = sent_to_list(expect_members=True)
    tracker.response_received("m1", 202, 1.0)
    store.apply(tracker.writes_to_apply())
    tracker = DispositionTracker(tracker.config, snapshot=store.load(5.0), now=5.0)
    assert tracker.notification_received(
        message_id="m1", kind="delivery", status="delivered", now=6.0, sender=LIST_SERVER_FROM
    )
    assert member_part(tracker, MEMBERS[0], now=7.0)
    drain(tracker)
    assert tracker.sent("m1") is not None
    assert tracker.get_timer() == TTL


def test_members_learnt_survive_a_restart_and_keep_the_record_open() -> None:
    store = MemoryStore()
    tracker = sent_to_list()
    tracker.response_received("m1", 202, 1.0)
    assert member_part(tracker, MEMBERS[0])
    store.apply(tracker.writes_to_apply())
    tracker = DispositionTracker(tracker.config, snapshot=store.load(5.0), now=5.0)
    assert member_part(tracker, MEMBERS[1], now=6.0)
    assert not member_part(tracker, MEMBERS[0], now=6.0)  # one per type (RFC 5438 §7.2), across the restart
    drain(tracker)
    assert tracker.sent("m1") is not None


# --- invariants over random member traffic ---------------------------------------------------------------

PEOPLE = (*MEMBERS, "sip:mallory@evil.example")
ORIGINALS = (LIST, "sip:other-list@lists.example", MEMBERS[0], None)


@dataclass(frozen=True)
class Part:
    kind: str
    status: str
    recipient_uri: str | None
    original_recipient_uri: str | None
    sender: str | None


part_st = st.builds(
    Part,
    kind=st.sampled_from(["delivery", "display", "processing"]),
    status=st.sampled_from(["delivered", "failed", "displayed", "error", "forbidden", "stored"]),
    recipient_uri=st.sampled_from((*PEOPLE, None)),
    original_recipient_uri=st.sampled_from(ORIGINALS),
    sender=st.sampled_from((LIST_SERVER_FROM, *PEOPLE, None)),
)
step_st = st.one_of(
    part_st,
    st.sampled_from([202, 200, 404, 100]),
    st.sampled_from(["tick", "restart"]),
)


@settings(max_examples=300, deadline=None)
@given(
    requested=st.sets(st.sampled_from(["positive-delivery", "negative-delivery", "display", "processing"])),
    expect_members=st.booleans(),
    cap=st.integers(min_value=1, max_value=4),
    steps=st.lists(step_st, max_size=30),
)
def test_member_invariants(
    requested: set[str], expect_members: bool, cap: int, steps: list[object]
) -> None:
    """States never move back; a member exists only via the list; the cap holds; the store mirrors."""
    config = TrackerConfig(tracking_ttl=100.0, max_recipients=cap)
    store = MemoryStore()
    tracker = DispositionTracker(config, now=0.0)
    tracker.register_sent(
        message_id="m1", recipients=[LIST], requested=requested, now=0.0, expect_members=expect_members
    )
    store.apply(tracker.writes_to_apply())
    now = 0.0
    last: dict[str, S] = {}
    list_key = identity_key(LIST)
    for step in steps:
        current = tracker.sent("m1")
        before_status = current.sip_status if current is not None else None
        if step == "restart":
            before = tracker.sent("m1")
            tracker = DispositionTracker(config, snapshot=store.load(now), now=now)
            assert tracker.sent("m1") == before
        elif step == "tick":
            now += 30.0
            tracker.handle_timer(now)
        elif isinstance(step, int):
            tracker.response_received("m1", step, now)
        else:
            assert isinstance(step, Part)
            before = tracker.sent("m1")
            applied = tracker.notification_received(
                message_id="m1",
                kind=step.kind,
                status=step.status,
                now=now,
                sender=step.sender,
                recipient_uri=step.recipient_uri,
                original_recipient_uri=step.original_recipient_uri,
            )
            if not applied:
                assert tracker.sent("m1") == before
        store.apply(tracker.writes_to_apply())
        sip_ok = before_status is not None and 200 <= before_status < 300
        for event in drain(tracker):
            if isinstance(event, DispositionChanged):
                if event.recipient not in last:
                    # A member learnt after the 2xx starts as accepted, with no event of its own.
                    member = identity_key(event.recipient) != list_key
                    last[event.recipient] = S.ACCEPTED if member and sip_ok else S.PENDING
                assert last[event.recipient] == event.previous
                assert event.previous not in TERMINAL_STATES
                assert STATE_RANK[event.state] > STATE_RANK[event.previous]
                last[event.recipient] = event.state
        record = tracker.sent("m1")
        assert {r.key for r in store.load(now).sent} == ({"m1"} if record is not None else set())
        if record is None:
            continue
        assert len(record.recipients) <= cap
        members = [entry for entry in record.recipients if entry.via is not None]
        # Members only ever come through the list we addressed (RFC 5438 §14.1).
        assert all(entry.via == list_key for entry in members)
        assert all(identity_key(entry.uri) != list_key for entry in members)
        for entry in record.recipients:
            if entry.uri not in last:  # no change yet: as it started
                member = entry.via is not None
                last[entry.uri] = S.ACCEPTED if member and sip_ok else S.PENDING
            assert S(entry.state) == last[entry.uri]
        # Once the list has members (and did not fail at SIP level) tracking lasts to the deadline.
        if members and record.sip_status is not None and record.sip_status < 300:
            assert now < record.deadline
