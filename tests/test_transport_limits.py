"""Transport limits: the connection cap closes the oldest idle connection, a message has a
deadline (slowloris), TLS below 1.2 is never spoken. Real sockets on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trustme
from _peers import skip_unless_ci

from sipimdn.dialog.factory import build_request
from sipimdn.errors import SipParseError, TransportError
from sipimdn.message import Request, Response
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Flow, SendKind, Transport
from sipimdn.transport.manager import TransportManager, require_tls12
from sipimdn.transport.stream import StreamConnection

# TLS 1.0/1.1 are deprecated in the ssl module; these tests name them on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning",
                                        "ignore:ssl.PROTOCOL_TLSv1:DeprecationWarning")

REQUEST = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK%d\r\n"
           b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: limits-%d\r\nCSeq: 1 MESSAGE\r\n"
           b"Max-Forwards: 70\r\nContent-Length: 2\r\n\r\nhi")
OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
      b"To: <sip:b@x>;tag=2\r\nCall-ID: limits-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
TRYING = OK.replace(b"200 OK", b"100 Trying")


def request(n: int) -> bytes:
    return REQUEST % (n, n)


@dataclass
class User:
    """A TransportUser that keeps what it is given and answers nothing by itself."""

    received: list[tuple[Request | Response, Flow]] = field(default_factory=list)
    failed: list[tuple[Flow, TransportError]] = field(default_factory=list)

    def datagram_received(self, data: bytes, flow: Flow) -> None: ...

    def stream_message_received(self, message: Request | Response, flow: Flow) -> None:
        self.received.append((message, flow))

    def stream_message_failed(self, data: bytes | None, error: SipParseError, flow: Flow) -> None: ...

    def flow_failed(self, flow: Flow, error: TransportError) -> None:
        self.failed.append((flow, error))


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def tcp_manager(config: TransportConfig, user: User) -> AsyncIterator[tuple[TransportManager, int]]:
    manager = TransportManager(user, config)
    try:
        _, (_, port) = await manager.listen(ListenSpec(Transport.TCP, "127.0.0.1"))
        yield manager, port
    finally:
        await manager.close()


Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def connect(port: int, opened: list[Client], manager: TransportManager, expect: int) -> Client:
    """Open a raw client and wait until the manager counts ``expect`` connections."""
    client = await asyncio.open_connection("127.0.0.1", port)
    opened.append(client)
    await until(lambda: manager.connection_count == expect)
    await asyncio.sleep(0.01)  # distinct last_activity stamps
    return client


async def closed(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """True if the far end closed within ``timeout`` (what it sent before is skipped)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


# -- the cap ----------------------------------------------------------------------------------------


async def test_at_the_cap_the_least_recently_active_idle_connection_makes_room() -> None:
    user = User()
    async with tcp_manager(TransportConfig(max_connections=3), user) as (manager, port), clients() as opened:
        c0 = await connect(port, opened, manager, 1)
        c1 = await connect(port, opened, manager, 2)
        c2 = await connect(port, opened, manager, 3)
        c0[1].write(b"\r\n\r\n")  # a keep-alive: c0 is now more recent than c1
        async with asyncio.timeout(2):
            assert await c0[0].readexactly(2) == b"\r\n"  # the pong: the manager saw it
        c3 = await connect(port, opened, manager, 3)
        assert await closed(c1[0])
        assert not any([await closed(c[0], 0.1) for c in (c0, c2, c3)])
        assert manager.connection_count == 3
        assert user.failed == []  # nothing was waiting on the closed one


async def test_busy_connections_are_kept_and_the_newcomer_refused() -> None:
    user = User()
    async with tcp_manager(TransportConfig(max_connections=2), user) as (manager, port), clients() as opened:
        half, unanswered = await connect(port, opened, manager, 1), await connect(port, opened, manager, 2)
        half[1].write(request(1)[:40])  # a message half received
        unanswered[1].write(request(2))  # a request awaiting its answer
        await until(lambda: len(user.received) == 1)
        refused = await asyncio.open_connection("127.0.0.1", port)
        opened.append(refused)
        assert await closed(refused[0])
        assert not await closed(half[0], 0.1) and not await closed(unanswered[0], 0.1)
        # A provisional response does not end the transaction; the final one does.
        flow = user.received[0][1]
        manager.send(TRYING, flow, SendKind.OTHER)
        refused = await asyncio.open_connection("127.0.0.1", port)
        opened.append(refused)
        assert await closed(refused[0])
        manager.send(OK, flow, SendKind.FINAL_RESPONSE)
        admitted = await connect(port, opened, manager, 2)
        assert await closed(unanswered[0])
        assert not await closed(admitted[0], 0.1) and not await closed(half[0], 0.1)


async def test_the_stack_tells_the_connection_its_final_answer_and_its_requests() -> None:
    # The stack, not the bytes, says what it sends: its 200 makes the connection idle (so a
    # newcomer displaces it at the cap), its own request makes the connection busy.
    answered: list[int] = []
    async with SipStack([ListenSpec(Transport.TCP, "127.0.0.1", 0)],
                        transport_config=TransportConfig(max_connections=1)) as stack, clients() as opened:

        def answer(incoming: IncomingRequest) -> None:
            assert incoming.respond(200)
            answered.append(200)

        stack.on_request(answer)
        ((_, (_, port)),) = stack.endpoints
        first = await connect(port, opened, stack.transports, 1)
        first[1].write(request(1))
        await until(lambda: answered == [200])
        second = await connect(port, opened, stack.transports, 1)
        assert await closed(first[0])  # answered: idle, so it made room
        second[1].write(request(2))
        await until(lambda: answered == [200, 200])
        # Our own request on the remaining connection: busy until answered, so no room.
        _, client_port = second[1].get_extra_info("sockname")
        ours = build_request("MESSAGE", f"sip:peer@127.0.0.1:{client_port};transport=tcp",
                             from_="sip:us@127.0.0.1", to="sip:peer@127.0.0.1")
        sending = asyncio.create_task(stack.send_request(ours))
        try:
            await second[0].readuntil(b"\r\n\r\n")  # the 200 we sent it
            head = await second[0].readuntil(b"\r\n\r\n")
            assert head.startswith(b"MESSAGE ")  # ours, on the same connection
            third = await asyncio.open_connection("127.0.0.1", port)
            opened.append(third)
            assert await closed(third[0])  # refused: the only connection waits for an answer
            assert stack.transports.connection_count == 1
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending


async def test_outbound_connection_at_the_cap() -> None:
    user = User()
    async with tcp_manager(TransportConfig(max_connections=1), user) as (manager, port), \
            clients() as opened:
        peer = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        try:
            far = Flow(Transport.TCP, ("127.0.0.1", peer.sockets[0].getsockname()[1]))
            busy = await connect(port, opened, manager, 1)
            busy[1].write(request(1))
            await until(lambda: len(user.received) == 1)
            with pytest.raises(TransportError, match="every connection is busy"):
                manager.send(request(2), far, SendKind.REQUEST)
            manager.send(OK, user.received[0][1], SendKind.FINAL_RESPONSE)  # answered: idle, makes room
            manager.send(request(3), far, SendKind.REQUEST)
            assert await closed(busy[0])
            assert manager.connection_count == 1 and manager.is_open(far)
        finally:
            peer.close()


def test_busy_accounting_of_a_connection() -> None:
    clock = [100.0]
    conn = StreamConnection(
        Transport.TCP, remote=("127.0.0.1", 40000), server_name=None, limits=None, max_buffered=1 << 16,
        now=lambda: clock[0], on_message=lambda m, f: None, on_bad_message=lambda d, e, f: None,
        on_lost=lambda c, e: None, transaction_window=32)
    assert conn.busy(clock[0])  # still connecting
    fake = FakeTransport()
    conn.connection_made(fake)
    assert not conn.busy(clock[0])
    conn.send(request(1), SendKind.REQUEST)  # our request: busy until its final response comes back
    assert conn.busy(clock[0])
    conn.data_received(TRYING)
    assert conn.busy(clock[0])
    conn.data_received(OK)
    assert not conn.busy(clock[0])
    conn.send(b"ACK sip:bob@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n", SendKind.OTHER)  # ACK: no answer
    conn.send(b"\r\n\r\n", SendKind.OTHER)  # nor a keep-alive
    assert not conn.busy(clock[0])
    conn.data_received(request(2))  # the peer's request: busy until we answer it finally
    assert conn.busy(clock[0])
    clock[0] += 33  # ... or until no transaction can still be alive
    assert not conn.busy(clock[0])
    conn.data_received(request(3))  # the one left unanswered is forgotten: only this one counts
    assert conn.busy(clock[0])
    conn.send(OK, SendKind.FINAL_RESPONSE)
    assert not conn.busy(clock[0])
    fake.buffered = 10  # bytes not yet taken by the kernel
    assert conn.busy(clock[0])


# -- the message deadline ------------------------------------------------------------------------


def test_message_started_tracks_the_message_being_received() -> None:
    clock = [0.0]
    conn = StreamConnection(
        Transport.TCP, remote=("127.0.0.1", 40000), server_name=None, limits=None, max_buffered=1 << 16,
        now=lambda: clock[0], on_message=lambda m, f: None, on_bad_message=lambda d, e, f: None,
        on_lost=lambda c, e: None)
    conn.connection_made(FakeTransport())
    assert conn.message_started is None
    data = request(1)
    clock[0] = 1.0
    conn.data_received(data[:10])
    clock[0] = 2.0
    conn.data_received(data[10:20])  # bytes trickling in do not move the start
    assert conn.message_started == 1.0
    clock[0] = 3.0
    conn.data_received(data[20:] + request(2)[:5])  # one ends, the next starts in the same chunk
    assert conn.message_started == 3.0
    clock[0] = 4.0
    conn.data_received(request(2)[5:])
    assert conn.message_started is None
    conn.data_received(b"\r\n\r\n")  # keep-alives are not messages in progress
    assert conn.message_started is None


async def test_a_message_trickling_in_is_cut_by_the_deadline() -> None:
    user = User()
    config = TransportConfig(idle_timeout=30, message_timeout=0.3)
    async with tcp_manager(config, user) as (manager, port), clients() as opened:
        assert manager.message_deadline == 0.3
        steady = await connect(port, opened, manager, 1)
        slow = await connect(port, opened, manager, 2)
        for n in range(12):  # 1.2 s: whole messages on one connection, one byte at a time on the other
            steady[1].write(request(n))
            slow[1].write(request(99)[n:n + 1])
            await asyncio.sleep(0.1)
        assert await closed(slow[0], 0.5)
        assert not await closed(steady[0], 0.1)
        assert len(user.received) == 12
        await until(lambda: len(user.failed) == 1)
        assert "did not complete a message within 0.3 s" in str(user.failed[0][1])
        assert manager.connection_count == 1


def test_message_deadline_is_capped_by_the_idle_timeout() -> None:
    assert TransportConfig().message_timeout == 32.0  # 64 * T1
    assert TransportManager(User(), TransportConfig()).message_deadline == 32.0
    assert TransportManager(User(), TransportConfig(idle_timeout=0.3)).message_deadline == 0.3


# -- TLS 1.2 at least ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def old_server(ca: trustme.CA, lowest: ssl.TLSVersion,
               highest: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = lowest
    if highest is not None:
        context.maximum_version = highest
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_require_tls12_raises_the_floor_in_place_and_says_so(ca: trustme.CA,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    context = old_server(ca, ssl.TLSVersion.TLSv1)
    with caplog.at_level(logging.WARNING, logger="sipimdn.transport.manager"):
        require_tls12(context, "server")
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert "minimum_version is now TLSv1_2" in caplog.text
    caplog.clear()
    strict = ssl.create_default_context()
    strict.minimum_version = ssl.TLSVersion.TLSv1_3
    require_tls12(strict, "client")  # already at or above the floor: untouched, nothing logged
    assert strict.minimum_version is ssl.TLSVersion.TLSv1_3 and caplog.text == ""


def test_require_tls12_refuses_contexts_that_cannot_do_it(ca: trustme.CA) -> None:
    capped = old_server(ca, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    with pytest.raises(TransportError, match="at most TLSv1_1"):
        require_tls12(capped, "server")
    with pytest.raises(TransportError, match="old protocol version"):
        require_tls12(ssl.SSLContext(ssl.PROTOCOL_TLSv1), "client")


async def test_manager_refuses_a_tls11_only_server_or_client_context(ca: trustme.CA) -> None:
    capped = old_server(ca, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    manager = TransportManager(User(), TransportConfig(client_ssl_context=capped))
    try:
        with pytest.raises(TransportError, match=r"TLS 1\.2 or newer"):
            await manager.listen(ListenSpec(Transport.TLS, "127.0.0.1", 0, capped))
        with pytest.raises(TransportError, match=r"TLS 1\.2 or newer"):  # at once, not from a task
            manager.send(b"x", Flow(Transport.TLS, ("127.0.0.1", 5061)))
        assert manager.connection_count == 0
    finally:
        await manager.close()


async def test_permissive_client_context_does_not_speak_tls11(ca: trustme.CA) -> None:
    server = old_server(ca, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1)
    handshakes: list[str | None] = []

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append(writer.get_extra_info("ssl_object").version())
        writer.close()

    def permissive() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        ca.configure_trust(context)
        return context

    peer = await asyncio.start_server(accepted, "127.0.0.1", 0, ssl=server)
    port = peer.sockets[0].getsockname()[1]
    client = permissive()
    user = User()
    manager = TransportManager(user, TransportConfig(client_ssl_context=client, connect_timeout=3))
    try:
        # Control: such a client context, used as given, does reach this peer over TLS 1.1.
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=permissive(),
                                                      server_hostname="127.0.0.1")
            writer.close()
        except (ssl.SSLError, ConnectionError):
            skip_unless_ci("this OpenSSL build cannot negotiate TLS 1.1 at all")
        await until(lambda: handshakes == ["TLSv1.1"])
        manager.send(request(1), Flow(Transport.TLS, ("127.0.0.1", port)), SendKind.REQUEST)
        assert client.minimum_version is ssl.TLSVersion.TLSv1_2
        await until(lambda: bool(user.failed))
        assert f"TLS connect to 127.0.0.1:{port} failed" in str(user.failed[0][1]) or \
            "TLS handshake" in str(user.failed[0][1])
        assert handshakes == ["TLSv1.1"]  # the control's only
    finally:
        await manager.close()
        peer.close()


# The fake transport of tests/test_transport.py, repeated so this module stands alone.
@dataclass
class FakeTransport(asyncio.Transport):
    buffered: int = 0
    written: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 5060), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None: ...

    def close(self) -> None: ...
