"""Sans-IO list exploder: fan-out, membership checks, relay/aggregate, privacy, expiry."""

from __future__ import annotations

import pytest

from sipimdn.imdn import Kind, Notification, Status, make_notification
from sipimdn.intermediary import (
    ExploderConfig,
    ListExploder,
    MemberCopyDue,
    NotificationsReady,
    ReplyPath,
    UriList,
)

LIST = "sip:friends@lists.test"
MEMBERS = ("sip:bob@a.test", "sip:carol@b.test", "sip:dave@c.test")
REPLY = ReplyPath(cpim_to="im:alice@x.test", sip_to="sip:alice@x.test", routes=("sip:up@y.test",))


def note(member: str, kind: str = "delivery", status: str = "delivered", mid: str = "m1") -> Notification:
    return make_notification(
        message_id=mid,
        datetime="2026-11-24T01:00:00Z",
        kind=kind,
        status=status,
        recipient_uri=member,
        original_recipient_uri=LIST,
    )


def drain(exploder: ListExploder) -> list[object]:
    out: list[object] = []
    while (event := exploder.next_event()) is not None:
        out.append(event)
    return out


def make(
    *,
    aggregate: bool = True,
    private: bool = False,
    requested: tuple[str, ...] = ("positive-delivery", "display"),
) -> ListExploder:
    exploder = ListExploder([UriList(LIST, MEMBERS, private=private)], ExploderConfig(aggregate, 2.0, 100.0))
    uri_list = exploder.list_for("sip:friends@LISTS.test")
    assert uri_list is not None
    exploder.explode(
        uri_list, message_id="m1", datetime="2026-11-24T01:00:00Z", requested=requested, reply=REPLY, now=0.0
    )
    return exploder


def test_one_copy_per_member_and_processed_when_asked() -> None:
    exploder = make(requested=("processing", "positive-delivery"))
    events = drain(exploder)
    copies = [e for e in events if isinstance(e, MemberCopyDue)]
    assert [c.member for c in copies] == list(MEMBERS)
    [ready] = [e for e in events if isinstance(e, NotificationsReady)]
    [processed] = ready.notifications
    assert processed.kind is Kind.PROCESSING and processed.status is Status.PROCESSED
    assert processed.recipient_uri == LIST
    assert ready.fanout.reply.request_uri == "sip:up@y.test"


def test_aggregates_a_complete_batch_at_once_and_keeps_members_apart() -> None:
    exploder = make()
    drain(exploder)
    assert exploder.notification_received(note(MEMBERS[0]), 0.1)
    assert exploder.notification_received(note(MEMBERS[1]), 0.2)
    assert drain(exploder) == []
    assert exploder.get_timer() == pytest.approx(2.1)
    assert exploder.notification_received(note(MEMBERS[2]), 0.3)
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady)
    assert [n.recipient_uri for n in ready.notifications] == list(MEMBERS)
    assert {n.original_recipient_uri for n in ready.notifications} == {LIST}


def test_window_flushes_a_partial_batch() -> None:
    exploder = make()
    drain(exploder)
    exploder.notification_received(note(MEMBERS[0]), 1.0)
    exploder.notification_received(note(MEMBERS[1], "display", "displayed"), 1.5)
    exploder.handle_timer(2.9)
    assert drain(exploder) == []
    exploder.handle_timer(3.0)
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady) and len(ready.notifications) == 2


def test_relay_mode_sends_each_at_once() -> None:
    exploder = make(aggregate=False)
    drain(exploder)
    for member in MEMBERS:
        assert exploder.notification_received(note(member), 1.0)
    ready = drain(exploder)
    assert [len(e.notifications) for e in ready if isinstance(e, NotificationsReady)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("notification", "sender"),
    [
        (note("sip:mallory@evil.test"), None),  # not a member: a forged origin (RFC 5438 §14.1)
        (note(MEMBERS[0], mid="other"), None),  # unknown Message-ID: no fan-out matches it
        (note(MEMBERS[0], "processing", "stored"), None),  # processing was not requested
        (note(MEMBERS[0], "delivery", "failed"), None),  # negative delivery was not requested
    ],
)
def test_refuses_what_does_not_belong(notification: Notification, sender: str | None) -> None:
    exploder = make(aggregate=False)
    drain(exploder)
    assert not exploder.notification_received(notification, 1.0, sender=sender)
    assert drain(exploder) == []


def test_one_notification_per_member_and_type() -> None:
    exploder = make(aggregate=False)
    drain(exploder)
    assert exploder.notification_received(note(MEMBERS[0]), 1.0)
    assert not exploder.notification_received(note(MEMBERS[0]), 1.1)
    assert not exploder.notification_received(note(MEMBERS[0], "delivery", "error"), 1.1)


def test_member_without_recipient_uri_is_taken_from_the_sender() -> None:
    exploder = make(aggregate=False)
    drain(exploder)
    bare = make_notification(message_id="m1", datetime="d", kind="delivery", status="delivered")
    assert exploder.notification_received(bare, 1.0, sender="sip:carol@b.test")
    assert not exploder.notification_received(bare, 1.0, sender=None)


def test_member_failure_is_reported_only_when_negative_delivery_asked() -> None:
    exploder = make(aggregate=False, requested=("negative-delivery",))
    [first, *_] = [e for e in drain(exploder) if isinstance(e, MemberCopyDue)]
    assert exploder.member_failed(first.fanout.id, MEMBERS[1], 1.0)
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady)
    assert ready.notifications[0].status is Status.FAILED
    assert ready.notifications[0].recipient_uri == MEMBERS[1]
    quiet = make(aggregate=False, requested=("positive-delivery",))
    [copy, *_] = [e for e in drain(quiet) if isinstance(e, MemberCopyDue)]
    assert not quiet.member_failed(copy.fanout.id, MEMBERS[1], 1.0)
    assert not quiet.member_failed("unknown", MEMBERS[1], 1.0)


def test_failed_delivery_completes_the_display_batch() -> None:
    exploder = make(requested=("negative-delivery", "display"))
    [copy, *_] = [e for e in drain(exploder) if isinstance(e, MemberCopyDue)]
    exploder.member_failed(copy.fanout.id, MEMBERS[2], 0.5)
    drain(exploder)  # the failure batch waits for its window (others may still fail)
    exploder.handle_timer(3.0)
    drain(exploder)
    exploder.notification_received(note(MEMBERS[0], "display", "displayed"), 4.0)
    exploder.notification_received(note(MEMBERS[1], "display", "displayed"), 4.0)
    [ready] = drain(exploder)  # dave failed: no display can come, the batch is complete
    assert isinstance(ready, NotificationsReady) and len(ready.notifications) == 2


def test_private_list_strips_member_identities() -> None:
    exploder = make(aggregate=True, private=True)
    drain(exploder)
    for member in MEMBERS:
        exploder.notification_received(
            make_notification(
                message_id="m1",
                datetime="d",
                kind="delivery",
                status="delivered",
                recipient_uri=member,
                original_recipient_uri=LIST,
                subject="hi",
            ),
            1.0,
        )
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady)
    for n in ready.notifications:
        assert n.recipient_uri is None and n.original_recipient_uri is None and n.subject is None
        assert b"bob" not in n.to_xml() and b"lists.test" not in n.to_xml()


def test_expiry_flushes_then_forgets() -> None:
    exploder = make()
    drain(exploder)
    exploder.notification_received(note(MEMBERS[0]), 99.5)
    exploder.handle_timer(100.0)
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady)
    assert exploder.fanout_for("m1") is None
    # Late, after the fan-out's state expired: dropped (RFC 5438 §8.3).
    assert not exploder.notification_received(note(MEMBERS[1]), 100.5)
    assert exploder.get_timer() is None


def test_bad_list_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        UriList(LIST, ("sip:bob@a.test", "sip:bob@A.test:5060"))
    with pytest.raises(ValueError, match="members"):
        UriList(LIST, ())
    with pytest.raises(ValueError, match="configured twice"):
        ListExploder([UriList(LIST, MEMBERS), UriList("sip:friends@lists.test;x=y", MEMBERS)])
    with pytest.raises(ValueError):
        ExploderConfig(window=-1)


def make_hidden(requested: tuple[str, ...] = ("positive-delivery", "display")) -> ListExploder:
    exploder = ListExploder([UriList(LIST, MEMBERS, hide_count=True)], ExploderConfig(True, 2.0, 100.0))
    uri_list = exploder.list_for(LIST)
    assert uri_list is not None and uri_list.private  # hide_count implies private
    exploder.explode(
        uri_list, message_id="m1", datetime="2026-11-24T01:00:00Z", requested=requested, reply=REPLY, now=0.0
    )
    drain(exploder)
    return exploder


def test_hidden_count_sends_one_summary_once_everything_is_in() -> None:
    exploder = make_hidden()
    exploder.notification_received(note(MEMBERS[0]), 1.0)
    exploder.notification_received(note(MEMBERS[1], "delivery", "error"), 1.0)  # not asked: refused
    for member in MEMBERS[1:]:
        exploder.notification_received(note(member), 1.0)
    exploder.notification_received(note(MEMBERS[0], "display", "displayed"), 2.0)
    exploder.notification_received(note(MEMBERS[1], "display", "forbidden"), 2.0)
    exploder.handle_timer(10.0)  # windows do not apply: nothing yet
    assert drain(exploder) == []
    exploder.notification_received(note(MEMBERS[2], "display", "displayed"), 3.0)
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady)
    assert [(str(n.kind), str(n.status)) for n in ready.notifications] == [
        ("delivery", "delivered"),
        ("display", "displayed"),
    ]
    assert all(n.recipient_uri is None for n in ready.notifications)
    exploder.handle_timer(100.0)
    assert drain(exploder) == []  # never a second one


def test_hidden_count_summarizes_what_arrived_at_expiry() -> None:
    exploder = make_hidden(("negative-delivery", "positive-delivery"))
    fanout = exploder.fanout_for("m1")
    assert fanout is not None
    exploder.member_failed(fanout.id, MEMBERS[0], 1.0)
    exploder.member_failed(fanout.id, MEMBERS[1], 1.0)
    assert drain(exploder) == []
    exploder.handle_timer(100.0)
    [ready] = drain(exploder)
    assert isinstance(ready, NotificationsReady)
    assert [(str(n.kind), str(n.status)) for n in ready.notifications] == [("delivery", "failed")]
