"""RFC 3263 server location over real DNS: the asyncio adapter of ``locate``.

:class:`DnsLocator` answers a :class:`~sipimdn.transport.locate.Lookup`'s queries with dnspython's
asyncio resolver (the optional extra ``sipimdn[dns]``), against the system's name servers or the
ones given as ``host:port``. Without dnspython it falls back to what ``select`` does (the URI's
transport and port, the host through the loop's getaddrinfo) and says once in the log that NAPTR
and SRV lookups are off.

Every lookup's DNS outcome is in the :class:`~sipimdn.errors.TransportError` raised when no target
remains, so "cannot locate sip:bob@example.com: ... (tried: NAPTR example.com: NXDOMAIN; SRV
_sip._udp.example.com: no records; ...)" says what DNS said.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import TransportError
from ..uri import Uri
from .locate import Answer, Locator, NaptrRecord, Query, Record, RRType, SrvRecord
from .select import Target, resolve, target_for_uri

__all__ = ["DnsLocator", "dnspython_available", "parse_nameserver"]

log = logging.getLogger(__name__)

try:
    import dns.asyncresolver
    import dns.exception
    import dns.message
    import dns.nameserver
    import dns.resolver
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _HAVE_DNSPYTHON = False
else:
    _HAVE_DNSPYTHON = True

_warned_fallback = False
_SILENT = "no answer within"
_LOOP = "CNAME chain too long (a loop?)"


def dnspython_available() -> bool:
    """True when dnspython is installed (``pip install sipimdn[dns]``)."""
    return _HAVE_DNSPYTHON


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> (IP literal, port).

    Raises ValueError for anything else (name servers are given by address, not name).
    """
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad name server {text!r}: expected [IPv6]:port")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad name server {text!r}: not an IP address (host:port)") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad name server {whole!r}: bad port {text!r}")
    return int(text)


class DnsLocator:
    """Locate SIP servers for a stack (RFC 3263 §4), with failover memory (§4.3).

    ``nameservers``: ``host:port`` strings; empty means the system's (``/etc/resolv.conf``).
    ``timeout``: seconds for one query, all servers and retries included. ``negative_ttl``:
    seconds an empty or NXDOMAIN answer is cached. ``locator``: the sans-IO state (cache, failed
    targets, random source) to use, e.g. with a seeded RNG. ``use_dnspython=False`` forces the
    getaddrinfo path. ``clock``: the ``now`` of the cache and of failover (the loop's clock).
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        timeout: float = 5.0,
        negative_ttl: float = 30.0,
        locator: Locator | None = None,
        use_dnspython: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.locator = locator or Locator()
        self._clock = clock
        self.timeout = timeout
        self.negative_ttl = negative_ttl
        #: DNS queries sent to a server (cache hits not counted).
        self.queries_sent = 0
        servers = [parse_nameserver(s) for s in nameservers]
        self._resolver: Any = None
        if use_dnspython and _HAVE_DNSPYTHON:
            if servers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
            else:
                try:
                    resolver = dns.asyncresolver.Resolver()
                except dns.exception.DNSException as exc:
                    raise TransportError(f"no system DNS configuration: {exc}") from exc
            resolver.cache = None  # the Locator caches, by TTL and with `now`
            resolver.lifetime = timeout
            self._resolver = resolver

    @property
    def rfc3263(self) -> bool:
        """True when NAPTR and SRV lookups are done (dnspython present and enabled)."""
        return self._resolver is not None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def locate(self, uri: Uri) -> list[Target]:
        """The targets for ``uri`` in the order to try them; raises TransportError when DNS
        yields none (LocalProtocolError for a URI that cannot be sent to)."""
        if self._resolver is None:
            return await self._fallback(uri)
        lookup = self.locator.lookup(uri, self._now())
        while (query := lookup.next_query()) is not None:
            answer = await self.query(query)
            lookup.feed(query, answer, self._now())
            if answer.error is not None and answer.error.startswith(_SILENT):
                # Servers that answer nothing will not answer the next question either: stop,
                # rather than spend a timeout on each remaining query.
                lookup.abandon("the name servers do not answer")
        return lookup.result(self._now())

    def mark_failed(self, target: Target) -> None:
        """``target`` failed (transport error, timeout, 503): try it last for a while."""
        self.locator.mark_failed(target, self._now())

    def mark_succeeded(self, target: Target) -> None:
        """``target`` answered."""
        self.locator.mark_succeeded(target)

    async def query(self, query: Query) -> Answer:
        """Ask the name servers one question; errors become an Answer with ``error`` set."""
        self.queries_sent += 1
        try:
            reply = await self._resolver.resolve(
                query.name, query.rdtype.value, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return Answer((), self.negative_ttl, "NXDOMAIN")
        except dns.resolver.LifetimeTimeout:
            return Answer((), 0.0, f"{_SILENT} {self.timeout} s")
        except dns.resolver.NoNameservers as exc:
            # SERVFAIL, REFUSED, a CNAME loop, ... from every server: dnspython lists them.
            errors = exc.kwargs.get("errors") or []
            if any(len(e) > 3 and isinstance(e[3], dns.message.ChainTooLong) for e in errors):
                return Answer((), 0.0, _LOOP)
            return Answer((), 0.0, f"no name server gave an answer ({_gist(exc)})")
        except dns.message.ChainTooLong:
            return Answer((), 0.0, _LOOP)
        except dns.exception.DNSException as exc:
            return Answer((), 0.0, f"DNS error: {exc}")
        rrset = reply.rrset
        if rrset is None:
            return Answer((), self.negative_ttl)
        records = tuple(r for r in (_record(query.rdtype, rd) for rd in rrset) if r is not None)
        return Answer(records, float(rrset.ttl))

    async def _fallback(self, uri: Uri) -> list[Target]:
        global _warned_fallback  # noqa: PLW0603 - one log line per process
        if not _warned_fallback:
            _warned_fallback = True
            why = "not installed (pip install 'sipimdn[dns]')" if not _HAVE_DNSPYTHON else "disabled"
            log.warning("dnspython %s: NAPTR and SRV lookups (RFC 3263) are off; "
                        "host names resolve through getaddrinfo", why)
        return await resolve(target_for_uri(uri))


def _gist(exc: Exception) -> str:
    errors = getattr(exc, "kwargs", {}).get("errors") or []
    parts = sorted({str(e[3]).rsplit(" answered ", 1)[-1] for e in errors if len(e) > 3})
    return ", ".join(parts)[:120] or str(exc)[:120]


def _record(rdtype: RRType, rd: Any) -> Record | None:
    if rdtype is RRType.NAPTR:
        return NaptrRecord(
            int(rd.order), int(rd.preference), _text(rd.flags), _text(rd.service), _text(rd.regexp),
            rd.replacement.to_text(omit_final_dot=True),
        )
    if rdtype is RRType.SRV:
        target = rd.target.to_text(omit_final_dot=True)
        return SrvRecord(int(rd.priority), int(rd.weight), int(rd.port), target)
    address = getattr(rd, "address", None)
    return str(address) if address is not None else None


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
