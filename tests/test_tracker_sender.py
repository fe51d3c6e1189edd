"""Sender side of the disposition tracker: the state table and the checks a notification
passes before it is applied (RFC 5438 §7.1.2, §14). Time is a plain float passed in as
``now``: the tracker reads no clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest
from tracker_helpers import drain

from sipimdn.errors import LocalProtocolError
from sipimdn.imdn.tracker import (
    STATE_RANK,
    TERMINAL_STATES,
    TRANSITIONS,
    DispositionChanged,
    DispositionState,
    DispositionTracker,
    NotificationAccepted,
    NotificationRejected,
    RejectReason,
    SenderInput,
    TrackerConfig,
    TrackerEvent,
    TrackingEnded,
)
from sipimdn.store import Delete, Put, SentRecord

S = DispositionState
BOB = "sip:bob@127.0.0.1:5070"
BOB_AOR = "<sip:bob@127.0.0.1>"  # liblinphone drops the port of its own URIs
CAROL = "sip:carol@example.org"
MALLORY = "sip:mallory@evil.example"
FULL = ("positive-delivery", "negative-delivery", "display")


def changes(events: list[TrackerEvent]) -> list[tuple[str, S, S]]:
    return [(e.recipient, e.previous, e.state) for e in events if isinstance(e, DispositionChanged)]


def rejections(events: list[TrackerEvent]) -> list[RejectReason]:
    return [e.reason for e in events if isinstance(e, NotificationRejected)]


def state_of(tracker: DispositionTracker, message_id: str, uri: str = BOB) -> S:
    record = tracker.sent(message_id)
    assert record is not None
    return S(next(r.state for r in record.recipients if r.uri == uri))


def new_tracker(
    recipients: tuple[str, ...] = (BOB,),
    requested: tuple[str, ...] = FULL,
    *,
    expect_members: bool = False,
    **config: Any,
) -> DispositionTracker:
    tracker = DispositionTracker(TrackerConfig(**config), now=0.0)
    tracker.register_sent(
        message_id="m1", recipients=recipients, requested=requested, now=0.0, expect_members=expect_members
    )
    drain(tracker)
    tracker.writes_to_apply()
    return tracker


def notify(tracker: DispositionTracker, kind: str, status: str, now: float = 1.0, **kw: str | None) -> bool:
    kw.setdefault("sender", BOB_AOR)
    return tracker.notification_received(
        message_id=kw.pop("message_id", "m1") or "m1", kind=kind, status=status, now=now, **kw
    )


# --- the state table -----------------------------------------------------------------------------


def test_table_never_moves_backwards_and_terminal_states_list_nothing() -> None:
    for (state, _), target in TRANSITIONS.items():
        assert state not in TERMINAL_STATES
        assert STATE_RANK[target] > STATE_RANK[state]


def test_full_path_pending_accepted_delivered_displayed() -> None:
    tracker = new_tracker()
    assert state_of(tracker, "m1") is S.PENDING
    assert tracker.response_received("m1", 200, 1.0)
    events = drain(tracker)
    assert changes(events) == [(BOB, S.PENDING, S.ACCEPTED)]
    assert [e.sip_status for e in events if isinstance(e, DispositionChanged)] == [200]
    assert notify(tracker, "delivery", "delivered", 2.0)
    events = drain(tracker)
    assert changes(events) == [(BOB, S.ACCEPTED, S.DELIVERED)]
    accepted = [e for e in events if isinstance(e, NotificationAccepted)]
    assert accepted[0].changed and accepted[0].kind == "delivery"
    assert notify(tracker, "display", "displayed", 3.0)
    events = drain(tracker)
    assert changes(events) == [(BOB, S.DELIVERED, S.DISPLAYED)]
    # Displayed is terminal and the SIP outcome is known: nothing more can come, tracking ends.
    ended = [e for e in events if isinstance(e, TrackingEnded)]
    assert ended == [TrackingEnded("m1", ((BOB, S.DISPLAYED),))]
    assert tracker.sent("m1") is None
    assert tracker.writes_to_apply()[-1] == Delete("sent", "m1")


def test_202_counts_as_accepted_not_delivered() -> None:
    """RFC 3428 §7: 202 means relayed; the state is accepted, delivery still awaited."""
    tracker = new_tracker()
    tracker.response_received("m1", 202, 1.0)
    assert state_of(tracker, "m1") is S.ACCEPTED


@pytest.mark.parametrize("code", [404, 408, 415, 486, 503, 603])
def test_non_2xx_final_fails_every_pending_recipient(code: int) -> None:
    tracker = new_tracker(recipients=(BOB, CAROL))
    tracker.response_received("m1", code, 1.0)
    events = drain(tracker)
    assert changes(events) == [(BOB, S.PENDING, S.FAILED), (CAROL, S.PENDING, S.FAILED)]
    # Nothing can change any more (RFC 5438 §7.2.1.1: no negative delivery follows a non-2xx).
    assert isinstance(events[-1], TrackingEnded)


def test_provisional_response_is_ignored_and_second_final_refused() -> None:
    tracker = new_tracker()
    assert tracker.response_received("m1", 180, 1.0)
    assert state_of(tracker, "m1") is S.PENDING
    assert tracker.response_received("m1", 200, 1.0)
    assert not tracker.response_received("m1", 500, 2.0)
    assert state_of(tracker, "m1") is S.ACCEPTED
    assert not tracker.response_received("unknown", 200, 2.0)


def test_notification_before_final_response_counts() -> None:
    """liblinphone sends its delivery IMDN before its 200 OK (observed with liblinphone 5.1)."""
    tracker = new_tracker()
    assert notify(tracker, "delivery", "delivered", 1.0)
    assert changes(drain(tracker)) == [(BOB, S.PENDING, S.DELIVERED)]
    tracker.response_received("m1", 200, 1.1)
    assert changes(drain(tracker)) == []
    assert state_of(tracker, "m1") is S.DELIVERED


def test_failure_response_after_early_delivery_keeps_delivered() -> None:
    tracker = new_tracker(recipients=(BOB, CAROL))
    notify(tracker, "delivery", "delivered", 1.0)
    drain(tracker)
    tracker.response_received("m1", 480, 2.0)
    assert changes(drain(tracker)) == [(CAROL, S.PENDING, S.FAILED)]
    assert state_of(tracker, "m1") is S.DELIVERED


def test_late_delivered_after_displayed_changes_nothing() -> None:
    """Never backwards; RFC 5438 §7.2: the delivery notification is recorded, the state stays."""
    tracker = new_tracker()
    notify(tracker, "display", "displayed", 1.0)
    drain(tracker)
    assert notify(tracker, "delivery", "delivered", 2.0)
    events = drain(tracker)
    assert changes(events) == []
    assert [e.changed for e in events if isinstance(e, NotificationAccepted)] == [False]
    record = tracker.sent("m1")
    assert record is not None
    assert record.recipients[0].delivery == "delivered"
    assert state_of(tracker, "m1") is S.DISPLAYED


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("delivery", "failed", S.FAILED),
        ("delivery", "forbidden", S.FORBIDDEN),
        ("delivery", "error", S.ERROR),
        ("display", "forbidden", S.FORBIDDEN),
        ("display", "error", S.ERROR),
        ("display", "displayed", S.DISPLAYED),
        ("delivery", "delivered", S.DELIVERED),
    ],
)
def test_each_notification_from_accepted(kind: str, status: str, expected: S) -> None:
    tracker = new_tracker()
    tracker.response_received("m1", 200, 1.0)
    drain(tracker)
    assert notify(tracker, kind, status, 2.0)
    assert changes(drain(tracker)) == [(BOB, S.ACCEPTED, expected)]


def test_display_forbidden_after_delivered_keeps_delivery_status() -> None:
    tracker = new_tracker(recipients=(BOB, CAROL))
    tracker.response_received("m1", 200, 1.0)
    notify(tracker, "delivery", "delivered", 2.0)
    notify(tracker, "display", "forbidden", 3.0)
    assert changes(drain(tracker))[-1] == (BOB, S.DELIVERED, S.FORBIDDEN)
    record = tracker.sent("m1")
    assert record is not None
    assert (record.recipients[0].delivery, record.recipients[0].display) == ("delivered", "forbidden")


def test_terminal_failure_is_not_overridden() -> None:
    tracker = new_tracker(recipients=(BOB, CAROL))
    tracker.response_received("m1", 200, 1.0)
    notify(tracker, "delivery", "failed", 2.0)
    drain(tracker)
    assert notify(tracker, "display", "displayed", 3.0)  # recorded, contradicts nothing in the table
    assert changes(drain(tracker)) == []
    assert state_of(tracker, "m1") is S.FAILED


def test_processing_is_info_only() -> None:
    tracker = new_tracker(requested=("positive-delivery", "processing"))
    tracker.response_received("m1", 202, 1.0)
    drain(tracker)
    assert notify(tracker, "processing", "stored", 2.0)
    events = drain(tracker)
    assert changes(events) == []
    assert [(e.kind, e.status, e.changed) for e in events if isinstance(e, NotificationAccepted)] == [
        ("processing", "stored", False)
    ]
    assert state_of(tracker, "m1") is S.ACCEPTED


def test_kind_may_be_a_str_enum() -> None:
    class Kind(StrEnum):
        DELIVERY = "delivery"

    class Status(StrEnum):
        DELIVERED = "delivered"

    tracker = new_tracker()
    assert tracker.notification_received(
        message_id="m1", kind=Kind.DELIVERY, status=Status.DELIVERED, now=1.0, sender=BOB
    )
    assert state_of(tracker, "m1") is S.DELIVERED


# --- rejections never change anything ----------------------------------------------------------------


def assert_unchanged(tracker: DispositionTracker, before: SentRecord | None) -> None:
    assert tracker.sent("m1") == before
    assert tracker.writes_to_apply() == []


def rejected(tracker: DispositionTracker, kind: str, status: str, **kw: str | None) -> list[RejectReason]:
    before = tracker.sent("m1")
    assert not notify(tracker, kind, status, 5.0, **kw)
    events = drain(tracker)
    assert not changes(events)
    assert not [e for e in events if isinstance(e, NotificationAccepted)]
    assert_unchanged(tracker, before)
    return rejections(events)


def test_unknown_message_id_changes_nothing() -> None:
    """RFC 5438 §7.1.2: a Message-ID we never sent is unsolicited (RFC 5438 §14.1): logged, not applied."""
    tracker = new_tracker()
    assert rejected(tracker, "delivery", "delivered", message_id="guess") == [RejectReason.UNKNOWN_MESSAGE]


def test_notification_from_a_non_recipient_is_refused() -> None:
    """RFC 5438 §14.1: only a recipient of the message (by SIP or CPIM From) may report on it."""
    tracker = new_tracker()
    assert rejected(tracker, "delivery", "delivered", sender=MALLORY) == [RejectReason.NOT_A_RECIPIENT]
    assert rejected(
        tracker,
        "delivery",
        "delivered",
        sender=MALLORY,
        sip_from=CAROL,
        recipient_uri=CAROL,
        original_recipient_uri=CAROL,
    ) == [RejectReason.NOT_A_RECIPIENT]
    # An anonymous CPIM From with no recipient URI proves nothing.
    assert rejected(tracker, "delivery", "delivered", sender="<sip:anonymous@anonymous.invalid>") == [
        RejectReason.NOT_A_RECIPIENT
    ]


def test_either_sender_identity_naming_the_recipient_suffices() -> None:
    """RFC 5438 §7: the SIP From or the CPIM From naming the recipient is enough (RCS clients put
    an anonymous CPIM From on a message whose SIP From is real)."""
    for kw in (
        {"sender": None, "sip_from": "sip:bob@127.0.0.1"},
        {
            "sender": "<sip:anonymous@anonymous.invalid>",
            "sip_from": "sip:bob@127.0.0.1",
            "recipient_uri": BOB,
        },
        {"sender": "im:bob@127.0.0.1"},
        {"sender": BOB_AOR, "original_recipient_uri": BOB},
    ):
        tracker = new_tracker()
        assert notify(tracker, "delivery", "delivered", **kw), kw


def test_recipient_uris_in_the_xml_alone_prove_nothing() -> None:
    """RFC 5438 §14: the XML is only the sender's claim. A third party naming bob as the
    recipient (or original recipient) moves nothing, and a one-to-one message gains no member."""
    for kw in (
        {"sender": "<sip:anonymous@anonymous.invalid>", "recipient_uri": BOB},
        {"sender": MALLORY, "original_recipient_uri": "sip:bob@127.0.0.1"},
        {"sender": MALLORY, "sip_from": MALLORY, "recipient_uri": BOB, "original_recipient_uri": BOB},
        {"sender": MALLORY, "recipient_uri": MALLORY, "original_recipient_uri": BOB},
        {"sender": CAROL, "recipient_uri": "sip:eve@example.org", "original_recipient_uri": BOB},
    ):
        tracker = new_tracker()
        before = tracker.sent("m1")
        assert rejected(tracker, "delivery", "delivered", **kw) == [RejectReason.NOT_A_RECIPIENT], kw
        assert tracker.sent("m1") == before
    # bob reporting from another URI of his (a GRUU) is still bob, and not a list member.
    tracker = new_tracker()
    assert notify(
        tracker, "delivery", "delivered", sender=BOB_AOR, recipient_uri="sip:bob@127.0.0.1;gr=urn:uuid:1"
    )
    record = tracker.sent("m1")
    assert record is None or [r.uri for r in record.recipients] == [BOB]


def test_sender_ports_compared_when_configured() -> None:
    """With ``compare_ports`` the notification's sender must match the recipient's port too."""
    tracker = new_tracker(compare_ports=True)
    assert rejected(tracker, "delivery", "delivered", sender=BOB_AOR) == [RejectReason.NOT_A_RECIPIENT]
    assert notify(tracker, "delivery", "delivered", sender="sip:bob@127.0.0.1:5070;transport=udp")


@pytest.mark.parametrize(
    ("requested", "kind", "status"),
    [
        (("negative-delivery",), "delivery", "delivered"),
        (("positive-delivery",), "delivery", "failed"),
        (("positive-delivery",), "display", "displayed"),
        (("display",), "delivery", "error"),
        (("positive-delivery", "display"), "processing", "processed"),
    ],
)
def test_type_not_requested_is_refused(requested: tuple[str, ...], kind: str, status: str) -> None:
    tracker = new_tracker(requested=requested)
    assert rejected(tracker, kind, status) == [RejectReason.NOT_REQUESTED]


@pytest.mark.parametrize(
    ("requested", "status"), [(("positive-delivery",), "forbidden"), (("negative-delivery",), "error")]
)
def test_forbidden_and_error_answer_either_delivery_request(
    requested: tuple[str, ...], status: str
) -> None:
    tracker = new_tracker(requested=requested)
    assert notify(tracker, "delivery", status)


def test_second_notification_of_a_type_is_a_duplicate() -> None:
    """RFC 5438 §7.2: at most one per type; a delivered then failed is not honoured."""
    tracker = new_tracker(recipients=(BOB, CAROL))
    assert notify(tracker, "delivery", "delivered", 1.0)
    drain(tracker)
    tracker.writes_to_apply()
    assert rejected(tracker, "delivery", "failed") == [RejectReason.DUPLICATE]
    assert rejected(tracker, "delivery", "delivered") == [RejectReason.DUPLICATE]


def test_replayed_notification_id_is_a_duplicate() -> None:
    """A notification whose own Message-ID was already applied is a replay: refused as a duplicate."""
    tracker = new_tracker(recipients=(BOB, CAROL))
    assert notify(tracker, "delivery", "delivered", 1.0, notification_id="n1")
    drain(tracker)
    tracker.writes_to_apply()
    assert rejected(tracker, "display", "displayed", notification_id="n1") == [RejectReason.DUPLICATE]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("delivery", "displayed"),
        ("display", "delivered"),
        ("display", "failed"),
        ("processing", "delivered"),
        ("delivery", "stored"),
        ("delivery", "Delivered"),
    ],
)
def test_status_not_belonging_to_kind(kind: str, status: str) -> None:
    tracker = new_tracker(requested=(*FULL, "processing"))
    assert rejected(tracker, kind, status) == [RejectReason.INVALID_STATUS]


def test_unknown_kind() -> None:
    tracker = new_tracker()
    assert rejected(tracker, "read", "read") == [RejectReason.UNKNOWN_KIND]


def test_negative_delivery_after_sip_failure() -> None:
    """RFC 5438 §7.2.1.1: a UAS that answered non-2xx must not send a negative delivery IMDN."""
    tracker = new_tracker(recipients=(BOB, CAROL))
    notify(tracker, "delivery", "delivered", 1.0)  # keeps tracking alive after the failure
    tracker.response_received("m1", 480, 2.0)
    drain(tracker)
    tracker.writes_to_apply()
    assert rejected(tracker, "delivery", "failed", sender=CAROL) == [RejectReason.AFTER_SIP_FAILURE]


def test_notification_after_tracking_ended_is_unknown() -> None:
    """RFC 5438 §7.1.3: notifications arriving after state expiry are consumed."""
    tracker = new_tracker(requested=("positive-delivery",))
    tracker.response_received("m1", 200, 1.0)
    notify(tracker, "delivery", "delivered", 2.0)
    assert tracker.sent("m1") is None  # delivered was all that was asked: tracking ended
    assert not notify(tracker, "delivery", "delivered", 3.0)
    assert rejections(drain(tracker))[-1] is RejectReason.UNKNOWN_MESSAGE


# --- intermediaries and list members -------------------------------------------------------------------

LIST = "sip:friends@lists.example"


def test_members_of_a_list_tracked_individually() -> None:
    """RFC 5438 §7.1.2: recipient-uri / original-recipient-uri tell members apart (RFC 5365 list).

    Members speak for themselves once the recipient is known to be a list (here: the application
    said so); see test_members_self_reporting_need_a_known_list for a recipient not known as one.
    """
    tracker = new_tracker(recipients=(LIST,), expect_members=True)
    tracker.response_received("m1", 202, 1.0)
    drain(tracker)
    assert notify(
        tracker, "delivery", "delivered", 2.0, sender=CAROL, recipient_uri=CAROL, original_recipient_uri=LIST
    )
    assert changes(drain(tracker)) == [(CAROL, S.ACCEPTED, S.DELIVERED), (LIST, S.ACCEPTED, S.DELIVERED)]
    assert notify(
        tracker,
        "delivery",
        "failed",
        3.0,
        sender="sip:dave@example.org",
        recipient_uri="sip:dave@example.org",
        original_recipient_uri=LIST,
    )
    assert changes(drain(tracker)) == [("sip:dave@example.org", S.ACCEPTED, S.FAILED)]
    record = tracker.sent("m1")
    assert record is not None
    assert [(r.uri, r.via) for r in record.recipients] == [
        (LIST, None),
        (CAROL, "sip:friends@lists.example"),
        ("sip:dave@example.org", "sip:friends@lists.example"),
    ]


def test_members_self_reporting_need_a_known_list() -> None:
    """RFC 5438 §14: "carol, reached through the list you addressed" from carol herself proves
    nothing about a recipient not known to be a list: it is the forged-member attack's shape. The
    list's own notification teaches that it is one; members may then speak for themselves."""
    tracker = new_tracker(recipients=(LIST,))
    tracker.response_received("m1", 202, 1.0)
    drain(tracker)
    tracker.writes_to_apply()
    assert rejected(
        tracker, "delivery", "delivered", sender=CAROL, recipient_uri=CAROL, original_recipient_uri=LIST
    ) == [RejectReason.NOT_A_RECIPIENT]
    assert notify(
        tracker,
        "delivery",
        "delivered",
        2.0,
        sender=LIST,
        recipient_uri="sip:dave@example.org",
        original_recipient_uri=LIST,
    )
    assert notify(
        tracker, "delivery", "delivered", 3.0, sender=CAROL, recipient_uri=CAROL, original_recipient_uri=LIST
    )
    record = tracker.sent("m1")
    assert record is not None
    assert [(r.uri, r.via) for r in record.recipients] == [
        (LIST, None),
        ("sip:dave@example.org", "sip:friends@lists.example"),
        (CAROL, "sip:friends@lists.example"),
    ]


def test_member_limit() -> None:
    tracker = new_tracker(recipients=(LIST,), max_recipients=2, expect_members=True)
    assert notify(
        tracker, "delivery", "delivered", 1.0, sender=CAROL, recipient_uri=CAROL, original_recipient_uri=LIST
    )
    drain(tracker)
    tracker.writes_to_apply()
    assert rejected(
        tracker,
        "delivery",
        "delivered",
        sender="sip:dave@x",
        recipient_uri="sip:dave@x",
        original_recipient_uri=LIST,
    ) == [RejectReason.TOO_MANY_RECIPIENTS]


def test_intermediary_reports_for_a_named_recipient() -> None:
    tracker = DispositionTracker(now=0.0)
    tracker.register_sent(
        message_id="m1",
        recipients=[BOB, CAROL],
        requested=FULL,
        now=0.0,
        intermediaries=["sip:relay@example.net"],
    )
    drain(tracker)
    tracker.writes_to_apply()
    # Without a recipient-uri the intermediary's report is ambiguous for two recipients.
    assert rejected(tracker, "delivery", "failed", sender="sip:relay@example.net") == [
        RejectReason.AMBIGUOUS_RECIPIENT
    ]
    assert notify(tracker, "delivery", "failed", 2.0, sender="sip:relay@example.net", recipient_uri=CAROL)
    assert changes(drain(tracker)) == [(CAROL, S.PENDING, S.FAILED)]


def test_intermediary_single_recipient_needs_no_recipient_uri() -> None:
    tracker = DispositionTracker(now=0.0)
    tracker.register_sent(
        message_id="m1",
        recipients=[BOB],
        requested=("processing",),
        now=0.0,
        intermediaries=["sip:store@example.net"],
    )
    assert notify(tracker, "processing", "stored", 1.0, sender="sip:store@example.net")


# --- expiry ------------------------------------------------------------------------------------------


def test_expiry_of_unsettled_recipients() -> None:
    tracker = DispositionTracker(now=0.0)
    tracker.register_sent(
        message_id="m1", recipients=[BOB, CAROL, "sip:dave@x"], requested=FULL, now=0.0, expires_at=100.0
    )
    tracker.response_received("m1", 200, 1.0)
    notify(tracker, "delivery", "delivered", 2.0, sender=CAROL)
    notify(tracker, "display", "displayed", 3.0, sender="sip:dave@x")
    drain(tracker)
    assert tracker.get_timer() == 100.0
    tracker.handle_timer(99.9)
    assert drain(tracker) == []
    tracker.handle_timer(100.0)
    events = drain(tracker)
    # Accepted with positive notifications requested -> expired; delivered stays delivered.
    assert changes(events) == [(BOB, S.ACCEPTED, S.EXPIRED)]
    assert events[-1] == TrackingEnded(
        "m1", ((BOB, S.EXPIRED), (CAROL, S.DELIVERED), ("sip:dave@x", S.DISPLAYED))
    )
    assert tracker.sent("m1") is None
    assert tracker.get_timer() is None


def test_expiry_without_any_response() -> None:
    tracker = new_tracker()
    tracker.handle_timer(TrackerConfig().tracking_ttl)
    assert changes(drain(tracker)) == [(BOB, S.PENDING, S.EXPIRED)]


def test_negative_only_request_does_not_expire_accepted() -> None:
    """RFC 5438 §6.2: negative-delivery only asks about failure; silence until the deadline is fine."""
    tracker = new_tracker(requested=("negative-delivery",))
    tracker.response_received("m1", 200, 1.0)
    drain(tracker)
    assert tracker.sent("m1") is not None  # a failure may still be reported (RFC 5438 §7.2.1.1)
    tracker.handle_timer(TrackerConfig().tracking_ttl)
    events = drain(tracker)
    assert changes(events) == []
    assert events == [TrackingEnded("m1", ((BOB, S.ACCEPTED),))]


def test_no_notification_requested_ends_at_the_response() -> None:
    tracker = new_tracker(requested=())
    tracker.response_received("m1", 200, 1.0)
    events = drain(tracker)
    assert events[-1] == TrackingEnded("m1", ((BOB, S.ACCEPTED),))


def test_imdn_dropped_after_text_plain_fallback() -> None:
    # Notifications were requested, the message finally went out without CPIM: none can come.
    tracker = new_tracker()
    tracker.response_received("m1", 200, 1.0, imdn_dropped=True)
    events = drain(tracker)
    assert changes(events) == [(BOB, S.PENDING, S.UNSUPPORTED)]
    assert events[-1] == TrackingEnded("m1", ((BOB, S.UNSUPPORTED),))
    assert tracker.sent("m1") is None


def test_imdn_dropped_without_requests_stays_accepted() -> None:
    tracker = new_tracker(requested=())
    tracker.response_received("m1", 200, 1.0, imdn_dropped=True)
    assert drain(tracker)[-1] == TrackingEnded("m1", ((BOB, S.ACCEPTED),))


def test_imdn_dropped_and_refused_is_failed() -> None:
    tracker = new_tracker()
    tracker.response_received("m1", 404, 1.0, imdn_dropped=True)
    assert drain(tracker)[-1] == TrackingEnded("m1", ((BOB, S.FAILED),))


# --- registration ------------------------------------------------------------------------------------


def test_register_writes_the_record() -> None:
    tracker = DispositionTracker(now=0.0)
    record = tracker.register_sent(
        message_id="m9",
        recipients=[BOB, "sip:bob@127.0.0.1"],
        requested=["display"],
        now=5.0,
        metadata={"subject": "hi"},
    )
    assert len(record.recipients) == 1  # the same identity twice
    assert record.deadline == 5.0 + TrackerConfig().tracking_ttl
    assert record.expires_at > record.deadline
    assert record.metadata == (("subject", "hi"),)
    assert tracker.writes_to_apply() == [Put(record)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"message_id": ""},
        {"message_id": "has space"},
        {"requested": ["read"]},
        {"recipients": []},
        {"recipients": ["not a uri"]},
        {"expires_at": 0.0},
    ],
)
def test_register_misuse_is_a_local_error(kwargs: dict[str, Any]) -> None:
    tracker = DispositionTracker(now=0.0)
    args: dict[str, Any] = {"message_id": "m1", "recipients": [BOB], "requested": FULL, "now": 0.0}
    args.update(kwargs)
    with pytest.raises(LocalProtocolError):
        tracker.register_sent(**args)


def test_register_same_id_twice() -> None:
    tracker = new_tracker()
    with pytest.raises(LocalProtocolError):
        tracker.register_sent(message_id="m1", recipients=[BOB], requested=(), now=1.0)


def test_too_many_recipients_at_registration() -> None:
    tracker = DispositionTracker(TrackerConfig(max_recipients=1), now=0.0)
    with pytest.raises(LocalProtocolError):
        tracker.register_sent(message_id="m1", recipients=[BOB, CAROL], requested=(), now=0.0)


@pytest.mark.parametrize("name", ["tracking_ttl", "retry_base", "rate_window"])
def test_config_rejects_nonsense(name: str) -> None:
    with pytest.raises(ValueError):
        bad: dict[str, Any] = {name: 0.0}
        TrackerConfig(**bad)
    with pytest.raises(ValueError):
        TrackerConfig(max_attempts=0)


# --- every (state, input) pair, driven through the public API ----------------------------------------------

REACH: dict[S, list[tuple[str, ...]]] = {
    S.PENDING: [],
    S.ACCEPTED: [("sip", "200")],
    S.DELIVERED: [("delivery", "delivered")],
    S.DISPLAYED: [("display", "displayed")],
    S.FAILED: [("delivery", "failed")],
    S.FORBIDDEN: [("delivery", "forbidden")],
    S.ERROR: [("display", "error")],
    S.EXPIRED: [("expire",)],
    S.UNSUPPORTED: [("sip-without-cpim", "200")],
}
INPUTS: dict[SenderInput, tuple[str, ...]] = {
    SenderInput.SIP_OK: ("sip", "200"),
    SenderInput.SIP_FAIL: ("sip", "404"),
    SenderInput.SIP_OK_WITHOUT_CPIM: ("sip-without-cpim", "200"),
    SenderInput.EXPIRE: ("expire",),
    **{member: member.value for member in SenderInput if isinstance(member.value, tuple)},
}


def drive(tracker: DispositionTracker, step: tuple[str, ...], now: float) -> None:
    if step[0] == "sip":
        tracker.response_received("m1", int(step[1]), now)
    elif step[0] == "sip-without-cpim":
        tracker.response_received("m1", int(step[1]), now, imdn_dropped=True)
    elif step[0] == "expire":
        tracker.handle_timer(TrackerConfig().tracking_ttl)
    else:
        notify(tracker, step[0], step[1], now)


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("step", list(SenderInput), ids=lambda i: i.name)
def test_every_state_and_input(state: S, step: SenderInput) -> None:
    """The observable behaviour equals TRANSITIONS; a missing pair changes nothing."""
    # CAROL stays pending and the SIP outcome unknown, so tracking never ends on its own here.
    tracker = new_tracker(recipients=(BOB, CAROL))
    for reach in REACH[state]:
        drive(tracker, reach, 1.0)
    assert [s for r, _, s in changes(drain(tracker)) if r == BOB][-1:] == ([state] if REACH[state] else [])
    expected = TRANSITIONS.get((state, step), state)
    drive(tracker, INPUTS[step], 2.0)
    bob = [(p, s) for r, p, s in changes(drain(tracker)) if r == BOB]
    if expected is state:
        assert bob == []
    else:
        assert bob == [(state, expected)]
    record = tracker.sent("m1")
    if record is not None:
        assert state_of(tracker, "m1") is expected


def test_a_trusted_intermediary_reports_for_our_recipients_but_adds_no_member() -> None:
    """RFC 5438 §7: the outbound proxy (a store-and-forward server) every message goes through
    may report for bob; it cannot make a one-to-one message a list."""
    proxy = "sip:127.0.0.1:5999;lr"
    tracker = new_tracker(requested=("positive-delivery", "processing"), trusted_intermediaries=(proxy,))
    assert notify(tracker, "processing", "stored", 1.0, sender="sip:127.0.0.1:5999", recipient_uri=BOB)
    drain(tracker)
    tracker.writes_to_apply()
    assert rejected(
        tracker, "delivery", "delivered", sender="sip:127.0.0.1:5999", recipient_uri=MALLORY
    ) == [RejectReason.NOT_A_RECIPIENT]
    # Anyone else naming bob is still refused.
    assert rejected(tracker, "delivery", "delivered", sender=CAROL, recipient_uri=BOB) == [
        RejectReason.NOT_A_RECIPIENT
    ]
