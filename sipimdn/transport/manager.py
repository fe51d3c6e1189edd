"""The transport manager: listening sockets, the connection table, and where bytes go.

RFC 3261 §18 keeps connections in a table keyed by the far end: for connections we opened, the
destination we connected to; for connections we accepted, the source address. A request to a
destination with an open connection reuses it (§18.1.1 RECOMMENDED); a response goes back on the
connection its request came on (§18.2.2). The table has a cap on its size, an idle timeout and a cap
on bytes queued per connection, so a peer cannot grow our memory or descriptor use without bound.

The table must not become a way to lock the user agent out, so it has three shares (see
``TransportConfig``):

* per source: one address (an IPv6 source by its /64) holds at most ``max_connections_per_source``
  inbound connections, so one host cannot fill the table;
* inbound: accepted connections hold at most ``max_connections - outbound_connection_reserve``
  slots, so our own requests and notifications always find a slot, whatever peers do;
* at a full share a new connection takes the place of the least recently active idle one (no bytes
  queued, none half received, no request awaiting its final response), else of an inbound one
  that has held a partial message for ``stalled_connection_after`` seconds (a peer sending half
  a message and waiting holds its slot for nothing). Only when every connection is busy otherwise
  is the new one refused.

Refusals and evictions are counted (``counters``) and logged at most once per
``_LOG_PERIOD`` seconds each. A message must also be completed within a deadline, so trickling
bytes (slowloris) cannot keep a half-received message and its slot alive by merely refreshing the
idle timer.

Connection events are logged with transport and peer: a connection we open, and its end, at
INFO; one we accept, and its end, at DEBUG. Ours are few (one per destination, reused while it
lives, §18.1.1), so a line each is cheap and tells where traffic goes. The rate of inbound ones is
the peers' to choose (a server facing many clients, a client opening a connection per message, a
scanner), and two INFO lines per connection would let any of them write our log at its own pace;
their messages are logged anyway.

TLS below 1.2 is never spoken (RFC 8996; RFC 3261 §26.3.1 wants TLS at its best): see
``require_tls12``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._cache import remember
from .._ratelog import RateLimitedLog
from ..errors import TransportError
from .base import ConnectionCounters, ListenSpec, TransportConfig, TransportUser
from .flow import Address, Flow, SendKind, Transport
from .stream import StreamConnection
from .udp import UdpEndpoint

if TYPE_CHECKING:
    from ..message import Request, Response

__all__ = ["TransportManager"]

log = logging.getLogger(__name__)

_Key = tuple[Transport, Address, str | None]

#: 64*T1 with the default T1 (Timers F and J): no non-INVITE transaction outlives it, so a request
#: unanswered for longer no longer makes its connection busy.
_TRANSACTION_WINDOW = 32.0


#: Seconds between two log lines about the same kind of refusal or eviction; the ones in between
#: are counted and reported with the next line (a flood must not flood the log too).
_LOG_PERIOD = 10.0


def _source_of(host: str) -> str:
    """The per-source key of a peer address: IPv4 as is, IPv6 by its /64 prefix (IPv4-mapped
    IPv6 as the IPv4 address)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _hostport(address: Address | None) -> str:
    """``host:port``, IPv6 hosts in brackets (``[::1]:5060``); ``?`` when unknown."""
    if address is None:
        return "?"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def require_tls12(context: ssl.SSLContext, role: str) -> None:
    """Make ``context`` refuse anything older than TLS 1.2 (RFC 8996 deprecates TLS 1.0 and 1.1).

    A context allowing older versions has its ``minimum_version`` raised to TLS 1.2 IN PLACE (the
    certificate and key loaded into an ``SSLContext`` cannot be copied into a new one): a context
    the application shares with other code is changed for that code too, which is logged as a
    warning. A context that cannot do TLS 1.2 at all (its ``maximum_version`` below it, or made
    for one fixed old protocol) is refused with ``TransportError``. ``role`` names the context in
    messages ("server" or "client").
    """
    highest = context.maximum_version
    if highest is not ssl.TLSVersion.MAXIMUM_SUPPORTED and highest < ssl.TLSVersion.TLSv1_2:
        raise TransportError(f"the {role} ssl context allows at most {highest.name}; "
                             "TLS 1.2 or newer is required (RFC 8996)")
    if context.minimum_version >= ssl.TLSVersion.TLSv1_2:
        return
    old = context.minimum_version.name
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    except ValueError as exc:  # made with a fixed-version protocol such as PROTOCOL_TLSv1
        raise TransportError(f"the {role} ssl context is bound to an old protocol version ({exc}); "
                             "use PROTOCOL_TLS_SERVER/PROTOCOL_TLS_CLIENT") from exc
    log.warning("the %s ssl context allowed %s: its minimum_version is now TLSv1_2 (RFC 8996)", role, old)


class TransportManager:
    """Owns every socket of a stack. Only moves bytes; parsed stream messages and failures go to
    the ``TransportUser``."""

    def __init__(self, user: TransportUser, config: TransportConfig | None = None) -> None:
        self._user = user
        self.config = config or TransportConfig()
        self._udp: list[UdpEndpoint] = []
        # UDP sockets opened only to send requests (no UDP listener of their family): they take
        # responses and drop requests, so a TCP- or TLS-only user agent takes no plaintext UDP in.
        self._udp_send_only: list[UdpEndpoint] = []
        self._servers: list[tuple[Transport, Address, asyncio.Server]] = []
        # What ``endpoints`` returns, built once per change of the listeners (read per request).
        self._endpoints: tuple[tuple[Transport, Address], ...] | None = None
        # What ``sent_by`` picks per (transport, address family): the chosen (host, port) and
        # whether its host is a wildcard (resolved per remote host); emptied when a socket opens.
        self._sent_by: dict[tuple[Transport, int], tuple[Address, bool]] = {}
        # The UDP socket a request of each address family leaves from (``_udp_for``), likewise.
        self._udp_by_family: dict[int, UdpEndpoint] = {}
        self._connections: dict[_Key, StreamConnection] = {}
        self._all: set[StreamConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._default_ssl: ssl.SSLContext | None = None
        self._source_cache: dict[str, str] = {}
        # Inbound connections in the table, by source key and back.
        self._source_of: dict[StreamConnection, str] = {}
        self._by_source: dict[str, set[StreamConnection]] = {}
        # When each connection logged as opened or accepted was made (loop time): its end is
        # logged once, with its age, however many ways it is reported lost.
        self._opened_at: dict[StreamConnection, tuple[float, bool]] = {}  # (when, inbound)
        self._counts = {name: 0 for name in ConnectionCounters.__dataclass_fields__}
        self._log_refused = RateLimitedLog(log, logging.WARNING, _LOG_PERIOD)
        self._log_refused_source = RateLimitedLog(log, logging.WARNING, _LOG_PERIOD)
        self._log_refused_outbound = RateLimitedLog(log, logging.WARNING, _LOG_PERIOD)
        self._log_evicted = RateLimitedLog(log, logging.INFO, _LOG_PERIOD)

    # -- listening ------------------------------------------------------------------------------

    async def listen(self, spec: ListenSpec) -> tuple[Transport, Address]:
        """Start listening; returns the transport and the address actually bound."""
        if spec.transport is Transport.UDP:
            endpoint = await UdpEndpoint.open(spec.host, spec.port, self._user.datagram_received,
                                              self._udp_error)
            self._udp.append(endpoint)
            self._sockets_changed()
            self._arm_sweeper()
            return (Transport.UDP, endpoint.local)
        if spec.transport is Transport.TLS:
            if spec.ssl_context is None:
                raise TransportError("listening on TLS needs a server ssl_context with our certificate")
            require_tls12(spec.ssl_context, "server")
        loop = asyncio.get_running_loop()
        kind = spec.transport
        try:
            server = await loop.create_server(
                lambda: self._new_connection(kind, ("", 0), None, inbound=True),
                spec.host, spec.port, family=_family(spec.host),
                ssl=spec.ssl_context if kind is Transport.TLS else None,
                # Handshakes in progress are not in the connection table yet: bound their lifetime.
                ssl_handshake_timeout=self.config.connect_timeout if kind is Transport.TLS else None,
                reuse_address=True,
            )
        except OSError as exc:
            raise TransportError(f"cannot listen on {kind.value} {spec.host}:{spec.port}: {exc}") from exc
        sockname = server.sockets[0].getsockname()
        local = (str(sockname[0]), int(sockname[1]))
        self._servers.append((kind, local, server))
        self._sockets_changed()
        self._arm_sweeper()
        return (kind, local)

    async def reopen_udp(self, local: Address) -> Address:
        """Close the UDP listener bound to ``local`` and listen on a new port the system picks on
        the same host, in its place; returns the new address.

        For start-up only, before any traffic: the stack asks for it when the TCP port beside an
        ephemeral UDP port is taken (RFC 3261 §18.2.1 wants both on one port)."""
        index = next((i for i, endpoint in enumerate(self._udp) if endpoint.local == local), None)
        if index is None:
            raise TransportError(f"no UDP listener on {local[0]}:{local[1]}")
        endpoint = self._udp[index]
        replacement = await UdpEndpoint.open(local[0], 0, self._user.datagram_received, self._udp_error)
        endpoint.close()
        self._udp[index] = replacement
        self._sockets_changed()
        return replacement.local

    async def open_udp_for_sending(self) -> list[Address]:
        """Give every address family listened on without UDP a UDP socket for sending requests.

        Bound to the host of that family's first listener, port 0. It sends requests to UDP
        destinations and takes back their responses only: requests arriving on it are dropped,
        so the user agent still takes requests only where it listens. It is not in
        :attr:`endpoints`, and it goes in the Via of the requests it sends. Returns the
        addresses opened (none when every family has a UDP listener).
        """
        opened: list[Address] = []
        families = {_family(e.local[0]) for e in self._udp}
        for _, (host, _port), _ in self._servers:
            family = _family(host)
            if family in families:
                continue
            families.add(family)
            endpoint = await UdpEndpoint.open(host, 0, self._response_datagram, self._udp_error)
            self._udp_send_only.append(endpoint)
            self._sockets_changed()
            opened.append(endpoint.local)
        return opened

    def _response_datagram(self, data: bytes, flow: Flow) -> None:
        # A send-only socket: responses (RFC 3261 §7.2 status line) go up, anything else is dropped.
        if data.startswith(b"SIP/2.0 "):
            self._user.datagram_received(data, flow)
        elif data.strip(b"\r\n"):
            log.debug("dropping a request from %s on a UDP socket opened only for sending", flow.remote)

    @property
    def endpoints(self) -> list[tuple[Transport, Address]]:
        """Every listening (transport, bound address), in the order they were opened."""
        return list(self.endpoint_tuple)

    @property
    def endpoint_tuple(self) -> tuple[tuple[Transport, Address], ...]:
        """:attr:`endpoints` as a tuple, the same object until the listeners change."""
        endpoints = self._endpoints
        if endpoints is None:
            endpoints = self._endpoints = tuple(
                [(Transport.UDP, e.local) for e in self._udp] + [(k, a) for k, a, _ in self._servers]
            )
        return endpoints

    def _sockets_changed(self) -> None:
        """Forget what was derived from the set of sockets (a listener or send-only socket opened,
        or all closed)."""
        self._endpoints = None
        self._sent_by.clear()
        self._udp_by_family.clear()

    def sent_by(self, transport: Transport, remote_host: str) -> Address:
        """Our address to put in the Via of a request to ``remote_host`` over ``transport``.

        The listener of that transport and address family if there is one (so the peer could
        reach us there, §18.1.1); else any listener of the family, as responses on streams come
        back on the same connection anyway. A wildcard listener (0.0.0.0, ::) is replaced by the
        local address the system would use to reach ``remote_host``.
        """
        # Asked for every request sent, with the same few answers: the choice is kept per
        # (transport, family) until the sockets change; a wildcard host is still resolved per
        # remote host (through its own cache).
        family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
        known = self._sent_by.get((transport, family))
        if known is None:
            known = self._choose_sent_by(transport, family, remote_host)
            self._sent_by[(transport, family)] = known
        chosen, wildcard = known
        if wildcard:
            return (self._source_address(remote_host), chosen[1])
        return chosen

    def _choose_sent_by(self, transport: Transport, family: int, remote_host: str) -> tuple[Address, bool]:
        """:meth:`sent_by`'s choice of socket for ``transport`` and ``family``, and whether its
        host is a wildcard; raises ``TransportError`` when the family has no socket."""
        candidates = self.endpoints
        if transport is Transport.UDP and self._udp_send_only:
            candidates = candidates + [(Transport.UDP, e.local) for e in self._udp_send_only]
        same_family = [(k, a) for k, a in candidates if _family(a[0]) == family]
        if not same_family:
            raise TransportError(f"no listening socket for the address family of {remote_host}")
        chosen = next((a for k, a in same_family if k is transport), same_family[0][1])
        return (chosen, chosen[0] in ("0.0.0.0", "::"))

    def _source_address(self, remote_host: str) -> str:
        cached = self._source_cache.get(remote_host)
        if cached is not None:
            return cached
        # Connecting a UDP socket sends nothing; it only asks the routing table for our source.
        with socket.socket(_family(remote_host), socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((remote_host, 9))
                source = str(probe.getsockname()[0])
            except OSError as exc:
                raise TransportError(f"no route to {remote_host}: {exc}") from exc
        return remember(self._source_cache, remote_host, source, 1024)

    @property
    def connection_count(self) -> int:
        """Open (or opening) TCP and TLS connections."""
        return len(self._all)

    @property
    def inbound_count(self) -> int:
        """Accepted TCP and TLS connections in the table."""
        return len(self._source_of)

    @property
    def counters(self) -> ConnectionCounters:
        """What the connection limits refused and evicted so far (a snapshot)."""
        return ConnectionCounters(**self._counts)

    # -- sending --------------------------------------------------------------------------------

    def send(self, data: bytes, flow: Flow, kind: SendKind = SendKind.OTHER) -> Flow:
        """Send ``data`` along ``flow``; returns the flow with our local address when known.

        ``kind`` says what the message is to a connection's busy accounting (see ``SendKind``).

        Raises TransportError when it fails at once; later failures (connect refused, ICMP,
        connection lost) are reported through ``TransportUser.flow_failed``.
        """
        if self._closed:
            raise TransportError("the transport manager is closed")
        if flow.transport is Transport.UDP:
            endpoint = self._udp_for(flow)
            endpoint.send(data, flow.remote)
            if flow.local == endpoint.local and flow.server_name is None:
                return flow
            return endpoint.flow_to(flow.remote)
        # The key holds the TLS name too: a connection verified for one name is never reused for another.
        connection = self._connections.get((flow.transport, flow.remote, flow.server_name))
        if connection is None or connection.closed:
            connection = self._connect(flow)
        connection.send(data, kind)
        return connection.flow

    def is_open(self, flow: Flow) -> bool:
        """True when a stream flow still has its connection in the table (always True for UDP)."""
        if flow.transport is Transport.UDP:
            return True
        connection = self._connections.get((flow.transport, flow.remote, flow.server_name))
        return connection is not None and not connection.closed

    def _udp_for(self, flow: Flow) -> UdpEndpoint:
        local = flow.local
        if local is not None:  # a response: from the socket the request came in on (RFC 3581 §4)
            udp = self._udp
            if len(udp) == 1 and udp[0].local == local:
                return udp[0]
            for endpoint in udp:
                if endpoint.local == local:
                    return endpoint
        family = socket.AF_INET6 if ":" in flow.remote[0] else socket.AF_INET
        chosen = self._udp_by_family.get(family)
        if chosen is None:
            chosen = self._udp_by_family[family] = self._udp_of_family(family, flow.remote[0])
        return chosen

    def _udp_of_family(self, family: int, host: str) -> UdpEndpoint:
        """The UDP socket requests to ``family`` leave from: the first listener of that family,
        else the first send-only socket of it; raises ``TransportError`` when there is none."""
        for endpoint in self._udp:
            if endpoint.family == family:
                return endpoint
        for endpoint in self._udp_send_only:
            if endpoint.family == family:
                return endpoint
        raise TransportError(f"no UDP socket for the address family of {host}")

    def _connect(self, flow: Flow) -> StreamConnection:
        if flow.transport is Transport.TLS:
            self._client_ssl()  # a context unable to do TLS 1.2 fails this send, not a later task
        if not self._room_for_outbound():
            raise TransportError(f"connection limit ({self.config.max_connections}) reached "
                                 "and every connection is busy")
        connection = self._new_connection(flow.transport, flow.remote, flow.server_name, inbound=False)
        self._connections[(flow.transport, flow.remote, flow.server_name)] = connection
        task = asyncio.get_running_loop().create_task(self._open(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return connection

    async def _open(self, connection: StreamConnection) -> None:
        loop = asyncio.get_running_loop()
        host, port = connection.flow.remote
        tls = connection.kind is Transport.TLS
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: connection, host, port,
                    ssl=self._client_ssl() if tls else None,
                    server_hostname=(connection.flow.server_name or host) if tls else None,
                ),
                self.config.connect_timeout,
            )
        except asyncio.CancelledError:
            connection.connect_failed(TransportError("connect cancelled"))
            raise
        except (OSError, TimeoutError) as exc:  # ssl.SSLError (e.g. a wrong certificate) is an OSError
            what = "handshake with" if isinstance(exc, ssl.SSLError) else "connect to"
            reason = str(exc) or type(exc).__name__
            error = TransportError(f"{connection.kind.value} {what} {host}:{port} failed: {reason}")
            connection.connect_failed(error)
            return
        if connection.closed:  # closed while connecting: never in use
            return
        self._opened_at[connection] = (loop.time(), False)
        flow = connection.flow
        name = f" ({flow.server_name})" if flow.server_name and flow.server_name != host else ""
        log.info("opened %s connection to %s%s from %s", connection.kind.value, _hostport(flow.remote),
                 name, _hostport(flow.local))

    def _client_ssl(self) -> ssl.SSLContext:
        if self._default_ssl is None:
            # Peer certificate and host name verified (RFC 3261 §26.2.2 SHOULD).
            context = self.config.client_ssl_context or ssl.create_default_context()
            require_tls12(context, "client")
            self._default_ssl = context
        return self._default_ssl

    def _new_connection(self, kind: Transport, remote: Address, server_name: str | None, *,
                        inbound: bool) -> StreamConnection:
        loop = asyncio.get_running_loop()
        connection = StreamConnection(
            kind, remote=remote, server_name=server_name, limits=self.config.limits,
            max_buffered=self.config.max_buffered_bytes, now=loop.time,
            on_message=self._stream_message, on_bad_message=self._user.stream_message_failed,
            on_lost=self._lost,
            on_made=self._accepted if inbound else None, transaction_window=_TRANSACTION_WINDOW,
            call_soon=loop.call_soon,
        )
        if not inbound:  # inbound ones count once accepted: a failed TLS handshake never gets there
            self._all.add(connection)
        return connection

    def _accepted(self, connection: StreamConnection) -> None:
        if self._closed:
            connection.abort(None)
            return
        if not self._room_for_inbound(connection):
            connection.abort(None)
            return
        source = _source_of(connection.flow.remote[0])
        self._source_of[connection] = source
        self._by_source.setdefault(source, set()).add(connection)
        self._all.add(connection)
        self._connections[(connection.kind, connection.flow.remote, None)] = connection
        self._opened_at[connection] = (asyncio.get_running_loop().time(), True)
        log.debug("accepted %s connection from %s on %s (%d inbound open)", connection.kind.value,
                  _hostport(connection.flow.remote), _hostport(connection.flow.local), len(self._source_of))

    def _room_for_inbound(self, connection: StreamConnection) -> bool:
        """True if the accepted ``connection`` may enter the table, after evicting for it if
        its source, the inbound share or the table is full; False (counted, logged) if not."""
        config = self.config
        now = asyncio.get_running_loop().time()
        kind, remote = connection.kind.value, connection.flow.remote
        same_source = self._by_source.get(_source_of(remote[0]), ())
        if len(same_source) >= config.max_connections_per_source and not self._evict(same_source, now):
            self._counts["refused_per_source"] += 1
            self._log_refused_source(
                now, "refusing %s connection from %s: %d from that source already, all busy",
                kind, remote, config.max_connections_per_source)
            return False
        pool: Iterable[StreamConnection]
        if len(self._source_of) >= config.inbound_share:
            pool = self._source_of  # only another inbound connection can make room
        elif len(self._all) >= config.max_connections:
            pool = self._all
        else:
            return True
        if self._evict(pool, now):
            return True
        self._counts["refused_inbound"] += 1
        self._log_refused(now, "refusing %s connection from %s: %d inbound connections open and all busy",
                          kind, remote, len(self._source_of))
        return False

    def _room_for_outbound(self) -> bool:
        """True if one more connection of ours fits, after evicting one if the table is full.
        Inbound connections never hold the reserved share, so this fails only when our own
        connections fill it and are all busy."""
        if len(self._all) < self.config.max_connections:
            return True
        now = asyncio.get_running_loop().time()
        if self._evict(self._all, now):
            return True
        self._counts["refused_outbound"] += 1
        self._log_refused_outbound(
            now, "no connection slot for a request of ours: %d connections open, all busy", len(self._all))
        return False

    def _evict(self, pool: Iterable[StreamConnection], now: float) -> bool:
        """Close one connection of ``pool`` to make room: the least recently active idle one,
        else the inbound one stalled longest in the middle of a message (for more than
        ``stalled_connection_after``). False if every one is busy."""
        # A linear scan: it runs only at a cap, and activity changes on every byte, so an ordered
        # structure would cost more on the hot path than this costs under pressure.
        idle: StreamConnection | None = None
        stalled: StreamConnection | None = None
        stalled_since = now - self.config.stalled_connection_after
        for connection in pool:
            if connection.closed:
                continue
            if not connection.busy(now):
                if idle is None or connection.last_activity < idle.last_activity:
                    idle = connection
            elif idle is None and connection in self._source_of:
                started = connection.message_started
                if started is not None and started < stalled_since and (
                        stalled is None or started < (stalled.message_started or now)):
                    stalled = connection
        if idle is not None:
            self._counts["evicted_idle"] += 1
            self._log_evicted(
                now, "closing idle %s connection to %s (last active %.1f s ago) to admit a new one",
                idle.kind.value, idle.flow.remote, now - idle.last_activity)
            idle.close()
            self._lost(idle, None, why="idle, closed to admit a new connection")
            return True
        if stalled is not None:
            started = stalled.message_started or now
            self._counts["evicted_stalled"] += 1
            self._log_evicted(now, "closing %s connection from %s, in the middle of a message for %.1f s, "
                              "to admit a new one", stalled.kind.value, stalled.flow.remote, now - started)
            stalled.abort(TransportError(
                f"{stalled.kind.value} connection from {stalled.flow.remote[0]}:{stalled.flow.remote[1]} "
                f"closed for a new one: a message incomplete for {now - started:.1f} s"))
            self._release(stalled)  # the slot is free now; connection_lost reports
            return True
        return False

    def _release(self, connection: StreamConnection) -> None:
        """Take ``connection`` out of the counts (idempotent)."""
        self._all.discard(connection)
        source = self._source_of.pop(connection, None)
        if source is not None:
            members = self._by_source[source]
            members.discard(connection)
            if not members:
                del self._by_source[source]

    # -- from the sockets -----------------------------------------------------------------------

    def _stream_message(self, message: Request | Response, flow: Flow) -> None:
        self._user.stream_message_received(message, flow)

    def _lost(self, connection: StreamConnection, error: TransportError | None, *,
              why: str | None = None) -> None:
        """``connection`` is gone (reported by the connection, or by us closing it: ``why``)."""
        opened = self._opened_at.pop(connection, None)
        if opened is not None:
            opened_at, inbound = opened
            reason = error or why or ("shutting down" if self._closed else "closed by us")
            log.log(logging.DEBUG if inbound else logging.INFO, "closed %s connection %s %s after %.1f s: %s",
                    connection.kind.value, "from" if inbound else "to", _hostport(connection.flow.remote),
                    asyncio.get_running_loop().time() - opened_at, reason)
        self._release(connection)
        for key, value in list(self._connections.items()):
            if value is connection:
                del self._connections[key]
        if error is not None and not self._closed:
            self._user.flow_failed(connection.flow, error)

    def _udp_error(self, remote: Address, error: TransportError) -> None:
        if not self._closed:
            self._user.flow_failed(Flow(Transport.UDP, remote), error)

    # -- housekeeping ---------------------------------------------------------------------------

    @property
    def message_deadline(self) -> float:
        """Seconds a message may take to arrive once its first byte has: ``message_timeout``, or
        ``idle_timeout`` if shorter (a message slower than an idle period is no sign of life)."""
        return min(self.config.message_timeout, self.config.idle_timeout)

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and not self._closed:
            period = max(0.05, min(self.config.idle_timeout / 4, self.message_deadline / 4, 30.0))
            self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        deadline = self.message_deadline
        for connection in list(self._all):
            if not connection.connected or connection.closed:
                continue
            started = connection.message_started
            if started is not None and now - started > deadline:
                # Not idle by the byte count, but not delivering either: a message trickling in
                # (slowloris). Whatever waits for an answer on it is told: it will not come.
                log.info("closing %s connection from %s: a message not completed in %.1f s",
                         connection.kind.value, connection.flow.remote, deadline)
                connection.abort(TransportError(
                    f"{connection.kind.value} peer {connection.flow.remote[0]}:{connection.flow.remote[1]} "
                    f"did not complete a message within {deadline:g} s"))
                self._release(connection)  # the slot is free now; connection_lost reports
            elif now - connection.last_activity > self.config.idle_timeout:
                connection.close()
                self._lost(connection, None, why=f"idle for over {self.config.idle_timeout:g} s")
        self._arm_sweeper()

    async def close(self) -> None:
        """Close every listener and connection; pending sends are dropped."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        for endpoint in self._udp + self._udp_send_only:
            endpoint.close()
        for _, _, server in self._servers:
            server.close()
        for connection in list(self._all):
            connection.abort(None)
        for _, _, server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._udp.clear()
        self._udp_send_only.clear()
        self._servers.clear()
        self._sockets_changed()
        self._connections.clear()
        self._all.clear()
        self._source_of.clear()
        self._by_source.clear()
