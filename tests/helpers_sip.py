"""Test helpers others may reuse: a fake clock, a lossy in-memory link and a pair of transaction layers.

``LayerPair`` joins two ``TransactionLayer``s the way two stacks on a network would: every message
is serialised, carried (or dropped) by a ``Link``, parsed again and received by the other side with
the right flow. Time only moves when ``run`` advances the ``FakeClock`` to the next deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipimdn.dialog.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionKey,
    TransactionTimedOut,
    TransportFailed,
)
from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.dialog.layer import TransactionLayer, _revive_client
from sipimdn.dialog.transaction import ClientTransaction, ServerTransaction, TimerConfig
from sipimdn.message import Request, Response, make_response
from sipimdn.parser import parse_message
from sipimdn.transport.flow import Address, Flow, Transport

__all__ = ["FakeClock", "LayerPair", "Link", "Side", "client_transactions", "message_of_wire_size",
           "message_request", "server_transactions"]


@dataclass
class FakeClock:
    """A clock that moves only when told; calling it reads it (a ``clock=`` argument)."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Link:
    """One direction of an in-memory network: drops the first ``drop_first`` datagrams and then
    every ``drop_every``-th one (0: none), or exactly the indices in ``drop``."""

    drop_first: int = 0
    drop_every: int = 0
    drop: frozenset[int] = frozenset()
    #: Every datagram offered, in order, with its fate.
    log: list[tuple[float, bytes, bool]] = field(default_factory=list)

    def passes(self, index: int) -> bool:
        if index < self.drop_first or index in self.drop:
            return False
        return not (self.drop_every and (index + 1) % self.drop_every == 0)

    def carry(self, now: float, data: bytes) -> bool:
        ok = self.passes(len(self.log))
        self.log.append((now, data, ok))
        return ok


def message_request(to_host: str, to_port: int, body: bytes = b"hello", method: str = "MESSAGE") -> Request:
    """A MESSAGE to ``sip:bob@host:port`` from alice, without Via (the sender stamps it)."""
    host = f"[{to_host}]" if ":" in to_host else to_host
    return build_request(method, f"sip:bob@{host}:{to_port}", "<sip:alice@example.com>",
                         "<sip:bob@example.com>", body=body, content_type="text/plain")


def message_of_wire_size(to_host: str, to_port: int, size: int, sent_by: Address, *,
                         rport: bool = True) -> Request:
    """A MESSAGE to ``sip:bob@host:port`` of exactly ``size`` bytes once a sender whose UDP
    sent-by is ``sent_by`` stamps its Via (RFC 3261 §18.1.1 measures the request as sent).

    Branch, Call-ID and tags have fixed lengths, so a probe stamped here measures what the
    stack will send; the body is padded until the probe is exactly ``size`` (a few rounds,
    as the Content-Length digits may change). The caller still checks the size it receives.
    """
    body_length = 0
    for _ in range(4):
        probe = message_request(to_host, to_port, b"x" * body_length)
        stamp_via(probe, Transport.UDP, sent_by, rport=rport)
        missing = size - len(probe.to_bytes())
        if missing == 0:
            return message_request(to_host, to_port, b"x" * body_length)
        body_length += missing
        if body_length < 0:
            break
    raise AssertionError(f"no MESSAGE of exactly {size} bytes")


Responder = Callable[[RequestReceived], Response | None]


_ServerTx = ServerTransaction[Request, Response]
_ClientTx = ClientTransaction[Request, Response]


def server_transactions(layer: TransactionLayer) -> list[tuple[TransactionKey, _ServerTx]]:
    """Every live server transaction of ``layer`` with its key: those awaiting an answer as the
    layer holds them, the completed (parked) ones rebuilt from their records, as any input to
    them is."""
    found: list[tuple[TransactionKey, _ServerTx]] = list(layer._servers.items())
    found += [(TransactionKey(*record[:4]), layer._revive(record)) for record in layer._parked.values()]
    return found


def client_transactions(layer: TransactionLayer) -> list[tuple[TransactionKey, _ClientTx]]:
    """Every live client transaction of ``layer`` with its key: those awaiting a final response as
    the layer holds them, the completed (parked) ones rebuilt from their records."""
    found: list[tuple[TransactionKey, _ClientTx]] = [(key, tx) for key, (tx, _) in layer._clients.items()]
    found += [(TransactionKey(*record[:4]), _revive_client(record, layer.config))
              for record in layer._parked_clients.values()]
    return found


def answer_200(event: RequestReceived) -> Response:
    return make_response(event.request, 200, to_tag="t0")


@dataclass
class Side:
    """One stack of a pair: its layer, address, events seen and how it answers requests."""

    layer: TransactionLayer
    address: Address
    responder: Responder | None = answer_200
    events: list[tuple[float, Event]] = field(default_factory=list)

    def of_type(self, kind: type) -> list[Event]:
        return [e for _, e in self.events if isinstance(e, kind)]


class LayerPair:
    """Two transaction layers (``a`` and ``b``) joined by lossy links, on one fake clock."""

    def __init__(self, *, transport: Transport = Transport.UDP, timers: TimerConfig | None = None,
                 a_to_b: Link | None = None, b_to_a: Link | None = None) -> None:
        self.clock = FakeClock()
        self.transport = transport
        timers = timers or TimerConfig()
        self.a = Side(TransactionLayer(timers), ("127.0.0.1", 5060))
        self.b = Side(TransactionLayer(timers), ("127.0.0.2", 5070))
        self.links = {id(self.a): a_to_b or Link(), id(self.b): b_to_a or Link()}

    def peer(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def send_request(self, request: Request | None = None, sender: Side | None = None) -> TransactionKey:
        """Stamp and send ``request`` (a MESSAGE by default) from ``sender`` (``a``) to its peer."""
        sender = sender or self.a
        receiver = self.peer(sender)
        request = request or message_request(*receiver.address)
        stamp_via(request, self.transport, sender.address)
        flow = Flow(self.transport, receiver.address, sender.address)
        key = sender.layer.send_request(request, flow, self.clock.now)
        self.pump()
        return key

    def pump(self) -> None:
        """Move messages and handle events until both sides are quiet at the current time."""
        for _ in range(1000):
            moved = False
            for side in (self.a, self.b):
                while (event := side.layer.next_event()) is not None:
                    moved = True
                    side.events.append((self.clock.now, event))
                    if isinstance(event, RequestReceived) and side.responder is not None:
                        response = side.responder(event)
                        if response is not None:
                            side.layer.respond(event.key, response, self.clock.now)
                for out in side.layer.messages_to_send():
                    moved = True
                    data = out.message.to_bytes()
                    receiver = self.peer(side)
                    assert out.flow.remote == receiver.address, f"routed to {out.flow.remote}"
                    if self.links[id(side)].carry(self.clock.now, data):
                        flow = Flow(self.transport, side.address, receiver.address)
                        receiver.layer.receive(parse_message(data), flow, self.clock.now)
            if not moved:
                return
        raise AssertionError("the pair never went quiet")

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.a.layer.get_timer(), self.b.layer.get_timer()) if d is not None]
        return min(deadlines) if deadlines else None

    def run(self, until: float = 1000.0) -> None:
        """Advance the clock deadline by deadline (up to ``until``), pumping after each."""
        for _ in range(100_000):
            self.pump()
            at = self.next_deadline()
            if at is None or at > until:
                return
            self.clock.now = max(self.clock.now, at)
            for side in (self.a, self.b):
                side.layer.handle_timer(self.clock.now)
        raise AssertionError("timers never settled")

    def outcome(self, key: TransactionKey) -> tuple[float, Event] | None:
        """When and how ``key`` ended on ``a``: its final response, timeout or transport failure."""
        for at, event in self.a.events:
            if isinstance(event, ResponseReceived) and event.key == key and event.final:
                return at, event
            if isinstance(event, TransactionTimedOut | TransportFailed) and event.key == key:
                return at, event
        return None
