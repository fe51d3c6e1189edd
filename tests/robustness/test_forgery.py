"""Forged and abusive IMDN traffic against a UserAgent (RFC 5438 §14 and the checks it calls for).

Never leaking undisclosed list members (RFC 5438 §8, §14.2) is a duty of an IMDN intermediary (a list
server): it is tested with sipimdn.intermediary's exploder in tests/test_group_list_loopback.py
and tests/test_intermediary_service.py.

Sender-side checks (correlation by Message-ID, the notification's origin, the kinds requested,
hostile XML, RFC 5438 §7.1.2, §14.1, §14.3): alice (a UserAgent) sends to "bob", a bare SipStack
we control, then a forger (another SipStack) sends crafted IMDN MESSAGEs to alice. A forged IMDN
is answered 200 (no oracle) but must change no state: the send handle stays where it was, no
``DispositionChanged`` fires, and a ``NotificationRejected`` names the failed check. Each test
ends with the genuine IMDN, proving the same path *can* change state.

Receiver-side checks (loop guard, IMDN-Record-Route trust, rate limit, display privacy: RFC 5438
§7.2.1, §14.1, §14, §14.2): the forger sends crafted IMs to bob (a UserAgent) and records which
IMDNs come back, and where.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from robust_helpers import listen, port_of, settle

from sipimdn import UserAgent, cpim, imdn
from sipimdn.config import DisplayPrivacy, ListenEndpoint, UserAgentConfig
from sipimdn.dialog.factory import build_request
from sipimdn.events import (
    DispositionChanged,
    DispositionState,
    NotificationRejected,
    NotificationsDeclined,
    TrackingEnded,
)
from sipimdn.message import Request
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage, SentMessage

S = DispositionState
NOW = "2026-01-01T00:00:00.000Z"


def ua_config(name: str, **extra: object) -> UserAgentConfig:
    return UserAgentConfig(
        aor=f"sip:{name}@127.0.0.1:0",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),  # and TCP on the same port (large forgeries)
        t1=0.05, t2=0.4, t4=0.2,
        imdn_retry_base=0.1, imdn_retry_cap=0.2, imdn_max_attempts=2,
        **extra,  # type: ignore[arg-type]
    )


@dataclass
class Peer:
    """A bare SipStack playing bob (answers 200 to everything) and the forger; records requests."""

    stack: SipStack
    name: str
    seen: list[Request] = field(default_factory=list)

    def __call__(self, incoming: IncomingRequest) -> None:
        self.seen.append(incoming.request)
        incoming.respond(200)

    @property
    def uri(self) -> str:
        return f"sip:{self.name}@127.0.0.1:{port_of(self.stack, Transport.UDP)}"

    def cpim_messages(self) -> list[cpim.CpimMessage]:
        return [cpim.parse(r.body) for r in self.seen if r.body]

    async def send(self, to_uri: str, cpim_message: cpim.CpimMessage, *, sip_from: str | None = None) -> int:
        request = build_request("MESSAGE", to_uri, f"<{sip_from or self.uri}>", f"<{to_uri}>",
                                body=cpim_message.to_bytes(), content_type="message/cpim")
        return (await self.stack.send_request(request)).status_code


@asynccontextmanager
async def peer(name: str) -> AsyncIterator[Peer]:
    stack = SipStack(listen(Transport.UDP))
    p = Peer(stack, name)
    stack.on_request(p)
    async with stack:
        yield p


class Events:
    """An on_disposition / on_notification recorder."""

    def __init__(self) -> None:
        self.items: list[object] = []

    async def __call__(self, event: object) -> None:
        self.items.append(event)

    def of(self, kind: type) -> list[object]:
        return [e for e in self.items if isinstance(e, kind)]

    def changes(self, message_id: str) -> list[S]:
        return [e.state for e in self.items
                if isinstance(e, DispositionChanged) and e.message_id == message_id]

    def rejections(self) -> list[str]:
        return [str(e.reason) for e in self.items if isinstance(e, NotificationRejected)]


def imdn_cpim(*, cpim_from: str, to: str, message_id: str, kind: str = "delivery", status: str = "delivered",
              recipient_uri: str | None = None, notification_id: str | None = None,
              xml: bytes | None = None) -> cpim.CpimMessage:
    """A hand-made IMDN, as a forger would write it."""
    body = xml if xml is not None else imdn.build_notification(
        message_id=message_id, datetime=NOW, kind=kind, status=status, recipient_uri=recipient_uri)
    return cpim.build_message(
        [("From", f"<{cpim_from}>"), ("To", f"<{to}>"), ("NS", "imdn <urn:ietf:params:imdn>"),
         ("imdn.Message-ID", notification_id or imdn.new_message_id()), ("DateTime", NOW)],
        content_type="message/imdn+xml", body=body,
        mime_headers=[("Content-Disposition", "notification")],
    )


@dataclass
class Scene:
    alice: UserAgent
    bob: Peer
    mallory: Peer
    events: Events
    handle: SentMessage

    @property
    def message_id(self) -> str:
        return self.handle.message_id

    async def forge(self, sender: Peer, cpim_message: cpim.CpimMessage, sip_from: str | None = None) -> None:
        """Send a crafted IMDN to alice: always answered 200 (no oracle)."""
        assert await sender.send(self.alice.aor, cpim_message, sip_from=sip_from) == 200

    async def genuine(self, kind: str = "delivery", status: str = "delivered") -> None:
        note = imdn_cpim(cpim_from=self.bob.uri, to=self.alice.aor, message_id=self.message_id,
                         kind=kind, status=status, recipient_uri=self.bob.uri)
        await self.forge(self.bob, note)

    async def rejected(self, reason: str) -> None:
        """Wait for the rejection; the message's state has not moved from ACCEPTED."""
        assert await settle(lambda: reason in self.events.rejections(), 3), self.events.items
        assert self.handle.state is S.ACCEPTED
        assert self.events.changes(self.message_id) == [S.ACCEPTED]


@asynccontextmanager
async def scene(notify: Iterable[str] = ("positive-delivery",),
                **alice_extra: object) -> AsyncIterator[Scene]:
    events = Events()
    async with asyncio.timeout(20), peer("bob") as bob, peer("mallory") as mallory:
        alice = UserAgent(ua_config("alice", **alice_extra))
        alice.on_disposition(events)
        async with alice:
            handle = await alice.send_message(bob.uri, "secret plans", notify=set(notify))
            assert await handle.await_disposition("accepted", timeout=5) is S.ACCEPTED
            yield Scene(alice, bob, mallory, events, handle)


# -- sender side: RFC 5438 §7.1.2, §14.1, §14.3 ----------------------------------------------------


async def test_unknown_message_id_changes_nothing() -> None:
    """RFC 5438 §7.1.2, §14.1: an IMDN for a Message-ID alice never sent is unsolicited."""
    async with scene() as s:
        await s.forge(s.bob, imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=imdn.new_message_id(),
                                       recipient_uri=s.bob.uri))
        await s.rejected("unknown-message")
        stats = s.alice.stats()
        assert (stats.notifications_received, stats.notifications_rejected) == (1, 1)
        assert stats.notifications_accepted == 0
        await s.genuine()
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED
        assert s.alice.stats().notifications_accepted == 1


@pytest.mark.parametrize("recipient", ["mallory", None])
async def test_notification_from_the_wrong_party_changes_nothing(recipient: str | None) -> None:
    """RFC 5438 §14.1: a party the message was not sent to cannot report on it."""
    async with scene() as s:
        recipient_uri = s.mallory.uri if recipient else None
        await s.forge(s.mallory, imdn_cpim(cpim_from=s.mallory.uri, to=s.alice.aor, message_id=s.message_id,
                                           recipient_uri=recipient_uri))
        await s.rejected("not-a-recipient")
        await s.genuine()
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


async def test_forged_list_members_and_third_party_reports_change_nothing() -> None:
    """RFC 5438 §7, §14: the XML names whom a notification is about, but only its sender's
    identity counts. mallory claiming to report for members reached through bob (the forged-member
    attack), or naming bob himself, neither adds members to a one-to-one message nor moves bob."""
    async with scene(notify=("positive-delivery", "display")) as s:
        for index in range(3):
            fake = f"sip:fake{index}@evil.example"
            xml = imdn.build_notification(message_id=s.message_id, datetime=NOW, kind="delivery",
                                          status="delivered", recipient_uri=fake,
                                          original_recipient_uri=s.bob.uri)
            forged = imdn_cpim(cpim_from=fake, to=s.alice.aor, message_id=s.message_id, xml=xml)
            await s.forge(s.mallory, forged, sip_from=fake)
        for kind, status in (("delivery", "delivered"), ("display", "displayed")):
            xml = imdn.build_notification(message_id=s.message_id, datetime=NOW, kind=kind, status=status,
                                          recipient_uri=s.bob.uri, original_recipient_uri=s.bob.uri)
            await s.forge(s.mallory, imdn_cpim(cpim_from=s.mallory.uri, to=s.alice.aor,
                                               message_id=s.message_id, xml=xml))
        assert await settle(lambda: s.events.rejections().count("not-a-recipient") == 5, 3), s.events.items
        record = s.alice.tracker.sent(s.message_id)
        assert record is not None
        assert [entry.uri for entry in record.recipients] == [s.bob.uri]  # no member was added
        assert s.handle.state is S.ACCEPTED
        await s.genuine()
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


async def test_kind_not_requested_changes_nothing() -> None:
    """Only positive-delivery was asked (RFC 5438 §7.1.1): a display or a negative (failed) report
    is refused."""
    async with scene(notify=("positive-delivery",)) as s:
        await s.forge(s.bob, imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                                       kind="display", status="displayed", recipient_uri=s.bob.uri))
        await s.rejected("not-requested")
        await s.forge(s.bob, imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                                       kind="delivery", status="failed", recipient_uri=s.bob.uri))
        assert await settle(lambda: s.events.rejections().count("not-requested") == 2, 3)
        assert s.handle.state is S.ACCEPTED


async def test_replay_and_second_report_of_a_kind_change_nothing() -> None:
    """A replayed IMDN and a second report of one kind are duplicates (RFC 5438 §7.2: one per type)."""
    async with scene(notify=("positive-delivery", "display")) as s:
        first = imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                          recipient_uri=s.bob.uri)
        await s.forge(s.bob, first)
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED
        # The very same IMDN again (a replay), then a new one of the same kind (RFC 5438 §7.2).
        await s.forge(s.bob, first)
        await s.forge(s.bob, imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                                       recipient_uri=s.bob.uri))
        assert await settle(lambda: len(s.events.rejections()) == 2, 3)
        assert s.events.rejections() == ["duplicate", "duplicate"]
        assert s.events.changes(s.message_id) == [S.ACCEPTED, S.DELIVERED]
        assert s.handle.state is S.DELIVERED


async def test_status_not_of_its_kind_changes_nothing() -> None:
    """<delivery-notification> carrying <displayed/>: refused by the codec (400), not applied."""
    async with scene(notify=("positive-delivery", "display")) as s:
        xml = imdn.build_notification(message_id=s.message_id, datetime=NOW, kind="delivery",
                                      status="delivered", recipient_uri=s.bob.uri)
        bad = xml.replace(b"<delivered/>", b"<displayed/>")
        assert bad != xml
        request = build_request("MESSAGE", s.alice.aor, f"<{s.bob.uri}>", f"<{s.alice.aor}>",
                                body=imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                                               xml=bad).to_bytes(), content_type="message/cpim")
        response = await s.bob.stack.send_request(request)
        assert 400 <= response.status_code < 500
        assert s.handle.state is S.ACCEPTED
        await s.genuine()
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED
        # The genuine IMDN came after the bad one: had the bad one been applied, it would show
        # here before DELIVERED (and the genuine one would be a duplicate).
        assert await settle(lambda: s.events.changes(s.message_id) == [S.ACCEPTED, S.DELIVERED], 3)
        assert s.events.rejections() == []


async def test_hostile_xml_changes_nothing_and_the_agent_keeps_working() -> None:
    """An entity-expansion bomb in the IMDN is answered 4xx within two seconds and changes nothing."""
    async with scene() as s:
        def ref(i: int) -> str:
            return "&a" + (str(i) if i else "") + ";"

        lol = '<!ENTITY a "aaaaaaaaaa">' + "".join(f'<!ENTITY a{i} "{ref(i - 1) * 10}">' for i in range(1, 9))
        bomb = (f'<?xml version="1.0"?><!DOCTYPE imdn [{lol}]><imdn xmlns="urn:ietf:params:xml:ns:imdn">'
                f"<message-id>{s.message_id}</message-id><datetime>{NOW}</datetime>"
                "<delivery-notification><status><delivered/></status></delivery-notification>"
                "<x>&a8;</x></imdn>").encode()
        request = build_request("MESSAGE", s.alice.aor, f"<{s.bob.uri}>", f"<{s.alice.aor}>",
                                body=imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                                               xml=bomb).to_bytes(), content_type="message/cpim")
        began = time.monotonic()
        response = await s.bob.stack.send_request(request)
        assert time.monotonic() - began < 2
        assert 400 <= response.status_code < 500
        assert s.handle.state is S.ACCEPTED
        await s.genuine()
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


async def test_a_lost_notification_is_never_guessed() -> None:
    """No IMDN ever comes: the state stays ACCEPTED, then EXPIRES; nothing is inferred (RFC 5438
    §14.3: IMDNs can be lost, they are no certified delivery)."""
    async with scene(state_expiry=1.0) as s:
        assert await s.handle.await_disposition("expired", timeout=5) is S.EXPIRED
        assert s.events.changes(s.message_id) == [S.ACCEPTED, S.EXPIRED]
        assert s.events.of(TrackingEnded)
        # After tracking ended, a late (even genuine) IMDN is unknown (RFC 5438 §7.1.3): no resurrection.
        await s.genuine()
        assert await settle(lambda: "unknown-message" in s.events.rejections(), 3)
        assert s.handle.state is S.EXPIRED


# -- receiver side: RFC 5438 §7.2.1, §14, §14.1, §14.2 --------------------------------------------


@dataclass
class Inbox:
    bob: UserAgent
    received: list[IncomingMessage]
    declined: Events


@asynccontextmanager
async def bob_agent(**extra: object) -> AsyncIterator[Inbox]:
    received: list[IncomingMessage] = []
    declined = Events()
    bob = UserAgent(ua_config("bob", **extra))
    bob.on_notification(declined)

    @bob.on_message
    async def receive(message: IncomingMessage) -> None:
        received.append(message)

    async with asyncio.timeout(20), bob:
        yield Inbox(bob, received, declined)


def im(sender: Peer, to: str, *, notify: str = "positive-delivery",
       extra: Iterable[tuple[str, str]] = (), message_id: str | None = None) -> cpim.CpimMessage:
    return cpim.build_message(
        [("From", f"<{sender.uri}>"), ("To", f"<{to}>"), ("NS", "imdn <urn:ietf:params:imdn>"),
         ("imdn.Message-ID", message_id or imdn.new_message_id()), ("DateTime", NOW),
         ("imdn.Disposition-Notification", notify), *extra],
        content_type="text/plain; charset=utf-8", body=b"hello")


def declines(inbox: Inbox) -> list[str]:
    return [str(e.reason) for e in inbox.declined.of(NotificationsDeclined)]  # type: ignore[attr-defined]


async def test_control_bob_answers_a_plain_request() -> None:
    """Baseline of the receiver-side tests: an ordinary IM gets its IMDN, sent to the sender."""
    async with peer("mallory") as mallory, bob_agent() as inbox:
        assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor)) == 200
        assert await settle(lambda: len(mallory.seen) == 1, 3)
        assert imdn.is_imdn(mallory.cpim_messages()[0])


async def test_an_imdn_asking_for_an_imdn_gets_none() -> None:
    """RFC 5438 §7.2.1: no IMDN is ever sent for an IMDN (loop guard)."""
    async with peer("mallory") as mallory, bob_agent() as inbox:
        loop = imdn_cpim(cpim_from=mallory.uri, to=inbox.bob.aor, message_id=imdn.new_message_id())
        looped = cpim.build_message([*((h.name, h.value) for h in loop.headers),
                                     ("imdn.Disposition-Notification", "positive-delivery, display")],
                                    content_type="message/imdn+xml", body=loop.body,
                                    mime_headers=[("Content-Disposition", "notification")])
        assert await mallory.send(inbox.bob.aor, looped) == 200
        # A later event on the same path: an IM asking for positive-delivery, sent after the
        # looped IMDN. bob's IMDNs to mallory go out one at a time in the order owed (RFC 3428
        # §8), so an IMDN for the IMDN would have reached mallory before this one's.
        control_id = imdn.new_message_id()
        assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor, message_id=control_id)) == 200
        assert await settle(lambda: len(mallory.seen) >= 1, 3)
        notes = [n for m in mallory.cpim_messages() for n in imdn.recognise(m).notifications]  # type: ignore[union-attr]
        assert [n.message_id for n in notes] == [control_id]  # no IMDN for an IMDN
        assert [m.text for m in inbox.received] == ["hello"]  # the looped one is not an IM either


async def test_imdn_record_route_is_not_honoured_by_default() -> None:
    """RFC 5438 §14.1: a forged IMDN-Record-Route would aim our IMDNs at a third party."""
    async with peer("mallory") as mallory, peer("victim") as victim, bob_agent() as inbox:
        route = [("imdn.IMDN-Record-Route", f"<{victim.uri}>")]
        assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor, extra=route)) == 200
        # The IMDN went to mallory, the sender (and so not through the route to the victim).
        assert await settle(lambda: len(mallory.seen) == 1, 3)
        assert victim.seen == []  # not turned into a flood source aimed at a third party
        assert "route-untrusted" in declines(inbox)


async def test_route_length_is_capped_when_trusted() -> None:
    """Even from a trusted path, an IMDN-Record-Route list longer than the cap is declined."""
    async with peer("mallory") as mallory, peer("victim") as victim, \
            bob_agent(trust_imdn_route=True) as inbox:
        route = [("imdn.IMDN-Record-Route", f"<sip:hop{i}@127.0.0.1:9>") for i in range(40)]
        route.append(("imdn.IMDN-Record-Route", f"<{victim.uri}>"))
        assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor, extra=route)) == 200
        # Declined when the IM was received: nothing is owed, so nothing can be sent later.
        assert await settle(lambda: "route-too-long" in declines(inbox), 3)
        assert victim.seen == []


async def test_imdn_generation_is_rate_limited_per_peer() -> None:
    """RFC 5438 §14: IMDN generation is bounded per peer, so we are no reflector."""
    async with peer("mallory") as mallory, bob_agent(imdn_rate_limit=3, imdn_rate_window=60.0) as inbox:
        statuses = [await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor)) for _ in range(8)]
        assert statuses == [200] * 8  # every IM is still received
        # The last five were declined on reception (nothing owed for them), the first three
        # each owe one IMDN.
        assert await settle(lambda: declines(inbox).count("rate-limited") == 5, 3)
        assert await settle(lambda: len(mallory.seen) == 3, 3)
        assert len(inbox.received) == 8


@pytest.mark.parametrize("privacy", [DisplayPrivacy.FORBIDDEN, DisplayPrivacy.SILENT])
async def test_display_status_stays_private(privacy: DisplayPrivacy) -> None:
    """RFC 5438 §14.2: with privacy on, a display request gets ``forbidden`` or nothing."""
    async with peer("mallory") as mallory, bob_agent(display_privacy=privacy) as inbox:
        assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor, notify="display")) == 200
        assert await settle(lambda: len(inbox.received) == 1, 3)
        await inbox.received[0].mark_displayed()
        # A later event on the same path: a second IM, asking for positive-delivery, after the
        # mark. bob's IMDNs to mallory leave in the order owed (RFC 3428 §8), so a "displayed"
        # owed by the mark would arrive before this "delivered".
        assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor)) == 200

        def statuses() -> list[str]:
            return [n.status for m in mallory.cpim_messages()
                    for n in imdn.recognise(m).notifications]  # type: ignore[union-attr]

        assert await settle(lambda: "delivered" in statuses(), 3)
        if privacy is DisplayPrivacy.FORBIDDEN:
            assert statuses() == ["forbidden", "delivered"]
        else:
            assert statuses() == ["delivered"]
            assert "privacy" in declines(inbox)



# -- the operator's log: a peer chooses how often these happen, not how many lines they write ----


async def test_forged_imdns_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Thirty forged IMDNs are each counted and each a NotificationRejected event, but the log gets
    one WARNING line for them in a period (the next line says how many were held back)."""
    async with scene() as s:
        caplog.set_level("INFO", logger="sipimdn.ua")
        for _ in range(30):
            await s.forge(s.mallory, imdn_cpim(cpim_from=s.mallory.uri, to=s.alice.aor,
                                               message_id=imdn.new_message_id()))
        assert await settle(lambda: s.alice.stats().notifications_rejected == 30, 5)
        assert len(s.events.rejections()) == 30
        lines = [r for r in caplog.records if "unverified IMDN not applied" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelname == "WARNING"


async def test_declined_notifications_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """IMs beyond the per-peer rate limit are declined one by one (events), logged once a period."""
    async with peer("mallory") as mallory, bob_agent(imdn_rate_limit=1, imdn_rate_window=60.0) as inbox:
        caplog.set_level("INFO", logger="sipimdn.ua")
        for _ in range(12):
            assert await mallory.send(inbox.bob.aor, im(mallory, inbox.bob.aor)) == 200
        assert await settle(lambda: declines(inbox).count("rate-limited") == 11, 3)
        lines = [r for r in caplog.records if "not sent: rate-limited" in r.getMessage()]
        assert len(lines) == 1
