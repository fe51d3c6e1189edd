"""URI-list exploder on loopback: alice -> list of three -> each member's state back to alice.

Aggregated (one multipart/mixed IMDN per batch, RFC 5438 §8.3) and relayed
(one IMDN per member) modes; the members are told apart by
``<recipient-uri>`` while ``<original-recipient-uri>`` names the list. A
private list strips member identities (RFC 5438 §8, §14.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
from test_intermediary_support import DOMAIN, Seen, ua_config, until

from sipimdn import cpim, imdn
from sipimdn.events import (
    DispositionChanged,
    DispositionState,
    NotificationAccepted,
    NotificationRejected,
)
from sipimdn.intermediary import (
    ExploderConfig,
    Intermediary,
    IntermediaryConfig,
    MessageForwarded,
    NotificationsReady,
    UriList,
)
from sipimdn.ua import IncomingMessage, UserAgent

LIST = f"sip:friends@{DOMAIN}"
NOTIFY = ["positive-delivery", "negative-delivery", "display", "processing"]


@dataclass
class Member:
    ua: UserAgent
    inbox: list[IncomingMessage]


@dataclass
class Scene:
    server: Intermediary
    seen: Seen
    alice: UserAgent
    alice_events: list[object]
    members: list[Member]


@asynccontextmanager
async def scene(
    *, aggregate: bool, private: bool = False, hide_count: bool = False, window: float = 3.0
) -> AsyncIterator[Scene]:
    async with AsyncExitStack() as stack:
        members: list[Member] = []
        for name in ("bob", "carol", "dave"):
            ua = await stack.enter_async_context(UserAgent(ua_config(name)))
            inbox: list[IncomingMessage] = []

            async def keep(message: IncomingMessage, inbox: list[IncomingMessage] = inbox) -> None:
                inbox.append(message)

            ua.on_message(keep)
            members.append(Member(ua, inbox))
        config = IntermediaryConfig(
            domains=(DOMAIN,),
            lists=(UriList(LIST, tuple(m.ua.aor for m in members), private=private, hide_count=hide_count),),
            exploder=ExploderConfig(aggregate=aggregate, window=window),
        )
        server = await stack.enter_async_context(Intermediary(config))
        seen = Seen(server)
        alice = await stack.enter_async_context(UserAgent(ua_config("alice", outbound_proxy=server.uri)))
        alice_events: list[object] = []

        async def record(event: object) -> None:
            alice_events.append(event)

        alice.on_disposition(record)
        yield Scene(server, seen, alice, alice_events, members)


def member_states(events: list[object], message_id: str) -> dict[str, list[DispositionState]]:
    out: dict[str, list[DispositionState]] = {}
    for e in events:
        if isinstance(e, DispositionChanged) and e.message_id == message_id:
            out.setdefault(e.recipient, []).append(e.state)
    return out


def imdns_to_alice(seen: Seen, alice: UserAgent) -> list[cpim.CpimMessage]:
    return [
        cpim.parse(e.message.body)
        for e in seen.of(MessageForwarded)
        if e.message.is_notification and e.message.sip_to == alice.aor
    ]


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "relayed"])
async def test_sender_gets_each_members_state(aggregate: bool) -> None:
    async with scene(aggregate=aggregate) as s:
        sent = await s.alice.send_message(LIST, "hello friends", notify=NOTIFY)
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: all(m.inbox for m in s.members))
        for member in s.members:
            [copy] = member.inbox
            assert copy.message_id == sent.message_id
            assert copy.cpim_to == (member.ua.aor,)  # CPIM To rewritten to the member
            assert copy.cpim is not None
            headers = imdn.imdn_headers(copy.cpim)
            assert headers.original_to is not None and headers.original_to.uri == LIST
            assert [a.uri for a in headers.record_routes] == [s.server.uri]
        member_uris = {m.ua.aor for m in s.members}
        await until(
            lambda: (
                {
                    r
                    for r, states in member_states(s.alice_events, sent.message_id).items()
                    if DispositionState.DELIVERED in states
                }
                >= member_uris
            )
        )
        for member in s.members:
            assert await member.ua.mark_displayed(member.inbox[0].message_id or "")
        await until(
            lambda: (
                {
                    r
                    for r, states in member_states(s.alice_events, sent.message_id).items()
                    if DispositionState.DISPLAYED in states
                }
                >= member_uris
            )
        )
        states = member_states(s.alice_events, sent.message_id)
        for uri in member_uris:
            assert states[uri] == [DispositionState.DELIVERED, DispositionState.DISPLAYED]
        # Told apart by recipient-uri; original-recipient-uri is the list for every member.
        await until(lambda: len(imdns_to_alice(s.seen, s.alice)) >= (3 if aggregate else 7))
        documents = []
        for envelope in imdns_to_alice(s.seen, s.alice):
            received = imdn.recognise(envelope)
            assert received is not None
            assert envelope.from_ is not None and envelope.from_.uri == LIST
            documents += [(received.aggregated, n) for n in received.notifications]
        members_seen = {n.recipient_uri for _, n in documents if str(n.kind) != "processing"}
        assert members_seen == member_uris
        assert {n.original_recipient_uri for _, n in documents} == {LIST}
        processing = [n for _, n in documents if str(n.kind) == "processing"]
        assert [str(n.status) for n in processing] == ["processed"]
        member_docs = [(agg, n) for agg, n in documents if str(n.kind) != "processing"]
        assert len(member_docs) == 6
        ready = [e for e in s.seen.of(NotificationsReady) if str(e.notifications[0].kind) != "processing"]
        if aggregate:
            # One IMDN for the three deliveries, one for the three displays (RFC 5438 §8.3).
            assert [len(e.notifications) for e in ready] == [3, 3]
            assert all(agg for agg, _ in member_docs)
        else:
            assert [len(e.notifications) for e in ready] == [1] * 6
            assert not any(agg for agg, _ in member_docs)


async def test_private_list_hides_members() -> None:
    async with scene(aggregate=True, private=True) as s:
        sent = await s.alice.send_message(LIST, "secret club", notify=NOTIFY)
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: all(m.inbox for m in s.members))
        for member in s.members:
            assert member.inbox[0].cpim is not None
            assert imdn.imdn_headers(member.inbox[0].cpim).original_to is None
        await sent.await_disposition(DispositionState.DELIVERED, timeout=5)
        await until(lambda: len(imdns_to_alice(s.seen, s.alice)) >= 2)
        member_uris = [m.ua.aor for m in s.members]
        for envelope in imdns_to_alice(s.seen, s.alice):
            raw = envelope.to_bytes().decode()
            for uri in member_uris:
                assert uri not in raw
                assert uri.split("@", 1)[1] not in raw  # not even the member's host:port
            received = imdn.recognise(envelope)
            assert received is not None
            assert all(n.recipient_uri is None for n in received.notifications)
        # alice only ever learns about the list itself.
        recipients = {e.recipient for e in s.alice_events if isinstance(e, NotificationAccepted)}
        assert recipients == {LIST}
        rejected = [e for e in s.alice_events if isinstance(e, NotificationRejected)]
        assert all(str(e.reason) == "duplicate" for e in rejected)


async def test_member_that_refuses_is_reported_failed() -> None:
    async with scene(aggregate=False) as s:

        async def refuse(message: IncomingMessage) -> int:
            return 486

        refusing = s.members[1]
        refusing.ua.on_message(refuse)
        sent = await s.alice.send_message(LIST, "anyone?", notify=["negative-delivery"])
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(
            lambda: (
                DispositionState.FAILED
                in member_states(s.alice_events, sent.message_id).get(refusing.ua.aor, [])
            )
        )
        states = member_states(s.alice_events, sent.message_id)
        assert set(states) <= {refusing.ua.aor, LIST}


async def test_list_server_and_store_and_forward_chained() -> None:
    """Two intermediaries on the path: IMDN-Record-Route stacks up, IMDN-Route unwinds hop by hop."""
    from test_intermediary_support import register

    lists_domain = "lists.test"
    club = f"sip:club@{lists_domain}"
    bob_aor = f"sip:bob@{DOMAIN}"
    async with AsyncExitStack() as stack:
        store_and_forward = await stack.enter_async_context(
            Intermediary(IntermediaryConfig(domains=(DOMAIN,)))
        )
        bob = await stack.enter_async_context(UserAgent(ua_config("bob", aor=bob_aor)))
        carol = await stack.enter_async_context(UserAgent(ua_config("carol")))
        list_server = await stack.enter_async_context(
            Intermediary(
                IntermediaryConfig(
                    user="lists",
                    domains=(lists_domain,),
                    lists=(UriList(club, (bob_aor, carol.aor)),),
                    exploder=ExploderConfig(aggregate=True, window=3.0),
                    next_hops=((DOMAIN, store_and_forward.uri),),
                )
            )
        )
        seen_sf, seen_list = Seen(store_and_forward), Seen(list_server)
        alice = await stack.enter_async_context(UserAgent(ua_config("alice", outbound_proxy=list_server.uri)))
        events: list[object] = []

        async def record(event: object) -> None:
            events.append(event)

        alice.on_disposition(record)
        inboxes: dict[str, list[IncomingMessage]] = {bob.aor: [], carol.aor: []}
        for ua in (bob, carol):

            async def keep(message: IncomingMessage, box: list[IncomingMessage] = inboxes[ua.aor]) -> None:
                box.append(message)

            ua.on_message(keep)
        await register(bob_aor, bob.contact_uri(), store_and_forward.uri)
        sent = await alice.send_message(club, "hello club", notify=["positive-delivery", "display"])
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: all(inboxes.values()))
        bob_copy = inboxes[bob.aor][0].cpim
        assert bob_copy is not None
        # Newest on top: the store-and-forward server, then the list server (RFC 5438 §6.5).
        assert [a.uri for a in imdn.imdn_headers(bob_copy).record_routes] == [
            store_and_forward.uri,
            list_server.uri,
        ]
        for ua in (bob, carol):
            assert await ua.mark_displayed(inboxes[ua.aor][0].message_id or "")
        await until(
            lambda: (
                {
                    r
                    for r, states in member_states(events, sent.message_id).items()
                    if DispositionState.DISPLAYED in states
                }
                >= {bob.aor, carol.aor}
            ),
            timeout=8,
        )
        # bob's IMDNs: Request-URI the S&F server with IMDN-Route [S&F, list]; it popped itself
        # and sent them on to the list server with IMDN-Route [list].
        await seen_sf.wait_for(lambda: len(seen_sf.routed("imdn-route")) == 2)
        for routed in seen_sf.routed("imdn-route"):
            assert str(routed.request.uri) == store_and_forward.uri
            routes = imdn.imdn_headers(cpim.parse(routed.request.body)).routes
            assert [a.uri for a in routes] == [store_and_forward.uri, list_server.uri]
        taken = seen_list.routed("list-notification")
        assert len(taken) == 4  # delivered and displayed, from bob and from carol
        for routed in taken:
            assert str(routed.request.uri) == list_server.uri
            routes = imdn.imdn_headers(cpim.parse(routed.request.body)).routes
            assert [a.uri for a in routes] == [list_server.uri]


async def test_list_hiding_its_size_sends_one_imdn() -> None:
    async with scene(aggregate=True, hide_count=True) as s:
        sent = await s.alice.send_message(LIST, "how many are we?", notify=["positive-delivery", "display"])
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        # Each member answered its copy (marking displayed needs the answer first,
        # RFC 5438 §7.2.1.2).
        await s.seen.wait_for(lambda: len([e for e in s.seen.of(MessageForwarded) if e.message.group]) == 3)
        for member in s.members[:2]:
            assert await member.ua.mark_displayed(member.inbox[0].message_id or "")
        await asyncio.sleep(0.3)
        assert imdns_to_alice(s.seen, s.alice) == []  # dave has not displayed it yet
        assert await s.members[2].ua.mark_displayed(s.members[2].inbox[0].message_id or "")
        await sent.await_disposition(DispositionState.DISPLAYED, timeout=5)
        await until(lambda: len(imdns_to_alice(s.seen, s.alice)) == 1)
        [only] = imdns_to_alice(s.seen, s.alice)
        received = imdn.recognise(only)
        assert received is not None and received.aggregated
        assert [(str(n.kind), str(n.status), n.recipient_uri) for n in received.notifications] == [
            ("delivery", "delivered", None),
            ("display", "displayed", None),
        ]
        assert {e.recipient for e in s.alice_events if isinstance(e, NotificationAccepted)} == {LIST}
