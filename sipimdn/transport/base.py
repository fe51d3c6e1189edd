"""What transports hand up, and the knobs they share."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .flow import Flow, Transport

if TYPE_CHECKING:
    from ..errors import SipParseError, TransportError
    from ..message import Request, Response
    from ..parser import Limits

__all__ = ["ListenSpec", "TransportConfig", "TransportUser"]


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


@dataclass(frozen=True)
class TransportConfig:
    """Limits and contexts of the transport manager."""

    #: Connections idle this long (no byte in or out) are closed; RFC 3261 §18 asks for >= 64*T1.
    idle_timeout: float = 180.0
    #: Most TCP+TLS connections open at once. At the cap a new connection (inbound or outbound)
    #: closes the least recently active idle one; only if all are busy (bytes queued or half
    #: received, a request awaiting its final response) is an inbound one closed or an outbound
    #: send refused with TransportError.
    max_connections: int = 256
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
