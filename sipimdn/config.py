"""Configuration of a :class:`~sipimdn.ua.UserAgent`.

Everything a user agent needs to know before it starts lives in one frozen
dataclass, :class:`UserAgentConfig`, so a configuration can be built once,
checked once (``__post_init__`` raises :class:`ValueError` on nonsense) and
shared. Listen endpoints are written the way the CLI takes them,
``"udp:127.0.0.1:5070"``, ``"tcp:[::1]:0"``, ``"tls:127.0.0.1:5061"``, and
parsed by :meth:`ListenEndpoint.parse`.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .auth import Credentials
from .errors import SipParseError
from .imdn.vocabulary import DisplayPolicy
from .trust import TrustedAsserters
from .uri import Uri

__all__ = [
    "DEFAULT_PORTS",
    "DisplayPrivacy",
    "ListenEndpoint",
    "UserAgentConfig",
    "check_connection_limits",
]

#: RFC 3261 §18.1.1 default ports per transport.
DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}


#: What the user agent does with a request for a display notification (RFC 5438 §14.2 asks for the
#: user's consent): ``SEND`` when the application calls ``mark_displayed``, ``FORBIDDEN`` answers
#: every display request with ``forbidden``, ``SILENT`` never sends one (RFC 5438 §7.2.1.2). The
#: vocabulary's :class:`~sipimdn.imdn.vocabulary.DisplayPolicy` under the name the configuration uses.
DisplayPrivacy = DisplayPolicy


@dataclass(frozen=True, slots=True)
class ListenEndpoint:
    """One local address the user agent listens on."""

    #: ``"udp"``, ``"tcp"`` or ``"tls"``.
    transport: str
    #: Numeric IPv4 or IPv6 address, IPv6 without brackets.
    host: str
    #: Port number; 0 asks the system for a free one.
    port: int

    def __post_init__(self) -> None:
        if self.transport not in DEFAULT_PORTS:
            raise ValueError(f"unknown transport {self.transport!r} (udp, tcp or tls)")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"listen host must be a numeric IP address, not {self.host!r}") from None
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")

    @classmethod
    def parse(cls, text: str) -> ListenEndpoint:
        """Parse ``transport:host[:port]``; IPv6 hosts go in brackets.

        A missing port means the transport's default (5060, or 5061 for TLS).
        """
        transport, sep, rest = text.strip().partition(":")
        if not sep or not rest:
            raise ValueError(f"listen endpoint {text!r} is not transport:host[:port]")
        transport = transport.lower()
        if transport not in DEFAULT_PORTS:
            raise ValueError(f"unknown transport {transport!r} in {text!r} (udp, tcp or tls)")
        port_text: str | None
        if rest.startswith("["):
            host, bracket, after = rest[1:].partition("]")
            if not bracket:
                raise ValueError(f"unclosed '[' in {text!r}")
            if after and not after.startswith(":"):
                raise ValueError(f"junk after ']' in {text!r}")
            port_text = after[1:] if after else None
        elif rest.count(":") > 1:
            # A bare IPv6 address: only acceptable without a port, since the
            # last group could otherwise be read as one.
            host, port_text = rest, None
        else:
            host, _, tail = rest.partition(":")
            port_text = tail if _ else None
        if port_text is None or port_text == "":
            if port_text == "":
                raise ValueError(f"empty port in {text!r}")
            port = DEFAULT_PORTS[transport]
        else:
            if not port_text.isdigit():
                raise ValueError(f"port {port_text!r} in {text!r} is not a number")
            port = int(port_text)
        return cls(transport=transport, host=host, port=port)

    @property
    def is_ipv6(self) -> bool:
        """True for an IPv6 address."""
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{self.transport}:{host}:{self.port}"


def check_connection_limits(max_connections: int, per_source: int, outbound_reserve: int | None,
                            stalled_after: float) -> None:
    """Raise ValueError unless these make a usable connection table.

    One rule for ``UserAgentConfig`` and ``sipimdn.transport.TransportConfig`` (which documents
    each limit and its default).
    """
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    if per_source < 1:
        raise ValueError("max_connections_per_source must be at least 1")
    if outbound_reserve is not None and not 0 <= outbound_reserve < max_connections:
        raise ValueError("outbound_connection_reserve must be at least 0 and below max_connections "
                         "(inbound connections need a slot too)")
    if not stalled_after > 0:
        raise ValueError("stalled_connection_after must be positive")


def _port_of(aor: str) -> int | None:
    try:
        return Uri.parse(aor).port
    except SipParseError:
        return None  # the user agent reports a bad AOR when it starts


def _default_listen() -> tuple[ListenEndpoint, ...]:
    return (ListenEndpoint("udp", "127.0.0.1", 0),)


@dataclass(frozen=True, slots=True)
class UserAgentConfig:
    """Everything a :class:`~sipimdn.ua.UserAgent` is configured with.

    Only ``aor`` is required; the defaults give a loopback UDP user agent
    with an in-memory store, automatic delivery notifications and display
    notifications sent on ``mark_displayed``.
    """

    #: Address of record, e.g. ``"sip:alice@example.com"``: our SIP From and CPIM From.
    #: Notifications for what we send come back to it. A port of 0
    #: (``"sip:alice@127.0.0.1:0"``) stands for the port actually bound, for
    #: use on loopback or a LAN without a registrar.
    aor: str
    #: Display name put in From and in CPIM From.
    display_name: str | None = None
    #: Local endpoints to listen on (any mix of UDP, TCP, TLS, IPv4 and IPv6).
    listen: tuple[ListenEndpoint, ...] = field(default_factory=_default_listen)
    #: Also listen with TCP on every host listened on with UDP (RFC 3261 §18.2.1),
    #: on the UDP port when it is free, so requests over 1300 bytes reach us.
    udp_implies_tcp: bool = True
    #: Outbound proxy URI (``"sip:proxy.example.com;lr"``): every request goes there.
    outbound_proxy: str | None = None
    #: Digest credentials (RFC 3261 §22) answering 401/407 on what we send;
    #: one per realm, or one with ``realm=None`` for any realm.
    credentials: tuple[Credentials, ...] = ()
    #: Register our listen endpoints' Contacts with a registrar (RFC 3261 §10)
    #: while running; implied by ``registrar``.
    register: bool = False
    #: Registrar Request-URI (``"sip:example.com"``); None: the AOR's domain.
    #: REGISTER goes through ``outbound_proxy`` when one is set.
    registrar: str | None = None
    #: Binding lifetime asked of the registrar (seconds); the granted one is honoured.
    register_expires: int = 3600
    #: Refresh this long before the granted expiry (at most half of it).
    register_refresh_margin: float = 32.0
    #: First back-off (seconds) after a failed REGISTER (RFC 5626 §4.5 base-time).
    register_retry_base: float = 30.0
    #: Longest back-off after failed REGISTERs (RFC 5626 §4.5 max-time).
    register_retry_max: float = 1800.0
    #: RFC 5626 instance ID (``"urn:uuid:..."``) sent as ``+sip.instance`` on our Contacts.
    instance_id: str | None = None
    #: RFC 5626 ``reg-id`` per Contact and ``Supported: outbound`` (needs ``instance_id``).
    reg_id: bool = False
    #: Server-side TLS context, required when a TLS endpoint is listened on.
    tls_server_context: ssl.SSLContext | None = None
    #: Client-side TLS context for connections we open.
    tls_client_context: ssl.SSLContext | None = None

    # RFC 3261 timers (seconds).
    #: T1, the round-trip estimate.
    t1: float = 0.5
    #: T2, the cap of the non-INVITE retransmit interval.
    t2: float = 4.0
    #: T4, the time a message may linger in the network.
    t4: float = 5.0

    # Limits.
    #: Largest MESSAGE body accepted as received (bytes, before inflation).
    max_body_bytes: int = 64 * 1024
    #: Largest body after ``Content-Encoding: deflate/gzip`` inflation.
    max_inflated_bytes: int = 256 * 1024

    # Connections (TCP and TLS): the limits of the connection table, which peers
    # must not be able to turn against us. See ``sipimdn.transport.TransportConfig``
    # for each default and why.
    #: Most connections open at once, inbound and outbound.
    max_connections: int = 256
    #: Most inbound connections from one source address (IPv6: one /64).
    max_connections_per_source: int = 32
    #: Slots kept for connections we open (None: an eighth of ``max_connections``).
    outbound_connection_reserve: int | None = None
    #: At a full table, an inbound connection holding a partial message for longer
    #: than this (seconds) may be closed to admit a new one.
    stalled_connection_after: float = 5.0

    # Receiving.
    #: Seconds an ``on_message`` handler has to decide the final response.
    handler_deadline: float = 2.0
    #: What the stack answers by itself when the handler misses its deadline.
    #: 202 says "accepted, not yet delivered" (RFC 3428 §7), which is the truth
    #: at that moment; the delivered notification still follows when the
    #: handler finishes.
    deadline_status: int = 202
    #: Send the requested positive delivery notification after a 2xx on our own.
    auto_delivery: bool = True
    #: Policy for display notification requests.
    display_privacy: DisplayPrivacy = DisplayPrivacy.SEND
    #: Honour IMDN-Record-Route in received messages (send our IMDNs through the
    #: intermediaries they name). Off by default: a forged route turns us into a
    #: flood source aimed at a third party (RFC 5438 §14.1); turn it on behind a
    #: trusted proxy or list server.
    trust_imdn_route: bool = False
    #: Answer 404 to a request whose Request-URI is neither our AOR nor one of our
    #: contacts, and 416 to one that is not sip:/sips: (RFC 3261 §8.2.2.1). Turn it
    #: off only behind an element that rewrites the Request-URI to an address we
    #: cannot know (a registrar storing a NAT's public address as our contact).
    check_request_uri: bool = True
    #: The proxies whose P-Asserted-Identity we believe (RFC 3325 §4, §9.1): IP addresses,
    #: networks (``"10.0.0.0/24"``) or host names (resolved when the user agent starts).
    #: A request whose transport source (the datagram's or connection's real address, never
    #: its Via) is one of them has its asserted identity used as the sender: an IMDN then
    #: changes a recipient's state only if that identity is the recipient or an intermediary
    #: of the message, whatever its From says, and ``IncomingMessage.asserted_identity`` shows
    #: it. Empty (the default): the header is ignored from everyone, as RFC 3325 §9.1 asks of
    #: a source outside the trust domain (anyone can write it). See :mod:`sipimdn.trust`.
    trusted_asserters: tuple[str, ...] = ()
    #: Most received Message-IDs remembered for dedup (in memory and in the store),
    #: the oldest forgotten first: a copy of a message older than that window reaches
    #: the application again. About 320 bytes of memory each (32 MB for the default);
    #: without a cap a peer sending fresh Message-IDs would grow memory without bound.
    dedup_max: int = 100_000
    #: Most received messages (those that may still be owed a notification, such as a display
    #: notification the application has not reported yet) and, separately, most sent messages
    #: (awaiting notifications) whose records stay in memory; the store holds them all, and an
    #: idle one that left memory is read back when needed (``mark_displayed``, a notification
    #: about it, its deadline). About 500 bytes per received and 700 per sent message: the
    #: default costs at most 5 + 7 MB however many messages await notifications, and an older
    #: message costs a store read (about 0.2 ms with SQLite). None keeps every record in memory
    #: (as does a store that cannot read records back).
    working_set_max: int | None = 10_000
    #: How many plain-text messages (no Message-ID) the tracker remembers for dedup.
    dedup_capacity: int = 4096
    #: How long (seconds) a plain-text message is remembered for dedup.
    dedup_ttl: float = 3600.0

    # Sending.
    #: Wrap outgoing messages in ``message/cpim`` (needed to request notifications).
    use_cpim: bool = True
    #: After a 415 to ``message/cpim``, retry once as ``text/plain`` and remember the peer.
    cpim_fallback: bool = True
    #: Before the first message to a peer whose capabilities are unknown, ask it with OPTIONS
    #: (RFC 3261 §11) and send text/plain when its Accept lacks ``message/cpim``; requested
    #: notifications then end ``unsupported``. Off: message/cpim until a 415 says otherwise.
    probe_options: bool = False
    #: How long (seconds) what a peer accepts, learned from a 415, an OPTIONS answer or what
    #: it sends us, is remembered.
    peer_capability_ttl: float = 7 * 24 * 3600.0
    #: Name servers (``host:port``) for RFC 3263 server location (NAPTR, SRV, A/AAAA; needs
    #: ``pip install 'sipimdn[dns]'``). Setting any turns RFC 3263 location on.
    dns_servers: tuple[str, ...] = ()
    #: Locate servers by RFC 3263 with the system's name servers (``/etc/resolv.conf``); with
    #: neither this nor ``dns_servers``, a host name is looked up with getaddrinfo only.
    rfc3263: bool = False
    #: Seconds past a peer's announced refresh interval (RFC 3994 §3.3) before its active
    #: composing state times out to idle: its refresh reaches us a network delay late.
    composing_grace: float = 10.0
    #: Attempts (first send included) for one IMDN before it is given up.
    imdn_max_attempts: int = 4
    #: First back-off (seconds) before an IMDN is retried; it doubles each time.
    imdn_retry_base: float = 1.0
    #: Longest back-off between two IMDN attempts (seconds).
    imdn_retry_cap: float = 30.0
    #: At most this many notifications to one destination address (host and port of
    #: the notification's Request-URI, whatever its user part; per originator through a
    #: trusted IMDN-Record-Route) per ``imdn_rate_window`` seconds; beyond it requests
    #: are declined (RFC 5438 §14: a flood of forged messages must not make us a flood
    #: source aimed at a third party).
    imdn_rate_limit: int = 120
    #: The window of ``imdn_rate_limit`` and ``imdn_byte_budget``, in seconds.
    imdn_rate_window: float = 60.0
    #: At most this many bytes of notifications to one destination address per
    #: ``imdn_rate_window`` (about 150 typical IMDNs: it binds only on oversized ones).
    imdn_byte_budget: int = 128 * 1024
    #: A destination that leaves a notification transaction wholly unanswered is parked
    #: this many seconds (doubling per further silent probe, up to ``imdn_park_cap``):
    #: no transaction after transaction into the void.
    imdn_park_base: float = 60.0
    #: Longest parking of a silent destination, in seconds.
    imdn_park_cap: float = 3600.0

    # Persistence.
    #: Where what we owe and await is kept: a SQLite file (``":memory:"`` keeps nothing) or a
    #: PostgreSQL URL (``postgresql://user@host/db``, ``postgresql://user@/db?host=/socket/dir``;
    #: needs ``pip install 'sipimdn[postgres]'``), which several workers may share.
    store_path: str = ":memory:"
    #: This process's name among the workers sharing a PostgreSQL store (owner of its
    #: records); None: host name and process id.
    worker_id: str | None = None
    #: With a shared store: seconds a worker's claim on what it owes and awaits lasts unless
    #: renewed (a live worker renews every quarter of it); a survivor takes over the records
    #: of a worker that stopped renewing within about 1.25 times this.
    worker_lease: float = 20.0
    #: Age (seconds) after which finished or forgotten store entries are removed.
    state_expiry: float = 7 * 24 * 3600.0

    #: On close, seconds given to answers being decided and notifications in flight.
    close_grace: float = 2.0

    #: Value of the User-Agent header on requests (empty string: none).
    user_agent: str = "sipimdn/0.1"

    #: Tune Python's cyclic garbage collector for a long-running agent while this one
    #: runs: start-up objects frozen out of collections, full collections (which walk
    #: every live object) 200 times rarer (``sipimdn._gc``; measured in bench/README.md).
    #: It changes settings of the whole process, so it is off unless the process is the
    #: agent's own (``sipimdn listen`` turns it on).
    gc_tuning: bool = False

    def __post_init__(self) -> None:
        if not self.aor or ":" not in self.aor:
            raise ValueError(f"aor must be a SIP URI such as sip:alice@example.com, not {self.aor!r}")
        if not self.listen:
            raise ValueError("at least one listen endpoint is required")
        if any(ep.transport == "tls" for ep in self.listen) and self.tls_server_context is None:
            raise ValueError("a tls listen endpoint needs tls_server_context")
        for name in (
            "t1", "t2", "t4", "handler_deadline", "imdn_retry_base", "imdn_retry_cap", "imdn_park_base",
            "imdn_park_cap",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.t2 < self.t1:
            raise ValueError("t2 must not be smaller than t1")
        if not (200 <= self.deadline_status <= 699) or self.deadline_status == 408:
            raise ValueError("deadline_status must be a final response code (200-699) other than 408")
        if self.imdn_rate_window <= 0:
            raise ValueError("imdn_rate_window must be positive")
        for name in (
            "max_body_bytes",
            "max_inflated_bytes",
            "dedup_capacity",
            "dedup_max",
            "imdn_max_attempts",
            "imdn_rate_limit",
            "imdn_byte_budget",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.working_set_max is not None and self.working_set_max < 1:
            raise ValueError("working_set_max must be at least 1 (None: no bound)")
        if self.close_grace < 0 or self.composing_grace < 0:
            raise ValueError("close_grace and composing_grace must not be negative")
        if self.dedup_ttl <= 0 or self.state_expiry <= 0 or self.peer_capability_ttl <= 0:
            raise ValueError("dedup_ttl, state_expiry and peer_capability_ttl must be positive")
        if isinstance(self.dns_servers, str):
            raise ValueError("dns_servers is a sequence of host:port strings, not one string")
        TrustedAsserters.parse(self.trusted_asserters)
        if self.dns_servers:
            from .transport.dns import parse_nameserver  # noqa: PLC0415  (only when used: loads asyncio)

            for server in self.dns_servers:
                parse_nameserver(server)
        _check_store(self.store_path, self.worker_id)
        if not (math.isfinite(self.worker_lease) and 1.0 <= self.worker_lease <= 3600.0):
            raise ValueError("worker_lease must be between 1 and 3600 seconds")
        self._check_registration()
        check_connection_limits(self.max_connections, self.max_connections_per_source,
                                self.outbound_connection_reserve, self.stalled_connection_after)

    @property
    def registers(self) -> bool:
        """True when the user agent keeps a registration (``register`` or ``registrar`` set)."""
        return self.register or self.registrar is not None

    def _check_registration(self) -> None:
        if self.register_expires < 1:
            raise ValueError("register_expires must be at least 1 (close() unregisters)")
        if self.register_refresh_margin < 0:
            raise ValueError("register_refresh_margin must not be negative")
        if self.register_retry_base <= 0 or self.register_retry_max < self.register_retry_base:
            raise ValueError("register_retry_base must be positive and not above register_retry_max")
        if self.reg_id and self.instance_id is None:
            raise ValueError("reg_id needs instance_id (RFC 5626 §4.2.1)")
        if self.instance_id is not None and not self.instance_id.startswith("urn:"):
            raise ValueError(f"instance_id must be a URN such as urn:uuid:..., not {self.instance_id!r}")
        if self.registers and _port_of(self.aor) == 0:
            raise ValueError("an AOR with port 0 (loopback mode) cannot be registered")


def _check_store(store_path: str, worker_id: str | None) -> None:
    """Reject a store target that can only fail later: a URL of another database, a bad host."""
    if "://" in store_path:
        scheme = store_path.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"store_path: unsupported database URL scheme {scheme!r} (postgresql:// or a file)"
            )
        try:
            urlsplit(store_path).port  # noqa: B018  (parses the port: raises on a bad one)
        except ValueError as exc:
            raise ValueError(f"store_path: bad PostgreSQL URL: {exc}") from None
    if worker_id is not None and (not worker_id or not worker_id.isprintable() or len(worker_id) > 200):
        raise ValueError("worker_id must be 1 to 200 printable characters")
