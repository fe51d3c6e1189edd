"""What transports hand up, and the knobs they share."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..config import check_connection_limits
from .flow import Flow, Transport

if TYPE_CHECKING:
    from ..errors import SipParseError, TransportError
    from ..message import Request, Response
    from ..parser import Limits

__all__ = [
    "STREAM_READ_SIZE",
    "ConnectionCounters",
    "ListenSpec",
    "TransportConfig",
    "TransportUser",
    "limit_reads",
]

#: Bytes asked of the kernel per read on a TCP connection (asyncio's own default is 256 KiB).
STREAM_READ_SIZE = 64 * 1024


def limit_reads(transport: object, size: int) -> None:
    """Have an asyncio selector transport read at most ``size`` bytes at a time, not 256 KiB.

    Python allocates a read's whole buffer before the call and shrinks it to what arrived
    after it. 256 KiB is above glibc's mmap threshold (128 KiB), so each read maps fresh
    memory, faults it in, remaps and unmaps it: about 15 us a read (a datagram, a chunk of a
    stream) against under 2 us for a buffer the heap gives. Transports of other event loops
    (uvloop's) have no such setting and are left as they are.
    """
    if isinstance(getattr(type(transport), "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]


class TransportUser(Protocol):
    """The receiver of everything transports produce (the stack implements it).

    Datagrams arrive as bytes because the stack must parse them itself to answer a broken request
    statelessly; stream transports need the parser's framer to cut messages, so they hand up
    whole parsed messages.
    """

    def datagram_received(self, data: bytes, flow: Flow) -> None:
        """One UDP datagram (one SIP message, RFC 3261 §18.3) arrived on ``flow``."""

    def stream_message_received(self, message: Request | Response, flow: Flow) -> None:
        """The framer of a TCP/TLS connection produced a complete message."""

    def stream_message_failed(self, data: bytes | None, error: SipParseError, flow: Flow) -> None:
        """A connection's framer failed on ``data`` (the start of the bad message, if any); the
        connection closes after this returns, flushing anything sent on ``flow`` meanwhile."""

    def flow_failed(self, flow: Flow, error: TransportError) -> None:
        """Something sent on ``flow`` cannot arrive: ICMP error, refused or lost connection."""


@dataclass(frozen=True, slots=True)
class ListenSpec:
    """One socket to listen on. Port 0 asks the OS for a free port (see the manager's endpoints)."""

    #: Which transport.
    transport: Transport
    #: The local IP literal to bind ("127.0.0.1", "::1", "0.0.0.0", ...).
    host: str
    #: The port; 0 picks a free one.
    port: int = 0
    #: The server-side context holding our certificate; required for TLS, ignored otherwise.
    #: TLS 1.2 is the least accepted: a context whose ``minimum_version`` is lower has it raised
    #: to ``TLSv1_2`` in place at ``listen`` (a warning is logged); one unable to do TLS 1.2 at all
    #: makes ``listen`` raise TransportError.
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class ConnectionCounters:
    """What the connection limits did since the manager started (all counts)."""

    #: Inbound connections closed at once because their source address (IPv6: its /64) had
    #: ``max_connections_per_source`` busy connections already.
    refused_per_source: int = 0
    #: Inbound connections closed at once because the inbound share of the table was full of
    #: busy connections.
    refused_inbound: int = 0
    #: Sends that failed because the table was full of busy connections.
    refused_outbound: int = 0
    #: Idle connections closed to make room for a new one.
    evicted_idle: int = 0
    #: Inbound connections closed to make room because they had held a partial message for
    #: longer than ``stalled_connection_after``.
    evicted_stalled: int = 0


@dataclass(frozen=True)
class TransportConfig:
    """Limits and contexts of the transport manager.

    The connection table is shaped so that filling it cannot lock the user agent out: one source
    holds at most ``max_connections_per_source`` inbound connections, inbound connections hold at
    most ``max_connections - outbound_connection_reserve`` slots (so our own requests always find
    one), and at a full table a connection that is idle, or else an inbound one stuck in the
    middle of a message for ``stalled_connection_after`` seconds, gives its slot to the newcomer.
    """

    #: Connections idle this long (no byte in or out) are closed; RFC 3261 §18 asks for >= 64*T1.
    idle_timeout: float = 180.0
    #: Most TCP+TLS connections open at once. At the cap a new connection closes the least
    #: recently active idle one, else an inbound one stalled in the middle of a message (see
    #: ``stalled_connection_after``); only if there is neither (every connection busy: bytes
    #: queued or half received, a request awaiting its final response) is an inbound connection
    #: closed at once or an outbound send refused with TransportError. 256 descriptors sit well
    #: under the usual 1024 per process while a user agent rarely talks to more than a few
    #: dozen peers at once.
    max_connections: int = 256
    #: Most inbound connections from one source address, an IPv6 source counting by its /64
    #: (one host commonly holds the whole prefix). A peer or proxy needs one connection (RFC 3261
    #: §18 reuses them; RFC 5626 keeps one flow per proxy); 32 leaves room for a small office
    #: behind one NAT address while one address can take at most a seventh of the inbound share
    #: of the default table. At the cap a new connection from that source replaces its least
    #: recently active idle (or stalled) connection, else it is refused.
    max_connections_per_source: int = 32
    #: Slots only outbound connections (our requests and notifications) may use; inbound ones
    #: are admitted while fewer than ``max_connections`` minus this are open. None: an eighth of
    #: ``max_connections`` (32 of 256), room for that many busy next hops at once, which a user
    #: agent, usually sending through one proxy, seldom needs; outbound connections also use any
    #: free slot beyond the reserve.
    outbound_connection_reserve: int | None = None
    #: At a full table, an inbound connection whose message has been arriving for longer than
    #: this (seconds) may be closed to admit a new one. A SIP message of the default 64 KiB limit
    #: takes about 4 s at 128 kbit/s; the usual 1 KiB MESSAGE comes in one segment.
    #: ``message_timeout`` still closes it at its end whether the table is full or not.
    stalled_connection_after: float = 5.0
    #: Most bytes waiting to be written to one connection before it is declared stuck and closed.
    max_buffered_bytes: int = 1 << 20
    #: How long connecting (and the TLS handshake) may take.
    connect_timeout: float = 10.0
    #: Longest time from the first byte of a message on a stream to its last (64*T1); a connection
    #: still in the middle of a message after this long is closed, however steadily bytes trickle
    #: in. ``idle_timeout`` applies instead when it is shorter.
    message_timeout: float = 32.0
    #: Context for outgoing TLS. None: ``ssl.create_default_context()``, made on first use (loading
    #: the system trust store is slow), which verifies the peer's certificate and host name. Load a
    #: client certificate into your own context (``load_cert_chain``) for mutual TLS. As for
    #: ``ListenSpec.ssl_context``, a ``minimum_version`` below TLS 1.2 is raised in place on first
    #: use, and a context unable to do TLS 1.2 makes the send raise TransportError.
    client_ssl_context: ssl.SSLContext | None = None
    #: Parser limits for stream framing (None: the parser's defaults).
    limits: Limits | None = None

    def __post_init__(self) -> None:
        check_connection_limits(self.max_connections, self.max_connections_per_source,
                                self.outbound_connection_reserve, self.stalled_connection_after)

    @property
    def outbound_reserve(self) -> int:
        """The slots kept for outbound connections (``outbound_connection_reserve`` resolved)."""
        reserve = self.outbound_connection_reserve
        return self.max_connections // 8 if reserve is None else reserve

    @property
    def inbound_share(self) -> int:
        """Most inbound connections open at once."""
        return self.max_connections - self.outbound_reserve
