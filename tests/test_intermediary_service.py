"""The Intermediary service on loopback with raw SIP peers: answers, routing rules, IMDN-Route hops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from test_intermediary_support import DOMAIN, Seen, ua_config, until

from sipimdn import cpim, imdn
from sipimdn.dialog.factory import build_request
from sipimdn.events import DispositionState
from sipimdn.intermediary import Intermediary, IntermediaryConfig, UriList
from sipimdn.message import Request, Response
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.ua import IncomingMessage, UserAgent

LIST = f"sip:club@{DOMAIN}"


class Peer:
    """A raw SIP endpoint that records what it receives and answers ``status``."""

    def __init__(self, stack: SipStack, status: int = 200) -> None:
        self.stack = stack
        self.status = status
        self.requests: list[Request] = []
        stack.on_request(self._on_request)

    def _on_request(self, incoming: IncomingRequest) -> None:
        self.requests.append(incoming.request)
        incoming.respond(self.status)

    @property
    def uri(self) -> str:
        _, (host, port) = self.stack.endpoints[0]
        return f"sip:peer@{host}:{port}"


@asynccontextmanager
async def setup(**config: object) -> AsyncIterator[tuple[Intermediary, Peer, Seen]]:
    async with SipStack() as stack:
        peer = Peer(stack)
        settings = IntermediaryConfig(
            domains=(DOMAIN,),
            lists=(UriList(LIST, ("sip:x@127.0.0.1:9",), private=True),),
            **config,  # type: ignore[arg-type]
        )
        async with Intermediary(settings) as server:
            yield server, peer, Seen(server)


async def send(peer: Peer, server: Intermediary, request_uri: str, **kwargs: object) -> Response:
    body = kwargs.pop("body", b"hello")
    content_type = kwargs.pop("content_type", "text/plain")
    request = build_request(
        "MESSAGE",
        request_uri,
        f"<{peer.uri}>",
        f"<{request_uri}>",
        body=body,  # type: ignore[arg-type]
        content_type=content_type,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    _, (host, port) = server.endpoints[0]
    request.headers.prepend("Route", f"<sip:{host}:{port};lr>")
    return await peer.stack.send_request(request)


async def test_answers_options_refuses_other_methods_and_requests_for_itself() -> None:
    async with setup() as (server, peer, _):
        options = build_request("OPTIONS", server.uri, f"<{peer.uri}>", f"<{server.uri}>")
        answer = await peer.stack.send_request(options)
        assert answer.status_code == 200 and "MESSAGE" in (answer.headers.get("Allow") or "")
        other = build_request("SUBSCRIBE", server.uri, f"<{peer.uri}>", f"<{server.uri}>")
        answer = await peer.stack.send_request(other)
        assert answer.status_code == 405
        assert (await send(peer, server, server.uri)).status_code == 404


async def test_refusals_carry_the_right_status() -> None:
    async with setup() as (server, peer, seen):
        assert (await send(peer, server, "sip:bob@x.test", max_forwards=0)).status_code == 483
        bad = await send(peer, server, "sip:bob@x.test", body=b"garbage", content_type="message/cpim")
        assert bad.status_code == 400
        assert (await send(peer, server, LIST)).status_code == 415  # a list needs CPIM
        note = imdn.make_notification(message_id="m", datetime="d", kind="delivery", status="delivered")
        envelope = imdn.build_imdn_message(note, from_="im:a@x.test", to="im:b@x.test", now=0)
        to_list = await send(peer, server, LIST, body=envelope.to_bytes(), content_type="message/cpim")
        assert to_list.status_code == 403  # IMDNs are routed, not exploded
        assert [r.status for r in seen.routed("refused")] == [483, 400, 415, 403]


async def test_plain_text_is_held_and_forwarded_unchanged_in_a_new_transaction() -> None:
    async with setup() as (server, peer, _):
        response = await send(peer, server, peer.uri, body=b"plain words", max_forwards=10)
        assert response.status_code == 202
        await until(lambda: bool(peer.requests))
        [forwarded] = peer.requests
        assert forwarded.body == b"plain words"
        assert forwarded.max_forwards == 9
        assert forwarded.call_id != response.call_id
        assert str(forwarded.from_.uri) == peer.uri
        assert forwarded.content_type is not None and forwarded.content_type.mime == "text/plain"


async def test_imdn_route_hop_goes_to_the_next_entry() -> None:
    async with setup() as (server, peer, seen):
        note = imdn.make_notification(message_id="m", datetime="d", kind="display", status="displayed")
        envelope = imdn.build_imdn_message(
            note, from_="im:bob@x.test", to="im:alice@x.test", now=0, routes=[server.uri, peer.uri]
        )
        response = await send(peer, server, server.uri, body=envelope.to_bytes(), content_type="message/cpim")
        assert response.status_code == 202
        await until(lambda: bool(peer.requests))
        [relayed] = peer.requests
        assert str(relayed.uri) == peer.uri  # the next IMDN-Route entry is the Request-URI
        relayed_cpim = cpim.parse(relayed.body)
        assert [a.uri for a in imdn.imdn_headers(relayed_cpim).routes] == [peer.uri]
        assert relayed_cpim.body == envelope.body  # the notification itself is untouched
        assert seen.routed("imdn-route")


async def test_late_notification_for_a_private_list_is_dropped() -> None:
    async with setup() as (server, peer, seen):
        note = imdn.make_notification(
            message_id="gone",
            datetime="d",
            kind="delivery",
            status="delivered",
            recipient_uri="sip:x@127.0.0.1:9",
            original_recipient_uri=LIST,
        )
        envelope = imdn.build_imdn_message(
            note, from_="sip:x@127.0.0.1:9", to=peer.uri, now=0, routes=[server.uri]
        )
        response = await send(peer, server, server.uri, body=envelope.to_bytes(), content_type="message/cpim")
        assert response.status_code == 200
        await asyncio.sleep(0.2)
        assert peer.requests == []  # never relayed: it would name a member (RFC 5438 §14.2)
        assert not server.forwarder.held()
        assert seen.routed("refused")


async def test_recipient_refusal_comes_back_as_failed() -> None:
    async def refuse(message: IncomingMessage) -> int:
        return 403

    async with (
        Intermediary(IntermediaryConfig(domains=(DOMAIN,))) as server,
        UserAgent(ua_config("carol")) as carol,
        UserAgent(ua_config("alice", outbound_proxy=server.uri)) as alice,
    ):
        carol.on_message(refuse)
        sent = await alice.send_message(carol.aor, "let me in", notify=["negative-delivery", "processing"])
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        assert await sent.await_disposition(DispositionState.FAILED, timeout=5) is DispositionState.FAILED


async def test_no_loop_through_ourselves() -> None:
    async with setup() as (server, peer, seen):
        _, (host, port) = server.endpoints[0]
        ours = f"sip:someone@{host}:{port}"
        assert (await send(peer, server, ours)).status_code == 202
        # A binding pointing back at us is no way out either.
        register = build_request("REGISTER", server.uri, f"<sip:loop@{DOMAIN}>", f"<sip:loop@{DOMAIN}>")
        register.headers.add("Contact", f"<sip:loop@{host}:{port}>")
        assert (await peer.stack.send_request(register)).status_code == 200
        assert (await send(peer, server, f"sip:loop@{DOMAIN}")).status_code == 202
        await asyncio.sleep(0.2)
        held = {m.target for m in server.forwarder.held()}
        assert held == {ours, f"sip:loop@{DOMAIN}"}  # held, not bounced between us and us
        assert len(seen.routed("held")) == 2


async def test_tls_both_ways() -> None:
    """Alice reaches the intermediary over TLS; it reaches bob's TLS contact with its client context."""
    from test_intermediary_support import register
    from ua_helpers import make_tls

    from sipimdn.config import ListenEndpoint

    tls = make_tls()
    bob_aor = f"sip:bob@{DOMAIN}"
    config = IntermediaryConfig(
        listen=(ListenEndpoint("udp", "127.0.0.1", 0), ListenEndpoint("tls", "127.0.0.1", 0)),
        domains=(DOMAIN,),
        tls_server_context=tls.server,
        tls_client_context=tls.client,
    )
    async with Intermediary(config) as server:
        tls_port = next(port for kind, (_, port) in server.endpoints if kind.value == "TLS")
        bob_config = ua_config(
            "bob",
            aor=bob_aor,
            # UDP too: its IMDNs go to the intermediary's URI, a UDP one (IntermediaryConfig.uri
            # would name a TLS one for TLS-only recipients).
            listen=(ListenEndpoint("tls", "127.0.0.1", 0), ListenEndpoint("udp", "127.0.0.1", 0)),
            tls_server_context=tls.server,
            tls_client_context=tls.client,
        )
        alice_config = ua_config(
            "alice",
            outbound_proxy=f"sip:imdn@127.0.0.1:{tls_port};transport=tls",
            tls_client_context=tls.client,
        )
        async with UserAgent(bob_config) as bob, UserAgent(alice_config) as alice:
            inbox: list[IncomingMessage] = []

            async def keep(message: IncomingMessage) -> None:
                inbox.append(message)

            bob.on_message(keep)
            await register(bob_aor, bob.contact_uri("tls"), server.uri)
            sent = await alice.send_message(bob_aor, "over TLS", notify=["positive-delivery"])
            assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
            await sent.await_disposition(DispositionState.DELIVERED, timeout=5)
            assert inbox[0].transport == "tls" and inbox[0].body == b"over TLS"


async def test_members_only_list_refuses_strangers() -> None:
    config = IntermediaryConfig(
        domains=(DOMAIN,), lists=(UriList(LIST, ("sip:x@127.0.0.1:9",), members_only=True),)
    )
    async with SipStack() as stack, Intermediary(config) as server:
        peer = Peer(stack)
        im = imdn.build_im(from_=peer.uri, to=LIST, body=b"spam", now=0)
        answer = await send(peer, server, LIST, body=im.to_bytes(), content_type="message/cpim")
        assert answer.status_code == 403


async def test_our_notifications_follow_upstream_routes_only_when_trusted() -> None:
    from sipimdn.intermediary import add_record_route

    for trusted in (False, True):
        async with SipStack() as upstream_stack, setup(trust_imdn_route=trusted) as (server, peer, _):
            upstream = Peer(upstream_stack)
            im = imdn.build_im(
                from_=peer.uri, to=f"sip:nobody@{DOMAIN}", body=b"x", now=0, notify=["processing"]
            )
            im = add_record_route(im, upstream.uri)
            answer = await send(
                peer, server, f"sip:nobody@{DOMAIN}", body=im.to_bytes(), content_type="message/cpim"
            )
            assert answer.status_code == 202
            reached = upstream if trusted else peer
            await until(lambda reached=reached: bool(reached.requests))  # type: ignore[misc]
            [stored] = reached.requests
            envelope = cpim.parse(stored.body)
            received = imdn.recognise(envelope)
            assert received is not None and str(received.notifications[0].status) == "stored"
            routes = [a.uri for a in imdn.imdn_headers(envelope).routes]
            assert routes == ([upstream.uri] if trusted else [])
            assert str(stored.uri) == (upstream.uri if trusted else peer.uri)
            if not trusted:
                assert upstream.requests == []


async def test_a_resent_message_is_held_and_exploded_once() -> None:
    async with SipStack() as member_stack:
        member = Peer(member_stack)
        config = IntermediaryConfig(domains=(DOMAIN,), lists=(UriList(LIST, (member.uri,)),))
        async with SipStack() as stack, Intermediary(config) as server:
            peer = Peer(stack)
            im = imdn.build_im(
                from_=peer.uri, to=f"sip:nobody@{DOMAIN}", body=b"x", now=0, notify=["processing"]
            )
            for _ in range(2):  # a new transaction each time: our 202 "was lost"
                answer = await send(
                    peer, server, f"sip:nobody@{DOMAIN}", body=im.to_bytes(), content_type="message/cpim"
                )
                assert answer.status_code == 202
            assert len(server.forwarder.held()) == 1
            to_list = imdn.build_im(from_=peer.uri, to=LIST, body=b"y", now=0, notify=["positive-delivery"])
            for _ in range(2):
                answer = await send(peer, server, LIST, body=to_list.to_bytes(), content_type="message/cpim")
                assert answer.status_code == 202
            await until(lambda: bool(member.requests))
            await asyncio.sleep(0.2)
            assert len(member.requests) == 1
            stored = [r for r in peer.requests if b"<stored/>" in r.body]
            assert len(stored) == 1  # one processing notification (RFC 5438 §8.1)


async def test_register_only_for_our_domains_and_malformed_refused() -> None:
    async with setup() as (server, peer, _):
        foreign = build_request(
            "REGISTER", server.uri, "<sip:eve@elsewhere.test>", "<sip:eve@elsewhere.test>"
        )
        foreign.headers.add("Contact", "<sip:eve@127.0.0.1:9>")
        assert (await peer.stack.send_request(foreign)).status_code == 404
        bad = build_request("REGISTER", server.uri, f"<sip:bob@{DOMAIN}>", f"<sip:bob@{DOMAIN}>")
        bad.headers.add("Contact", "<sip:bob@127.0.0.1:9>;expires=soon")
        assert (await peer.stack.send_request(bad)).status_code == 400
        good = build_request("REGISTER", server.uri, f"<sip:bob@{DOMAIN}>", f"<sip:bob@{DOMAIN}>")
        good.headers.add("Contact", "<sip:bob@127.0.0.1:9>;expires=30")
        answer = await peer.stack.send_request(good)
        assert answer.status_code == 200
        assert answer.headers.get("Contact") == "<sip:bob@127.0.0.1:9>;expires=30"
        assert server.registrar.lookup(f"sip:bob@{DOMAIN}", 0.0) == ["sip:bob@127.0.0.1:9"]


def test_configuration_is_checked() -> None:
    import pytest

    from sipimdn.config import ListenEndpoint

    with pytest.raises(ValueError, match="next hop"):
        IntermediaryConfig(next_hops=(("example.com", "not a uri"),))
    with pytest.raises(ValueError, match="tls_server_context"):
        IntermediaryConfig(listen=(ListenEndpoint("tls", "127.0.0.1", 0),))
    with pytest.raises(ValueError, match="user"):
        IntermediaryConfig(user="a@b")
    with pytest.raises(ValueError, match="listen"):
        IntermediaryConfig(listen=())
