"""Is a received request for us? The Request-URI check of a user agent server, sans-IO.

RFC 3261 §8.2.2.1: a UAS answers 416 (Unsupported URI Scheme) to a Request-URI whose scheme it
does not support, and SHOULD answer 404 (Not Found) to one that "does not identify an address that
the UAS is willing to accept requests for". Without this check any request reaching our socket
(a MESSAGE for ``sip:carol@...``, a ``tel:`` number) would reach the application and could make
us owe a delivery notification to whoever sent it.

A user agent is willing to accept requests for:

* its address of record, as a worker behind a dispatcher receives it (``sip:bob@example.com``);
  the port is compared only when the AOR has one (a loopback AOR written with port 0 has the
  bound port by then);
* one of its contacts, the AOR's user at a host and port it listens on, as a proxy or registrar
  forwards it (RFC 3261 §10.2.1: the Request-URI becomes the registered Contact). A listener on a
  wildcard address (``0.0.0.0``, ``::``) stands for every IP literal with its port, since the
  addresses of the host are not known here;
* an OPTIONS with no user part at one of those (``sip:198.51.100.7:5060``), which is how load
  balancers and dispatchers probe a worker's health; it is answered 200 like any OPTIONS.

User parts are compared case-sensitively and after unescaping, hosts case-insensitively (IPv6 in
canonical form), as RFC 3261 §19.1.4 compares URIs; a missing port is the scheme's default (5061
for ``sips:`` or ``transport=tls``, else 5060, RFC 3261 §19.1.2). Parameters other than the
transport are not looked at: a proxy may add its own (``lr``, ``ob``...).

Only ``sip:`` and ``sips:`` are supported. A ``tel:`` Request-URI is refused with 416 too: a
telephone number is turned into a SIP URI by a proxy or gateway that knows which user holds it
(RFC 3261 §19.1.6, RFC 3966); a user agent reached over SIP has no such mapping, so a ``tel:``
arriving here was sent to the wrong element, and a 416 says so without guessing whose number it is.
``sips:`` is accepted like ``sip:`` for the same identity (the scheme asks for TLS on every hop,
which is the sender's and the proxies' business by the time the request is here).

The intermediary roles (registrar, exploder, forwarder) do not use this module: a proxy accepts
requests for the users of its domain by its own rules.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ..uri import Uri

__all__ = ["RequestUriPolicy", "RequestUriVerdict"]

#: The schemes a user agent answers for (RFC 3261 §19.1).
SUPPORTED_SCHEMES = frozenset({"sip", "sips"})


class RequestUriVerdict(enum.Enum):
    """What the Request-URI check decided; ``status`` is the answer to give (None: go on)."""

    #: The AOR, a contact, or a health probe: the request is handled.
    ACCEPTED = "accepted"
    #: Not sip: or sips: (RFC 3261 §8.2.2.1: 416).
    UNSUPPORTED_SCHEME = "unsupported scheme"
    #: A SIP URI that is not ours (RFC 3261 §8.2.2.1: 404).
    NOT_HERE = "not here"

    @property
    def status(self) -> int | None:
        """The final response to give, or None when the request is ours."""
        return _ANSWERS[self][0]

    @property
    def reason(self) -> str:
        """The reason phrase of that response ("" when accepted)."""
        return _ANSWERS[self][1]


_ANSWERS: dict[RequestUriVerdict, tuple[int | None, str]] = {
    RequestUriVerdict.ACCEPTED: (None, ""),
    RequestUriVerdict.UNSUPPORTED_SCHEME: (416, "Unsupported URI Scheme"),
    RequestUriVerdict.NOT_HERE: (404, "Not Found"),
}


def _host_key(host: str) -> str:
    """A host as compared: IP literals canonical, names lower-case without a trailing dot."""
    ip = _canonical_ip(host.strip("[]"))
    return ip if ip is not None else host.lower().rstrip(".")


def _is_ip(host: str) -> bool:
    return _canonical_ip(host) is not None


def _canonical_ip(text: str) -> str | None:
    # Asked two or three times per request about the same few hosts, and ipaddress parses in
    # Python (a few microseconds, more when it raises): short texts are remembered in a bounded
    # cache; longer ones (never a plain literal, though a scoped IPv6 one may be) are parsed
    # every time, so peers cannot pin memory with them.
    if len(text) <= _CACHED_HOST_LENGTH:
        return _canonical_ip_cached(text)
    return _parse_canonical_ip(text)


_CACHED_HOST_LENGTH = 64


def _parse_canonical_ip(text: str) -> str | None:
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


_canonical_ip_cached = functools.lru_cache(maxsize=1024)(_parse_canonical_ip)


def _effective_port(uri: Uri) -> int:
    if uri.port is not None:
        return uri.port
    return 5061 if uri.scheme == "sips" or uri.transport == "tls" else 5060


_WILDCARDS = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class RequestUriPolicy:
    """Classifies Request-URIs for a user agent with address of record ``aor`` listening on
    ``endpoints`` ((host, port) pairs, IP literals, wildcards allowed)."""

    #: Our address of record (a port 0 already replaced by the bound port).
    aor: Uri
    #: (host key, port) of every listening socket.
    endpoints: frozenset[tuple[str, int]]
    #: Ports of listeners on a wildcard address.
    wildcard_ports: frozenset[int]

    @classmethod
    def of(cls, aor: Uri, endpoints: Iterable[tuple[str, int]]) -> RequestUriPolicy:
        """The policy of a user agent with ``aor`` listening on ``endpoints`` (host, port)."""
        pairs = [(_host_key(host), port) for host, port in endpoints]
        return cls(
            aor=aor,
            endpoints=frozenset(p for p in pairs if p[0] not in _WILDCARDS),
            wildcard_ports=frozenset(port for host, port in pairs if host in _WILDCARDS),
        )

    def classify(self, method: str, uri: Uri) -> RequestUriVerdict:
        """The verdict on a request of ``method`` for ``uri``."""
        if uri.scheme not in SUPPORTED_SCHEMES:
            return RequestUriVerdict.UNSUPPORTED_SCHEME
        probe = method == "OPTIONS" and uri.user is None
        if uri.user != self.aor.user and not probe:
            return RequestUriVerdict.NOT_HERE
        host = _host_key(uri.host)
        aor = self.aor
        if host == _host_key(aor.host) and (aor.port is None or _effective_port(uri) == aor.port):
            return RequestUriVerdict.ACCEPTED
        if self._listens_on(host, _effective_port(uri)):
            return RequestUriVerdict.ACCEPTED
        return RequestUriVerdict.NOT_HERE

    def _listens_on(self, host: str, port: int) -> bool:
        if (host, port) in self.endpoints:
            return True
        return port in self.wildcard_ports and _is_ip(host)
