"""The transaction layer's deadlines (two FIFO queues beside a heap) against a brute-force
reference that asks every live transaction for its own next deadline.

Differential: over random runs of new requests, retransmissions, answers, client requests,
their responses and clock steps (now and then backwards), the layer reports the same next
deadline and produces the same messages and events at every step as the reference does.
"""

from __future__ import annotations

from helpers_sip import client_transactions, server_transactions
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipimdn.dialog.events import RequestReceived, TransactionKey
from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.dialog.layer import TransactionLayer, _revive_client
from sipimdn.dialog.transaction import ClientTransaction, ServerTransaction, TimerConfig
from sipimdn.message import Request, make_response
from sipimdn.parser import parse_message
from sipimdn.transport.flow import Flow, Transport

PEER = Flow(Transport.UDP, ("192.0.2.7", 5070), ("127.0.0.1", 5060))
STREAM = Flow(Transport.TCP, ("192.0.2.8", 5071), ("127.0.0.1", 5060))


class ScanLayer(TransactionLayer):
    """The reference: the next deadline is the minimum over every live transaction's own (a
    completed server transaction rebuilt from the record it is parked as)."""

    def _deadlines(self) -> list[tuple[float, TransactionKey]]:
        found = []
        transactions: list[tuple[TransactionKey, object]] = list(client_transactions(self))
        transactions += server_transactions(self)
        for key, tx in transactions:
            assert isinstance(tx, ClientTransaction | ServerTransaction)
            at = tx.get_timer()
            if at is not None:
                found.append((at, key))
        return found

    def get_timer(self) -> float | None:
        deadlines = self._deadlines()
        return min(at for at, _ in deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for _ in range(10_000):
            due = sorted((at, key) for at, key in self._deadlines() if at <= now)
            if not due:
                return
            key = due[0][1]
            client = self._clients.get(key)
            if client is not None:
                client[0].handle_timer(now)
                self._collect_client(key, client[0], client[1])
                continue
            server = self._servers.get(key)
            if server is not None:
                server.handle_timer(now)
                self._collect_server(key, server, server.flow)
                continue
            record = self._parked.get(key)
            if record is not None:
                revived = self._revive(record)
                revived.handle_timer(now)
                self._drive_parked(key, record, revived)
                continue
            parked = self._parked_clients[key]
            revived_client = _revive_client(parked, self.config)
            revived_client.handle_timer(now)
            self._drive_parked_client(key, parked, revived_client)


def raw_request(branch: int, host: str = "192.0.2.7") -> bytes:
    return (f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:5070;branch=z9hG4bK{branch};rport\r\n"
            f"From: <sip:a@example.com>;tag=f{branch}\r\nTo: <sip:bob@example.com>\r\nCall-ID: c{branch}\r\n"
            "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n").encode()


def client_request(n: int) -> Request:
    request = build_request("MESSAGE", "sip:bob@192.0.2.7:5070", "<sip:alice@example.com>",
                            "<sip:bob@example.com>", call_id=f"out{n}", from_tag=f"t{n}")
    stamp_via(request, Transport.UDP, ("127.0.0.1", 5060), branch=f"z9hG4bKclient{n:04d}")
    return request


def step(layer: TransactionLayer, pending: list[RequestReceived], sent: set[int],
         operation: tuple[str, float, int], now: float) -> tuple[object, ...]:
    """Apply one operation to ``layer``; what it produced, as comparable values."""
    kind, number, extra = operation
    n = int(number)
    if kind == "tick":
        layer.handle_timer(now)
    elif kind == "request":  # a new request, or a retransmission of an earlier one
        layer.receive(parse_message(raw_request(n)), STREAM if extra and n % 2 else PEER, now)
    elif kind == "answer":
        if n < len(pending):
            event = pending.pop(n)
            layer.respond(event.key, make_response(event.request, extra, to_tag="x"), now)
    elif kind == "send":
        if n not in sent:
            sent.add(n)
            layer.send_request(client_request(n), PEER, now)
    elif kind == "response" and n in sent:
        response = make_response(client_request(n), extra, to_tag="y")
        layer.receive(parse_message(response.to_bytes()), PEER, now)
    outgoing = sorted(
        (type(o.message).__name__, getattr(o.message, "status_code", 0), o.message.top_via.branch or "",
         o.flow.remote)
        for o in layer.messages_to_send()
    )
    events: list[tuple[str, str]] = []
    while (event := layer.next_event()) is not None:
        if isinstance(event, RequestReceived):
            pending.append(event)
        events.append((type(event).__name__, getattr(event, "key", TransactionKey(False, "", "")).branch))
    return (layer.get_timer(), outgoing, sorted(events), layer.transaction_count, layer.evicted)


operation = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 12), st.sampled_from([0, 1])),
    st.tuples(st.just("answer"), st.integers(0, 5), st.sampled_from([200, 404])),
    st.tuples(st.just("send"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("response"), st.integers(0, 5), st.sampled_from([100, 200])),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.5, 4.0, 5.0, 31.0, 40.0, -2.0]),
              st.just(0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=40), st.sampled_from([3, 50]))
# The clock steps back between two answers: the second Timer J is earlier than the first.
@example([("request", 1, 0), ("request", 2, 0), ("tick", 10.0, 0), ("answer", 0, 200), ("tick", -2.0, 0),
          ("answer", 0, 200), ("tick", 0.0, 0), ("tick", 31.0, 0)], 50)
# ... and between two requests: the second one's first deadline is earlier.
@example([("tick", 5.0, 0), ("request", 1, 0), ("tick", -2.0, 0), ("request", 2, 0), ("tick", 5.0, 0)], 50)
def test_queues_and_heap_fire_what_a_scan_fires(operations: list[tuple[str, float, int]], cap: int) -> None:
    layer = TransactionLayer(TimerConfig(), max_server_transactions=cap)
    reference = ScanLayer(TimerConfig(), max_server_transactions=cap)
    state: list[tuple[list[RequestReceived], set[int]]] = [([], set()), ([], set())]
    now = 0.0
    for operation in operations:
        if operation[0] == "tick":
            now += operation[1]  # (a step back now and then: deadlines out of queue order)
        got = step(layer, *state[0], operation, now)
        expected = step(reference, *state[1], operation, now)
        assert got == expected, (operation, now)
    # Everything ends: Timer J, F, K and the give-up deadlines all fire.
    now += 200.0
    assert step(layer, *state[0], ("tick", 0, 0), now) == step(reference, *state[1], ("tick", 0, 0), now)
    assert layer.transaction_count == 0 and layer.get_timer() is None
    assert not layer._heap and not layer._trying
    assert not layer._parked.queued and not layer._parked_clients.queued
