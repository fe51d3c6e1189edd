"""Completed UDP transactions parked as records of atoms until Timer J or K (RFC 3261 §17.2.2,
§17.1.2.2).

The layer keeps a server transaction that has sent its final response over UDP, and a client
transaction that has received its final response, not as the transaction object but as an exact
tuple of str, bytes, int, float, bool and None, which CPython's collector stops tracking, and
rebuilds the transaction (``ServerTransaction.completed``, ``ClientTransaction.completed``) for
each input that reaches it.

Differential: over random runs of requests, retransmissions, answers (first and late), requests
of ours and their responses (first and retransmitted), transport errors, failed flows and clock
steps (now and then backwards), with a small cap on server transactions, the layer sends the
same bytes along the same flows and reports the same events as a reference that keeps every
completed transaction as its object (Timer J or K in the heap, like any other deadline). Then:
the collector tracks next to nothing per completed transaction; a retransmitted request within
Timer J gets the same bytes, after it opens a new transaction; the cap displaces the oldest
parked transaction; a completed client transaction absorbs responses until Timer K.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipimdn.dialog.events import RequestReceived, TransactionKey, TransportFailed
from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.dialog.layer import TransactionLayer, _Client, _Server
from sipimdn.dialog.transaction import TimerConfig, TxState
from sipimdn.errors import LocalProtocolError
from sipimdn.message import Request, Response, make_response
from sipimdn.parser import parse_message
from sipimdn.transport.flow import Flow, Transport

PEER = Flow(Transport.UDP, ("192.0.2.7", 5070), ("127.0.0.1", 5060))
OTHER = Flow(Transport.UDP, ("192.0.2.9", 5080), ("127.0.0.1", 5060))
STREAM = Flow(Transport.TCP, ("192.0.2.8", 5071), ("127.0.0.1", 5060))
TIMER_J = TimerConfig().timer_j(False)


class ObjectLayer(TransactionLayer):
    """The reference: a completed transaction stays its object in the server or client table
    until Timer J or K (scheduled in the heap); at the cap the server transaction whose Timer J
    comes first is displaced."""

    def _park_client(self, key: TransactionKey, tx: _Client, flow: Flow) -> None:
        self._schedule(key, tx.get_timer())

    def _park(self, key: TransactionKey, tx: _Server, response: Response) -> None:
        self._carry_out(key, tx.pop_actions(), tx.flow, "", None)
        tx.seq = next(self._seq)  # completion order
        self._schedule(key, tx.get_timer())

    def respond(self, key: TransactionKey, response: Response, now: float) -> bool:
        tx = self._servers.get(key)
        if tx is not None and tx.state is TxState.COMPLETED:  # a late answer: discarded
            tx.respond(response, now)
            self._collect_server(key, tx, tx.flow)
            return True
        return super().respond(key, response, now)

    def _evict_completed(self) -> bool:
        done = [(tx.timeout_at or 0.0, tx.seq, key) for key, tx in self._servers.items()
                if tx.state is TxState.COMPLETED]
        if not done:
            return False
        key = min(done)[2]
        del self._servers[key]
        self._scheduled.pop(key, None)
        self.evicted += 1
        return True


def raw_request(n: int, host: str = "192.0.2.7", body: str = "") -> bytes:
    return (f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:5070;branch=z9hG4bK{n};rport\r\n"
            f"From: <sip:a@example.com>;tag=f{n}\r\nTo: <sip:bob@example.com>\r\nCall-ID: c{n}\r\n"
            f"CSeq: 1 MESSAGE\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def client_request(n: int) -> Request:
    request = build_request("MESSAGE", "sip:bob@192.0.2.7:5070", "<sip:alice@example.com>",
                            "<sip:bob@example.com>", call_id=f"out{n}", from_tag=f"t{n}")
    stamp_via(request, Transport.UDP, ("127.0.0.1", 5060), branch=f"z9hG4bKclient{n:04d}")
    return request


def answer(event: RequestReceived, status: int) -> Response:
    response = make_response(event.request, status, to_tag=f"x{status}")
    response.headers.add("X-Answer", f"{event.key.branch} é")  # a non-ASCII value survives the bytes
    response.body = b"\r\n\r\nbody"
    return response


@dataclass
class Seen:
    """What one side of the comparison was told: requests received and its own requests sent."""

    received: dict[str, RequestReceived] = field(default_factory=dict)
    sent: dict[int, TransactionKey] = field(default_factory=dict)


def step(layer: TransactionLayer, seen: Seen, operation: tuple[str, float, int],
         now: float) -> tuple[object, ...]:
    """Apply one operation; what it produced, as comparable values (the bytes as sent)."""
    kind, number, extra = operation
    n = int(number)
    if kind == "send":  # a request of ours, to PEER
        if n not in seen.sent:
            seen.sent[n] = layer.send_request(client_request(n), PEER, now)
    elif kind == "response":  # PEER's response to it: the first, or a retransmission (absorbed)
        if n in seen.sent:
            response = make_response(client_request(n), extra, to_tag="y")
            layer.receive(parse_message(response.to_bytes()), PEER, now)
    elif kind == "client-error":
        if n in seen.sent:
            layer.transport_error(seen.sent[n], now, "ICMP port unreachable")
    elif kind == "tick":
        layer.handle_timer(now)
    elif kind == "request":  # new, or a retransmission of an earlier one
        flow = (PEER, OTHER, STREAM)[extra]
        layer.receive(parse_message(raw_request(n, flow.remote[0])), flow, now)
    elif kind == "answer":  # the first answer, or a late one (discarded) or one to a gone transaction
        event = seen.received.get(f"z9hG4bK{n}")
        if event is not None:
            try:
                sent = layer.respond(event.key, answer(event, extra), now)
            except LocalProtocolError:
                sent = None
            return ("answer", sent, *step(layer, seen, ("tick", 0, 0), now))
    elif kind == "error":
        event = seen.received.get(f"z9hG4bK{n}")
        if event is not None:
            layer.transport_error(event.key, now, "ICMP port unreachable")
    elif kind == "flow":
        layer.flow_failed((PEER, OTHER)[extra], now, "unreachable")
    outgoing = sorted(
        (o.data if o.data is not None else o.message.to_bytes(), o.flow.transport.value, o.flow.remote,
         o.flow.local, o.flow.server_name, o.key)
        for o in layer.messages_to_send()
    )
    events: list[tuple[str, object, str, int]] = []
    while (event := layer.next_event()) is not None:
        if isinstance(event, RequestReceived):
            seen.received[event.key.branch] = event
        assert type(event.key) is TransactionKey
        response = getattr(event, "response", None)
        events.append((type(event).__name__, event.key, getattr(event, "reason", ""),
                       0 if response is None else response.status_code))
    return layer.get_timer(), outgoing, sorted(events), layer.transaction_count, layer.evicted


operation = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 8), st.sampled_from([0, 0, 1, 2])),
    st.tuples(st.just("answer"), st.integers(0, 8), st.sampled_from([200, 202, 404, 100, 408])),
    st.tuples(st.just("error"), st.integers(0, 8), st.just(0)),
    st.tuples(st.just("flow"), st.just(0), st.sampled_from([0, 1])),
    st.tuples(st.just("send"), st.integers(0, 4), st.just(0)),
    st.tuples(st.just("response"), st.integers(0, 4), st.sampled_from([100, 200, 200, 486])),
    st.tuples(st.just("client-error"), st.integers(0, 4), st.just(0)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.5, 5.0, 10.0, 31.0, 32.0, -2.0]),
              st.just(0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), st.sampled_from([2, 4, 50]))
# A retransmission within Timer J, then one after it (a new transaction).
@example([("request", 1, 0), ("answer", 1, 200), ("tick", 31.0, 0), ("request", 1, 0), ("tick", 1.0, 0),
          ("request", 1, 0)], 50)
# The cap displaces the oldest parked one; its retransmission is a new request.
@example([("request", 1, 0), ("answer", 1, 200), ("request", 2, 0), ("answer", 2, 404), ("request", 3, 0),
          ("request", 1, 0), ("request", 2, 0)], 2)
# A clock gone back: a later answer gets an earlier Timer J.
@example([("request", 1, 0), ("request", 2, 0), ("tick", 10.0, 0), ("answer", 1, 200), ("tick", -2.0, 0),
          ("answer", 2, 200), ("request", 3, 0), ("tick", 31.0, 0), ("tick", 1.0, 0)], 2)
def test_parked_transactions_behave_as_kept_objects(operations: list[tuple[str, float, int]],
                                                     cap: int) -> None:
    layer = TransactionLayer(TimerConfig(), max_server_transactions=cap)
    reference = ObjectLayer(TimerConfig(), max_server_transactions=cap)
    seen = (Seen(), Seen())
    now = 0.0
    for operation in operations:
        if operation[0] == "tick":
            now += operation[1]
        got = step(layer, seen[0], operation, now)
        expected = step(reference, seen[1], operation, now)
        assert got == expected, (operation, now)
    now += 200.0
    assert step(layer, seen[0], ("tick", 0, 0), now) == step(reference, seen[1], ("tick", 0, 0), now)
    assert layer.transaction_count == 0 and layer.get_timer() is None
    assert not layer._parked and not layer._parked.queued and not layer._servers
    assert not layer._parked_clients and not layer._parked_clients.queued and not layer._clients


def _complete(layer: TransactionLayer, n: int, now: float,
              status: int = 200) -> tuple[RequestReceived, bytes]:
    layer.receive(parse_message(raw_request(n)), PEER, now)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    assert layer.respond(event.key, answer(event, status), now)
    [sent] = layer.messages_to_send()
    assert sent.data is not None and sent.data == sent.message.to_bytes()
    layer.get_timer()  # as a stack asks after every input (stale queue fronts go)
    return event, sent.data


def test_completed_transactions_cost_the_collector_next_to_nothing() -> None:
    layer = TransactionLayer()
    for i in range(200):  # warm the caches the first messages fill
        _complete(layer, i, 0.0)
    count = 2000
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000, 1000 + count):
        _complete(layer, i, i / 1000)
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert layer.transaction_count == 200 + count  # all still absorbing retransmissions (Timer J)
    # Kept as objects it was four tracked objects each (key, transaction, response, headers).
    assert grown <= count / 10, grown
    # ... and each one still answers its retransmission.
    layer.receive(parse_message(raw_request(1000)), PEER, 3.0)
    assert layer.next_event() is None and len(layer.messages_to_send()) == 1


def test_retransmission_within_timer_j_gets_the_same_bytes_after_it_a_new_transaction() -> None:
    layer = TransactionLayer()
    event, first = _complete(layer, 7, 1.0, status=404)
    for at in (1.5, 10.0, 1.0 + TIMER_J - 0.001):
        layer.receive(parse_message(raw_request(7)), PEER, at)
        assert layer.next_event() is None  # absorbed: the TU does not see it again
        [again] = layer.messages_to_send()
        assert again.data == first and again.message.to_bytes() == first
        assert isinstance(again.message, Response) and again.message.status_code == 404
        assert again.key == event.key and type(again.key) is TransactionKey
        assert again.flow == PEER
        assert layer.get_timer() == 1.0 + TIMER_J
    layer.handle_timer(1.0 + TIMER_J)  # Timer J: gone, silently
    assert layer.transaction_count == 0 and layer.messages_to_send() == [] and layer.next_event() is None
    layer.receive(parse_message(raw_request(7)), PEER, 1.0 + TIMER_J + 0.1)
    fresh = layer.next_event()
    assert isinstance(fresh, RequestReceived) and fresh.key == event.key  # a new transaction
    assert layer.messages_to_send() == []


def test_a_late_answer_is_discarded_and_a_provisional_one_refused() -> None:
    layer = TransactionLayer()
    event, _ = _complete(layer, 3, 0.0)
    assert layer.respond(event.key, answer(event, 486), 1.0)  # §17.2.2: later finals are discarded
    assert layer.messages_to_send() == [] and layer.transaction_count == 1
    with pytest.raises(LocalProtocolError):
        layer.respond(event.key, answer(event, 180), 1.0)
    layer.receive(parse_message(raw_request(3)), PEER, 2.0)
    [again] = layer.messages_to_send()
    assert isinstance(again.message, Response) and again.message.status_code == 200


def test_transport_errors_end_parked_transactions_with_an_event() -> None:
    layer = TransactionLayer()
    one, _ = _complete(layer, 1, 0.0)
    _complete(layer, 2, 0.0)
    layer.receive(parse_message(raw_request(3, "192.0.2.9")), OTHER, 0.0)  # another peer
    other = layer.next_event()
    assert isinstance(other, RequestReceived)
    layer.respond(other.key, answer(other, 200), 0.0)
    layer.messages_to_send()
    layer.transport_error(one.key, 1.0, "ICMP port unreachable")
    failed = layer.next_event()
    assert isinstance(failed, TransportFailed) and type(failed.key) is TransactionKey
    assert failed.key == one.key
    assert failed.reason == "ICMP port unreachable" and layer.transaction_count == 2
    layer.flow_failed(PEER, 2.0, "unreachable")  # the one left toward PEER, not the other peer's
    failed = layer.next_event()
    assert isinstance(failed, TransportFailed) and failed.key.branch == "z9hG4bK2"
    assert layer.next_event() is None and layer.transaction_count == 1
    layer.handle_timer(TIMER_J)
    assert layer.transaction_count == 0 and not layer._parked.queued


def test_the_cap_displaces_the_oldest_parked_transaction_first() -> None:
    cap = 50
    layer = TransactionLayer(max_server_transactions=cap)
    for i in range(cap):
        _complete(layer, i, i / 100)
    for i in range(cap, cap + 10):  # each new request displaces the oldest completed one
        layer.receive(parse_message(raw_request(i)), PEER, 1.0)
        assert isinstance(layer.next_event(), RequestReceived)
    assert layer.transaction_count == cap and layer.evicted == 10
    assert len(layer._parked) == cap - 10 and len(layer._servers) == 10
    layer.receive(parse_message(raw_request(9)), PEER, 2.0)  # evicted: taken for a new request ...
    assert isinstance(layer.next_event(), RequestReceived) and layer.evicted == 11  # (displacing 10)
    layer.receive(parse_message(raw_request(11)), PEER, 2.0)  # ... while one still parked is absorbed
    assert layer.next_event() is None
    [again] = layer.messages_to_send()
    assert isinstance(again.message, Response) and again.message.status_code == 200
    assert layer.transaction_count == cap


def _send_and_complete(layer: TransactionLayer, n: int, now: float) -> TransactionKey:
    key = layer.send_request(client_request(n), PEER, now)
    layer.messages_to_send()
    response = make_response(client_request(n), 200, to_tag="y")
    layer.receive(parse_message(response.to_bytes()), PEER, now)
    event = layer.next_event()
    assert event is not None and event.key == key and getattr(event, "final", False)
    layer.get_timer()
    return key


def test_completed_client_transactions_cost_the_collector_next_to_nothing() -> None:
    layer = TransactionLayer()
    for i in range(200):
        _send_and_complete(layer, i, 0.0)
    count = 2000
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000, 1000 + count):
        _send_and_complete(layer, i, 0.001)
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert layer.transaction_count == 200 + count  # all still absorbing response retransmissions (Timer K)
    # Kept as objects it was five or six each (key, transaction, its list of actions, the pair
    # with its flow, the flow, a heap entry and the key of the response it matched).
    assert grown <= count / 10, grown


def test_a_completed_client_transaction_absorbs_responses_until_timer_k_and_keeps_its_branch() -> None:
    layer = TransactionLayer()
    key = _send_and_complete(layer, 1, 1.0)
    timer_k = TimerConfig().timer_k(False)
    assert layer.get_timer() == 1.0 + timer_k and layer.transaction_count == 1
    for status in (200, 100, 486):  # only one final reaches the user (§17.1.2.2)
        again = make_response(client_request(1), status, to_tag="y")
        layer.receive(parse_message(again.to_bytes()), PEER, 2.0)
        assert layer.next_event() is None and layer.messages_to_send() == []
    layer.transport_error(key, 2.0, "ICMP port unreachable")  # nothing to fail any more
    layer.flow_failed(PEER, 2.0, "unreachable")
    assert layer.next_event() is None and layer.transaction_count == 1
    with pytest.raises(LocalProtocolError):  # the branch is still in use
        layer.send_request(client_request(1), PEER, 3.0)
    layer.handle_timer(1.0 + timer_k)
    assert layer.transaction_count == 0 and layer.get_timer() is None and not layer._parked_clients.queued
    layer.receive(parse_message(make_response(client_request(1), 200, to_tag="y").to_bytes()), PEER, 7.0)
    assert layer.next_event() is None  # unmatched now: dropped
    assert layer.send_request(client_request(1), PEER, 7.0) == key  # free again


def _visits() -> int:
    """The references a full collection follows now: every tracked object's referents (a
    container is walked entry by entry even when none of its entries is tracked)."""
    return sum(len(gc.get_referents(obj)) for obj in gc.get_objects())


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_full_collection_visits_next_to_nothing_per_parked_transaction(side: str) -> None:
    layer = TransactionLayer()
    for i in range(200):  # warm the caches the first messages fill
        _complete(layer, i, 0.0) if side == "server" else _send_and_complete(layer, i, 0.0)
    count = 2000
    gc.collect()
    before = _visits()
    for i in range(1000, 1000 + count):
        _complete(layer, i, i / 1000) if side == "server" else _send_and_complete(layer, i, 0.001)
    # No collection in between: a table of tuples keyed by tuples is tracked again by every
    # record parked (a fresh tuple is tracked), and a deque is always walked, entry by entry.
    grown = _visits() - before
    assert layer.transaction_count == 200 + count  # all still parked (Timer J or K)
    # As a dict of tuples and a deque of them it was three references each (key, record, entry).
    assert grown <= count / 10, grown
