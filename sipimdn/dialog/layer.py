"""The transaction layer: matching, Via handling and response routing, sans-IO.

Inputs (each takes ``now``): ``send_request`` and ``respond`` from the user, ``receive`` and
``receive_unparseable`` from the transports, ``transport_error``/``flow_failed`` when a send
failed, and ``handle_timer``. Outputs are drained: ``messages_to_send()`` (message and flow, in
order) and ``next_event()``. ``get_timer()`` is the earliest deadline over every transaction.

What this layer does on receipt (RFC 3261 §17.1.3, §17.2.3, §18.1.2, §18.2.1, RFC 3581):

* a request gets ``received`` (and ``rport``, if the sender asked) in its top Via, then is matched
  to a server transaction by (branch, sent-by, method); a match is a retransmission, absorbed by
  the transaction (which re-sends its last response), a miss opens a new server transaction and
  reports ``RequestReceived``;
* a response is matched to a client transaction by (branch, CSeq method); responses with more than
  one Via (§8.1.3.3) or no match are dropped;
* ACK is dropped: we only run non-INVITE transactions and no dialogs, so there is nothing for an
  ACK to acknowledge but a final response to an INVITE we refused, which needs no action.

Responses are routed per §18.2.2 and RFC 3581 §4: on streams the request's connection; else
``maddr``, else received:rport from the socket the request came in on, else received at the
sent-by port, else sent-by.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import ipaddress
import itertools
import logging
import marshal
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .._abnf import digits_value
from .._fastinit import from_fields, maker
from ..errors import LocalProtocolError, SipError, SipParseError
from ..headers import Via
from ..message import Request, Response, make_response, safe_reason_phrase
from ..parser import salvage_reply_headers, written_headers
from ..transport.flow import Flow, Transport, is_ip_literal
from .events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionKey,
    TransactionTimedOut,
    TransportFailed,
)
from .factory import MAGIC_COOKIE
from .transaction import (
    Action,
    ClientTransaction,
    Deliver,
    Fail,
    Failure,
    Send,
    ServerTransaction,
    TimerConfig,
    TxState,
)

__all__ = ["Outgoing", "TransactionLayer", "response_flow"]

log = logging.getLogger(__name__)

class _Client(ClientTransaction[Request, Response]):
    """A client transaction as the layer keeps it: with its key, so that a response matched
    through a key built from the response's own fields files its deadlines under the key the
    table holds. A second, equal key object would otherwise live in the deadline heap for
    Timer K (5 s on UDP) beside the first: one more object per request for the collector."""

    __slots__ = ("key",)

    key: TransactionKey


#: A deadline: (when, insertion order, transaction).
_Entry = tuple[float, int, TransactionKey]
#: A server transaction key as an exact tuple (a TransactionKey equals and hashes as its fields do).
_Key = tuple[bool, str, str, str]
#: A completed UDP server transaction as the layer keeps it until Timer J (see ``_park``): its
#: key's four fields (flat: a tuple inside would be untracked only by a later collection than the
#: record, when the collector happens to see it after the record), the Timer J deadline, the
#: insertion order, the route of its responses (transport, remote host and port, local host and
#: port, TLS name), then its final response: as sent, the length of its header section, status
#: and reason.
_Parked = tuple[bool, str, str, str, float, int, str, str, int, str | None, int | None, str | None,
                bytes, int, int, str]
#: A completed UDP client transaction as the layer keeps it until Timer K: the same first twelve
#: fields (the route being its request's), then its count of Timer E retransmissions.
_ParkedClient = tuple[bool, str, str, str, float, int, str, str, int, str | None, int | None, str | None, int]


class _Server(ServerTransaction[Request, Response]):
    """A server transaction as the layer keeps it: with its key, the flow its responses take and
    the insertion order of its entry in a deadline queue (the transaction itself is the entry:
    one object per transaction for the collector to walk, no pair, no entry tuple). Once it has
    sent its final response over UDP the layer keeps a record of atoms instead (``_parked``)."""

    __slots__ = ("flow", "key", "seq")

    flow: Flow
    key: TransactionKey
    seq: int


def _trying(request: Request) -> Response:
    """The 100 Trying of a server transaction, from its request (one function for all: no
    callable made per request, which was two more objects per request for the collector)."""
    return make_response(request, 100)


_R = TypeVar("_R", _Parked, _ParkedClient)


class _ParkedTable(Generic[_R]):
    """Completed UDP transactions of one side, parked as records of atoms (see ``_park``), by
    key and in deadline order, in two plain dicts the cyclic collector never tracks.

    CPython tracks a dict as soon as it holds one tracked key or value, and stops only when a
    full collection finds none; a fresh tuple is tracked until a collection sees it. A table of
    records as tuples keyed by tuples is therefore tracked again by the next record parked, and
    every collection of its generation then visits each of its tens of thousands of entries (a
    read of each entry's header: most of a full collection's pause at a few thousand requests a
    second), as it does each entry of a deque. So a record is kept as its ``marshal`` bytes,
    keyed by a string made of the key's fields, and the deadline order is a dict from
    consecutive integers to those bytes, read from ``head`` and appended at ``tail``: str or int
    keys and bytes values, which a dict never needs tracking for.

    A queue entry counts while it is the bytes the table holds for its key (a record leaves by
    its deadline, an input that ends it or eviction; stale entries are skipped from the front,
    lazily). The queue stays in (deadline, insertion) order: a deadline earlier than the last
    one queued (a clock that went back, in tests) is inserted in its place."""

    __slots__ = ("_by_key", "_front", "_front_bytes", "_head", "_last_at", "_order", "_tail")

    def __init__(self) -> None:
        self._by_key: dict[str, bytes] = {}
        self._order: dict[int, bytes] = {}
        self._head: int = 0
        self._tail: int = 0
        self._last_at: float = _INF
        # The front of the queue as last found live, decoded, with its bytes (see ``front``).
        self._front: _R | None = None
        self._front_bytes: bytes | None = None

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: _Key) -> bool:
        return _text_key(key) in self._by_key

    def get(self, key: _Key) -> _R | None:
        """The record parked under ``key``, or None."""
        # (the key written out: asked about every request received)
        data = self._by_key.get(f"{key[2]}\x00{key[3]}\x00{key[1]}")
        if data is None:
            return None
        record: _R = marshal.loads(data)
        return record

    def __getitem__(self, key: _Key) -> _R:
        record: _R = marshal.loads(self._by_key[_text_key(key)])
        return record

    def values(self) -> list[_R]:
        """Every record parked, in the order they were parked."""
        return [marshal.loads(data) for data in self._by_key.values()]

    @property
    def queued(self) -> int:
        """Entries in the deadline queue, stale ones included (until they reach its front)."""
        return self._tail - self._head

    def add(self, record: _R) -> None:
        """Park ``record`` (its key not parked already)."""
        data = marshal.dumps(record)
        self._by_key[f"{record[2]}\x00{record[3]}\x00{record[1]}"] = data
        at = record[4]
        if self._head < self._tail and self._last_at > at:
            self._insert(data, at)
            return
        self._order[self._tail] = data
        self._tail += 1
        self._last_at = at

    def _insert(self, data: bytes, at: float) -> None:
        """Queue ``data``, due at ``at``, after every entry due at or before ``at`` (O(n): a
        clock that went back)."""
        order = self._order
        entries = [order.pop(index) for index in range(self._head, self._tail)]
        deadlines = [marshal.loads(entry)[4] for entry in entries]
        entries.insert(bisect.bisect_right(deadlines, at), data)
        for index, entry in enumerate(entries, self._head):
            order[index] = entry
        self._tail = self._head + len(entries)

    def remove(self, key: _Key) -> None:
        """Forget the record parked under ``key`` (its queue entry no longer counts)."""
        data = self._by_key.pop(_text_key(key))
        if data is self._front_bytes:
            self._front = self._front_bytes = None

    def front(self) -> _R | None:
        """The first live record in deadline order, or None; stale entries before it go."""
        order = self._order
        while self._head < self._tail:
            data = order[self._head]
            if data is self._front_bytes:
                return self._front
            record: _R = marshal.loads(data)
            if self._by_key.get(f"{record[2]}\x00{record[3]}\x00{record[1]}") is data:
                self._front, self._front_bytes = record, data
                return record
            del order[self._head]
            self._head += 1
        return None

    def pop_front(self) -> _R:
        """Take the live front (``front`` found it) out of the queue; it stays parked."""
        record = self._front
        assert record is not None and self._order[self._head] is self._front_bytes
        del self._order[self._head]
        self._head += 1
        self._front = self._front_bytes = None
        return record


def _text_key(key: _Key | _Parked | _ParkedClient) -> str:
    """A key's fields as one string (a str key keeps a dict untracked, a tuple does not): the
    method and the sent-by (neither holds a NUL: a token, a host and port), then the branch
    (RFC 3261 §17.2.3; the stand-in of an RFC 2543 request joins its fields with NULs)."""
    return f"{key[2]}\x00{key[3]}\x00{key[1]}"


#: A deadline queue: new server transactions (first deadline) or parked ones (Timer J, Timer K).
_Queue = deque[_Server] | _ParkedTable[_Parked] | _ParkedTable[_ParkedClient]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the transport, with the path it must take."""

    #: What to send.
    message: Request | Response
    #: Where: for a request the chosen destination, for a response the §18.2.2 route.
    flow: Flow
    #: The transaction it belongs to (None for stateless answers); report failures against it.
    key: TransactionKey | None
    #: ``message.to_bytes()``, when the layer has it already (a final response it keeps in that
    #: form for retransmissions); None means: encode ``message``.
    data: bytes | None = None


# Constructors for the objects every request makes, without the frozen dataclasses' __init__
# (see sipimdn._fastinit): what they build is what the class builds.
_outgoing: Callable[[Request | Response, Flow, TransactionKey | None, bytes | None], Outgoing] = (
    maker(Outgoing))
_request_received: Callable[[TransactionKey, Request, Flow], RequestReceived] = maker(RequestReceived)
_response_received: Callable[[TransactionKey, Response, Flow], ResponseReceived] = maker(ResponseReceived)
#: A TransactionKey from a tuple of its four fields (a key kept as an exact tuple, the head of a
#: parked record), without the class call.
_key_of: Callable[[tuple[bool, str, str, str]], TransactionKey] = from_fields(TransactionKey)


def _client_key(branch: str, method: str) -> TransactionKey:
    """``TransactionKey(True, branch, method)`` (§17.1.3: branch and CSeq method)."""
    return _key_of((True, branch, method, ""))


def _log_retransmission(tx: _Client, flow: Flow) -> None:
    """INFO line for a Timer E retransmission; its attributes let a front end show progress."""
    request = tx.request
    if request is None:  # completed meanwhile (a retransmission is only due before that)
        return
    log.info(
        "no answer from %s (%s %s:%s) yet, retransmitting %s (%d)",
        request.uri, flow.transport.value, flow.remote[0], flow.remote[1], request.method,
        tx.retransmissions,
        extra={"sip_retransmission": tx.retransmissions, "sip_method": request.method,
               "sip_uri": str(request.uri), "sip_peer": flow.remote},
    )


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def stamp_received(request: Request, flow: Flow) -> Via:
    """Add received (and fill rport) in the top Via, per §18.2.1 and RFC 3581 §4; return that Via."""
    source_ip, source_port = flow.remote[0], flow.remote[1]
    try:
        # The core edits the sender's Via text in place (no re-serialisation): the fast path.
        return request.stamp_received(source_ip, source_port)
    except LocalProtocolError:
        # A source the core refuses to write as received= (a scoped IPv6 address, say):
        # the typed route, as before, so a peer's request is never dropped for our address form.
        via = request.top_via
        stamped = _stamped(via, (source_ip, source_port))
        if stamped is not via:
            request.set_top_via(stamped)
        return stamped


def _stamped(via: Via, source: tuple[str, int]) -> Via:
    """``via`` with received/rport set for a request from ``source`` (itself when nothing changes)."""
    source_ip, source_port = source
    params = via.params
    if "rport" in params:
        port_text = str(source_port)
        if params["rport"] == port_text and params.get("received") == source_ip:
            return via  # already stamped (our own earlier pass over the same object)
        # RFC 3581: received even when equal to sent-by. Built directly rather than through
        # with_params: same result (a new key goes last, an existing one keeps its place).
        merged = dict(params)
        merged["received"] = source_ip
        merged["rport"] = port_text
        return Via(via.transport, via.host, via.port, merged, via.protocol)
    if via.host != source_ip and not _same_ip(via.host, source_ip):
        return via.with_params(received=source_ip)
    return via


def response_flow(request_flow: Flow, via: Via) -> Flow:
    """Where a response to a request that came on ``request_flow`` with top ``via`` goes (§18.2.2)."""
    if request_flow.transport is not Transport.UDP:
        return request_flow  # the same connection (a reliable transport)
    port = via.port or request_flow.transport.default_port
    # (the parameters read directly, not through Via's properties: once per request)
    params = via.params
    maddr = params.get("maddr")
    if maddr is not None and is_ip_literal(maddr):
        return Flow(Transport.UDP, (maddr, port), None)
    received = params.get("received")
    if received is not None:
        received = received.strip("[]")
        rport_text = params.get("rport")
        rport = digits_value(rport_text, 5) if rport_text else None  # (Via.rport)
        remote = (received, rport if rport is not None else port)
    else:
        remote = (via.host, port)
    if remote == request_flow.remote and request_flow.server_name is None:
        return request_flow  # the usual case with rport: back where it came from, same socket
    return Flow(Transport.UDP, remote, request_flow.local)


def server_key(request: Request) -> TransactionKey:
    """The §17.2.3 key of a received request."""
    via = request.top_via
    branch = via.params.get("branch")  # (Via.branch and Via.sent_by, without their calls)
    port = via.port
    sent_by = f"{via.host.lower()}:{port or ''}"
    method = "INVITE" if request.method == "ACK" else request.method
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return _key_of((False, branch, method, sent_by))
    # RFC 2543 peers: the request's identifying fields stand in for the branch (§17.2.3).
    cseq = request.cseq
    parts = (str(request.uri), request.to.tag or "", request.from_.tag or "", request.call_id,
             str(cseq.number), str(via))
    return TransactionKey(False, "\x00".join(parts), method, sent_by)


class TransactionLayer:
    """Every transaction of one stack, matched, timed and routed. No I/O, no clock."""

    def __init__(self, config: TimerConfig | None = None, *, max_server_transactions: int = 50_000) -> None:
        self.config = config or TimerConfig()
        #: Cap on live server transactions, so a flood cannot grow memory without bound. At the cap
        #: a new request first displaces the oldest *completed* UDP transaction (one that only
        #: absorbs retransmissions until Timer J, 64*T1 = 32 s: at 10,000 requests/s that is
        #: 320,000 of them); only when every live one still awaits its answer does the request
        #: get a stateless 503 with Retry-After (§21.5.4). Forgetting a completed transaction
        #: early means a retransmission arriving after it is taken for a new request (the TU sees
        #: it again), which at the default cap needs the peer to retransmit 5 s late at 10,000/s.
        self.max_server_transactions = max_server_transactions
        self._clients: dict[TransactionKey, tuple[_Client, Flow]] = {}
        self._servers: dict[TransactionKey, _Server] = {}
        self._events: deque[Event] = deque()
        self._outgoing: list[Outgoing] = []
        # Deadlines with lazy deletion, fired in (at, sequence) order from three sources. The
        # first deadline of every server transaction (now + the RFC 4320 delay) and the Timer J
        # of every completed one (now + 64*T1) are each the same interval for all, so appended
        # as they come they are already in order: two FIFO queues of the transactions
        # themselves, O(1) per request, an entry counting while its transaction is still the
        # live one for its key in the state the queue is for. Every other deadline (client
        # timers, a server's give-up after its 100) is an (at, sequence, key) entry in a heap,
        # O(log n), counting while its ``at`` equals ``_scheduled[key]``. A deadline that would
        # break a queue's order (a clock that went back, in tests) goes in the heap instead.
        self._heap: list[_Entry] = []
        self._scheduled: dict[TransactionKey, float] = {}
        self._seq = itertools.count()
        self._trying: deque[_Server] = deque()
        # Completed UDP server transactions, parked until Timer J (64*T1 = 32 s) as records of
        # atoms in ``_parked``, by key and in Timer J order (also the order of eviction at the
        # cap: see ``max_server_transactions``). Completed UDP client transactions likewise
        # until Timer K (T4 = 5 s) in ``_parked_clients``.
        #
        # Why records and not the transaction objects: at thousands of requests a second tens of
        # thousands of completed transactions wait for Timer J or K, and every object the
        # collector tracks (a transaction, its TransactionKey, a tuple subclass, its response and
        # headers, its flow, the pair and the heap entry holding them) is walked by each
        # collection of its generation: by every full one, whose pause grows with them, and by
        # young ones while they age. A record holds only str, bytes, int, float, bool and None,
        # and its table keeps it in a form the collector never tracks (see ``_ParkedTable``),
        # so parked transactions cost the collector nothing. The transaction machine stays the
        # one that decides: each input to a parked transaction rebuilds it
        # (``ServerTransaction.completed``, ``ClientTransaction.completed``) and feeds it there
        # (``_drive_parked``, ``_drive_parked_client``); in Completed a transaction holds nothing
        # but its deadline and, on the server side, its final response, which the record keeps
        # as the bytes sent.
        self._parked: _ParkedTable[_Parked] = _ParkedTable()
        self._parked_clients: _ParkedTable[_ParkedClient] = _ParkedTable()
        # The deadline the first-deadline queue was last appended with (it only takes a later one).
        self._trying_last = float("-inf")
        #: Completed server transactions forgotten before Timer J because of the cap.
        self.evicted = 0
        #: Requests sent again by Timer E/A (RFC 3261 §17.1.2.2), over the layer's life.
        self.retransmissions = 0
        #: Client transactions ended by Timer F/B with no final response.
        self.timeouts = 0
        #: Transactions (client or server) ended by a transport failure.
        self.transport_failures = 0

    # -- user API -------------------------------------------------------------------------------

    def send_request(self, request: Request, flow: Flow, now: float) -> TransactionKey:
        """Start a client transaction for ``request`` (its top Via already stamped) along ``flow``."""
        branch = request.top_via.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE) or len(branch) < len(MAGIC_COOKIE) + 8:
            raise LocalProtocolError("a request we send needs a z9hG4bK branch (use factory.stamp_via)")
        if request.method in ("ACK", "INVITE"):
            raise LocalProtocolError(f"{request.method} is not a non-INVITE transaction")
        key = _client_key(branch, request.method)
        if key in self._clients or key in self._parked_clients:
            raise LocalProtocolError(f"branch {branch} is already in use")
        tx = _Client(request, reliable=flow.reliable, now=now, config=self.config)
        tx.key = key
        self._clients[key] = (tx, flow)
        self._collect_client(key, tx, flow)
        return key

    def respond(self, key: TransactionKey, response: Response, now: float) -> bool:
        """Send the final response of a server transaction.

        Returns False when the transaction is already gone (it gave up waiting: RFC 4320 lets it
        end silently); raises LocalProtocolError for a provisional or 408 response.
        """
        tx = self._servers.get(key)
        if tx is None:
            record = self._parked.get(key)
            if record is None:
                return False
            tx = self._revive(record)
            tx.respond(response, now)  # Completed: discarded (§17.2.2), or LocalProtocolError
            self._drive_parked(key, record, tx)
            return True
        tx.respond(response, now)
        if tx.state is TxState.COMPLETED:  # just now: a UDP transaction, absorbing until Timer J
            self._park(key, tx, response)
            return True
        self._collect_server(key, tx, tx.flow)
        return True

    # -- from the transports -----------------------------------------------------------------------

    def receive(self, message: Request | Response, flow: Flow, now: float) -> None:
        """A parsed message arrived on ``flow``.

        Raises SipParseError (a RemoteProtocolError) when a header needed for matching is broken;
        the caller may then answer statelessly with ``receive_unparseable``.
        """
        if isinstance(message, Request):
            self._receive_request(message, flow, now)
        else:
            self._receive_response(message, flow, now)

    def receive_unparseable(self, data: bytes, error: SipParseError, flow: Flow) -> bool:
        """A message that failed to parse: answer it statelessly if it is a request whose Via can be
        read (§8.2.7, §18.3: "SHOULD 400"), with the parse error in the reason phrase. Returns True
        if an answer was queued; garbage and broken responses get nothing."""
        rows = salvage_reply_headers(data)
        if rows is None:
            return False
        status = error.status_code if 400 <= error.status_code <= 699 else 400
        reason = safe_reason_phrase(error.reason, "Bad Request")
        rows = _with_to_tag(rows)
        try:
            response = Response(status, reason, rows)
            try:
                top_via = response.top_via
            except SipParseError:
                top_via = _without_received(response, flow)
            via = stamp_via_copy(top_via, flow)
            response.set_top_via(via)
            response_target = response_flow(flow, via)
        except SipError as exc:
            log.debug("cannot answer an unparseable request from %s: %s", flow.remote, exc)
            return False
        self._outgoing.append(Outgoing(response, response_target, None))
        return True

    def transport_error(self, key: TransactionKey, now: float, reason: str) -> None:
        """Sending a message of transaction ``key`` failed."""
        if key.client:
            client = self._clients.get(key)
            if client is not None:
                client[0].transport_error(now)
                self._collect_client(key, client[0], client[1], reason)
                return
            parked = self._parked_clients.get(key)
            if parked is not None:
                revived = _revive_client(parked, self.config)
                revived.transport_error(now)
                self._drive_parked_client(key, parked, revived, reason)
            return
        server = self._servers.get(key)
        if server is not None and server.state is not TxState.TRYING:
            server.transport_error(now)
            self._collect_server(key, server, server.flow, reason)
            return
        record = self._parked.get(key)
        if record is not None:
            tx = self._revive(record)
            tx.transport_error(now)
            self._drive_parked(key, record, tx, reason)

    def flow_failed(self, flow: Flow, now: float, reason: str) -> None:
        """Nothing more will get through ``flow`` (ICMP error, connect refused, connection lost):
        every client transaction using that transport to that peer address fails, and on UDP every
        server transaction whose responses go there."""
        for key, (client, client_flow) in list(self._clients.items()):
            if _same_path(client_flow, flow) and client.state in (TxState.TRYING, TxState.PROCEEDING):
                self.transport_error(key, now, reason)
        if flow.reliable:
            # A closed connection is not a failed send for a server transaction: its final response
            # can still go out over a new connection to the sent-by address (§18.2.2).
            return
        for key, server in list(self._servers.items()):
            if _same_path(server.flow, flow) and server.state in (TxState.PROCEEDING, TxState.COMPLETED):
                self.transport_error(key, now, reason)
        transport, remote = flow.transport.value, flow.remote
        for record in [r for r in self._parked.values() if r[6] == transport and (r[7], r[8]) == remote]:
            self.transport_error(_key_of(record[:4]), now, reason)

    # -- time and output -------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, or None."""
        entry = self._earliest()
        return None if entry is None else entry[0]

    def handle_timer(self, now: float) -> None:
        """Fire every transaction timer due at ``now``."""
        while (entry := self._earliest()) is not None and entry[0] <= now:
            source = entry[3]
            if source is self._parked:  # Timer J of a parked server transaction
                record = self._parked.pop_front()
                revived = self._revive(record)
                revived.handle_timer(now)
                self._drive_parked(record[:4], record, revived)
                continue
            if source is self._parked_clients:  # Timer K of a parked client transaction
                parked = self._parked_clients.pop_front()
                revived_client = _revive_client(parked, self.config)
                revived_client.handle_timer(now)
                self._drive_parked_client(parked[:4], parked, revived_client)
                continue
            if source is None:
                heapq.heappop(self._heap)
            else:
                self._trying.popleft()
            key = entry[2]
            assert key is not None
            del self._scheduled[key]
            client = self._clients.get(key)
            if client is not None:
                tx, flow = client
                retransmitted = tx.retransmissions
                tx.handle_timer(now)
                if tx.retransmissions != retransmitted:
                    self.retransmissions += tx.retransmissions - retransmitted
                    if log.isEnabledFor(logging.INFO):
                        _log_retransmission(tx, flow)
                self._collect_client(key, tx, flow)
                continue
            server = self._servers.get(key)
            if server is not None:
                server.handle_timer(now)
                self._collect_server(key, server, server.flow)

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[Outgoing]:
        """Everything to send now, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def transaction_count(self) -> int:
        """Live client plus server transactions."""
        return len(self._clients) + len(self._servers) + len(self._parked) + len(self._parked_clients)

    # -- internals -------------------------------------------------------------------------------

    def _receive_request(self, request: Request, flow: Flow, now: float) -> None:
        stamped = stamp_received(request, flow)
        if request.method == "ACK":
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dropping ACK from %s (no INVITE transactions here)", flow.remote)
            return
        _check_request(request)
        key = server_key(request)
        known = self._servers.get(key)
        if known is not None:
            known.receive_request(now)
            self._collect_server(key, known, known.flow)
            return
        parked = self._parked.get(key)
        if parked is not None:  # a retransmission within Timer J: the final response again
            revived = self._revive(parked)
            revived.receive_request(now)
            self._drive_parked(key, parked, revived)
            return
        route = response_flow(flow, stamped)
        if (len(self._servers) + len(self._parked) >= self.max_server_transactions
                and not self._evict_completed()):
            busy = make_response(request, 503, "Too Many Transactions")
            busy.headers.add("Retry-After", "5")
            self._outgoing.append(Outgoing(busy, route, None))
            return
        tx = _Server(request, reliable=flow.transport.reliable, now=now, config=self.config,
                     make_trying=_trying)
        tx.key = key
        tx.flow = route
        self._servers[key] = tx
        at = tx.retransmit_at  # the RFC 4320 delay, before the give-up deadline
        assert at is not None
        if self._trying_last <= at:
            self._trying_last = at
            tx.seq = next(self._seq)
            self._trying.append(tx)
            self._scheduled[key] = at
        else:
            self._schedule(key, at)
        self._events.append(_request_received(key, request, flow))

    def _receive_response(self, response: Response, flow: Flow, now: float) -> None:
        vias = response.headers.get_all("via")
        if len(vias) != 1:
            log.debug("dropping response with %d Via values (§8.1.3.3)", len(vias))
            return
        branch = response.top_via.branch
        if branch is None:
            return
        key = _client_key(branch, response.cseq.method)
        entry = self._clients.get(key)
        if entry is None:
            parked = self._parked_clients.get(key)
            if parked is not None:  # a retransmitted final response within Timer K: absorbed
                revived = _revive_client(parked, self.config)
                revived.receive_response(response, now)
                self._drive_parked_client(key, parked, revived, arrived_on=flow)
                return
            log.debug("dropping unmatched %d response from %s", response.status_code, flow.remote)
            return
        tx, tx_flow = entry
        tx.receive_response(response, now)
        self._collect_client(tx.key, tx, tx_flow, arrived_on=flow)

    def _collect_client(self, key: TransactionKey, tx: _Client, flow: Flow, reason: str = "",
                        arrived_on: Flow | None = None) -> None:
        self._carry_out_client(key, tx.pop_actions(), flow, reason, arrived_on)
        state = tx.state
        if state is _COMPLETED:  # just now, over UDP: it only absorbs retransmissions until Timer K
            self._park_client(key, tx, flow)
            return
        if state is TxState.TERMINATED:
            del self._clients[key]
        self._schedule(key, tx.get_timer())

    def _carry_out_client(self, key: TransactionKey, actions: list[Action[Request | Response]], flow: Flow,
                          reason: str, arrived_on: Flow | None) -> None:
        """Queue what a client transaction's actions send and report."""
        for action in actions:
            if type(action) is Send:
                assert isinstance(action.message, Request)
                self._outgoing.append(_outgoing(action.message, flow, key, None))
            elif type(action) is Deliver:
                assert isinstance(action.message, Response)
                self._events.append(_response_received(key, action.message, arrived_on or flow))
            elif isinstance(action, Fail):
                if action.failure is Failure.TIMEOUT:
                    self.timeouts += 1
                    self._events.append(TransactionTimedOut(key))
                else:
                    self.transport_failures += 1
                    self._events.append(TransportFailed(key, reason or "transport error"))

    def _park_client(self, key: TransactionKey, tx: _Client, flow: Flow) -> None:
        """``tx`` has just received its final response over UDP and now only absorbs response
        retransmissions until Timer K: keep it as a record of atoms (see ``_parked``)."""
        at = tx.timeout_at
        assert at is not None and not tx.reliable  # Timer K
        record: _ParkedClient = (key[0], key[1], key[2], key[3], at, next(self._seq), *_route(flow),
                                 tx.retransmissions)
        del self._clients[key]
        self._scheduled.pop(key, None)  # (its heap entry is stale from now on)
        self._parked_clients.add(record)

    def _drive_parked_client(self, key: _Key, record: _ParkedClient, tx: _Client, reason: str = "",
                             arrived_on: Flow | None = None) -> None:
        """Carry out what the revived ``tx`` of ``record`` did with its input; forget the record
        if that ended the transaction."""
        actions = tx.pop_actions()
        if actions:
            typed = key if type(key) is TransactionKey else _key_of(key)
            self._carry_out_client(typed, actions, _record_flow(record), reason, arrived_on)
        if tx.state is TxState.TERMINATED:
            self._parked_clients.remove(key)  # (its queue entry, if still queued, no longer counts)
        else:
            assert tx.state is _COMPLETED and tx.timeout_at == record[4]

    def _collect_server(self, key: TransactionKey, tx: _Server, flow: Flow, reason: str = "") -> None:
        actions = tx.pop_actions()
        if actions:
            self._carry_out(key, actions, flow, reason, None)
        if tx.state is TxState.TERMINATED:
            del self._servers[key]
            self._scheduled.pop(key, None)
            return
        self._schedule(key, tx.get_timer())

    def _carry_out(self, key: TransactionKey, actions: list[Action[Request | Response]], flow: Flow,
                   reason: str, wire: tuple[Response | None, bytes] | None) -> None:
        """Queue what a server transaction's actions send and report; ``wire`` is a response with
        its bytes, sent as those bytes."""
        for action in actions:
            if type(action) is Send:
                message = action.message
                assert isinstance(message, Response)
                data = wire[1] if wire is not None and message is wire[0] else None
                self._outgoing.append(_outgoing(message, flow, key, data))
            elif isinstance(action, Fail):
                self.transport_failures += 1
                self._events.append(TransportFailed(key, reason or "transport error"))

    def _park(self, key: TransactionKey, tx: _Server, response: Response) -> None:
        """``tx`` has just sent its final response over UDP and now only absorbs retransmissions
        until Timer J: send that response and keep the transaction as a record of atoms (see
        ``_parked``), the response as its bytes (the same bytes for every retransmission)."""
        at = tx.timeout_at
        assert at is not None and not tx.reliable and tx.last_response is response  # Timer J
        data = response.to_bytes()
        flow = tx.flow
        # Every field an exact str, bytes, int, float, bool or None: the record is not tracked.
        record: _Parked = (
            key[0], key[1], key[2], key[3], at, next(self._seq), *_route(flow),
            data, len(data) - len(response.body) - 4,  # to_bytes wrote head, CRLF CRLF, body
            int(response.status_code), str(response.reason),
        )
        del self._servers[key]
        self._scheduled.pop(key, None)  # (its first-deadline or heap entry is stale from now on)
        self._parked.add(record)
        self._carry_out(key, tx.pop_actions(), flow, "", (response, data))

    def _revive(self, record: _Parked) -> _Server:
        """The parked transaction of ``record``, rebuilt in Completed to take one input."""
        data, head = record[12], record[13]
        response = Response._parsed(record[14], record[15], written_headers(data[:head]), data[head + 4:])
        return _Server.completed(response, timeout_at=record[4], reliable=False, config=self.config)

    def _drive_parked(self, key: _Key, record: _Parked, tx: _Server, reason: str = "") -> None:
        """Carry out what the revived ``tx`` of ``record`` did with its input; forget the record
        if that ended the transaction. (An input that leaves it in Completed changes neither its
        final response nor its Timer J deadline, so the record stands as it is.)"""
        actions = tx.pop_actions()
        if actions:
            # The route and the key as the transaction had them, rebuilt only to send or report.
            typed = key if type(key) is TransactionKey else _key_of(key)
            self._carry_out(typed, actions, _record_flow(record), reason, (tx.last_response, record[12]))
        if tx.state is TxState.TERMINATED:
            self._parked.remove(key)  # (its queue entry, if still queued, no longer counts)
        else:
            assert tx.state is _COMPLETED and tx.timeout_at == record[4]

    def _evict_completed(self) -> bool:
        """Forget the oldest completed server transaction; False if there is none."""
        parked = self._parked
        record = parked.front()
        if record is None:
            return False
        parked.pop_front()
        parked.remove(record[:4])
        self.evicted += 1
        return True

    def _schedule(self, key: TransactionKey, at: float | None) -> None:
        if at is None:
            self._scheduled.pop(key, None)
        elif self._scheduled.get(key) != at:
            self._scheduled[key] = at
            heapq.heappush(self._heap, (at, next(self._seq), key))

    def _earliest(self) -> tuple[float, int, TransactionKey | None, _Queue | None] | None:
        """The first live deadline of the heap and the two queues, as (at, sequence, key, the
        queue holding it or None for the heap); stale fronts are dropped on the way. (The key is
        None for a parked transaction's Timer J: the record is the queue's front.)

        An entry of the first-deadline queue counts while its transaction is in Trying (it
        leaves that state and the table together); one of the Timer J queue while it is the
        record ``_parked`` holds for its key (a record leaves by Timer J, a transport error or
        eviction, and its deadline never moves)."""
        scheduled = self._scheduled
        heap = self._heap
        best_at = _INF
        best_seq = 0
        found = False
        best_key: TransactionKey | None = None
        best_source: _Queue | None = None
        while heap:
            at, seq, key = heap[0]
            if scheduled.get(key) == at:
                best_at, best_seq, best_key, found = at, seq, key, True
                break
            heapq.heappop(heap)  # stale: the transaction moved its deadline or ended
        trying = self._trying
        while trying:
            tx = trying[0]
            due = tx.retransmit_at
            if tx.state is _TRYING and due is not None:
                if not found or due < best_at or (due == best_at and tx.seq < best_seq):
                    best_at, best_seq, best_key, best_source, found = due, tx.seq, tx.key, trying, True
                break
            trying.popleft()
        # The two parked queues (a front found live is remembered by its table, so this call,
        # made after every input, decodes nothing until that record goes).
        parked_table = self._parked
        # (front()'s first test written out for the server side: the front is nearly always the
        # one found live last time, and this runs after every input)
        if (parked_table._head < parked_table._tail
                and parked_table._order[parked_table._head] is parked_table._front_bytes):
            record = parked_table._front
        else:
            record = parked_table.front()
        if record is not None:
            due, seq = record[4], record[5]
            if not found or due < best_at or (due == best_at and seq < best_seq):
                best_at, best_seq, best_key, best_source, found = due, seq, None, self._parked, True
        parked = self._parked_clients.front()
        if parked is not None:
            due, seq = parked[4], parked[5]
            if not found or due < best_at or (due == best_at and seq < best_seq):
                best_at, best_seq, best_key, best_source, found = due, seq, None, self._parked_clients, True
        if not found:
            return None
        return best_at, best_seq, best_key, best_source


_INF = float("inf")
_TRYING = TxState.TRYING
_COMPLETED = TxState.COMPLETED


def _route(flow: Flow) -> tuple[str, str, int, str | None, int | None, str | None]:
    """``flow`` as atoms for a parked record: transport, remote host and port, local host and
    port, TLS name (a Flow, an instance, would keep the record tracked)."""
    remote, local = flow.remote, flow.local
    if local is None:
        return flow.transport.value, remote[0], remote[1], None, None, flow.server_name
    return flow.transport.value, remote[0], remote[1], local[0], local[1], flow.server_name


def _record_flow(record: _Parked | _ParkedClient) -> Flow:
    """The flow a parked record keeps as atoms (see ``_route``): an equal Flow."""
    local_host, local_port = record[9], record[10]
    local = None if local_host is None or local_port is None else (local_host, local_port)
    return Flow(Transport(record[6]), (record[7], record[8]), local, record[11])


def _revive_client(record: _ParkedClient, config: TimerConfig) -> _Client:
    """The parked client transaction of ``record``, rebuilt in Completed to take one input."""
    tx = _Client.completed(timeout_at=record[4], reliable=False, config=config, retransmissions=record[12])
    tx.key = _key_of(record[:4])
    return tx




def stamp_via_copy(via: Via, flow: Flow) -> Via:
    """``via`` with received/rport as ``stamp_received`` would set them (for stateless answers)."""
    source_ip, source_port = flow.remote
    if via.has_rport:
        return via.with_params(received=source_ip, rport=str(source_port))
    if not _same_ip(via.host, source_ip):
        return via.with_params(received=source_ip)
    return via


#: A ``received`` parameter with whatever value, up to the next parameter or Via.
_RECEIVED_PARAM = re.compile(r";[ \t]*received[ \t]*(?:=[^;]*)?", re.IGNORECASE)


def _without_received(response: Response, flow: Flow) -> Via:
    """The top Via of a stateless answer whose ``received`` is no IP address, that parameter removed.

    RFC 3261 §18.2.1 and §20.42 make ``received`` an IPv4 or IPv6 address, which the next hop
    writes; another value (a host name, say) makes the request malformed, and §8.2.7/§18.3 want a
    400 for it, on every transport alike. Dropped, ``received`` is written again from the source
    address as for any request (``stamp_via_copy``), so the answer goes where the request came
    from. Raises SipParseError if the Via is still unreadable without it.
    """
    first = response.headers.get_all("Via")[0]
    repaired = _RECEIVED_PARAM.sub("", first)
    if repaired == first:
        raise SipParseError(f"unreadable top Via {first[:200]!r}")
    via = Via.parse(repaired)  # still broken without it: not our case, nothing is answered
    log.info("answering 400 to a request from %s whose top Via has a received= that is not an IP address: %r",
             flow.remote, first[:200])
    response.headers.replace_first_value("Via", repaired)
    return via


def _with_to_tag(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """§8.2.6.2: a response gets a To tag if the request had none. A stateless element derives it
    from the request (§8.2.7), so every retransmission of the broken request gets the same one."""
    material = "\x00".join(value for _, value in rows).encode("utf-8", "surrogateescape")
    tag = hashlib.sha256(material).hexdigest()[:16]
    return [
        (name, f"{value};tag={tag}")
        if name.lower() in ("to", "t") and ";tag=" not in value.lower().replace(" ", "")
        else (name, value)
        for name, value in rows
    ]


def _check_request(request: Request) -> None:
    """The headers every request needs before a transaction can exist for it (§8.1.1, §8.2).

    Other malformed headers are left for the TU: §8.2.2 says those it does not need SHOULD be
    ignored.
    """
    request.from_  # noqa: B018 - each access parses (raising SipParseError) and caches
    request.to  # noqa: B018
    request.call_id  # noqa: B018
    if request.cseq.method != request.method:
        raise SipParseError(f"CSeq method {request.cseq.method} does not match {request.method}")


def _same_path(a: Flow, b: Flow) -> bool:
    return a.transport is b.transport and a.remote == b.remote
