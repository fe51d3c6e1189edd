"""Store-and-forward on loopback: three parties, a recipient who comes online later, expiry, restart.

alice (sender, outbound proxy = the intermediary) -> intermediary (domain
sipimdn.test, registrar) -> bob@sipimdn.test (offline, registers later).
Every IMDN bob sends goes back through the intermediary (IMDN-Record-Route),
which is checked on the wire.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_intermediary_support import DOMAIN, Seen, register, ua_config, until

from sipimdn import cpim, imdn
from sipimdn.config import ListenEndpoint
from sipimdn.events import DispositionChanged, DispositionState, NotificationAccepted
from sipimdn.intermediary import (
    ForwardConfig,
    Intermediary,
    IntermediaryConfig,
    MessageDeferred,
    MessageFailed,
    MessageForwarded,
)
from sipimdn.ua import IncomingMessage, UserAgent

NOTIFY = ["positive-delivery", "negative-delivery", "display", "processing"]
BOB = f"sip:bob@{DOMAIN}"


def server_config(
    store_path: str = ":memory:", *, retry_base: float = 30.0, expiry: float = 60.0
) -> IntermediaryConfig:
    return IntermediaryConfig(
        domains=(DOMAIN,),
        forward=ForwardConfig(retry_base=retry_base, expiry=expiry),
        store_path=store_path,
    )


class Inbox:
    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []

    async def __call__(self, message: IncomingMessage) -> None:
        self.messages.append(message)


def accepted(events: list[object], kind: str) -> list[NotificationAccepted]:
    return [e for e in events if isinstance(e, NotificationAccepted) and str(e.kind) == kind]


async def test_offline_recipient_registers_and_imdns_come_back_through_the_intermediary() -> None:
    async with Intermediary(server_config()) as server:
        seen = Seen(server)
        alice_events: list[object] = []

        async def on_alice(event: object) -> None:
            alice_events.append(event)

        async with UserAgent(ua_config("alice", outbound_proxy=server.uri)) as alice:
            alice.on_disposition(on_alice)
            sent = await alice.send_message(BOB, "hello, are you there?", notify=NOTIFY)
            response = await asyncio.wait_for(sent.final_response(), 5)
            assert response.status_code == 202  # accepted and held, not delivered (RFC 3428 §7)
            await until(lambda: bool(accepted(alice_events, "processing")))
            [stored] = accepted(alice_events, "processing")
            assert str(stored.status) == "stored" and stored.message_id == sent.message_id
            assert seen.of(MessageDeferred), "no contact for bob: the message must stay held"
            assert sent.state is DispositionState.ACCEPTED  # never "delivered" on a next hop's 2xx

            async with UserAgent(ua_config("bob", aor=BOB)) as bob:
                inbox = Inbox()
                bob.on_message(inbox)
                await register(BOB, bob.contact_uri(), server.uri)
                await until(lambda: bool(inbox.messages))
                [message] = inbox.messages
                assert message.body == b"hello, are you there?"
                assert message.message_id == sent.message_id  # the original CPIM Message-ID
                assert message.cpim is not None
                headers = imdn.imdn_headers(message.cpim)
                assert [a.uri for a in headers.record_routes] == [server.uri]
                assert headers.original_to is not None and headers.original_to.uri == BOB
                assert message.request.call_id != response.call_id  # a fresh transaction

                await sent.await_disposition(DispositionState.DELIVERED, timeout=5)
                assert await bob.mark_displayed(message.message_id or "")
                await sent.await_disposition(DispositionState.DISPLAYED, timeout=5)

                # On the wire: each IMDN bob sent was addressed to the intermediary, which is
                # the only IMDN-Route entry, and left it with that entry popped.
                # (RequestRouted is reported once the 202 went out, which may be after alice
                # already saw the relayed IMDN.)
                await seen.wait_for(lambda: len(seen.routed("imdn-route")) >= 2)
                relayed = seen.routed("imdn-route")
                assert len(relayed) == 2
                for routed in relayed:
                    request = routed.request
                    assert str(request.uri) == server.uri
                    envelope = cpim.parse(request.body)
                    assert [a.uri for a in imdn.imdn_headers(envelope).routes] == [server.uri]
                    assert envelope.to[0].uri == alice.aor
                kinds = [
                    str(imdn.recognise(cpim.parse(r.request.body)).notifications[0].kind)  # type: ignore[union-attr]
                    for r in relayed
                ]
                assert kinds == ["delivery", "display"]
                forwarded_imdns = [e for e in seen.of(MessageForwarded) if e.message.is_notification]
                for event in forwarded_imdns:
                    if event.message.sip_from == bob.aor:
                        assert imdn.imdn_headers(cpim.parse(event.message.body)).routes == ()
            states = [e.state for e in alice_events if isinstance(e, DispositionChanged)]
            assert states == [
                DispositionState.ACCEPTED,
                DispositionState.DELIVERED,
                DispositionState.DISPLAYED,
            ]
            assert not server.forwarder.held()


async def test_expiry_ends_in_failed() -> None:
    async with Intermediary(server_config(expiry=0.6, retry_base=0.2)) as server:
        seen = Seen(server)
        async with UserAgent(ua_config("alice", outbound_proxy=server.uri)) as alice:
            sent = await alice.send_message(BOB, "nobody home", notify=NOTIFY)
            assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
            state = await sent.await_disposition(DispositionState.FAILED, timeout=5)
            assert state is DispositionState.FAILED
            [failed] = seen.of(MessageFailed)
            assert failed.expired and failed.message.target == BOB
            # Retried with back-off before giving up.
            assert len(seen.of(MessageDeferred)) >= 2
            assert not server.forwarder.held()


async def test_only_negative_delivery_asked_gets_failed_but_no_processing() -> None:
    async with Intermediary(server_config(expiry=0.3, retry_base=0.1)) as server:
        events: list[object] = []

        async def record(event: object) -> None:
            events.append(event)

        async with UserAgent(ua_config("alice", outbound_proxy=server.uri)) as alice:
            alice.on_disposition(record)
            sent = await alice.send_message(BOB, "x", notify=["negative-delivery"])
            await sent.await_disposition(DispositionState.FAILED, timeout=5)
            assert not accepted(events, "processing")
            assert [str(e.status) for e in accepted(events, "delivery")] == ["failed"]


async def test_restart_between_store_and_forward_loses_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "parked.sqlite")
    alice_events: list[object] = []

    async def on_alice(event: object) -> None:
        alice_events.append(event)

    first = Intermediary(server_config(db))
    await first.start()
    uri = first.uri
    port = first.endpoints[0][1][1]
    async with UserAgent(ua_config("alice", outbound_proxy=uri)) as alice:
        alice.on_disposition(on_alice)
        sent = await alice.send_message(BOB, "survive a restart", notify=NOTIFY)
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: bool(accepted(alice_events, "processing")))
        assert len(first.forwarder.held()) == 1
        await first.close()

        second_config = IntermediaryConfig(
            listen=(ListenEndpoint("udp", "127.0.0.1", port),),
            domains=(DOMAIN,),
            forward=ForwardConfig(retry_base=30.0, expiry=60.0),
            store_path=db,
        )
        async with Intermediary(second_config) as second:
            assert second.uri == uri
            [held] = second.forwarder.held()
            assert held.origin is not None and held.origin.message_id == sent.message_id
            async with UserAgent(ua_config("bob", aor=BOB)) as bob:
                inbox = Inbox()
                bob.on_message(inbox)
                await register(BOB, bob.contact_uri(), second.uri)
                await until(lambda: bool(inbox.messages))
                assert inbox.messages[0].body == b"survive a restart"
                await sent.await_disposition(DispositionState.DELIVERED, timeout=5)
            assert not second.forwarder.held()
        # Only one processing notification ever (RFC 5438 §8.1), even across the restart.
        assert len(accepted(alice_events, "processing")) == 1


async def test_held_messages_arrive_in_order_after_registration() -> None:
    async with (
        Intermediary(server_config()) as server,
        UserAgent(ua_config("alice", outbound_proxy=server.uri)) as alice,
        UserAgent(ua_config("bob", aor=BOB)) as bob,
    ):
        inbox = Inbox()
        busy = {"now": 0, "most": 0}

        async def slow(message: IncomingMessage) -> None:
            # Answer only after a while: a second MESSAGE arriving meanwhile would overlap.
            busy["now"] += 1
            busy["most"] = max(busy["most"], busy["now"])
            await asyncio.sleep(0.05)
            busy["now"] -= 1

        bob.on_message(inbox)
        bob.on_message(slow)
        texts = [f"message {n}" for n in range(5)]
        for text in texts:
            sent = await alice.send_message(BOB, text)
            assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: len(server.forwarder.held()) == 5)
        await register(BOB, bob.contact_uri(), server.uri)
        await until(lambda: len(inbox.messages) == 5)
        # One transaction at a time per destination (RFC 3428 §8), in the order taken.
        assert [m.body.decode() for m in inbox.messages] == texts
        assert busy["most"] == 1
