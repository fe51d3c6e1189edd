"""``IntermediaryConfig``: what an :class:`~sipimdn.intermediary.service.Intermediary` is configured with.

Listen endpoints (TCP is added beside every UDP host, RFC 3261 §18.2.1), our own URI, the
domains we are the registrar of (RFC 3261 §10.3), the URI lists we explode and the
store-and-forward tunables (RFC 5438 §8), the IMDN-Route policy (RFC 5438 §6.5, §14), static
next hops, T1 and TLS contexts. Checked when made: a bad value is a ``ValueError``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from ..config import ListenEndpoint
from ..errors import RemoteProtocolError
from ..uri import Uri
from .exploder import ExploderConfig, UriList
from .forward import ForwardConfig

__all__ = ["IntermediaryConfig"]


def _default_listen() -> tuple[ListenEndpoint, ...]:
    return (ListenEndpoint("udp", "127.0.0.1", 0),)


@dataclass(frozen=True, slots=True)
class IntermediaryConfig:
    """Everything an :class:`Intermediary` is configured with."""

    #: Local endpoints (TCP is added on every UDP host, RFC 3261 §18.2.1).
    listen: tuple[ListenEndpoint, ...] = field(default_factory=_default_listen)
    #: User part of our own URI (``sip:<user>@<first endpoint>``), used in IMDN-Record-Route.
    user: str = "imdn"
    #: Our own URI when the bound address is not how others reach us (default: derived).
    uri: str | None = None
    #: Domains whose users must register: a message for one who is not registered is held.
    #: Other URIs are forwarded to as they are.
    domains: tuple[str, ...] = ()
    #: URI lists exploded by this intermediary.
    lists: tuple[UriList, ...] = ()
    #: Store-and-forward tunables (retry back-off, expiry).
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    #: List tunables (aggregation, window).
    exploder: ExploderConfig = field(default_factory=ExploderConfig)
    #: SQLite file holding parked messages (":memory:" keeps nothing across restarts).
    store_path: str = ":memory:"
    #: Add our IMDN-Record-Route to IMs that ask for notifications (RFC 5438 §6.5).
    record_route: bool = True
    #: Add Original-To to relayed IMs (RFC 5438 §6.4; off = do not reveal the original recipient).
    original_to: bool = True
    #: Send the notifications *we* generate along the IM's IMDN-Record-Route set by upstream
    #: intermediaries. Off by default (RFC 5438 §14): a forged route would make us a reflector; our
    #: notifications then go to the IM's SIP From. Relayed messages keep their routes either way.
    trust_imdn_route: bool = False
    #: Most upstream IMDN-Record-Route entries honoured when trusted; beyond, none are.
    max_imdn_route: int = 4
    #: Static next hops: ``(domain, proxy URI)``; a message for a user of ``domain`` that is
    #: not ours goes through that proxy (loose route) instead of to the domain itself.
    next_hops: tuple[tuple[str, str], ...] = ()
    #: RFC 3261 T1 (seconds) for our transactions.
    t1: float = 0.5
    #: Longest registration granted (seconds).
    max_expires: int = 86400
    #: Server-side TLS context, required when a TLS endpoint is listened on.
    tls_server_context: ssl.SSLContext | None = None
    #: Client-side TLS context for connections we open (default: system trust, verification on).
    tls_client_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("at least one listen endpoint is required")
        if any(ep.transport == "tls" for ep in self.listen) and self.tls_server_context is None:
            raise ValueError("a tls listen endpoint needs tls_server_context")
        if not self.user or any(c in self.user for c in "@:;<> \r\n"):
            raise ValueError(f"user must be a plain SIP user part, not {self.user!r}")
        if self.t1 <= 0 or self.max_expires < 1:
            raise ValueError("t1 and max_expires must be positive")
        for domain, hop in self.next_hops:
            try:
                Uri.parse(hop)
            except RemoteProtocolError:
                raise ValueError(f"next hop for {domain!r} is not a SIP URI: {hop!r}") from None
