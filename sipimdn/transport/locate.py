"""Locating a SIP server (RFC 3263 §4): from a URI and DNS answers to an ordered list of targets.

Sans-IO: a :class:`Lookup` asks for DNS records one :class:`Query` at a time (``next_query()``)
and is fed the :class:`Answer` (``feed()``); the asyncio adapter (``transport/dns.py``) does the
asking. The :class:`Locator` holds what outlives one lookup: the answer cache (each answer kept
for its TTL, read with ``now``), the targets that failed recently, and the random source of the
RFC 2782 weighted choice (injectable, so tests are reproducible).

The steps, for a SIP or SIPS URI whose target is ``maddr`` or else the host (RFC 3263 §4):

1. Transport (§4.1). ``transport=`` wins. A numeric host or an explicit port means UDP for
   ``sip:`` and TLS for ``sips:`` with no NAPTR or SRV query. Otherwise NAPTR on the host: the
   records with flag ``s`` and a service we speak (``SIPS+D2T`` TLS, ``SIP+D2T`` TCP, ``SIP+D2U``
   UDP; only ``SIPS+D2T`` for a SIPS URI), by order then preference, each naming an SRV domain.
   With no usable NAPTR record: SRV for each transport we speak (``_sip._udp``, ``_sip._tcp``;
   ``_sips._tcp`` for SIPS).
2. Port and address (§4.2). A numeric host is used as is. A host with an explicit port gets
   A/AAAA. Otherwise the SRV records of the domain(s) from step 1 (with ``transport=`` and no
   port: the SRV of that transport), by priority and then the RFC 2782 weighted random order, each
   target host resolved with A/AAAA. When no SRV record exists, A/AAAA of the host at the
   transport's default port (UDP for ``sip:``, TLS for ``sips:``).
3. Failover (§4.3). The caller tries the targets in order, a new transaction each, moving on at a
   transport error, a timeout or a 503, and reports the failed one (``Locator.mark_failed``); for
   ``avoid_for`` seconds that target is tried only after the others.

Bad DNS ends in :class:`~sipimdn.errors.TransportError` naming the URI and every query with its
outcome: empty answers, SRV targets without addresses (or ``.``, "no service", RFC 2782), CNAME
loops (reported by the resolver), SRV records leading back to themselves. A lookup asks each
question once and at most ``max_queries`` questions.

TLS targets carry the URI's host as ``server_name``: the certificate must match the domain the
user asked for, not the name DNS led us to (RFC 5922 §4).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from ..errors import LocalProtocolError, TransportError
from ..uri import Uri
from .flow import Target, Transport, is_ip_literal

__all__ = [
    "Answer",
    "Locator",
    "Lookup",
    "NaptrRecord",
    "Query",
    "RRType",
    "ServerLocator",
    "SrvRecord",
    "order_srv",
]


class ServerLocator(Protocol):
    """What the stack needs to send a request to a URI with RFC 3263 failover (the asyncio
    adapter ``transport.dns.DnsLocator`` is one)."""

    async def locate(self, uri: Uri) -> list[Target]:
        """The targets for ``uri`` in the order to try them; TransportError when none."""
        ...

    def mark_failed(self, target: Target) -> None:
        """``target`` failed (transport error, Timer F, 503): try it last for a while."""

    def mark_succeeded(self, target: Target) -> None:
        """``target`` answered."""


class RRType(enum.Enum):
    """The DNS record types RFC 3263 uses."""

    NAPTR = "NAPTR"
    SRV = "SRV"
    A = "A"
    AAAA = "AAAA"


@dataclass(frozen=True, slots=True)
class Query:
    """One DNS question: a name (no trailing dot, any case) and a type."""

    name: str
    rdtype: RRType


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    """A NAPTR record (RFC 3403 §4.1)."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    #: The SRV domain (no trailing dot); "" or "." for none.
    replacement: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    #: The host (no trailing dot); "." or "" means "no such service here".
    target: str


Record = NaptrRecord | SrvRecord | str
"""A NAPTR or SRV record, or an IP literal from an A/AAAA record."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one query: the records (possibly none), how long it may be cached, and why
    there are no records when it is an error rather than an empty answer."""

    records: tuple[Record, ...] = ()
    #: Seconds the answer may be cached (0: not at all). Negative answers have one too.
    ttl: float = 0.0
    #: NXDOMAIN, a timeout, a CNAME loop, ...: shown in the error when the lookup fails.
    error: str | None = None


# NAPTR services we speak (RFC 3263 §4.1, RFC 3261 §26.2.2 for SIPS over TLS).
_SERVICES: Final = {"SIPS+D2T": Transport.TLS, "SIP+D2T": Transport.TCP, "SIP+D2U": Transport.UDP}
_SRV_PREFIX: Final = {Transport.UDP: "_sip._udp.", Transport.TCP: "_sip._tcp.", Transport.TLS: "_sips._tcp."}


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """Order SRV records as RFC 2782 says: by priority, then within a priority by repeated
    weighted random choice (zero-weight records first in the running sum, so they are picked
    rarely but not never)."""
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        # RFC 2782: "arrange all SRV RRs (that have not been ordered yet) in any order, except
        # that all those with weight 0 are placed at the beginning of the list".
        group.sort(key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    out.append(group.pop(index))
                    break
    return out


@dataclass(slots=True)
class _CacheEntry:
    expires: float
    answer: Answer


@dataclass
class Locator:
    """What lookups share: the TTL cache, the recently failed targets, the random source.

    ``avoid_for``: seconds a failed target goes to the back of the list (RFC 3263 §4.3 leaves
    the duration open). ``max_cache``: most cached answers. ``max_queries``: most DNS queries in
    one lookup. ``max_srv``: most SRV records of one domain followed. ``families``: which address
    records to ask for, in the order their addresses are tried.
    """

    rng: random.Random = field(default_factory=random.Random)
    avoid_for: float = 60.0
    max_cache: int = 1024
    max_queries: int = 40
    max_srv: int = 16
    families: tuple[RRType, ...] = (RRType.A, RRType.AAAA)
    _cache: dict[Query, _CacheEntry] = field(default_factory=dict, init=False, repr=False)
    _failed: dict[tuple[Transport, str, int], float] = field(default_factory=dict, init=False, repr=False)

    def lookup(self, uri: Uri, now: float) -> Lookup:
        """Start locating ``uri`` (a SIP or SIPS URI: the Request-URI or the first Route)."""
        return Lookup(self, uri, now)

    # -- the cache ----------------------------------------------------------------------------

    def cached(self, query: Query, now: float) -> Answer | None:
        """The cached answer to ``query`` if its TTL has not run out."""
        entry = self._cache.get(_normal(query))
        if entry is None:
            return None
        if entry.expires <= now:
            del self._cache[_normal(query)]
            return None
        return entry.answer

    def store(self, query: Query, answer: Answer, now: float) -> None:
        """Keep ``answer`` for its TTL (answers with a TTL of 0 are not kept)."""
        if answer.ttl <= 0:
            return
        key = _normal(query)
        if key not in self._cache and len(self._cache) >= self.max_cache:
            expired = [k for k, e in self._cache.items() if e.expires <= now]
            for k in expired:
                del self._cache[k]
            if len(self._cache) >= self.max_cache:
                del self._cache[min(self._cache, key=lambda k: self._cache[k].expires)]
        self._cache[key] = _CacheEntry(now + answer.ttl, answer)

    # -- failover -----------------------------------------------------------------------------

    def mark_failed(self, target: Target, now: float) -> None:
        """``target`` gave a transport error, a timeout or a 503: try it last for ``avoid_for`` s."""
        if len(self._failed) >= self.max_cache:
            self._failed = {k: t for k, t in self._failed.items() if t > now}
            if len(self._failed) >= self.max_cache:
                self._failed.pop(next(iter(self._failed)))
        self._failed[(target.transport, target.host, target.port)] = now + self.avoid_for

    def mark_succeeded(self, target: Target) -> None:
        """``target`` answered: stop avoiding it."""
        self._failed.pop((target.transport, target.host, target.port), None)

    def avoided(self, target: Target, now: float) -> bool:
        """True while ``target`` is being avoided after a failure."""
        until = self._failed.get((target.transport, target.host, target.port))
        if until is None:
            return False
        if until <= now:
            del self._failed[(target.transport, target.host, target.port)]
            return False
        return True


def _normal(query: Query) -> Query:
    return Query(query.name.lower().rstrip("."), query.rdtype)


class Lookup:
    """One run of RFC 3263 §4 for one URI. Loop ``while (q := lookup.next_query()) is not None:
    lookup.feed(q, answer, now)``, then take ``lookup.result(now)``. Cached answers are used
    without surfacing as queries."""

    def __init__(self, locator: Locator, uri: Uri, now: float) -> None:
        self._locator = locator
        self.uri = uri
        self._now = now
        #: Every query asked and what came of it, for the error message.
        self.tried: list[str] = []
        self._answers: dict[Query, Answer] = {}
        self._pending: Query | None = None
        self._targets: list[Target] | None = None
        self._error: TransportError | None = None
        self._plan = _plan(uri, locator)
        self._advance(None)

    @property
    def done(self) -> bool:
        """True once the targets (or the failure) are known."""
        return self._pending is None

    def next_query(self) -> Query | None:
        """The query to answer next, or None when the lookup is done."""
        return self._pending

    def feed(self, query: Query, answer: Answer, now: float) -> None:
        """The answer to the pending ``query``."""
        if query != self._pending:
            raise LocalProtocolError(f"answer to {query} fed while {self._pending} is pending")
        self._now = now
        self._locator.store(query, answer, now)
        self._answers[_normal(query)] = answer
        self._note(query, answer, cached=False)
        self._advance(answer)

    def abandon(self, why: str) -> None:
        """Stop here (e.g. the name servers do not answer at all): ``result`` raises
        TransportError with ``why`` and what was tried so far."""
        if self._pending is None:
            return
        self._plan.close()
        self._fail(why)

    def result(self, now: float) -> list[Target]:
        """The targets in the order to try them (recently failed ones last).

        Raises :class:`~sipimdn.errors.TransportError` when DNS gave no usable target, or
        LocalProtocolError for a URI that cannot be sent to.
        """
        if self._pending is not None:
            raise LocalProtocolError("the lookup is not finished")
        if self._error is not None:
            raise self._error
        assert self._targets is not None
        fresh = [t for t in self._targets if not self._locator.avoided(t, now)]
        stale = [t for t in self._targets if t not in fresh]
        return fresh + stale

    # -- internals ------------------------------------------------------------------------------

    def _advance(self, answer: Answer | None) -> None:
        try:
            query = self._plan.send(answer) if answer is not None else next(self._plan)
            while True:
                key = _normal(query)
                known = self._answers.get(key)
                if known is None:
                    known = self._locator.cached(query, self._now)
                    if known is not None:
                        self._answers[key] = known
                        self._note(query, known, cached=True)
                if known is None:
                    break
                # Asked before in this lookup (two SRV records on one host) or cached.
                query = self._plan.send(known)
            if len(self._answers) >= self._locator.max_queries:
                self._plan.close()
                self._fail(f"more than {self._locator.max_queries} DNS queries")
                return
            self._pending = query
        except StopIteration as stop:
            self._pending = None
            targets: list[Target] = stop.value
            if targets:
                self._targets = targets
            else:
                self._fail("no usable target")

    def _fail(self, why: str) -> None:
        self._pending = None
        steps = "; ".join(self.tried) if self.tried else "no query"
        self._error = TransportError(f"cannot locate a server for {self.uri}: {why} (tried: {steps})")

    def _note(self, query: Query, answer: Answer, *, cached: bool) -> None:
        if answer.error is not None:
            outcome = answer.error
        elif not answer.records:
            outcome = "no records"
        else:
            outcome = ", ".join(_show(r) for r in answer.records[:4])
            if len(answer.records) > 4:
                outcome += f", ... ({len(answer.records)} records)"
        self.tried.append(f"{query.rdtype.value} {query.name}{' (cached)' if cached else ''}: {outcome}")


def _show(record: Record) -> str:
    if isinstance(record, NaptrRecord):
        return f"{record.order} {record.preference} {record.flags!r} {record.service!r} {record.replacement}"
    if isinstance(record, SrvRecord):
        return f"{record.priority} {record.weight} {record.port} {record.target}"
    return record


Plan = Generator[Query, Answer, list[Target]]


def _plan(uri: Uri, locator: Locator) -> Plan:
    if uri.scheme not in ("sip", "sips"):
        raise LocalProtocolError(f"cannot send to a {uri.scheme}: URI; resolve it to a SIP URI first")
    secure = uri.scheme == "sips"
    host = (uri.params.get("maddr") or uri.host).rstrip(".")
    if not host:
        raise LocalProtocolError(f"{uri} has no host")
    param = uri.params.get("transport")
    explicit: Transport | None = None
    if param:
        try:
            explicit = Transport.from_token(param)
        except ValueError:
            raise LocalProtocolError(f"unsupported transport={param} in {uri}") from None
        if secure and explicit is not Transport.TLS:
            # RFC 3261 §26.2.2: every hop of a SIPS request is TLS.
            raise LocalProtocolError(f"a sips: URI cannot be reached over {explicit.value} ({uri})")
    default = Transport.TLS if secure else Transport.UDP

    if is_ip_literal(host):
        # §4.1/§4.2: a numeric address is used as is, no DNS at all.
        transport = explicit or default
        return [_target(transport, host, uri.port or transport.default_port, uri)]
    if uri.port is not None:
        # §4.1/§4.2: an explicit port skips NAPTR and SRV; only the addresses are looked up.
        transport = explicit or default
        return (yield from _addresses(transport, host, uri.port, uri, locator))

    srv_domains: list[tuple[Transport, str]]
    if explicit is not None:
        srv_domains = [(explicit, _SRV_PREFIX[explicit] + host)]
    else:
        answer = yield Query(host, RRType.NAPTR)
        srv_domains = _from_naptr(answer.records, secure)
        if not srv_domains:
            # §4.1: no (usable) NAPTR record: SRV for each transport we speak.
            transports = (Transport.TLS,) if secure else (Transport.UDP, Transport.TCP)
            srv_domains = [(t, _SRV_PREFIX[t] + host) for t in transports]

    targets: list[Target] = []
    any_srv = False
    for transport, domain in srv_domains:
        answer = yield Query(domain, RRType.SRV)
        records = [r for r in answer.records if isinstance(r, SrvRecord)]
        if not records:
            continue
        any_srv = True
        if len(records) == 1 and records[0].target in ("", "."):
            continue  # RFC 2782: "." means the service is decidedly not available here
        for record in order_srv(records[: locator.max_srv], locator.rng):
            if record.target in ("", "."):
                continue
            targets += yield from _addresses(transport, record.target.rstrip("."), record.port, uri, locator)
    if targets or any_srv:
        return _unique(targets)
    # §4.2: no SRV record at all: the host's addresses at the default port.
    transport = explicit or default
    return (yield from _addresses(transport, host, transport.default_port, uri, locator))


def _from_naptr(records: Sequence[Record], secure: bool) -> list[tuple[Transport, str]]:
    usable = [
        r for r in records
        if isinstance(r, NaptrRecord)
        and r.flags.lower() == "s"
        and r.service.upper() in _SERVICES
        and (not secure or r.service.upper() == "SIPS+D2T")
        and r.replacement not in ("", ".")
    ]
    usable.sort(key=lambda r: (r.order, r.preference))
    out: list[tuple[Transport, str]] = []
    for r in usable:
        entry = (_SERVICES[r.service.upper()], r.replacement.rstrip("."))
        if entry not in out:
            out.append(entry)
    return out


def _addresses(transport: Transport, host: str, port: int, uri: Uri, locator: Locator) -> Plan:
    if is_ip_literal(host):
        return [_target(transport, host, port, uri)]
    found: list[Target] = []
    for family in locator.families:
        answer = yield Query(host, family)
        found += [_target(transport, r, port, uri) for r in answer.records if isinstance(r, str)
                  and is_ip_literal(r)]
    return found


def _target(transport: Transport, address: str, port: int, uri: Uri) -> Target:
    name = uri.host if transport is Transport.TLS and not is_ip_literal(uri.host) else None
    return Target(transport, address, port, name)


def _unique(targets: list[Target]) -> list[Target]:
    out: list[Target] = []
    for t in targets:
        if t not in out:
            out.append(t)
    return out
