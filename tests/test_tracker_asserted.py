"""The IMDN origin check with an identity a trusted proxy asserted (RFC 5438 §7, §14; RFC 3325 §9.1).

Without ``asserted_identity`` the notification's SIP From or CPIM From must be the recipient (or
its list, or an intermediary of the message). With one, that identity alone is the sender: the
From claims vouch for nothing, so a forged From naming the recipient does not help a third party,
and a recipient whose From is odd (an anonymous CPIM From, a GRUU) is still recognised.
Sans-IO: time is a plain float.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_helpers import drain

from sipimdn.imdn.tracker import (
    DispositionState,
    DispositionTracker,
    NotificationAccepted,
    NotificationRejected,
    RejectReason,
    TrackerConfig,
)

S = DispositionState
BOB = "sip:bob@ims.example.com"
BOB_TEL = "tel:+1-202-555-0123"
MALLORY = "sip:mallory@evil.example"
RELAY = "sip:relay@example.net"
ANONYMOUS = "<sip:anonymous@anonymous.invalid>"


def tracker_for(*recipients: str, intermediaries: tuple[str, ...] = ()) -> DispositionTracker:
    tracker = DispositionTracker(TrackerConfig(), now=0.0)
    tracker.register_sent(message_id="m1", recipients=recipients or (BOB,), now=0.0,
                          requested=("positive-delivery", "display"), intermediaries=intermediaries)
    tracker.response_received("m1", 200, 0.5)
    drain(tracker)
    return tracker


def report(tracker: DispositionTracker, **kw: Any) -> list[object]:
    kw.setdefault("kind", "delivery")
    kw.setdefault("status", "delivered")
    tracker.notification_received(message_id="m1", now=1.0, **kw)
    return drain(tracker)


def state(tracker: DispositionTracker, uri: str = BOB) -> S:
    record = tracker.sent("m1")
    assert record is not None
    return S(next(entry.state for entry in record.recipients if entry.uri == uri))


def test_an_assertion_of_the_recipient_is_accepted_whatever_the_from_says() -> None:
    """The proxy vouches for bob: his From may be anything (here forged or anonymous)."""
    for claims in ({"sender": MALLORY, "sip_from": MALLORY}, {"sender": ANONYMOUS}, {}):
        tracker = tracker_for()
        events = report(tracker, asserted_identity=BOB, **claims)
        assert [type(e) for e in events if isinstance(e, NotificationAccepted | NotificationRejected)] == [
            NotificationAccepted
        ], claims
        assert state(tracker) is S.DELIVERED


def test_an_assertion_of_a_third_party_is_rejected_even_with_the_recipients_from() -> None:
    """mallory's proxy says it is mallory: a SIP and CPIM From naming bob change nothing, and the
    rejection says the asserted identity was the sender."""
    tracker = tracker_for()
    events = report(tracker, sender=BOB, sip_from=BOB, recipient_uri=BOB, asserted_identity=[MALLORY])
    rejected = [e for e in events if isinstance(e, NotificationRejected)]
    assert [e.reason for e in rejected] == [RejectReason.NOT_A_RECIPIENT]
    assert rejected[0].sender == MALLORY
    assert "asserted by a trusted proxy: " + MALLORY in rejected[0].detail
    assert "From not used" in rejected[0].detail
    assert state(tracker) is S.ACCEPTED
    # The same notification without the assertion: today's rule, the From claims decide.
    assert [type(e) for e in report(tracker, sender=BOB, sip_from=BOB, recipient_uri=BOB)
            if isinstance(e, NotificationAccepted)] == [NotificationAccepted]


def test_a_third_party_assertion_adds_no_member_to_a_one_to_one_message() -> None:
    """The forged-member attack with a genuine (but foreign) assertion: still no member."""
    tracker = tracker_for()
    events = report(tracker, sender=BOB, asserted_identity=MALLORY,
                    recipient_uri="sip:fake@evil.example", original_recipient_uri=BOB)
    assert [e.reason for e in events if isinstance(e, NotificationRejected)] == [RejectReason.NOT_A_RECIPIENT]
    record = tracker.sent("m1")
    assert record is not None and [entry.uri for entry in record.recipients] == [BOB]


def test_a_sip_and_tel_assertion_matches_a_message_sent_to_either() -> None:
    """RFC 3325 §9.1 allows a sip/sips and a tel URI: a message sent to the tel URI is matched by
    the asserted tel (visual separators do not count, RFC 3966 §5.1.1)."""
    tracker = tracker_for("tel:+12025550123")
    events = report(tracker, sender=MALLORY, asserted_identity=(BOB, BOB_TEL))
    assert any(isinstance(e, NotificationAccepted) for e in events)
    assert state(tracker, "tel:+12025550123") is S.DELIVERED
    # Asserted as tel only, for a message sent to bob's sip URI: no way to tell it is bob.
    tracker = tracker_for()
    events = report(tracker, sender=BOB, asserted_identity=[BOB_TEL])
    assert [e.reason for e in events if isinstance(e, NotificationRejected)] == [RejectReason.NOT_A_RECIPIENT]


def test_an_asserted_intermediary_of_the_message_speaks_for_its_recipient() -> None:
    """RFC 5438 §7: an intermediary the message went through (a store-and-forward server) may
    report for the recipient; its assertion is as good as a From naming it."""
    tracker = tracker_for(intermediaries=(RELAY,))
    events = report(tracker, sender=MALLORY, asserted_identity=RELAY, recipient_uri=BOB)
    assert any(isinstance(e, NotificationAccepted) for e in events)
    assert state(tracker) is S.DELIVERED


def test_an_empty_assertion_is_no_assertion() -> None:
    tracker = tracker_for()
    for empty in (None, (), []):
        assert not [e for e in report(tracker, sender=MALLORY, asserted_identity=empty)
                    if isinstance(e, NotificationAccepted)]
    assert any(isinstance(e, NotificationAccepted) for e in report(tracker, sender=BOB, asserted_identity=()))


claims = st.sampled_from([None, BOB, "im:bob@ims.example.com", MALLORY, ANONYMOUS, "sip:carol@example.org"])


@settings(max_examples=150, deadline=None)
@given(
    asserted=st.sampled_from([BOB, [BOB, BOB_TEL], MALLORY, [MALLORY, BOB_TEL], "sip:carol@example.org"]),
    sender=claims,
    sip_from=claims,
    recipient_uri=claims,
    original_recipient_uri=claims,
    kind=st.sampled_from([("delivery", "delivered"), ("display", "displayed")]),
)
def test_with_an_assertion_the_from_claims_never_decide(
    *,
    asserted: str | list[str],
    sender: str | None,
    sip_from: str | None,
    recipient_uri: str | None,
    original_recipient_uri: str | None,
    kind: tuple[str, str],
) -> None:
    """Whatever the From headers and the XML say, the message's state moves iff the asserted
    identity is its recipient; the XML can only name bob or refer to nothing new."""
    tracker = tracker_for()
    events = report(tracker, sender=sender, sip_from=sip_from, recipient_uri=recipient_uri,
                    original_recipient_uri=original_recipient_uri, asserted_identity=asserted,
                    kind=kind[0], status=kind[1])
    names_bob = asserted == BOB or (isinstance(asserted, list) and BOB in asserted)
    rejected = [e.reason for e in events if isinstance(e, NotificationRejected)]
    accepted = [e for e in events if isinstance(e, NotificationAccepted)]
    if names_bob:
        # bob himself (or a member he reports through himself, as a list would): applied.
        assert rejected == [] and accepted
        assert {e.recipient for e in accepted} <= {BOB, recipient_uri}
    else:
        assert rejected == [RejectReason.NOT_A_RECIPIENT] and accepted == []
        record = tracker.sent("m1")
        assert record is not None and [(e.uri, S(e.state)) for e in record.recipients] == [(BOB, S.ACCEPTED)]
