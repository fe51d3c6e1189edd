"""Choosing the transport, address and port of the next hop (RFC 3263 §4 subset, RFC 3261 §18.1.1).

What we do, in order:

1. the URI's ``transport=`` parameter wins (``udp``, ``tcp``, ``tls``);
2. otherwise ``sips:`` means TLS and ``sip:`` means UDP (§4.1 with no NAPTR/SRV records);
3. the port is the URI's, else 5060 (5061 for TLS);
4. a host name goes through the event loop's resolver (A and AAAA); an IP literal is used as is.

The standard library cannot ask for NAPTR or SRV records, so this module skips those steps of
RFC 3263. The full procedure (NAPTR, SRV, failover) is ``locate`` plus its dnspython adapter
``dns`` (the ``sipimdn[dns]`` extra); the stack uses it when ``SipStack.locator`` is set.

The size rule (§18.1.1: a request over 1300 bytes, when the path MTU is unknown, goes over a
congestion-controlled transport) is applied by the stack at send time: ``needs_stream``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from .._fastinit import maker
from ..errors import LocalProtocolError, TransportError
from ..uri import Uri
from .flow import Target, Transport, is_ip_literal

__all__ = ["Target", "needs_stream", "resolve", "target_for_uri"]

#: §18.1.1: above this many bytes a request goes over TCP when the path MTU is unknown.
DEFAULT_UDP_MAX = 1300


def target_for_uri(uri: Uri) -> Target:
    """The unresolved target of a SIP or SIPS URI (a Request-URI or the first loose Route)."""
    if uri.scheme not in ("sip", "sips"):
        raise LocalProtocolError(f"cannot send to a {uri.scheme}: URI; resolve it to a SIP URI first")
    param = uri.params.get("transport")
    host = uri.params.get("maddr") or uri.host
    if param:
        try:
            transport = Transport.from_token(param)
        except ValueError:
            raise LocalProtocolError(f"unsupported transport={param} in {uri}") from None
    else:
        transport = Transport.TLS if uri.scheme == "sips" else Transport.UDP
    if uri.scheme == "sips" and transport is not Transport.TLS:
        # §26.2.2: every hop of a SIPS request is TLS; UDP or plain TCP is not valid for it.
        raise LocalProtocolError(f"a sips: URI cannot be reached over {transport.value} ({uri})")
    port = uri.port or transport.default_port
    server_name = None if is_ip_literal(host) else host
    return _make_target(transport, host, port, server_name if transport is Transport.TLS else None)


#: ``Target(...)`` by position without the frozen dataclass ``__init__``: one per request sent (see
#: sipimdn._fastinit).
_make_target: Callable[[Transport, str, int, str | None], Target] = maker(Target)


async def resolve(target: Target) -> list[Target]:
    """Resolve a host name to A/AAAA records through the loop's resolver; IP literals pass through.

    Returns one Target per address, in the resolver's order. Raises TransportError when the name
    does not resolve.
    """
    if is_ip_literal(target.host):
        return [target]
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if target.transport is Transport.UDP else socket.SOCK_STREAM
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=kind)
    except OSError as exc:
        raise TransportError(f"cannot resolve {target.host}: {exc}") from exc
    seen: list[Target] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        candidate = Target(target.transport, str(sockaddr[0]), target.port, target.server_name)
        if candidate not in seen:
            seen.append(candidate)
    if not seen:
        raise TransportError(f"{target.host} has no address")
    return seen


def needs_stream(size: int, transport: Transport, udp_max: int = DEFAULT_UDP_MAX) -> bool:
    """True when a request of ``size`` bytes must not go over UDP (§18.1.1, RFC 3428 §8)."""
    return transport is Transport.UDP and size > udp_max
