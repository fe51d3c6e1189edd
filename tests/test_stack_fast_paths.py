"""The receive-path shortcuts taken for speed keep the stack's behaviour: inline sync handlers,
the lazily re-armed loop timer, batched UDP reads, the transaction cap that displaces completed
transactions, light completed transactions and cheap To tags."""

from __future__ import annotations

import asyncio
import socket

from helpers_sip import server_transactions
from test_layer import UDP_FROM, raw_request
from test_stack import Recorder, message_to, port_of, running, specs

from sipimdn.dialog.events import RequestReceived
from sipimdn.dialog.factory import new_local_tag
from sipimdn.dialog.layer import TransactionLayer
from sipimdn.dialog.transaction import ClientTransaction, ServerTransaction, TimerConfig, TxState
from sipimdn.errors import TransportError
from sipimdn.message import Response, make_response
from sipimdn.parser import parse_message
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.flow import Address, Flow, Transport
from sipimdn.transport.udp import UdpEndpoint

# -- transaction layer ------------------------------------------------------------------------------


def _answered_layer(cap: int, count: int) -> TransactionLayer:
    """A layer holding ``count`` answered (Completed) UDP server transactions, received at 0..count-1."""
    layer = TransactionLayer(max_server_transactions=cap)
    for i in range(count):
        request = parse_message(raw_request(f"SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKold{i}"))
        layer.receive(request, UDP_FROM, i)
        event = layer.next_event()
        assert isinstance(event, RequestReceived)
        assert layer.respond(event.key, make_response(event.request, 200), i)
    layer.messages_to_send()
    return layer


def test_at_the_cap_the_oldest_completed_transaction_makes_room() -> None:
    layer = _answered_layer(cap=2, count=2)
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKnew")), UDP_FROM, 5)
    event = layer.next_event()
    assert isinstance(event, RequestReceived) and event.key.branch == "z9hG4bKnew"
    assert layer.messages_to_send() == []  # no 503
    assert layer.transaction_count == 2 and layer.evicted == 1
    # The younger completed one still absorbs its retransmission (re-sending its 200) ...
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKold1")), UDP_FROM, 6)
    assert layer.next_event() is None
    [again] = layer.messages_to_send()
    assert isinstance(again.message, Response) and again.message.status_code == 200
    # ... while the evicted one's is taken for a new request (displacing old1, the last completed
    # one); with both live transactions then awaiting answers, a further request gets the 503.
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKold0")), UDP_FROM, 7)
    assert isinstance(layer.next_event(), RequestReceived) and layer.evicted == 2
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKmore")), UDP_FROM, 8)
    assert layer.next_event() is None
    [busy] = layer.messages_to_send()
    assert isinstance(busy.message, Response) and busy.message.status_code == 503  # both await answers


def test_completed_queue_survives_transactions_ending_out_of_order() -> None:
    layer = _answered_layer(cap=100, count=5)
    # A transport error ends the middle one early; Timer J then ends the rest in order.
    key = next(k for k, _ in server_transactions(layer) if k.branch == "z9hG4bKold2")
    layer.transport_error(key, 10, "ICMP port unreachable")
    assert layer.transaction_count == 4
    layer.handle_timer(10 + TimerConfig().timer_j(False))
    assert layer.transaction_count == 0
    assert not layer._parked.queued  # nothing left behind to grow without bound
    assert layer.get_timer() is None


def test_completed_server_transaction_lets_its_request_go() -> None:
    request = parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKgo"))
    tx: ServerTransaction[object, Response] = ServerTransaction(
        request, reliable=False, now=0, config=TimerConfig(), make_trying=lambda _request: Response(100))
    assert tx.request is request
    tx.respond(Response(200), 1)
    assert tx.state is TxState.COMPLETED and tx.request is None
    tx.receive_request(2)  # a retransmission is still answered, from the kept response alone
    sent = tx.pop_actions()
    assert len(sent) == 2 and all(getattr(a, "message", None) is tx.last_response for a in sent)


def test_completed_client_transaction_lets_its_request_go() -> None:
    request = parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKgone"))
    tx: ClientTransaction[object, Response] = ClientTransaction(
        request, reliable=False, now=0, config=TimerConfig())
    assert tx.request is request
    tx.handle_timer(TimerConfig().t1)  # Timer E: retransmitted while pending
    assert [getattr(a, "message", None) for a in tx.pop_actions()] == [request, request]
    tx.receive_response(Response(200), 1)
    assert tx.state is TxState.COMPLETED and tx.request is None
    tx.receive_response(Response(200), 2)  # a retransmitted 200 is absorbed in Timer K
    assert len(tx.pop_actions()) == 1  # the first 200, delivered once
    tx.handle_timer(1 + TimerConfig().timer_k(False))
    assert tx.terminated


def test_local_tags_are_unique_and_carry_a_64_bit_random_prefix() -> None:
    tags = [new_local_tag() for _ in range(70_000)]  # crosses a prefix renewal (every 65,536)
    assert len(set(tags)) == len(tags)
    assert all(len(t) >= 17 and all(c in "0123456789abcdef" for c in t) for t in tags)
    assert len({t[:16] for t in tags}) >= 2


# -- stack ------------------------------------------------------------------------------------------


async def test_sync_handler_runs_inline_and_creates_no_task() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP))
    b = SipStack(specs("127.0.0.1", Transport.UDP))
    tasks_seen: list[int] = []

    def handler(incoming: IncomingRequest) -> None:
        tasks_seen.append(len(b._tasks))
        incoming.respond(200)

    b.on_request(handler)
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.UDP)
        for _ in range(3):
            assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 200
        assert tasks_seen == [0, 0, 0] and not b._tasks


async def test_sync_handler_that_raises_gets_500_and_one_that_raises_after_answering_keeps_it() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP))
    b = SipStack(specs("127.0.0.1", Transport.UDP))
    answer_first = False

    def broken(incoming: IncomingRequest) -> None:
        if answer_first:
            incoming.respond(202)
        raise RuntimeError("boom")

    b.on_request(broken)
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.UDP)
        assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 500
        answer_first = True
        assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 202


async def test_loop_timer_still_ends_transactions_when_deadlines_move_later() -> None:
    # Each answered request trades its early 100-Trying deadline for a later Timer J; the loop
    # timer is not moved later, fires early, and must then re-arm for the real deadlines.
    timers = TimerConfig(t1=0.01, t2=0.08, t4=0.05)  # J = 0.64 s, K = 0.05 s
    a = SipStack(specs("127.0.0.1", Transport.UDP), timers=timers)
    b = SipStack(specs("127.0.0.1", Transport.UDP), timers=timers)
    b.on_request(Recorder())
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.UDP)
        for _ in range(3):
            assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 200
            await asyncio.sleep(0.1)
        assert b.layer.transaction_count > 0
        await asyncio.sleep(0.9)
        assert b.layer.transaction_count == 0 and a.layer.transaction_count == 0


async def test_udp_endpoint_reads_a_backlog_in_order_across_batches() -> None:
    received: list[bytes] = []
    errors: list[tuple[Address, TransportError]] = []
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, lambda data, flow: received.append(data),
                                      lambda remote, error: errors.append((remote, error)))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            sent = [f"datagram {i}".encode() for i in range(100)]  # three batches and a bit
            for data in sent:  # all queued before the loop gets to read any
                client.sendto(data, endpoint.local)
            async with asyncio.timeout(5):
                while len(received) < len(sent):
                    await asyncio.sleep(0.01)
        assert received == sent and not errors
    finally:
        endpoint.close()
        await asyncio.sleep(0)


async def test_udp_flows_are_reused_per_peer() -> None:
    flows: list[Flow] = []
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, lambda data, flow: flows.append(flow),
                                      lambda remote, error: None)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as two:
            for sock in (one, two, one):
                sock.sendto(b"x", endpoint.local)
            first = ("127.0.0.1", one.getsockname()[1])  # bound by sendto to the wildcard
            async with asyncio.timeout(5):
                while len(flows) < 3:
                    await asyncio.sleep(0.01)
        assert flows[0] is flows[2] and flows[0] != flows[1]
        assert flows[0] == Flow(Transport.UDP, first, endpoint.local)
    finally:
        endpoint.close()
        await asyncio.sleep(0)
