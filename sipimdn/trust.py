"""Whose assertion of a sender's identity we believe: P-Asserted-Identity (RFC 3325).

In an IMS or RCS network the proxy that authenticated a user writes the
user's identity into ``P-Asserted-Identity`` (RFC 3325 §9.1). The header is
worth exactly as much as the element that wrote it: RFC 3325 §4 trusts it
only inside a Trust Domain, between elements that know each other, and
§9.1 says an element receiving it from an untrusted source ignores it (anyone
can write the header). So a user agent believes it only in requests that
arrive from one of the elements it is configured to trust
(``UserAgentConfig.trusted_asserters``), and by default from none. Trusting
an element is trusting everything it relays: it must replace or remove a
P-Asserted-Identity that reached it from outside its trust domain (RFC 3325
§5), or any sender behind it asserts what it likes.

**Trust by transport source.** Whether a request comes from a trusted
element is decided by the address the request really came from: the UDP
datagram's source or the TCP/TLS connection's peer. Never by Via: the top
Via is written by the sender, so a forger names whatever it likes there;
the transport source is what the network delivered. A TCP or TLS source
cannot be forged without owning the address (the handshake must complete);
a UDP source can be spoofed by a sender who does not need the answer, so
RFC 3325 §4 asks for a network that filters spoofed addresses or for
TLS/IPsec between the trusted elements. Spoofing alone does not get a
forger far with IMDNs: it still needs the unpredictable Message-ID of the
message it reports on (RFC 5438 §14.1).

**What a malformed header means.** A P-Asserted-Identity that breaks RFC
3325 §9.1 (not one or two values, a scheme other than sip/sips/tel, two of
one kind, header parameters) is treated as absent: logged, never an error
answer, since the request itself is fine.

**Privacy: id** (RFC 3325 §9.3, RFC 3323) asks the network not to reveal
the asserted identity outside the Trust Domain. A user agent that receives
it from a trusted element is the endpoint of that domain: the identity is
still the sender's, still used to check an IMDN's origin and handed to the
application (``IncomingMessage.asserted_identity``), but the application is
told the sender asked to stay private (``identity_withheld``) and should
not show it to the user; the user agent does not log it.

Nothing here does I/O: host names in the configuration are resolved by the
user agent when it starts (:meth:`TrustedAsserters.with_addresses`).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import SipParseError
from .headers import AssertedIdentity
from .message import Request

__all__ = ["TrustedAsserters", "asserted_identity", "withholds_identity"]

_log = logging.getLogger("sipimdn.trust")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A host name (RFC 1123 labels), resolved when the user agent starts.
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


@dataclass(frozen=True, slots=True)
class TrustedAsserters:
    """The network elements whose P-Asserted-Identity we believe (RFC 3325 §4 Trust Domain).

    Built from ``UserAgentConfig.trusted_asserters`` entries: an IP address
    (``"10.0.0.5"``, ``"2001:db8::5"``, ``"[2001:db8::5]"``), a network
    (``"10.0.0.0/24"``) or a host name, which the user agent resolves when it
    starts (every address it resolves to is trusted). No ports: a proxy's
    TCP connections come from ports it picks, so trust is per address.
    Empty (the default): no assertion is believed.
    """

    #: Addresses and networks trusted (single addresses as /32 or /128).
    networks: tuple[_Network, ...] = ()
    #: Host names still to resolve into ``networks``.
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedAsserters:
        """Read configuration entries; raises ValueError for one that is none of the three."""
        if isinstance(entries, str):
            raise ValueError("trusted_asserters is a sequence of addresses, networks or host names, "
                             "not one string")
        networks: list[_Network] = []
        names: list[str] = []
        for entry in entries:
            text = entry.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            if _HOST_NAME.fullmatch(text) is None or text.replace(".", "").isdigit():
                raise ValueError(f"trusted_asserters: {entry[:100]!r} is not an IP address, a network "
                                 "(10.0.0.0/24) or a host name (no port)")
            names.append(text.rstrip(".").lower())
        return cls(tuple(networks), tuple(dict.fromkeys(names)))

    def with_addresses(self, addresses: Iterable[str]) -> TrustedAsserters:
        """These asserters with the host names replaced by the addresses they resolved to."""
        resolved = [ipaddress.ip_network(_bare(address)) for address in addresses]
        return TrustedAsserters(tuple(dict.fromkeys((*self.networks, *resolved))), ())

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def trusts(self, host: str) -> bool:
        """Whether a request whose transport source is ``host`` (an IP literal) may assert identity."""
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(_bare(host))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        return any(address in network for network in self.networks)


def _bare(host: str) -> str:
    """An IP literal without brackets or an IPv6 zone (``fe80::1%eth0``)."""
    return host.strip("[]").partition("%")[0]


def asserted_identity(request: Request, source: str, asserters: TrustedAsserters) -> AssertedIdentity | None:
    """The identity asserted for ``request``'s sender, or None when none is believed.

    ``source`` is the IP address the request came from (the transport's, see
    the module docstring). None when the request carries no
    P-Asserted-Identity, comes from a source ``asserters`` does not trust
    (RFC 3325 §9.1: ignored), or carries a malformed one (treated as absent).
    """
    values = request.headers.get_all("P-Asserted-Identity")
    if not values:
        return None
    if not asserters.trusts(source):
        _log.debug("P-Asserted-Identity from %s ignored: not a trusted asserter", source)
        return None
    try:
        return AssertedIdentity.parse(values)
    except SipParseError as exc:
        _log.info("P-Asserted-Identity from %s ignored as malformed: %s", source, exc.reason)
        return None


def withholds_identity(request: Request) -> bool:
    """Whether ``request`` asks for its sender's identity to stay private (``Privacy: id``,
    RFC 3325 §9.3; ``priv-value`` list of RFC 3323 §4.2)."""
    for value in request.headers.get_all("Privacy"):
        for item in value.replace(";", ",").split(","):
            if item.strip().lower() == "id":
                return True
    return False
