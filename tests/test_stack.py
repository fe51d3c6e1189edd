"""SipStack over real sockets on 127.0.0.1 and ::1, port 0: UDP, TCP, TLS and their failure modes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trustme
from _peers import IPV6_TESTED, needs_ipv6
from helpers_sip import message_of_wire_size
from raw_stream import RawStream

from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import LocalProtocolError, TransactionTimeout, TransportError
from sipimdn.message import Request, Response, make_response
from sipimdn.parser import Limits, parse_message
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Transport
from sipimdn.transport.manager import TransportManager
from sipimdn.transport.select import Target

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.2)
HOSTS = ["127.0.0.1", "::1"]


HOST_PARAMS = [pytest.param("127.0.0.1", id="v4"), pytest.param("::1", id="v6", marks=needs_ipv6)]


@dataclass
class Certs:
    ca: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sip.example.test", "127.0.0.1", "::1").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return Certs(ca, server, client)


def uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def message_to(host: str, port: int, body: bytes = b"hello", params: str = "",
               scheme: str = "sip") -> Request:
    uri = f"{scheme}:bob@{uri_host(host)}:{port}{params}"
    return build_request("MESSAGE", uri, "<sip:alice@example.com>",
                         "<sip:bob@example.com>", body=body, content_type="text/plain")


@dataclass
class Recorder:
    """A request handler that records and answers (or holds) requests."""

    status: int | None = 200
    seen: list[IncomingRequest] = field(default_factory=list)

    def __call__(self, incoming: IncomingRequest) -> None:
        self.seen.append(incoming)
        if self.status is not None:
            incoming.respond(self.status)


def tls_client(context: ssl.SSLContext) -> SipStack:
    """A UDP stack whose outgoing TLS connections use ``context``."""
    config = TransportConfig(client_ssl_context=context)
    return SipStack(specs("127.0.0.1", Transport.UDP), transport_config=config)


def specs(host: str, *kinds: Transport, certs: Certs | None = None) -> list[ListenSpec]:
    return [ListenSpec(k, host, 0, certs.server if certs and k is Transport.TLS else None) for k in kinds]


@contextlib.asynccontextmanager
async def running(*stacks: SipStack) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as exit_stack:
        for stack in stacks:
            await exit_stack.enter_async_context(stack)
        yield


@contextlib.asynccontextmanager
async def udp_tcp_stack() -> AsyncIterator[SipStack]:
    """A running stack listening on UDP and TCP at the same 127.0.0.1 port (§18.2.1: the stack
    moves an ephemeral UDP port until TCP is free beside it)."""
    async with SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP)) as stack:
        assert port_of(stack, Transport.TCP) == port_of(stack, Transport.UDP)
        yield stack


def port_of(stack: SipStack, kind: Transport, host: str | None = None) -> int:
    for transport, (bound_host, port) in stack.endpoints:
        if transport is kind and (host is None or bound_host == host):
            return port
    raise AssertionError(f"{kind} not listening")


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOST_PARAMS)
@pytest.mark.parametrize("kind", [Transport.UDP, Transport.TCP, Transport.TLS])
async def test_round_trip(kind: Transport, host: str, certs: Certs) -> None:
    config = TransportConfig(client_ssl_context=certs.client)
    kinds = (Transport.UDP, kind) if kind is not Transport.UDP else (Transport.UDP,)
    a = SipStack(specs(host, *kinds, certs=certs), timers=FAST, transport_config=config)
    b = SipStack(specs(host, *kinds, certs=certs), timers=FAST, transport_config=config)
    recorder = Recorder(status=202)
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, kind)
        params = "" if kind is Transport.UDP else f";transport={kind.value.lower()}"
        response = await a.send_request(message_to(host, port, params=params))
        assert response.status_code == 202
        [incoming] = recorder.seen
        assert incoming.flow.transport is kind
        assert incoming.request.body == b"hello"
        top = incoming.request.top_via
        assert top.transport == kind.value and top.branch and top.branch.startswith("z9hG4bK")
        assert top.received == host and top.rport == incoming.flow.remote[1]


async def test_sips_uri_means_tls_with_verification(certs: Certs) -> None:
    a = tls_client(certs.client)
    b = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TLS, certs=certs))
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        response = await a.send_request(message_to("127.0.0.1", port_of(b, Transport.TLS),
                                                    scheme="sips"))
        assert response.status_code == 200
        assert recorder.seen[0].flow.transport is Transport.TLS


async def test_tls_wrong_host_name_is_rejected(certs: Certs) -> None:
    a = tls_client(certs.client)
    b = SipStack(specs("127.0.0.1", Transport.TLS, certs=certs))
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.TLS)
        good = Target(Transport.TLS, "127.0.0.1", port, "sip.example.test")
        assert (await a.send_request(message_to("127.0.0.1", port), target=good)).status_code == 200
        wrong = Target(Transport.TLS, "127.0.0.1", port, "wrong.example.test")
        with pytest.raises(TransportError, match="TLS handshake"):
            await a.send_request(message_to("127.0.0.1", port), target=wrong)
        assert len(recorder.seen) == 1


async def test_tls_untrusted_certificate_is_rejected_by_default(certs: Certs) -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP))  # default context: system trust store only
    b = SipStack(specs("127.0.0.1", Transport.TLS, certs=certs))
    b.on_request(Recorder())
    async with asyncio.timeout(5), running(a, b):
        with pytest.raises(TransportError, match="certificate"):
            await a.send_request(message_to("127.0.0.1", port_of(b, Transport.TLS),
                                            params=";transport=tls"))


async def test_tls_client_certificate(certs: Certs) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs.ca.issue_cert("127.0.0.1").configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    certs.ca.configure_trust(server)
    with_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    certs.ca.configure_trust(with_cert)
    certs.ca.issue_cert("alice.example.test").configure_cert(with_cert)
    a = tls_client(with_cert)
    c = tls_client(certs.client)
    b = SipStack([ListenSpec(Transport.TLS, "127.0.0.1", 0, server)])
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b, c):
        port = port_of(b, Transport.TLS)
        response = await a.send_request(message_to("127.0.0.1", port, params=";transport=tls"))
        assert response.status_code == 200
        with pytest.raises(TransportError):  # no client certificate: the server refuses
            await c.send_request(message_to("127.0.0.1", port, params=";transport=tls"))
        assert len(recorder.seen) == 1


async def test_several_listeners_report_bound_ports(certs: Certs) -> None:
    listen = [ListenSpec(Transport.UDP, "127.0.0.1"), ListenSpec(Transport.TCP, "127.0.0.1"),
              ListenSpec(Transport.TLS, "127.0.0.1", 0, certs.server)]
    if IPV6_TESTED:
        listen += [ListenSpec(Transport.UDP, "::1"), ListenSpec(Transport.TCP, "::1")]
    async with SipStack(listen) as stack:
        endpoints = stack.endpoints
        assert [(k, h) for k, (h, _) in endpoints] == [(s.transport, s.host) for s in listen
                                                        if s.transport is Transport.UDP] + \
            [(s.transport, s.host) for s in listen if s.transport is not Transport.UDP]
        assert all(port > 0 for _, (_, port) in endpoints)
        # §18.2.1: TCP asked for port 0 takes the UDP socket's port on the same host
        assert port_of(stack, Transport.TCP, "127.0.0.1") == port_of(stack, Transport.UDP, "127.0.0.1")
        with pytest.raises(TransportError):
            async with SipStack([ListenSpec(Transport.UDP, "127.0.0.1", port_of(stack, Transport.UDP))]):
                pass


# -- connections ----------------------------------------------------------------------------------


async def test_tcp_connection_is_reused() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP), timers=FAST)
    b = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP), timers=FAST)
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.TCP)
        for _ in range(3):
            response = await a.send_request(message_to("127.0.0.1", port, params=";transport=tcp"))
            assert response.status_code == 200
        assert len({r.flow.remote for r in recorder.seen}) == 1
        assert a.transports.connection_count == 1 and b.transports.connection_count == 1


async def test_idle_connections_are_closed() -> None:
    config = TransportConfig(idle_timeout=0.2)
    a = SipStack(specs("127.0.0.1", Transport.UDP), transport_config=config)
    b = SipStack(specs("127.0.0.1", Transport.TCP), transport_config=config)
    b.on_request(Recorder())
    async with asyncio.timeout(5), running(a, b):
        await a.send_request(message_to("127.0.0.1", port_of(b, Transport.TCP), params=";transport=tcp"))
        assert a.transports.connection_count == 1
        for _ in range(40):
            await asyncio.sleep(0.05)
            if a.transports.connection_count == 0 and b.transports.connection_count == 0:
                break
        assert a.transports.connection_count == 0 and b.transports.connection_count == 0


async def test_connection_cap_refuses_extra_inbound() -> None:
    b = SipStack(specs("127.0.0.1", Transport.TCP), transport_config=TransportConfig(max_connections=1))
    async with asyncio.timeout(5), running(b):
        port = port_of(b, Transport.TCP)
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        # Busy (a message half received): an idle one would be closed to admit the newcomer.
        w1.write(b"OPTIONS sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKcap\r\n"
                 b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: cap\r\nCSeq: 1 OPTIONS\r\n")
        await asyncio.sleep(0.05)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await r2.read(100) == b""  # closed by the stack
        assert b.transports.connection_count == 1
        w1.write(b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")  # the first one is still served
        assert (await r1.readuntil(b"\r\n\r\n")).startswith(b"SIP/2.0 503 ")
        for w in (w1, w2):
            w.close()


async def test_peer_closing_mid_message() -> None:
    b = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP))
    recorder = Recorder()
    b.on_request(recorder)
    a = SipStack(specs("127.0.0.1", Transport.UDP))
    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.TCP)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
                     b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKhalf\r\n"
                     b"Content-Length: 100\r\n\r\nonly part of the bo")
        await writer.drain()
        writer.close()
        for _ in range(40):
            await asyncio.sleep(0.02)
            if b.transports.connection_count == 0:
                break
        assert b.transports.connection_count == 0
        assert recorder.seen == []
        # the stack still serves requests afterwards
        response = await a.send_request(message_to("127.0.0.1", port, params=";transport=tcp"))
        assert response.status_code == 200


async def test_endless_header_is_cut_at_the_limit() -> None:
    limits = Limits(max_header_bytes=4096, max_message=8192)
    b = SipStack(specs("127.0.0.1", Transport.TCP), limits=limits)
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(b):
        raw = RawStream("127.0.0.1", port_of(b, Transport.TCP))
        try:
            head = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
                    b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKlong\r\n"
                    b"X-Endless: ")
            # up to 200 KiB, far past the limit, unless the stack hangs up first
            sent = await raw.send([head] + [b"a" * 1024] * 200)
            reply = await raw.read_until_closed()
        finally:
            raw.close()
        assert sent <= 32 * 1024  # we were cut off near the 4 KiB header limit, not at 200 KiB
        assert recorder.seen == []
        assert b.transports.connection_count == 0
        # The Via was readable: a stateless 513 went out before the close (RFC 3261 §21.5.14)
        assert reply.startswith(b"SIP/2.0 513 "), reply[:80]


# -- routing, size, failures --------------------------------------------------------------------------


async def test_rport_response_goes_to_source_port_and_retransmission_is_absorbed() -> None:
    b = SipStack(specs("127.0.0.1", Transport.UDP))
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(b):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.setblocking(False)
            data = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
                    # sent-by names a port nobody listens on: only rport brings the answer back
                    b"Via: SIP/2.0/UDP client.invalid:9;branch=z9hG4bKraw1;rport\r\n"
                    b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: raw1\r\n"
                    b"CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            target = ("127.0.0.1", port_of(b, Transport.UDP))
            for _ in range(2):
                await loop.sock_sendto(raw, data, target)
                reply, source = await loop.sock_recvfrom(raw, 65535)
                response = parse_message(reply)
                assert getattr(response, "status_code", None) == 200
                assert source == target  # from the socket the request came in on
                via = response.top_via
                assert via.received == "127.0.0.1" and via.rport == raw.getsockname()[1]
        assert len(recorder.seen) == 1  # the retransmission got the response again, not the handler


async def test_large_request_switches_to_tcp() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP))
    recorder = Recorder()
    async with asyncio.timeout(5), running(a), udp_tcp_stack() as b:
        b.on_request(recorder)
        port = port_of(b, Transport.UDP)
        small = await a.send_request(message_to("127.0.0.1", port, body=b"x" * 900))
        big = await a.send_request(message_to("127.0.0.1", port, body=b"x" * 1300))
        assert small.status_code == big.status_code == 200
        assert [r.flow.transport for r in recorder.seen] == [Transport.UDP, Transport.TCP]
        assert recorder.seen[1].request.top_via.transport == "TCP"
        assert len(recorder.seen[1].request.to_bytes()) > 1300


async def test_an_ephemeral_udp_port_moves_until_tcp_is_free_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§18.2.1: TCP listens on the UDP port. The system picks that port for UDP without looking
    at TCP; when the TCP port is taken (here by real sockets bound just before the stack tries
    it), the UDP listener moves to another port the system picks, until both share one, and a
    large request switched to TCP at the UDP port (§18.1.1) arrives."""
    squatters: list[socket.socket] = []
    real_listen = TransportManager.listen

    async def listen_after_a_squatter(self: TransportManager, spec: ListenSpec) -> object:
        if spec.transport is Transport.TCP and spec.port and len(squatters) < 2:
            squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            squatter.bind((spec.host, spec.port))
            squatter.listen()
            squatters.append(squatter)
        return await real_listen(self, spec)

    monkeypatch.setattr(TransportManager, "listen", listen_after_a_squatter)
    a = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP))
    recorder = Recorder()
    try:
        async with asyncio.timeout(5), running(a):
            b = SipStack(specs("127.0.0.1", Transport.UDP, Transport.TCP))
            b.on_request(recorder)
            async with b:
                kinds = [kind for kind, _ in b.endpoints]
                assert kinds == [Transport.UDP, Transport.TCP]  # the abandoned UDP ports are gone
                port = port_of(b, Transport.UDP)
                assert port_of(b, Transport.TCP) == port
                assert len(squatters) == 2 and port not in {s.getsockname()[1] for s in squatters}
                big = await a.send_request(message_to("127.0.0.1", port, body=b"x" * 1300))
                assert big.status_code == 200
                assert [r.flow.transport for r in recorder.seen] == [Transport.TCP]
    finally:
        for squatter in squatters:
            squatter.close()


async def test_tcp_beside_a_fixed_udp_port_that_is_taken_goes_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A UDP port the user chose does not move: TCP asked for port 0 beside it takes another
    port when that TCP port is taken, and says so."""
    udp, tcp = udp_and_tcp_on_one_port()
    port = udp.getsockname()[1]
    udp.close()  # the UDP port is free again; the TCP one stays taken
    try:
        with caplog.at_level("WARNING", logger="sipimdn.stack"):
            async with SipStack([ListenSpec(Transport.UDP, "127.0.0.1", port),
                                 ListenSpec(Transport.TCP, "127.0.0.1", 0)]) as stack:
                assert port_of(stack, Transport.UDP) == port
                assert port_of(stack, Transport.TCP) != port
        assert any("TCP on another port" in r.getMessage() for r in caplog.records)
    finally:
        tcp.close()


def udp_and_tcp_on_one_port() -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on the same 127.0.0.1 port (non-blocking)."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:  # that TCP port is taken: another pair
            udp.close()
            tcp.close()
            continue
        tcp.listen(1)
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise AssertionError("no port free on both UDP and TCP in 20 tries")


async def read_stream_message(connection: socket.socket) -> bytes:
    """One whole SIP message from a stream socket (headers, then Content-Length bytes)."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(connection, 65535)
        assert chunk, "connection closed before a whole message"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = await loop.sock_recv(connection, 65535)
        assert chunk, "connection closed inside the body"
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(("size", "expected"), [(1300, Transport.UDP), (1301, Transport.TCP)])
async def test_udp_limit_is_1300_bytes_as_sent(size: int, expected: Transport) -> None:
    """RFC 3261 §18.1.1: a request over 1300 bytes (the MTU unknown) goes over TCP; one of
    exactly 1300 stays on UDP. Sizes are of the request as sent, our Via included; a raw
    receiver on one port over UDP and TCP sees which transport carried it and its length."""
    loop = asyncio.get_running_loop()
    udp, tcp = udp_and_tcp_on_one_port()
    with udp, tcp:
        # Our TCP listener shares the UDP port: a TCP Via is as long as a UDP one.
        async with asyncio.timeout(5), udp_tcp_stack() as a:
            port = udp.getsockname()[1]
            request = message_of_wire_size("127.0.0.1", port, size, a.transports.sent_by(
                Transport.UDP, "127.0.0.1"), rport=a.rport)
            sending = asyncio.ensure_future(a.send_request(request))
            over_udp = asyncio.ensure_future(loop.sock_recvfrom(udp, 65535))
            over_tcp = asyncio.ensure_future(loop.sock_accept(tcp))
            await asyncio.wait({over_udp, over_tcp}, return_when=asyncio.FIRST_COMPLETED)
            if over_udp.done():
                carried = Transport.UDP
                data, source = over_udp.result()
                received = parse_message(data)
                assert isinstance(received, Request)
                await loop.sock_sendto(udp, make_response(received, 200).to_bytes(), source)
            else:
                carried = Transport.TCP
                connection, _ = over_tcp.result()
                with connection:
                    connection.setblocking(False)
                    data = await read_stream_message(connection)
                    received = parse_message(data)
                    assert isinstance(received, Request)
                    await loop.sock_sendall(connection, make_response(received, 200).to_bytes())
                    assert (await sending).status_code == 200  # answered on the connection
            for pending in (over_udp, over_tcp):
                pending.cancel()
            assert (await sending).status_code == 200
    assert carried is expected
    assert received.top_via.transport == expected.value
    assert len(data) == size


async def test_large_request_fails_clearly_when_tcp_is_unavailable() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP))
    b = SipStack(specs("127.0.0.1", Transport.UDP))  # no TCP listener
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        started = asyncio.get_running_loop().time()
        with pytest.raises(TransportError, match="1300"):
            await a.send_request(message_to("127.0.0.1", port_of(b, Transport.UDP), body=b"x" * 2000))
        assert asyncio.get_running_loop().time() - started < 2
        assert recorder.seen == []  # and nothing was sent over UDP instead


async def test_unanswered_request_gets_no_408_when_its_transaction_gives_up() -> None:
    """RFC 4320 §4.2 (updating RFC 3261 §17.2.2): a server transaction whose handler never
    answers sends 100 Trying, then ends silently: no 408, nothing final, ever.

    A raw UDP client retransmits its MESSAGE every T2, as a client past Timer E's growth does.
    The first transaction absorbs them; once it has given up (64*T1 = 3.2 s with FAST), the
    next retransmission is a new request to the stack and reaches the handler again: that
    second arrival, not a timer, says the give-up has happened. An OPTIONS answered after it
    on the same socket then bounds everything the stack could have sent at the give-up."""
    loop = asyncio.get_running_loop()
    b = SipStack(specs("127.0.0.1", Transport.UDP), timers=FAST)
    held: list[IncomingRequest] = []
    arrived = asyncio.Event()

    def handler(incoming: IncomingRequest) -> None:
        if incoming.request.method == "OPTIONS":
            incoming.respond(200)
            return
        held.append(incoming)  # never answered
        arrived.set()

    b.on_request(handler)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        received: list[bytes] = []

        async def collect() -> None:
            while True:
                received.append(await loop.sock_recv(raw, 65535))

        async with asyncio.timeout(20), running(b):
            target = ("127.0.0.1", port_of(b, Transport.UDP))
            request = message_to(*target)
            stamp_via(request, Transport.UDP, raw.getsockname(), branch="z9hG4bKgiveup")
            collector = asyncio.create_task(collect())
            try:
                for _ in range(40):  # 40 * T2 = 16 s, far past the 3.2 s give-up
                    await loop.sock_sendto(raw, request.to_bytes(), target)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FAST.t2):
                            await arrived.wait()
                    arrived.clear()
                    if len(held) >= 2:
                        break
                assert len(held) == 2, "the first transaction never gave up"
                options = build_request("OPTIONS", f"sip:bob@127.0.0.1:{target[1]}",
                                        "<sip:alice@example.com>", "<sip:bob@example.com>")
                stamp_via(options, Transport.UDP, raw.getsockname(), branch="z9hG4bKprobe")
                await loop.sock_sendto(raw, options.to_bytes(), target)
                while not any(b"z9hG4bKprobe" in datagram for datagram in received):
                    await asyncio.sleep(0.01)  # bounded by the timeout above
            finally:
                collector.cancel()
    answers = [parse_message(d) for d in received if b"z9hG4bKgiveup" in d]
    statuses = [a.status_code for a in answers if isinstance(a, Response)]
    assert statuses and set(statuses) == {100}, statuses  # 100 Trying (RFC 4320 §4.1), no 408


@pytest.mark.parametrize("host", HOST_PARAMS)
async def test_icmp_port_unreachable_fails_fast(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        closed_port = probe.getsockname()[1]
    a = SipStack(specs(host, Transport.UDP))  # default timers: Timer F would take 32 s
    async with asyncio.timeout(5), running(a):
        with pytest.raises(TransportError, match="ICMP"):
            await a.send_request(message_to(host, closed_port))


async def test_timer_f_over_real_udp() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP), timers=TimerConfig(t1=0.02, t2=0.16, t4=0.05))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        async with asyncio.timeout(5), running(a):
            started = asyncio.get_running_loop().time()
            with pytest.raises(TransactionTimeout):
                await a.send_request(message_to("127.0.0.1", silent.getsockname()[1]))
            assert 1.28 <= asyncio.get_running_loop().time() - started < 3.0  # F = 64*T1
            copies = 0
            with contextlib.suppress(BlockingIOError):
                while silent.recv(65535):
                    copies += 1
            assert copies == 11  # the first send and ten retransmissions before F


async def test_late_answer_after_handler_returned_and_100_trying() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP), timers=FAST)
    b = SipStack(specs("127.0.0.1", Transport.UDP), timers=FAST)
    held: list[IncomingRequest] = []

    async def handler(incoming: IncomingRequest) -> None:
        held.append(incoming)  # decide later

    b.on_request(handler)
    async with asyncio.timeout(5), running(a, b):
        send = asyncio.ensure_future(a.send_request(message_to("127.0.0.1", port_of(b, Transport.UDP))))
        await asyncio.sleep(0.6)  # several retransmissions and the 100 Trying (at 0.35 s) meanwhile
        assert len(held) == 1 and not send.done()
        assert held[0].respond(202, "Stored")
        assert not held[0].respond(500)  # only the first final counts
        response = await send
        assert (response.status_code, response.reason) == (202, "Stored")
        assert len(held) == 1


async def test_handler_failure_answers_500_and_no_handler_503() -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP))
    b = SipStack(specs("127.0.0.1", Transport.UDP))

    async def broken(incoming: IncomingRequest) -> None:
        raise RuntimeError("boom")

    async with asyncio.timeout(5), running(a, b):
        port = port_of(b, Transport.UDP)
        assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 503
        remove = b.on_request(broken)
        assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 500
        remove()
        assert (await a.send_request(message_to("127.0.0.1", port))).status_code == 503


async def test_unparseable_request_gets_stateless_400_over_udp() -> None:
    b = SipStack(specs("127.0.0.1", Transport.UDP))
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(b):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.setblocking(False)
            target = ("127.0.0.1", port_of(b, Transport.UDP))
            bad = (f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{raw.getsockname()[1]};"
                   "branch=z9hG4bKbad\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\n"
                   "Call-ID: bad1\r\nCSeq: one MESSAGE\r\nContent-Length: 0\r\n\r\n").encode()
            await loop.sock_sendto(raw, b"\x16\x03\x01 not sip at all", target)
            await loop.sock_sendto(raw, bad, target)
            reply = await loop.sock_recv(raw, 65535)
            assert reply.startswith(b"SIP/2.0 400 ")
            assert b"CSeq" in reply.split(b"\r\n")[0]  # the parse reason is the reason phrase
            with pytest.raises(TimeoutError):  # and the garbage got nothing
                async with asyncio.timeout(0.2):
                    await loop.sock_recv(raw, 65535)
        assert recorder.seen == []


async def test_hostname_target_is_resolved() -> None:
    b = SipStack(specs("127.0.0.1", Transport.UDP) + (specs("::1", Transport.UDP) if IPV6_TESTED else []))
    a = SipStack(specs("127.0.0.1", Transport.UDP) + (specs("::1", Transport.UDP) if IPV6_TESTED else []))
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        ports = {h: p for k, (h, p) in b.endpoints}
        resolved = [h for h in ports if h in {"127.0.0.1", "::1"}]
        request = message_to("localhost", 1)
        for host in resolved:
            request = build_request("MESSAGE", f"sip:bob@localhost:{ports[host]}", "<sip:a@example.com>",
                                    "<sip:bob@example.com>")
            with contextlib.suppress(TransportError, TransactionTimeout):
                async with asyncio.timeout(1):
                    await a.send_request(request)
        assert recorder.seen, "localhost resolved to none of the loopback addresses"


async def test_api_misuse() -> None:
    stack = SipStack()
    with pytest.raises(LocalProtocolError):
        await stack.send_request(message_to("127.0.0.1", 5060))
    async with stack:
        with pytest.raises(LocalProtocolError):
            await stack.send_request(build_request("MESSAGE", "im:bob@example.com", "<sip:a@example.com>",
                                                   "<sip:bob@example.com>"))
        with pytest.raises(LocalProtocolError):
            await stack.send_request(message_to("127.0.0.1", 5061, scheme="sips", params=";transport=udp"))


async def test_response_reconnects_to_sent_by_when_connection_is_gone() -> None:
    b = SipStack(specs("127.0.0.1", Transport.TCP))
    held: list[IncomingRequest] = []
    b.on_request(held.append)
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def client_listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await got.put(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(client_listener, "127.0.0.1", 0)
    listen_port = server.sockets[0].getsockname()[1]
    async with asyncio.timeout(5), running(b), server:
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(b, Transport.TCP))
        writer.write((f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
                      f"Via: SIP/2.0/TCP 127.0.0.1:{listen_port};branch=z9hG4bKgone\r\n"
                      "From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: gone1\r\n"
                      "CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
        await writer.drain()
        for _ in range(50):
            await asyncio.sleep(0.02)
            if held:
                break
        writer.close()  # the request's connection goes away before the answer
        for _ in range(50):
            await asyncio.sleep(0.02)
            if b.transports.connection_count == 0:
                break
        assert held[0].respond(200)
        head = await got.get()
        assert head.startswith(b"SIP/2.0 200 OK\r\n") and b"branch=z9hG4bKgone" in head


async def test_failed_tls_handshakes_do_not_use_up_connection_slots(certs: Certs) -> None:
    b = SipStack(specs("127.0.0.1", Transport.TLS, certs=certs),
                 transport_config=TransportConfig(max_connections=1))
    b.on_request(Recorder())
    untrusted = SipStack(specs("127.0.0.1", Transport.UDP))
    trusted = tls_client(certs.client)
    async with asyncio.timeout(5), running(b, untrusted, trusted):
        port = port_of(b, Transport.TLS)
        for _ in range(3):
            with pytest.raises(TransportError):
                await untrusted.send_request(message_to("127.0.0.1", port, params=";transport=tls"))
        assert b.transports.connection_count == 0
        response = await trusted.send_request(message_to("127.0.0.1", port, params=";transport=tls"))
        assert response.status_code == 200


async def test_sync_handler_may_return_a_value(caplog: pytest.LogCaptureFixture) -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP))
    b = SipStack(specs("127.0.0.1", Transport.UDP))
    b.on_request(lambda incoming: incoming.respond(201))  # returns respond()'s bool
    async with asyncio.timeout(5), running(a, b):
        response = await a.send_request(message_to("127.0.0.1", port_of(b, Transport.UDP)))
        assert response.status_code == 201
        await asyncio.sleep(0.01)
    assert not [r for r in caplog.records if "handler failed" in r.getMessage()]


@pytest.mark.parametrize("direction", ["request", "response"])
async def test_lossy_real_udp_still_completes(direction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a = SipStack(specs("127.0.0.1", Transport.UDP), timers=FAST)
    b = SipStack(specs("127.0.0.1", Transport.UDP), timers=FAST)
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(5), running(a, b):
        lossy = (a if direction == "request" else b).transports._udp[0]
        real_send = lossy.send
        sent: list[bytes] = []

        def drop_first_three(data: bytes, remote: tuple[str, int]) -> None:
            sent.append(data)
            if len(sent) > 3:
                real_send(data, remote)

        monkeypatch.setattr(lossy, "send", drop_first_three)
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await a.send_request(message_to("127.0.0.1", port_of(b, Transport.UDP)))
        elapsed = loop.time() - started
        assert response.status_code == 200
        assert len(recorder.seen) == 1
        assert 0.3 <= elapsed < FAST.timer_f  # the 4th send (at 0.35 s with T1 = 50 ms) got through
