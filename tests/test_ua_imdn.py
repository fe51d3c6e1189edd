"""Notifications owed and received: privacy, routing, retries, refusals, early and aggregated IMDNs."""

from __future__ import annotations

import asyncio
import time

import pytest
from ua_helpers import Recorder, StackPeer, ua_config

from sipimdn import UserAgent
from sipimdn.config import DisplayPrivacy, ListenEndpoint
from sipimdn.cpim import parse as parse_cpim
from sipimdn.errors import LocalProtocolError
from sipimdn.events import (
    DispositionState,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationsDeclined,
    NotificationSent,
)
from sipimdn.imdn import build_im, build_imdn, build_imdn_message, imdn_headers, make_notification, recognise
from sipimdn.message import Request
from sipimdn.ua import IncomingMessage

S = DispositionState
BOTH = {"positive-delivery", "display"}


def _is_imdn(request: Request) -> bool:
    return request.content_type is not None and recognise(parse_cpim(request.body)) is not None


def _imdn_id(request: Request) -> str | None:
    return imdn_headers(parse_cpim(request.body)).message_id


async def _accept(message: IncomingMessage) -> None:
    return None


@pytest.mark.parametrize("privacy", [DisplayPrivacy.FORBIDDEN, DisplayPrivacy.SILENT])
async def test_display_privacy(privacy: DisplayPrivacy) -> None:
    seen: list[IncomingMessage] = []
    bob_notes = Recorder()
    async with (
        UserAgent(ua_config("bob", display_privacy=privacy)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            seen.append(message)

        bob.on_notification(bob_notes)
        handle = await alice.send_message(bob.aor, "x", notify=BOTH)
        if privacy is DisplayPrivacy.FORBIDDEN:
            # Answered with "forbidden" straight away, never "displayed".
            assert await handle.await_disposition("forbidden", timeout=5) is S.FORBIDDEN
        else:
            assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
            declined = await bob_notes.wait_for(NotificationsDeclined)
            assert str(declined[0].reason) == "privacy"
        assert await seen[0].mark_displayed() is False
        # A later event on the same path: bob's IMDNs to alice leave in the order owed (RFC 3428
        # §8), so a "displayed" wrongly owed by the mark would reach alice before the
        # "delivered" of a second message sent after it.
        later = await alice.send_message(bob.aor, "y", notify={"positive-delivery"})
        assert await later.await_disposition("delivered", timeout=5) is S.DELIVERED
        assert handle.state is (S.FORBIDDEN if privacy is DisplayPrivacy.FORBIDDEN else S.DELIVERED)


async def test_imdn_is_retried_after_503_with_a_stable_message_id() -> None:
    statuses = iter([503, 503, 200])

    def answer(request: Request) -> int:
        return next(statuses) if _is_imdn(request) else 200

    notes = Recorder()
    async with (
        StackPeer("carol", answer) as carol,
        UserAgent(ua_config("bob", imdn_retry_base=0.05, imdn_retry_cap=0.1)) as bob,
    ):
        bob.on_message(_accept)
        bob.on_notification(notes)
        im = build_im(from_=carol.aor, to=bob.aor, body=b"hi", now=time.time(), notify=["positive-delivery"])
        assert (await carol.send_message(bob.aor, "message/cpim", im.to_bytes())).status_code == 200
        sent = await notes.wait_for(NotificationSent, count=3)
        assert [(e.sip_status, e.attempt) for e in sent] == [(503, 1), (503, 2), (200, 3)]
        imdns = [r for r in carol.requests if _is_imdn(r)]
        assert len(imdns) == 3
        assert len({_imdn_id(r) for r in imdns}) == 1  # same IMDN, retried
        assert len({r.call_id for r in imdns}) == 3  # each attempt a new transaction


async def test_peer_answering_415_to_an_imdn_gets_no_more_imdns() -> None:
    def answer(request: Request) -> int:
        return 415 if _is_imdn(request) else 200

    notes = Recorder()
    async with StackPeer("carol", answer) as carol, UserAgent(ua_config("bob")) as bob:
        bob.on_message(_accept)
        bob.on_notification(notes)
        for text in (b"one", b"two"):
            im = build_im(
                from_=carol.aor, to=bob.aor, body=text, now=time.time(), notify=["positive-delivery"]
            )
            assert (await carol.send_message(bob.aor, "message/cpim", im.to_bytes())).status_code == 200
            # one: its IMDN is refused with 415 and abandoned; two: declined on reception
            await notes.wait_for(NotificationAbandoned if text == b"one" else NotificationsDeclined)
        abandoned = notes.of(NotificationAbandoned)
        assert [a.reason for a in abandoned] == ["peer-refuses-imdn"]
        assert [str(d.reason) for d in notes.of(NotificationsDeclined)] == ["peer-refuses-imdn"]
        assert len([r for r in carol.requests if _is_imdn(r)]) == 1


async def test_notification_arriving_before_the_final_response_still_counts() -> None:
    events = Recorder()
    async with StackPeer("carol") as carol, UserAgent(ua_config("alice")) as alice:
        alice.on_disposition(events)
        handle = await alice.send_message(carol.aor, "x", notify={"positive-delivery"})
        incoming = await asyncio.wait_for(carol.incoming.get(), 5)
        # liblinphone's order: the delivered IMDN first, the 200 after it.
        im = parse_cpim(incoming.request.body)
        imdn = build_imdn(im, kind="delivery", status="delivered", now=time.time(), own_address=carol.aor)
        assert (await carol.send_message(alice.aor, "message/cpim", imdn.to_bytes())).status_code == 200
        await events.wait_for(NotificationAccepted)
        assert handle.state is S.DELIVERED
        incoming.respond(200)
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        await asyncio.sleep(0.05)
        assert handle.state is S.DELIVERED
        assert events.states(handle.message_id) == [S.DELIVERED]


async def test_aggregated_imdn_applies_each_notification() -> None:
    events = Recorder()
    async with StackPeer("carol", lambda r: 200) as carol, UserAgent(ua_config("alice")) as alice:
        alice.on_disposition(events)
        handle = await alice.send_message(carol.aor, "x", notify=BOTH)
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        datetime = parse_cpim(carol.requests[0].body).date_time
        assert datetime is not None
        notes = [
            make_notification(
                message_id=handle.message_id,
                datetime=datetime.raw,
                kind=kind,
                status=status,
                recipient_uri=carol.aor,
            )
            for kind, status in (("delivery", "delivered"), ("display", "displayed"))
        ]
        aggregated = build_imdn_message(notes, from_=carol.aor, to=alice.aor, now=time.time())
        assert (await carol.send_message(alice.aor, "message/cpim", aggregated.to_bytes())).status_code == 200
        assert await handle.await_disposition("displayed", timeout=5) is S.DISPLAYED
        assert [(e.kind, e.status) for e in events.of(NotificationAccepted)] == [
            ("delivery", "delivered"),
            ("display", "displayed"),
        ]


@pytest.mark.parametrize("trusted", [True, False])
async def test_imdn_record_route(trusted: bool) -> None:
    async with (
        StackPeer("relay", lambda r: 200) as relay,
        StackPeer("carol", lambda r: 200) as carol,
        UserAgent(ua_config("bob", trust_imdn_route=trusted)) as bob,
    ):
        bob.on_message(_accept)
        im = build_im(from_=carol.aor, to=bob.aor, body=b"hi", now=time.time(), notify=["positive-delivery"])
        lines = im.to_bytes().split(b"\r\n")
        # An intermediary added itself on top of the IMDN path (RFC 5438 §6.5).
        at = lines.index(b"") if b"" in lines else len(lines)
        lines.insert(at, f"imdn.IMDN-Record-Route: <{relay.aor}>".encode())
        body = b"\r\n".join(lines)
        assert (await carol.send_message(bob.aor, "message/cpim", body)).status_code == 200
        target = relay if trusted else carol
        (imdn,) = [r for r in await target.wait_requests(1) if _is_imdn(r)]
        assert str(imdn.uri) == target.aor
        assert str(imdn.to.uri) == carol.aor  # SIP To is always the IM's SIP From
        routes = [r.uri for r in imdn_headers(parse_cpim(imdn.body)).routes]
        # Honoured: IMDN-Route copies the record-route (RFC 5438 §7.2.1); ignored (an untrusted
        # route is not followed, RFC 5438 §14.1): the IMDN
        # goes straight to the sender and names no route.
        assert routes == ([relay.aor] if trusted else [])
        other = carol if trusted else relay
        await asyncio.sleep(0.1)
        assert not [r for r in other.requests if _is_imdn(r)]


async def test_app_reports_a_failure_after_2xx_and_cannot_after_a_refusal() -> None:
    seen: list[IncomingMessage] = []
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> int | None:
            seen.append(message)
            return 486 if message.text == "refuse" else None

        handle = await alice.send_message(bob.aor, "keep", notify={"negative-delivery"})
        assert (await handle.final_response()).status_code == 200
        # Accepted, then the application could not deliver it after all.
        assert await bob.report_disposition(seen[0].message_id or "", "delivery", "failed") is True
        assert await handle.await_disposition("failed", timeout=5) is S.FAILED
        refused = await alice.send_message(bob.aor, "refuse", notify={"negative-delivery"})
        assert (await refused.final_response()).status_code == 486
        with pytest.raises(LocalProtocolError):
            await bob.report_disposition(seen[1].message_id or "", "delivery", "failed")


async def test_mark_displayed_inside_the_handler_waits_for_the_answer() -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> int | None:
            # Shown at once, even before the answer is decided: sent after the 200.
            assert await message.mark_displayed() is ("display" in message.notify)
            return 603 if message.text == "no" else None

        handle = await alice.send_message(bob.aor, "yes", notify=BOTH)
        assert await handle.await_disposition("displayed", timeout=5) is S.DISPLAYED
        refused = await alice.send_message(bob.aor, "no", notify=BOTH)
        assert (await refused.final_response()).status_code == 603
        # A later event on the same path: the IMDNs of a third message, sent after the refused
        # one, reach alice after any the refusal would wrongly have owed (one at a time, in
        # the order owed: RFC 3428 §8).
        later = await alice.send_message(bob.aor, "again", notify=BOTH)
        assert await later.await_disposition("displayed", timeout=5) is S.DISPLAYED
        assert refused.state is S.FAILED  # nothing follows a non-2xx answer (RFC 5438 §7.2.1)


async def test_transport_can_be_forced_per_message() -> None:
    seen: list[str] = []
    both = (ListenEndpoint("udp", "127.0.0.1", 0), ListenEndpoint("tcp", "127.0.0.1", 0))
    async with (
        UserAgent(ua_config("bob").__class__(aor="sip:bob@127.0.0.1:0", listen=both)) as bob,
        UserAgent(ua_config("alice").__class__(aor="sip:alice@127.0.0.1:0", listen=both)) as alice,
    ):

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            seen.append(message.transport)

        for transport in ("tcp", "udp"):
            handle = await alice.send_message(bob.aor, "x", transport=transport)
            assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        assert seen == ["tcp", "udp"]


async def test_outbound_proxy_gets_every_request() -> None:
    async with StackPeer("proxy", lambda r: 200) as proxy:
        config = ua_config("alice").__class__(aor="sip:alice@127.0.0.1:0", outbound_proxy=proxy.aor)
        async with UserAgent(config) as alice:
            handle = await alice.send_message("sip:bob@example.invalid", "via the proxy")
            assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        (request,) = proxy.requests
        assert str(request.uri) == "sip:bob@example.invalid"
        assert [str(r.uri) for r in request.route] == [f"{proxy.aor};lr"]
