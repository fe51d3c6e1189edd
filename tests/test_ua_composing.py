"""Composition indications (RFC 3994) between user agents on loopback, bare and through CPIM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from ua_helpers import RawPeer, Recorder, StackPeer, ua_config

from sipimdn import LocalProtocolError, UserAgent
from sipimdn.cpim import build_message
from sipimdn.cpim import parse as parse_cpim
from sipimdn.iscomposing import (
    CONTENT_TYPE,
    MAX_DOCUMENT_SIZE,
    ChangeCause,
    ComposingState,
    ComposingStateChanged,
    build_iscomposing,
    parse_iscomposing,
)
from sipimdn.message import Request, Response
from sipimdn.ua import IncomingMessage

ACTIVE = ComposingState.ACTIVE
IDLE = ComposingState.IDLE


def _indication(request: Request) -> tuple[bool, ComposingState]:
    """(wrapped in CPIM, state) of an indication a peer received."""
    ctype = request.content_type
    assert ctype is not None
    if ctype.mime == "message/cpim":
        envelope = parse_cpim(request.body)
        assert envelope.content_type == CONTENT_TYPE
        # RFC 3994 needs no IMDN: the envelope carries none of its headers.
        assert b"imdn" not in request.body
        return True, parse_iscomposing(envelope.decoded_body()).state
    assert ctype.mime == CONTENT_TYPE
    return False, parse_iscomposing(request.body).state


@pytest.mark.parametrize("cpim", [False, True], ids=["bare", "cpim"])
async def test_keystroke_active_then_message_ends_it_without_idle(cpim: bool) -> None:
    events = Recorder()
    received: list[IncomingMessage] = []
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:
        bob.on_composing(events)

        @bob.on_message
        async def got(message: IncomingMessage) -> None:
            received.append(message)

        composer = alice.composing(bob.aor, cpim=cpim)
        assert alice.composing(bob.aor) is composer  # one per peer
        composer.keystroke()
        composer.keystroke()  # still active: nothing more is sent
        assert composer.state is ACTIVE
        (first,) = await events.wait_for(ComposingStateChanged)
        assert first.state is ACTIVE
        assert first.sender == alice.aor
        assert first.content_type == "text/plain"
        assert first.refresh == 120
        assert first.cause is ChangeCause.INDICATION
        sent = await alice.send_message(bob.aor, "hello", notify={"positive-delivery"})
        assert composer.state is IDLE  # a message sent ends composing (RFC 3994 §3.2)
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 200
        await sent.await_disposition("delivered", timeout=5)
        _, second = await events.wait_for(ComposingStateChanged, count=2)
        # Bob's side: the message ended Alice's active state (RFC 3994 §3.3).
        assert second.state is IDLE
        assert second.cause is ChangeCause.MESSAGE
        assert [m.text for m in received] == ["hello"]  # the indication was not a message


async def test_a_message_suppresses_the_idle_indication_on_the_wire() -> None:
    async with StackPeer("peer", answer=lambda request: 200) as peer, UserAgent(ua_config("alice")) as alice:
        composer = alice.composing(peer.aor, idle_timeout=0.2, cpim=False)
        composer.keystroke()
        await peer.wait_requests(1)
        sent = await alice.send_message(peer.aor, "done typing", cpim=False)
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 200
        composer.stop()  # already idle: sends nothing
        await asyncio.sleep(0.4)  # past the idle timeout the message cancelled
        composer.keystroke()
        requests = await peer.wait_requests(3)
        kinds = [r.content_type.mime if r.content_type else None for r in requests]
        assert kinds == [CONTENT_TYPE, "text/plain", CONTENT_TYPE]
        assert [_indication(requests[0])[1], _indication(requests[2])[1]] == [ACTIVE, ACTIVE]


@pytest.mark.parametrize("cpim", [False, True], ids=["bare", "cpim"])
async def test_idle_timeout_and_stop_send_idle_with_last_active(cpim: bool) -> None:
    async with StackPeer("peer", answer=lambda request: 200) as peer, UserAgent(ua_config("alice")) as alice:
        composer = alice.composing(peer.aor, idle_timeout=0.3, cpim=cpim)
        composer.keystroke()
        first, second = await peer.wait_requests(2, timeout=5)
        assert _indication(first) == (cpim, ACTIVE)
        # Idle after 0.3 s without a keystroke, with <lastactive>.
        assert _indication(second) == (cpim, IDLE)
        assert composer.state is IDLE
        body = second.body
        if cpim:
            body = parse_cpim(body).decoded_body()
        assert parse_iscomposing(body).last_active is not None
        composer.keystroke()
        composer.stop()
        requests = await peer.wait_requests(4, timeout=5)
        assert [_indication(r)[1] for r in requests] == [ACTIVE, IDLE, ACTIVE, IDLE]


async def test_a_peer_refusing_indications_gets_no_more() -> None:
    def text_only(request: Request) -> int:
        return 200 if request.content_type is not None and request.content_type.mime == "text/plain" else 415

    async with StackPeer("old", answer=text_only) as peer, UserAgent(ua_config("alice")) as alice:
        composer = alice.composing(peer.aor, cpim=False)
        composer.keystroke()
        await peer.wait_requests(1)
        for _ in range(50):  # the 415 reaches the composer a loop turn or two later
            if composer.refused:
                break
            await asyncio.sleep(0.01)
        assert composer.refused
        composer.stop()  # would be "idle": not sent
        composer.keystroke()  # would be "active": not sent
        sent = await alice.send_message(peer.aor, "typed anyway", cpim=False)
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 200
        assert [_indication(r)[1] if _mime(r) == CONTENT_TYPE else _mime(r) for r in peer.requests] == [
            ACTIVE, "text/plain",
        ]


def _mime(request: Request) -> str | None:
    return request.content_type.mime if request.content_type is not None else None


async def test_composer_refuses_a_refresh_below_60_s_and_non_sip_peers() -> None:
    async with UserAgent(ua_config("alice")) as alice:
        with pytest.raises(LocalProtocolError):
            alice.composing("sip:bob@127.0.0.1:5999", refresh=10)
        with pytest.raises(LocalProtocolError):
            alice.composing("tel:+1234")


@dataclass
class Receiver:
    """bob, a user agent recording composing events and messages, and a raw UDP peer facing him."""

    bob: UserAgent
    raw: RawPeer
    events: Recorder = field(default_factory=Recorder)
    received: list[IncomingMessage] = field(default_factory=list)

    async def send(self, body: bytes = b"", *, content_type: str | None = CONTENT_TYPE,
                   method: str = "MESSAGE") -> Response:
        """One request from the raw peer to bob; its final response."""
        dest = (self.bob.endpoints[0].host, self.bob.endpoints[0].port)
        data, branch = self.raw.request_bytes(method, self.bob.aor, content_type=content_type, body=body)
        return await self.raw.transact(data, branch, dest)


@asynccontextmanager
async def receiver(**config: Any) -> AsyncIterator[Receiver]:
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob", **config)) as bob:
            side = Receiver(bob, raw)
            bob.on_composing(side.events)

            @bob.on_message
            async def got(message: IncomingMessage) -> None:
                side.received.append(message)

            yield side
    finally:
        raw.close()


async def test_unrefreshed_active_state_times_out_on_the_receiver() -> None:
    async with receiver(composing_grace=0.0) as side:
        body = build_iscomposing("active", content_type="text/plain", refresh=1)
        assert (await side.send(body)).status_code == 200
        active, idle = await side.events.wait_for(ComposingStateChanged, count=2, timeout=5)
        assert (active.state, active.refresh) == (ACTIVE, 1)
        assert (idle.state, idle.cause) == (IDLE, ChangeCause.TIMEOUT)
        assert idle.sender == active.sender


async def test_bad_indications_get_400_or_413_and_nothing_else() -> None:
    async with receiver() as side:
        bad = b'<?xml version="1.0"?><isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"/>'
        assert (await side.send(bad)).status_code == 400
        padding = b"<!--" + b"x" * MAX_DOCUMENT_SIZE + b"-->"
        huge = build_iscomposing("active").replace(b"</isComposing>", padding + b"</isComposing>")
        assert (await side.send(huge)).status_code == 413
        # A good one afterwards is the first and only event.
        good = build_iscomposing("active")
        assert (await side.send(good)).status_code == 200
        (only,) = await side.events.wait_for(ComposingStateChanged)
        assert only.state is ACTIVE
        assert side.received == []


async def test_cpim_indication_requesting_imdns_owes_none_and_is_not_a_message() -> None:
    async with receiver() as side:
        bob, (host, port) = side.bob, side.raw.address
        envelope = build_message(
            [
                ("From", f"<sip:raw@{host}:{port}>"),
                ("To", f"<{bob.aor}>"),
                ("NS", "imdn <urn:ietf:params:imdn>"),
                ("imdn.Message-ID", "composing1"),
                ("imdn.Disposition-Notification", "positive-delivery, display"),
            ],
            content_type=CONTENT_TYPE,
            body=build_iscomposing("active", refresh=90),
        )
        assert (await side.send(envelope.to_bytes(), content_type="message/cpim")).status_code == 200
        (event,) = await side.events.wait_for(ComposingStateChanged)
        assert (event.state, event.refresh, event.sender) == (ACTIVE, 90, f"sip:raw@{host}:{port}")
        assert side.received == []
        assert bob.tracker.received("composing1", event.sender) is None
        # A real message asking for the same afterwards: the first IMDN the raw peer
        # gets is for it, none came for the indication.
        im = build_message(
            [
                ("From", f"<sip:raw@{host}:{port}>"),
                ("To", f"<{bob.aor}>"),
                ("NS", "imdn <urn:ietf:params:imdn>"),
                ("imdn.Message-ID", "message2"),
                ("DateTime", "2026-01-01T00:00:00Z"),
                ("imdn.Disposition-Notification", "positive-delivery"),
            ],
            content_type="text/plain",
            body=b"hi",
        )
        assert (await side.send(im.to_bytes(), content_type="message/cpim")).status_code == 200
        imdn = await asyncio.wait_for(side.raw.requests.get(), 5)
        assert b"<message-id>message2</message-id>" in imdn.body
        assert [m.message_id for m in side.received] == ["message2"]


async def test_options_accept_lists_the_composing_type() -> None:
    async with receiver() as side:
        answer = await side.send(method="OPTIONS", content_type=None)
        accept = [t.strip() for t in (answer.headers.get("Accept") or "").split(",")]
        assert set(accept) == {"message/cpim", "text/plain", "message/imdn+xml", CONTENT_TYPE}
