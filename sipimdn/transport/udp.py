"""UDP: one SIP message per datagram (RFC 3261 §18.3), and ICMP errors reported per destination.

Linux tells an unconnected UDP socket about ICMP errors only when ``IP_RECVERR`` is set; the error
queue then says which destination failed (§18.4 wants host/net/port/protocol unreachable and
parameter problems reported, source quench and TTL exceeded ignored). Elsewhere we only learn
about errors the kernel raises on ``sendto`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import cast

from .._cache import remember
from ..errors import TransportError
from .base import limit_reads
from .flow import Address, Flow, Transport

__all__ = ["UdpEndpoint"]

log = logging.getLogger(__name__)

# Linux constants the socket module does not export.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
# struct sock_extended_err { u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad; u32 info, data }
_EXTENDED_ERR = struct.Struct("=IBBBBII")
# ICMP types worth reporting (§18.4): destination unreachable and parameter problem.
_REPORTED_ICMP = {(_SO_EE_ORIGIN_ICMP, 3), (_SO_EE_ORIGIN_ICMP, 12),
                  (_SO_EE_ORIGIN_ICMP6, 1), (_SO_EE_ORIGIN_ICMP6, 4)}

#: Socket receive buffer asked for (the kernel may cap it, e.g. at net.core.rmem_max).
_RECEIVE_BUFFER = 1 << 21

#: Datagrams read per event-loop wake-up at most (the first by asyncio, the rest by us).
_BATCH = 32

#: A peer's address as the socket reports it (IPv4, or IPv6 with flow info and scope id).
_PeerAddress = tuple[str, int] | tuple[str, int, int, int]
#: Peers whose Flow is kept for reuse.
_FLOW_CACHE = 4096

#: Receive buffer large enough for any datagram (RFC 3261 §18.1.1: up to 65,535 bytes).
MAX_DATAGRAM = 65535

if sys.platform == "linux":
    import fcntl
    import termios

    _FIONREAD: int | None = termios.FIONREAD
else:  # pragma: no cover - elsewhere the extra reads are simply tried
    _FIONREAD = None


def _normalise(addr: tuple[str, int] | tuple[str, int, int, int]) -> Address:
    return (addr[0], addr[1])


class UdpEndpoint(asyncio.DatagramProtocol):
    """A bound UDP socket that sends and receives datagrams for the stack.

    Use ``await UdpEndpoint.open(host, port, on_datagram, on_error)``; ``local`` is the bound
    address (the real port when 0 was asked).
    """

    def __init__(self, sock: socket.socket, on_datagram: Callable[[bytes, Flow], None],
                 on_error: Callable[[Address, TransportError], None]) -> None:
        self._sock = sock
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._transport: asyncio.DatagramTransport | None = None
        self._sending_to: Address | None = None
        self._send_error: TransportError | None = None
        self._stale_report = False
        self.local: Address = _normalise(sock.getsockname())
        # One Flow per peer address, reused for each datagram from it (a Flow is immutable): building
        # a frozen dataclass per datagram is a measurable share of the receive path under load.
        self._flows: dict[_PeerAddress, Flow] = {}
        # FIONREAD's answer (the size of the next queued datagram on Linux), reused per call.
        self._queued = bytearray(4)

    @classmethod
    async def open(cls, host: str, port: int, on_datagram: Callable[[bytes, Flow], None],
                   on_error: Callable[[Address, TransportError], None]) -> UdpEndpoint:
        """Bind ``host:port`` and start receiving."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            with contextlib.suppress(OSError):  # bursts of requests must not overflow the default buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            if sys.platform == "linux":
                level, opt = ((socket.IPPROTO_IPV6, _IPV6_RECVERR) if family == socket.AF_INET6
                              else (socket.IPPROTO_IP, _IP_RECVERR))
                sock.setsockopt(level, opt, 1)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot bind UDP {host}:{port}: {exc.strerror or exc}") from exc
        endpoint = cls(sock, on_datagram, on_error)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    @property
    def family(self) -> int:
        """socket.AF_INET or socket.AF_INET6."""
        return self._sock.family

    def send(self, data: bytes, remote: Address) -> None:
        """Send one datagram. Raises TransportError if the kernel refuses it at once; ICMP errors
        that come back later go to ``on_error``."""
        if self._transport is None or self._transport.is_closing():
            raise TransportError(f"UDP socket {self.local} is closed")
        for _ in range(2):
            self._sending_to = remote
            self._send_error = None
            self._stale_report = False
            try:
                self._transport.sendto(data, remote)
            finally:
                self._sending_to = None
            if not self._stale_report:
                break
            # The kernel refused this datagram only to report an ICMP error that another
            # destination caused earlier (error_received drained it to that destination): the
            # datagram was not sent, so send it again, once.
        if self._send_error is not None:
            error, self._send_error = self._send_error, None
            raise error

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.DatagramProtocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport on every version
        self._transport = cast(asyncio.DatagramTransport, transport)
        # asyncio reads the first datagram of each wake-up itself: with a buffer that fits any
        # datagram (as our own reads below), not one that costs a memory mapping per datagram.
        limit_reads(transport, MAX_DATAGRAM)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._deliver(data, addr)
        # asyncio reads one datagram per wake-up of the event loop. Under load more are already
        # queued, and each would cost another pass through the selector: read up to
        # _BATCH - 1 more now, from the same non-blocking socket, stopping when it is empty.
        if self._nothing_queued():
            return
        transport = self._transport
        sock = self._sock
        for _ in range(_BATCH - 1):
            if transport is None or transport.is_closing():
                return
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # what asyncio's reader does with it: an ICMP error report
                self.error_received(exc)
                return
            self._deliver(data, addr)

    def _nothing_queued(self) -> bool:
        """True when the socket certainly holds no datagram: the read after each one would fail.

        Below the load where datagrams queue up, that failing read (a system call and a
        BlockingIOError raised and caught) came after every datagram; FIONREAD asks without an
        exception, for less than half the cost. Its 0 also stands for a queued empty datagram
        or an ICMP error report: asyncio's own reader takes those at the next wake-up.
        """
        if _FIONREAD is None:
            return False
        try:
            fcntl.ioctl(self._sock.fileno(), _FIONREAD, self._queued)
        except OSError:  # (closed: the loop below finds out)
            return False
        return not any(self._queued)

    def flow_to(self, remote: Address) -> Flow:
        """The flow of a datagram between ``remote`` and this socket: the one datagrams from
        ``remote`` arrive with when there is one (a Flow is immutable, so it is shared)."""
        flow = self._flows.get(remote)
        if flow is None:
            flow = remember(self._flows, remote, Flow(Transport.UDP, remote, self.local), _FLOW_CACHE)
        return flow

    def _deliver(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self._flows.get(addr)
        if flow is None:
            # many peers: the table starts over rather than track recency
            flow = remember(self._flows, addr, Flow(Transport.UDP, _normalise(addr), self.local), _FLOW_CACHE)
        self._on_datagram(data, flow)

    def error_received(self, exc: Exception) -> None:
        if self._sending_to is not None:  # raised by our own sendto
            # With IP_RECVERR, Linux also fails the *next* sendto with the errno of an ICMP error
            # queued earlier, whatever its destination: a port-unreachable from a host we answered
            # a moment ago must not fail a send to a live peer (and so a transaction that has
            # nothing to do with it). Queued reports go to the destination they name; only an
            # error with nothing queued (EMSGSIZE, no route) belongs to this send.
            if self._drain_error_queue():
                self._stale_report = True
                return
            host, port = self._sending_to
            self._send_error = TransportError(f"UDP send to {host}:{port} failed: {exc}")
            return
        self._drain_error_queue()

    def _drain_error_queue(self) -> int:
        """Report each queued ICMP error to the destination it names; how many were queued."""
        if sys.platform != "linux":
            return 0
        drained = 0
        for _ in range(64):
            try:
                _data, ancillary, _flags, addr = self._sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc2:
                log.debug("reading the UDP error queue failed: %s", exc2)
                break
            drained += 1
            self._report_queued_error(_normalise(addr), ancillary)
        return drained

    def _report_queued_error(self, remote: Address, ancillary: list[tuple[int, int, bytes]]) -> None:
        for _level, _kind, payload in ancillary:
            if len(payload) < _EXTENDED_ERR.size:
                continue
            ee_errno, origin, icmp_type, icmp_code, _pad, _info, _d = _EXTENDED_ERR.unpack_from(payload)
            if (origin, icmp_type) not in _REPORTED_ICMP:
                log.debug("ignoring ICMP type %d code %d from %s", icmp_type, icmp_code, remote)
                continue
            reason = errno.errorcode.get(ee_errno, str(ee_errno))
            self._on_error(remote, TransportError(f"ICMP error sending to {remote[0]}:{remote[1]}: {reason}"))

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
