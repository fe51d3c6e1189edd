"""Transport pieces on their own: target selection, flows, stream connections, ICMP decoding."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import sys
from dataclasses import dataclass, field

import pytest

from sipimdn.errors import LocalProtocolError, SipParseError, TransportError
from sipimdn.message import Request, Response
from sipimdn.transport.base import STREAM_READ_SIZE, ListenSpec, TransportConfig, limit_reads
from sipimdn.transport.flow import Flow, Transport, is_ip_literal
from sipimdn.transport.manager import TransportManager
from sipimdn.transport.select import Target, needs_stream, resolve, target_for_uri
from sipimdn.transport.stream import StreamConnection
from sipimdn.transport.udp import MAX_DATAGRAM, UdpEndpoint
from sipimdn.uri import Uri

# -- flows and selection --------------------------------------------------------------------------


def test_transport_properties() -> None:
    assert [t.reliable for t in Transport] == [False, True, True]
    assert [t.default_port for t in Transport] == [5060, 5060, 5061]
    assert Transport.from_token("tls") is Transport.TLS
    with pytest.raises(ValueError):
        Transport.from_token("sctp")
    assert is_ip_literal("::1") and is_ip_literal("10.1.2.3") and not is_ip_literal("example.com")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:bob@192.0.2.1", Target(Transport.UDP, "192.0.2.1", 5060)),
        ("sip:bob@192.0.2.1:5080", Target(Transport.UDP, "192.0.2.1", 5080)),
        ("sip:bob@example.com;transport=tcp", Target(Transport.TCP, "example.com", 5060)),
        ("sip:bob@example.com;transport=TLS", Target(Transport.TLS, "example.com", 5061, "example.com")),
        ("sips:bob@example.com", Target(Transport.TLS, "example.com", 5061, "example.com")),
        ("sips:bob@[2001:db8::1]:5071", Target(Transport.TLS, "2001:db8::1", 5071, None)),
        ("sip:bob@example.com;maddr=192.0.2.9", Target(Transport.UDP, "192.0.2.9", 5060)),
    ],
)
def test_target_for_uri(uri: str, expected: Target) -> None:
    assert target_for_uri(Uri.parse(uri)) == expected


@pytest.mark.parametrize("uri", [
    "sips:bob@example.com;transport=udp", "sips:bob@example.com;transport=tcp",
    "sip:bob@example.com;transport=sctp", "tel:+15551234567", "im:bob@example.com",
])
def test_target_for_uri_refuses(uri: str) -> None:
    with pytest.raises(LocalProtocolError):
        target_for_uri(Uri.parse(uri))


def test_size_rule() -> None:
    assert not needs_stream(1300, Transport.UDP)
    assert needs_stream(1301, Transport.UDP)
    assert not needs_stream(60000, Transport.TCP)
    assert needs_stream(501, Transport.UDP, udp_max=500)


def test_unresolved_target_has_no_flow() -> None:
    with pytest.raises(LocalProtocolError):
        Target(Transport.UDP, "example.com", 5060).flow()
    assert Target(Transport.TLS, "::1", 5061, "sip.example").flow() == Flow(
        Transport.TLS, ("::1", 5061), None, "sip.example")


async def test_resolve_ip_literal_and_localhost() -> None:
    literal = Target(Transport.UDP, "127.0.0.1", 5060)
    assert await resolve(literal) == [literal]
    async with asyncio.timeout(5):
        resolved = await resolve(Target(Transport.TCP, "localhost", 5070))
    assert resolved and {t.host for t in resolved} <= {"127.0.0.1", "::1"}
    assert all(t.port == 5070 and t.transport is Transport.TCP for t in resolved)


# -- stream connections with a fake asyncio transport ------------------------------------------------


@dataclass
class FakeTransport(asyncio.Transport):
    buffered: int = 0
    written: list[bytes] = field(default_factory=list)
    aborted: bool = False
    closing: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 5060), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing or self.aborted


@dataclass
class Sink:
    messages: list[Request | Response] = field(default_factory=list)
    bad: list[tuple[bytes | None, SipParseError]] = field(default_factory=list)
    lost: list[TransportError | None] = field(default_factory=list)


def connection(sink: Sink, max_buffered: int = 1000) -> StreamConnection:
    return StreamConnection(
        Transport.TCP, remote=("127.0.0.1", 40000), server_name=None, limits=None, max_buffered=max_buffered,
        now=lambda: 0.0, on_message=lambda m, f: sink.messages.append(m),
        on_bad_message=lambda d, e, f: sink.bad.append((d, e)), on_lost=lambda c, e: sink.lost.append(e),
    )


def test_stream_queues_until_connected_then_flushes_in_order() -> None:
    sink = Sink()
    conn = connection(sink)
    conn.send(b"one")
    conn.send(b"two")
    with pytest.raises(TransportError):
        conn.send(b"x" * 1000)  # the queue is capped too
    fake = FakeTransport()
    conn.connection_made(fake)
    assert fake.written == [b"one", b"two"]
    assert conn.flow == Flow(Transport.TCP, ("127.0.0.1", 40000), ("127.0.0.1", 5060))


def test_stream_write_buffer_cap_aborts_a_peer_that_does_not_read() -> None:
    sink = Sink()
    conn = connection(sink, max_buffered=100)
    fake = FakeTransport(buffered=90)
    conn.connection_made(fake)
    with pytest.raises(TransportError, match="not reading"):
        conn.send(b"x" * 20)
    assert fake.aborted and conn.closed
    conn.connection_lost(None)
    assert len(sink.lost) == 1 and isinstance(sink.lost[0], TransportError)
    with pytest.raises(TransportError):
        conn.send(b"more")


def test_stream_frames_messages_answers_ping_and_closes_on_bad_framing() -> None:
    sink = Sink()
    conn = connection(sink)
    fake = FakeTransport()
    conn.connection_made(fake)
    message = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKs\r\n"
               b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: s\r\nCSeq: 1 MESSAGE\r\n"
               b"Content-Length: 2\r\n\r\nhi")
    for i in range(len(message)):  # byte by byte
        conn.data_received(message[i:i + 1])
    assert len(sink.messages) == 1 and sink.messages[0].body == b"hi"
    conn.data_received(b"\r\n\r\n")
    assert fake.written == [b"\r\n"]  # RFC 5626 pong
    conn.data_received(b"MESSAGE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKn\r\n\r\n")
    assert len(sink.bad) == 1  # no Content-Length on a stream
    assert fake.closing
    conn.connection_lost(None)
    assert isinstance(sink.lost[-1], TransportError)


def test_stream_peer_close_is_reported_as_failure() -> None:
    sink = Sink()
    conn = connection(sink)
    conn.connection_made(FakeTransport())
    conn.data_received(b"MESSAGE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4")
    conn.connection_lost(None)
    assert sink.messages == [] and len(sink.lost) == 1
    assert "closed by" in str(sink.lost[0])


def test_connect_failure_and_local_close() -> None:
    sink = Sink()
    conn = connection(sink)
    conn.send(b"queued")
    conn.connect_failed(TransportError("refused"))
    assert len(sink.lost) == 1 and isinstance(sink.lost[0], TransportError)
    assert str(sink.lost[0]) == "refused" and conn.closed
    other = connection(sink)
    other.close()  # closing before connecting reports nothing wrong
    assert sink.lost[-1] is None


# -- ICMP decoding ---------------------------------------------------------------------------------


def _extended_err(origin: int, icmp_type: int, code: int = 3, errno_: int = 111) -> bytes:
    return struct.pack("=IBBBBII", errno_, origin, icmp_type, code, 0, 0, 0)


@pytest.mark.parametrize(
    ("origin", "icmp_type", "reported"),
    [(2, 3, True), (2, 12, True), (2, 11, False), (2, 4, False), (3, 1, True), (3, 4, True), (3, 3, False)],
)
async def test_icmp_types_reported_per_18_4(origin: int, icmp_type: int, reported: bool) -> None:
    errors: list[tuple[tuple[str, int], TransportError]] = []
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, lambda d, f: None, lambda a, e: errors.append((a, e)))
    try:
        endpoint._report_queued_error(("192.0.2.1", 5060), [(0, 11, _extended_err(origin, icmp_type))])
    finally:
        endpoint.close()
    assert bool(errors) is reported
    if reported:
        assert errors[0][0] == ("192.0.2.1", 5060) and "ECONNREFUSED" in str(errors[0][1])


@pytest.mark.skipif(sys.platform != "linux", reason="IP_RECVERR error queue is Linux-only")
async def test_icmp_error_of_one_peer_does_not_fail_a_send_to_another() -> None:
    """With IP_RECVERR Linux fails the next sendto with the errno of an ICMP error queued for any
    destination: the send to the live peer must still go out, and the error must be reported for
    the destination that caused it (RFC 3261 §18.4), not for the live one."""
    errors: list[tuple[tuple[str, int], TransportError]] = []
    received: list[bytes] = []
    live = await UdpEndpoint.open("127.0.0.1", 0, lambda d, f: received.append(d), lambda a, e: None)
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_address = dead.getsockname()
    dead.close()  # nothing listens there now: a datagram to it draws a port-unreachable
    sender = await UdpEndpoint.open("127.0.0.1", 0, lambda d, f: None, lambda a, e: errors.append((a, e)))
    try:
        sender.send(b"to nobody", dead_address)
        for _ in range(3):  # loopback ICMP is queued at once; a few sends make sure one meets it
            sender.send(b"to the live peer", live.local)
        for _ in range(200):
            if len(received) == 3 and errors:
                break
            await asyncio.sleep(0.005)
    finally:
        sender.close()
        live.close()
    assert received == [b"to the live peer"] * 3
    assert [address for address, _ in errors] == [dead_address]
    assert "ECONNREFUSED" in str(errors[0][1])


async def test_a_burst_of_datagrams_is_read_whole_and_in_order_with_empty_ones_among_them() -> None:
    """The endpoint reads the datagrams queued behind the one asyncio hands it (in one wake-up
    when the queue says so); an empty datagram, which the queue's size probe cannot tell from
    none, still arrives, in its place."""
    received: list[bytes] = []
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, lambda d, f: received.append(d), lambda a, e: None)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = [f"datagram {n}".encode() if n % 7 else b"" for n in range(1, 60)]
    try:
        for data in sent:  # queued faster than the loop reads them: a burst
            sender.sendto(data, endpoint.local)
        for _ in range(400):
            if len(received) == len(sent):
                break
            await asyncio.sleep(0.005)
        sender.sendto(b"after", endpoint.local)  # and the socket still reads once drained
        for _ in range(400):
            if len(received) == len(sent) + 1:
                break
            await asyncio.sleep(0.005)
    finally:
        sender.close()
        endpoint.close()
    assert received == [*sent, b"after"]


async def test_the_largest_datagram_arrives_whole_through_the_first_read() -> None:
    """asyncio reads the first datagram of each wake-up with the size the endpoint gave it
    (smaller than asyncio's own 256 KiB): the largest datagram IPv4 carries (65,507 bytes) still
    arrives whole, alone and behind a small one."""
    received: list[bytes] = []
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, lambda d, f: received.append(d), lambda a, e: None)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    largest = bytes(range(256)) * 255 + b"x" * (65507 - 256 * 255)
    sent = [largest, b"small", largest]
    try:
        for count, data in enumerate(sent, 1):
            sender.sendto(data, endpoint.local)
            for _ in range(400):  # one wake-up each: asyncio's read, not the endpoint's batch
                if len(received) == count:
                    break
                await asyncio.sleep(0.005)
    finally:
        sender.close()
        endpoint.close()
    assert [len(d) for d in received] == [65507, 5, 65507]
    assert received == sent


class _OtherLoopsTransport:
    """A transport with no read size to set (as uvloop's)."""


async def test_limit_reads_sets_asyncios_read_size_and_leaves_other_transports_alone() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        assert transport.max_size == 256 * 1024  # type: ignore[attr-defined]  # asyncio's own
        limit_reads(transport, MAX_DATAGRAM)
        assert transport.max_size == MAX_DATAGRAM  # type: ignore[attr-defined]
    finally:
        transport.close()
    other = _OtherLoopsTransport()
    limit_reads(other, MAX_DATAGRAM)
    assert not hasattr(other, "max_size")


def test_stream_read_size_stays_below_the_mmap_threshold() -> None:
    """glibc serves allocations under 128 KiB from the heap: no memory mapping per read."""
    assert STREAM_READ_SIZE < 128 * 1024 and MAX_DATAGRAM < 128 * 1024


# -- the manager -------------------------------------------------------------------------------------


class NullUser:
    def datagram_received(self, data: bytes, flow: Flow) -> None: ...
    def stream_message_received(self, message: Request | Response, flow: Flow) -> None: ...
    def stream_message_failed(self, data: bytes | None, error: SipParseError, flow: Flow) -> None: ...
    def flow_failed(self, flow: Flow, error: TransportError) -> None: ...


async def test_manager_sent_by_and_missing_family() -> None:
    manager = TransportManager(NullUser(), TransportConfig())
    try:
        with pytest.raises(TransportError):
            manager.sent_by(Transport.UDP, "127.0.0.1")  # nothing open yet
        _, udp = await manager.listen(ListenSpec(Transport.UDP, "127.0.0.1"))
        _, tcp = await manager.listen(ListenSpec(Transport.TCP, "127.0.0.1"))
        assert manager.sent_by(Transport.UDP, "192.0.2.1") == udp
        assert manager.sent_by(Transport.TCP, "192.0.2.1") == tcp
        assert manager.sent_by(Transport.TLS, "192.0.2.1") == udp  # no TLS listener: any of the family
        with pytest.raises(TransportError):
            manager.sent_by(Transport.UDP, "2001:db8::1")
        with pytest.raises(TransportError):
            manager.send(b"x", Flow(Transport.UDP, ("2001:db8::1", 5060)))
        with pytest.raises(TransportError):
            await manager.listen(ListenSpec(Transport.TLS, "127.0.0.1"))  # no certificate
    finally:
        await manager.close()
    with pytest.raises(TransportError):
        manager.send(b"x", Flow(Transport.UDP, ("127.0.0.1", 5060)))


async def test_manager_reports_refused_connection() -> None:
    failures: list[tuple[Flow, TransportError]] = []

    class User(NullUser):
        def flow_failed(self, flow: Flow, error: TransportError) -> None:
            failures.append((flow, error))

    manager = TransportManager(User(), TransportConfig(connect_timeout=2))
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    try:
        manager.send(b"hello", Flow(Transport.TCP, ("127.0.0.1", port)))
        assert manager.connection_count == 1
        async with asyncio.timeout(3):
            while not failures:
                await asyncio.sleep(0.01)
        assert failures[0][0].remote == ("127.0.0.1", port)
        assert "connect to" in str(failures[0][1])
        assert manager.connection_count == 0
    finally:
        await manager.close()


def test_source_address_for_wildcard_listeners() -> None:
    # A wildcard listener's Via gets the address the routing table picks. (Tests never bind a
    # wildcard address, so this checks the lookup the substitution relies on.)
    manager = TransportManager(NullUser(), TransportConfig())
    assert manager._source_address("127.0.0.1") == "127.0.0.1"
    assert manager._source_address("127.0.0.1") == "127.0.0.1"  # cached


async def test_manager_logs_connection_events(caplog: pytest.LogCaptureFixture) -> None:
    # Ours opened and closed at INFO; accepted ones, and their end, at DEBUG (peers choose their rate).
    server = TransportManager(NullUser(), TransportConfig())
    client = TransportManager(NullUser(), TransportConfig(idle_timeout=0.3))
    try:
        with caplog.at_level(logging.DEBUG, logger="sipimdn.transport.manager"):
            _, listener = await server.listen(ListenSpec(Transport.TCP, "127.0.0.1"))
            await client.listen(ListenSpec(Transport.UDP, "127.0.0.1"))  # arms the idle sweeper
            client.send(b"\r\n\r\n", Flow(Transport.TCP, listener))
            async with asyncio.timeout(5):
                while server.connection_count == 0 or client.connection_count == 0:
                    await asyncio.sleep(0.01)
                # Idle for over 0.3 s: the client closes it, the server sees it closed by the peer.
                while server.connection_count or client.connection_count:
                    await asyncio.sleep(0.05)
    finally:
        await client.close()
        await server.close()
    logged = [(r.getMessage(), r.levelno) for r in caplog.records if r.name == "sipimdn.transport.manager"]
    peer = re.escape(f"127.0.0.1:{listener[1]}")
    expected = [
        (rf"opened TCP connection to {peer} from (?P<local>127\.0\.0\.1:\d+)", logging.INFO),
        (rf"accepted TCP connection from (?P<local>127\.0\.0\.1:\d+) on {peer} \(1 inbound open\)",
         logging.DEBUG),
        (rf"closed TCP connection to {peer} after \d+\.\d s: idle for over 0\.3 s", logging.INFO),
        (r"closed TCP connection from (?P<local>127\.0\.0\.1:\d+) after \d+\.\d s: "
         r"connection closed by (?P=local)", logging.DEBUG),
    ]
    assert len(logged) == len(expected), logged
    locals_seen = set()
    for pattern, level in expected:
        found = [(re.fullmatch(pattern, text), seen) for text, seen in logged]
        matched = [(m, seen) for m, seen in found if m is not None]
        assert len(matched) == 1, (pattern, logged)
        assert matched[0][1] == level, (pattern, logged)
        local = matched[0][0].groupdict().get("local")
        if local:
            locals_seen.add(local)
    assert len(locals_seen) == 1  # one connection, named by the same client address each time
