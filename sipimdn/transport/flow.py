"""Flows: which transport, from where, to where (RFC 3261 §18). Pure data, no I/O.

A ``Flow`` names the path a message took or will take. The transaction layer keeps the flow of
every request so that responses go back the way §18.2.2 wants (same connection on TCP/TLS, same
socket on UDP) and so that the transport layer can tell it which transactions a failure touches.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from .._fastinit import maker
from ..errors import LocalProtocolError

__all__ = ["Address", "Flow", "SendKind", "Target", "Transport", "is_ip_literal"]

#: An (IP literal, port) pair. IPv6 literals carry no brackets.
Address = tuple[str, int]


class Transport(enum.Enum):
    """The SIP transports we speak; the value is the Via token (RFC 3261 §20.42)."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"

    # Members are singletons compared by identity: hash them in C, not through Enum.__hash__ in
    # Python (a transport keys the connection table and per-message lookups).
    __hash__ = object.__hash__

    @property
    def reliable(self) -> bool:
        """Stream transports need no retransmissions (§17.1.2.2) and zero K/J timers."""
        return self is not Transport.UDP

    @property
    def default_port(self) -> int:
        """5060 for UDP and TCP, 5061 for TLS (§18.1.1, §19.1.2)."""
        return 5061 if self is Transport.TLS else 5060

    @classmethod
    def from_token(cls, token: str) -> Transport:
        """Parse a Via or ``transport=`` token case-insensitively; raises ValueError if unknown."""
        return cls(token.upper())


class SendKind(enum.Enum):
    """What a message handed to the transport does to the transactions crossing its connection.

    The sender (the stack, which knows each message it sends) says so; a stream connection counts
    requests waiting for their final response to tell a busy connection from an idle one.
    """

    #: A request that waits for a final response: any method but ACK (RFC 3261 §17.1.1.3).
    REQUEST = "request"
    #: A final response (2xx-6xx) to a request received on the connection (§17.2.2).
    FINAL_RESPONSE = "final response"
    #: Anything else: a provisional response, an ACK, a keep-alive, bytes of no SIP meaning.
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Flow:
    """The path of one message.

    ``local`` is None for a request whose connection or socket has not been chosen yet;
    the transport manager fills it in. ``server_name`` is the host name a TLS peer's certificate
    must match (None: not TLS, or verify against the IP literal).
    """

    #: Which transport.
    transport: Transport
    #: The peer's (IP, port).
    remote: Address
    #: Our (IP, port): the listening UDP socket or the local end of the connection.
    local: Address | None = None
    #: The TLS host name to verify, if any.
    server_name: str | None = None

    @property
    def reliable(self) -> bool:
        """True on TCP and TLS."""
        return self.transport.reliable


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 literal (without brackets)."""
    # Asked several times per message (Via hosts, Request-URI, destinations) about the same few
    # hosts: ipaddress parses in Python (a few microseconds, more when it raises). Short hosts are
    # remembered in a bounded cache; longer ones (never a plain literal, though a scoped IPv6 one
    # may be) are parsed every time, so peers cannot pin memory with them.
    if len(host) <= _CACHED_HOST_LENGTH:
        return _is_ip_literal_cached(host)
    return _parse_ip_literal(host)


_CACHED_HOST_LENGTH = 64


def _parse_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_is_ip_literal_cached = functools.lru_cache(maxsize=1024)(_parse_ip_literal)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send a request: a transport, a host (IP literal or name) and a port."""

    #: The transport to use.
    transport: Transport
    #: IP literal (no brackets) or a host name to resolve.
    host: str
    #: The port.
    port: int
    #: The name a TLS certificate must match (the URI host when it is a name).
    server_name: str | None = None

    def flow(self) -> Flow:
        """The flow to this target; ``host`` must be an IP literal by now."""
        if not is_ip_literal(self.host):
            raise LocalProtocolError(f"target host {self.host!r} is not resolved")
        return _make_flow(self.transport, (self.host, self.port), None, self.server_name)


#: ``Flow(...)`` by position without the frozen dataclass ``__init__``: one per request sent (see
#: sipimdn._fastinit).
_make_flow: Callable[[Transport, Address, Address | None, str | None], Flow] = maker(Flow)
