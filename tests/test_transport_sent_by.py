"""The transport manager's per-(transport, family) memo of the Via sent-by and of the UDP socket a
request leaves from, held equal to the plain choice (RFC 3261 §18.1.1) over a table of socket
sets, before and after every socket opens."""

from __future__ import annotations

import asyncio
import socket

import pytest
from _peers import IPV6_TESTED

from sipimdn.errors import SipParseError, TransportError
from sipimdn.message import Request, Response
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Address, Flow, Transport
from sipimdn.transport.manager import TransportManager


class NullUser:
    def datagram_received(self, data: bytes, flow: Flow) -> None: ...
    def stream_message_received(self, message: Request | Response, flow: Flow) -> None: ...
    def stream_message_failed(self, data: bytes | None, error: SipParseError, flow: Flow) -> None: ...
    def flow_failed(self, flow: Flow, error: TransportError) -> None: ...


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _source(remote_host: str) -> str:
    with socket.socket(_family(remote_host), socket.SOCK_DGRAM) as probe:
        probe.connect((remote_host, 9))
        return str(probe.getsockname()[0])


def reference_sent_by(endpoints: list[tuple[Transport, Address]], send_only: list[Address],
                      transport: Transport, remote_host: str) -> Address | None:
    """The choice made afresh on every call (None: no socket of the family)."""
    candidates = list(endpoints)
    if transport is Transport.UDP:
        candidates += [(Transport.UDP, a) for a in send_only]
    same_family = [(k, a) for k, a in candidates if _family(a[0]) == _family(remote_host)]
    if not same_family:
        return None
    host, port = next((a for k, a in same_family if k is transport), same_family[0][1])
    if host in ("0.0.0.0", "::"):
        host = _source(remote_host)
    return (host, port)


def reference_udp_from(udp: list[Address], send_only: list[Address], remote_host: str) -> Address | None:
    """The local address of the UDP socket a request to ``remote_host`` leaves from."""
    family = _family(remote_host)
    return next((a for a in udp + send_only if _family(a[0]) == family), None)


_V4 = [ListenSpec(Transport.UDP, "127.0.0.1"), ListenSpec(Transport.TCP, "127.0.0.1")]
_SETUPS: list[tuple[str, list[ListenSpec | str]]] = [
    ("udp+tcp", [*_V4]),
    ("tcp first", [ListenSpec(Transport.TCP, "127.0.0.1"), ListenSpec(Transport.UDP, "127.0.0.1")]),
    ("tcp only, send-only udp", [ListenSpec(Transport.TCP, "127.0.0.1"), "send-only"]),
    ("wildcard udp", [ListenSpec(Transport.UDP, "0.0.0.0"), ListenSpec(Transport.TCP, "127.0.0.1")]),
    ("two udp", [ListenSpec(Transport.UDP, "127.0.0.1"), ListenSpec(Transport.UDP, "127.0.0.1")]),
]
if IPV6_TESTED:
    _SETUPS += [
        ("dual stack", [*_V4, ListenSpec(Transport.UDP, "::1"), ListenSpec(Transport.TCP, "::1")]),
        ("v6 tcp, send-only", [ListenSpec(Transport.UDP, "127.0.0.1"), ListenSpec(Transport.TCP, "::1"),
                               "send-only"]),
        ("v6 wildcard", [ListenSpec(Transport.TCP, "::"), ListenSpec(Transport.UDP, "127.0.0.1")]),
    ]

_REMOTES = ["127.0.0.1", "127.0.0.2", "192.0.2.1", "::1", "2001:db8::1"]


@pytest.mark.parametrize("steps", [s for _, s in _SETUPS], ids=[n for n, _ in _SETUPS])
async def test_sent_by_and_udp_socket_match_the_plain_choice(steps: list[ListenSpec | str]) -> None:
    manager = TransportManager(NullUser(), TransportConfig())
    send_only: list[Address] = []
    udp: list[Address] = []
    try:
        for step in steps:
            if step == "send-only":
                send_only += await manager.open_udp_for_sending()
            else:
                assert isinstance(step, ListenSpec)
                kind, local = await manager.listen(step)
                if kind is Transport.UDP:
                    udp.append(local)
            for remote in _REMOTES:
                for transport in Transport:
                    expected = reference_sent_by(manager.endpoints, send_only, transport, remote)
                    for _ in range(2):  # the first call fills the memo, the second reads it
                        if expected is None:
                            with pytest.raises(TransportError):
                                manager.sent_by(transport, remote)
                        else:
                            assert manager.sent_by(transport, remote) == expected
                leaves_from = reference_udp_from(udp, send_only, remote)
                for _ in range(2):
                    request = Flow(Transport.UDP, (remote, 9))
                    if leaves_from is None:
                        with pytest.raises(TransportError):
                            manager._udp_for(request)
                    else:
                        assert manager._udp_for(request).local == leaves_from
    finally:
        await manager.close()
    with pytest.raises(TransportError):
        manager.sent_by(Transport.UDP, "127.0.0.1")  # closed: the memo went with the sockets


async def test_udp_send_reports_the_flow_replies_arrive_on() -> None:
    # A request's flow comes back with the socket it left from: the same value a datagram from
    # that peer arrives with (the socket shares one Flow per peer address).
    arrived: list[Flow] = []

    class User(NullUser):
        def datagram_received(self, data: bytes, flow: Flow) -> None:
            arrived.append(flow)

    manager = TransportManager(User(), TransportConfig())
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _, local = await manager.listen(ListenSpec(Transport.UDP, "127.0.0.1"))
        peer.bind(("127.0.0.1", 0))
        remote = ("127.0.0.1", peer.getsockname()[1])
        for _ in range(2):
            sent = manager.send(b"OPTIONS", Flow(Transport.UDP, remote))
            assert sent == Flow(Transport.UDP, remote, local)
            assert peer.recv(100) == b"OPTIONS"
        stated = Flow(Transport.UDP, remote, local)
        assert manager.send(b"x", stated) is stated  # already complete: handed back as is
        peer.recv(100)
        peer.sendto(b"SIP/2.0 200 OK\r\n\r\n", local)
        for _ in range(200):
            if arrived:
                break
            await asyncio.sleep(0.005)
        assert arrived == [Flow(Transport.UDP, remote, local)]
        assert manager.send(b"y", Flow(Transport.UDP, remote)) == arrived[0]
    finally:
        peer.close()
        await manager.close()
