"""Write coalescing on stream connections: what is sent in one turn of the event loop leaves in
one write, in order, within the byte cap; close flushes, abort drops. Unit tests drive a
StreamConnection with a fake transport and a hand-run ``call_soon``; the end-to-end tests pipeline
requests over real TCP and TLS connections on 127.0.0.1 and count the writes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from sipimdn.errors import SipParseError, TransportError
from sipimdn.message import Request, Response
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Flow, SendKind, Transport
from sipimdn.transport.manager import TransportManager
from sipimdn.transport.stream import COALESCE_BYTES, StreamConnection

REQUEST = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK%d\r\n"
           b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: coalesce-%d\r\nCSeq: 1 MESSAGE\r\n"
           b"Max-Forwards: 70\r\nContent-Length: 2\r\n\r\nhi")
OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK%d\r\nFrom: <sip:a@x>;tag=1\r\n"
      b"To: <sip:b@x>;tag=2\r\nCall-ID: coalesce-%d\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")


def request(n: int) -> bytes:
    return REQUEST % (n, n)


def ok(n: int) -> bytes:
    return OK % (n, n)


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
        assert not self.closing and not self.aborted, "written after close"
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closing = True


@dataclass
class Loop:
    """A hand-run ``call_soon``: callbacks wait in ``ready`` until ``turn()``."""

    ready: list[Callable[[], None]] = field(default_factory=list)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.ready.append(callback)

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def coalescing(loop: Loop, *, max_buffered: int = 1 << 20,
               on_message: Callable[[StreamConnection, Request | Response], None] | None = None,
               lost: list[TransportError | None] | None = None) -> tuple[StreamConnection, FakeTransport]:
    holder: list[StreamConnection] = []
    conn = StreamConnection(
        Transport.TLS, remote=("127.0.0.1", 40000), server_name=None, limits=None,
        max_buffered=max_buffered, now=lambda: 0.0,
        on_message=lambda m, f: on_message(holder[0], m) if on_message else None,
        on_bad_message=lambda d, e, f: None,
        on_lost=lambda c, e: lost.append(e) if lost is not None else None,
        call_soon=loop.call_soon,
    )
    holder.append(conn)
    fake = FakeTransport()
    conn.connection_made(fake)
    return conn, fake


def test_sends_in_one_turn_leave_in_one_write_in_order() -> None:
    loop = Loop()
    conn, fake = coalescing(loop)
    for n in range(5):
        conn.send(ok(n))
    assert fake.written == []  # held until the end of the turn
    assert len(loop.ready) == 1  # one flush scheduled, not one per send
    loop.turn()
    assert fake.written == [b"".join(ok(n) for n in range(5))]  # in order, in one write
    conn.send(ok(5))
    loop.turn()
    assert fake.written[1:] == [ok(5)]


def test_answers_given_inside_data_received_leave_when_it_returns() -> None:
    loop = Loop()
    conn, fake = coalescing(loop, on_message=lambda c, m: c.send(ok(int(m.call_id.rsplit("-", 1)[1]))))
    burst = b"".join(request(n) for n in range(10)) + b"\r\n\r\n" + request(10)
    conn.data_received(burst)
    # One write, the pong (RFC 5626) between the answers exactly where its ping was.
    assert fake.written == [b"".join(ok(n) for n in range(10)) + b"\r\n" + ok(10)]
    loop.turn()
    assert len(fake.written) == 1


def test_a_full_batch_is_written_at_once_and_order_is_kept() -> None:
    loop = Loop()
    conn, fake = coalescing(loop)
    big = b"x" * (COALESCE_BYTES - len(b"first"))
    conn.send(b"first")
    conn.send(big)  # the queue reaches COALESCE_BYTES: written now, not at the end of the turn
    assert fake.written == [b"first" + big]
    conn.send(b"last")
    assert fake.written == [b"first" + big]
    loop.turn()
    assert fake.written == [b"first" + big, b"last"]


def test_the_cap_counts_queued_bytes_with_the_unsent_ones() -> None:
    loop = Loop()
    lost: list[TransportError | None] = []
    conn, fake = coalescing(loop, max_buffered=1000, lost=lost)
    fake.buffered = 500  # the kernel has not taken these yet
    conn.send(b"a" * 300)
    conn.send(b"b" * 200)  # 500 + 500: at the cap, still allowed
    with pytest.raises(TransportError, match="not reading"):
        conn.send(b"c")  # one byte over: the queued 500 count
    assert fake.aborted and conn.closed
    loop.turn()
    assert fake.written == []  # an aborted connection writes nothing more
    conn.connection_lost(None)
    assert len(lost) == 1 and isinstance(lost[0], TransportError)


def test_close_flushes_what_was_sent_before_it_abort_drops_it() -> None:
    loop = Loop()
    conn, fake = coalescing(loop)
    conn.send(ok(1))
    conn.close()
    assert fake.written == [ok(1)] and fake.closing
    loop.turn()
    assert fake.written == [ok(1)]
    other, other_fake = coalescing(loop)
    other.send(ok(2))
    other.abort(TransportError("gone"))
    loop.turn()
    assert other_fake.written == [] and other_fake.aborted


def test_a_bad_stream_gets_its_answer_before_the_close() -> None:
    loop = Loop()
    answers: list[bytes] = []
    holder: list[StreamConnection] = []

    def bad(data: bytes | None, error: SipParseError, flow: Flow) -> None:
        answers.append(b"SIP/2.0 400 Bad\r\nContent-Length: 0\r\n\r\n")
        holder[0].send(answers[-1])

    conn = StreamConnection(
        Transport.TCP, remote=("127.0.0.1", 40000), server_name=None, limits=None, max_buffered=1 << 16,
        now=lambda: 0.0, on_message=lambda m, f: holder[0].send(ok(0)), on_bad_message=bad,
        on_lost=lambda c, e: None, call_soon=loop.call_soon)
    holder.append(conn)
    fake = FakeTransport()
    conn.connection_made(fake)
    no_length = b"MESSAGE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKn\r\n\r\n"
    conn.data_received(request(0) + no_length)  # answered, then a framing error
    assert fake.written == [ok(0) + answers[0]] and fake.closing


def test_queued_while_connecting_leaves_in_one_write_once_connected() -> None:
    loop = Loop()
    conn = StreamConnection(
        Transport.TLS, remote=("127.0.0.1", 40000), server_name="example.org", limits=None,
        max_buffered=1 << 16, now=lambda: 0.0, on_message=lambda m, f: None,
        on_bad_message=lambda d, e, f: None, on_lost=lambda c, e: None, call_soon=loop.call_soon)
    conn.send(request(1))
    conn.send(request(2))
    assert loop.ready == []  # nothing to flush into yet
    fake = FakeTransport()
    conn.connection_made(fake)
    assert fake.written == [request(1) + request(2)]


def test_busy_hands_queued_bytes_over_and_judges_by_what_is_unsent() -> None:
    loop = Loop()
    conn, fake = coalescing(loop)
    conn.data_received(request(1))  # the peer's request: busy until answered
    assert conn.busy(0.0)
    conn.send(ok(1), SendKind.FINAL_RESPONSE)
    assert not conn.busy(0.0)  # answered, and the answer handed to the transport
    assert fake.written == [ok(1)]
    conn.send(ok(2))
    fake.buffered = 10
    assert conn.busy(0.0)  # the kernel did not take everything


# -- end to end over real sockets ----------------------------------------------------------------


@dataclass
class Echo:
    """Answers every request at once, inline (as a synchronous stack handler does)."""

    manager: TransportManager | None = None
    received: int = 0

    def datagram_received(self, data: bytes, flow: Flow) -> None: ...

    def stream_message_received(self, message: Request | Response, flow: Flow) -> None:
        assert self.manager is not None and isinstance(message, Request)
        self.received += 1
        n = int(message.call_id.rsplit("-", 1)[1])
        self.manager.send(ok(n), flow, SendKind.FINAL_RESPONSE)

    def stream_message_failed(self, data: bytes | None, error: SipParseError, flow: Flow) -> None: ...

    def flow_failed(self, flow: Flow, error: TransportError) -> None: ...


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@contextlib.asynccontextmanager
async def echo_server(transport: Transport, ca: trustme.CA) -> AsyncIterator[tuple[TransportManager, int]]:
    user = Echo()
    manager = TransportManager(user, TransportConfig())
    user.manager = manager
    server_context = None
    if transport is Transport.TLS:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
    try:
        _, (_, port) = await manager.listen(ListenSpec(transport, "127.0.0.1", 0, server_context))
        yield manager, port
    finally:
        await manager.close()


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
async def test_pipelined_requests_are_answered_in_order_with_few_writes(
        transport: Transport, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    original = StreamConnection._flush

    def counting(self: StreamConnection) -> None:
        if self._pending:
            writes.append(len(self._pending))
        original(self)

    monkeypatch.setattr(StreamConnection, "_flush", counting)
    count = 300
    async with echo_server(transport, ca) as (_, port):
        client_context = None
        if transport is Transport.TLS:
            client_context = ssl.create_default_context()
            ca.configure_trust(client_context)
        name = "127.0.0.1" if client_context else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context,
                                                       server_hostname=name)
        try:
            writer.write(b"".join(request(n) for n in range(count)))  # one burst, pipelined
            expected = b"".join(ok(n) for n in range(count))
            async with asyncio.timeout(10):
                got = await reader.readexactly(len(expected))
            assert got == expected  # every answer, in the order of the requests
        finally:
            writer.close()
    assert sum(writes) == count
    assert len(writes) < count / 4  # answers to a burst share writes
