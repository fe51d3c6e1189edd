"""Stream limits of SipStack on TCP: connection cap, slowloris headers, endless bodies, 513.

A raw asyncio client plays the attacker; the stack is configured with small limits so each
attack reaches its limit in milliseconds. After each attack the stack must still answer a
well-behaved client (the limit protects the service, it does not end it).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from raw_stream import RawStream
from robust_helpers import Recorder, listen, message_to, port_of, running, settle

from sipimdn.parser import Limits
from sipimdn.stack import SipStack
from sipimdn.transport.base import TransportConfig
from sipimdn.transport.flow import Transport

LIMITS = Limits(max_start_line=512, max_header_bytes=4096, max_headers=40, max_body=8192, max_message=12288)
HEAD = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKattack\r\n"
        b"From: <sip:mallory@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        b"Call-ID: attack@example.com\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n")


async def still_serves(stack: SipStack) -> None:
    """A well-behaved TCP client still gets its 200."""
    async with SipStack(listen(Transport.UDP)) as client:
        port = port_of(stack, Transport.TCP)
        response = await client.send_request(message_to("127.0.0.1", port, params=";transport=tcp"))
        assert response.status_code == 200


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the server closed the connection within ``timeout`` (data before the EOF is skipped)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def trickle(writer: asyncio.StreamWriter, chunk: bytes, count: int, pause: float = 0.0) -> int:
    """Write ``chunk`` up to ``count`` times; returns the bytes written before the peer hung up."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        for _ in range(count):
            if writer.transport.is_closing():
                break
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
    return sent


async def test_idle_connections_are_capped() -> None:
    cap = 256  # the default
    config = TransportConfig(max_connections=cap)
    stack = SipStack(listen(Transport.TCP), limits=LIMITS, transport_config=config)
    stack.on_request(Recorder())
    async with asyncio.timeout(20), running(stack):
        port = port_of(stack, Transport.TCP)
        clients = []
        for _ in range(2000):  # thousands of idle sockets against the cap
            clients.append(await asyncio.open_connection("127.0.0.1", port))
        # All from one address: that source's share is what it gets (the rest stays for others).
        per_source = config.max_connections_per_source
        await settle(lambda: stack.transports.connection_count >= per_source, timeout=2)
        await asyncio.sleep(0.1)
        assert stack.transports.connection_count <= per_source
        # The refused ones were closed by the stack (EOF), not left half-open.
        closed = sum(await asyncio.gather(*(closed_by_peer(reader, 0.5) for reader, _ in clients)))
        assert 2000 - cap <= closed < 2000  # the admitted ones stay open while idle
        for _, writer in clients:
            writer.close()
        assert await settle(lambda: stack.transports.connection_count == 0, timeout=3)
        await still_serves(stack)


async def test_at_the_cap_the_oldest_idle_connection_is_closed() -> None:
    cap = 8
    stack = SipStack(listen(Transport.TCP), transport_config=TransportConfig(max_connections=cap))
    stack.on_request(Recorder())
    async with asyncio.timeout(10), running(stack):
        port = port_of(stack, Transport.TCP)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
        await settle(lambda: stack.transports.connection_count == cap, timeout=2)
        try:
            await still_serves(stack)  # a new client is admitted ...
            oldest_reader = idle[0][0]
            async with asyncio.timeout(1):  # ... and the oldest idle socket was closed for it
                assert await oldest_reader.read(1) == b""
        finally:
            for _, writer in idle:
                writer.close()


async def test_slowloris_header_is_cut_at_the_limit() -> None:
    stack = SipStack(listen(Transport.TCP), limits=LIMITS)
    recorder = Recorder()
    stack.on_request(recorder)
    async with asyncio.timeout(20), running(stack):
        raw = RawStream("127.0.0.1", port_of(stack, Transport.TCP))
        try:
            # Many small header lines, a few bytes at a time, never ending the header section.
            sent = await raw.send([HEAD] + [b"X-Slow: abcdefghijklmnopqrstuvwxyz\r\n"] * 2000, pause=0.001)
            reply = await raw.read_until_closed()
        finally:
            raw.close()
        assert sent <= LIMITS.max_header_bytes * 3, f"sent {sent} bytes before being cut off"
        assert recorder.seen == []
        # The Via was readable: a stateless 513 before the close (RFC 3261 §21.5.14); the
        # header section outgrows max_header_bytes while still incomplete.
        assert reply.startswith(b"SIP/2.0 513 "), reply[:80]
        assert await settle(lambda: stack.transports.connection_count == 0)
        await still_serves(stack)


async def test_slowloris_long_line_is_cut_at_the_limit() -> None:
    stack = SipStack(listen(Transport.TCP), limits=LIMITS)
    stack.on_request(Recorder())
    async with asyncio.timeout(20), running(stack):
        raw = RawStream("127.0.0.1", port_of(stack, Transport.TCP))
        try:
            sent = await raw.send([HEAD + b"X-Endless: "] + [b"a" * 16] * 5000, pause=0.0005)
            reply = await raw.read_until_closed()
        finally:
            raw.close()
        assert sent <= LIMITS.max_header_bytes * 3
        # Via readable, header section past max_header_bytes: 513 (RFC 3261 §21.5.14)
        assert reply.startswith(b"SIP/2.0 513 "), reply[:80]
        await still_serves(stack)


async def test_slowloris_under_the_size_limit_is_cut_by_time() -> None:
    config = TransportConfig(idle_timeout=0.3)
    stack = SipStack(listen(Transport.TCP), limits=LIMITS, transport_config=config)
    stack.on_request(Recorder())
    async with asyncio.timeout(20), running(stack):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(stack, Transport.TCP))
        writer.write(b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n")
        closed = asyncio.create_task(closed_by_peer(reader, 10))
        # One byte every 0.15 s for 2.4 s: eight idle periods, 16 bytes, far below any size limit.
        await trickle(writer, b"X", 16, pause=0.15)
        try:
            # A header deadline of a few idle periods would have closed it while it trickled.
            assert closed.done() and closed.result()
        finally:
            closed.cancel()
            writer.close()


async def read_reply(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """One response head (up to the blank line), or b"" if the connection ended first."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        async with asyncio.timeout(timeout):
            return await reader.readuntil(b"\r\n\r\n")
    return b""


@pytest.mark.parametrize("length", [LIMITS.max_body + 1, 10**12, 2**64])
async def test_endless_body_is_refused_before_it_is_read(length: int) -> None:
    stack = SipStack(listen(Transport.TCP), limits=LIMITS)
    recorder = Recorder()
    stack.on_request(recorder)
    async with asyncio.timeout(20), running(stack):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(stack, Transport.TCP))
        length_line = b"Content-Length: " + str(length).encode()
        writer.write(HEAD + b"Content-Type: text/plain\r\n" + length_line + b"\r\n\r\n")
        # The verdict comes from the head alone, before any body byte is sent.
        reply = await read_reply(reader)
        assert reply.startswith((b"SIP/2.0 413 ", b"SIP/2.0 513 ", b"SIP/2.0 400 ")), reply[:80]
        sent = await trickle(writer, b"b" * 4096, 2000)  # then up to 8 MB of body
        assert await closed_by_peer(reader, 3)
        assert sent < 2 * 1024 * 1024, f"{sent} bytes of body were accepted"
        assert recorder.seen == []
        writer.close()
        await still_serves(stack)


async def test_bytes_past_content_length_end_the_connection() -> None:
    """Bytes past Content-Length are the next message: garbage there ends the stream (no resync)."""
    stack = SipStack(listen(Transport.TCP), limits=LIMITS)
    recorder = Recorder()
    stack.on_request(recorder)
    async with asyncio.timeout(20), running(stack):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(stack, Transport.TCP))
        writer.write(HEAD + b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
        assert (await read_reply(reader)).startswith(b"SIP/2.0 200 ")  # the message itself was fine
        sent = await trickle(writer, b"endless body bytes " * 50, 2000)
        assert await closed_by_peer(reader, 3)
        assert len(recorder.seen) == 1 and recorder.seen[0].request.body == b"hello"
        assert sent < 2 * 1024 * 1024
        writer.close()


@pytest.mark.parametrize("what", ["headers", "message"])
async def test_oversized_message_gets_513_and_the_connection_closes(what: str) -> None:
    stack = SipStack(listen(Transport.TCP), limits=LIMITS)
    recorder = Recorder()
    stack.on_request(recorder)
    async with asyncio.timeout(20), running(stack):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(stack, Transport.TCP))
        if what == "headers":  # a complete header section over max_header_bytes
            pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 200) for i in range(30))
            data = HEAD + pad + b"Content-Length: 0\r\n\r\n"
            assert len(data) > LIMITS.max_header_bytes
        else:  # headers fine, header + body over max_message, body itself under max_body
            small = Limits(max_header_bytes=4096, max_body=8192, max_message=6000)
            await stack.close()
            stack = SipStack(listen(Transport.TCP), limits=small)
            stack.on_request(recorder)
            await stack.start()
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(stack, Transport.TCP))
            data = HEAD + b"Content-Type: text/plain\r\nContent-Length: 7000\r\n\r\n" + b"x" * 7000
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        reply = await read_until_closed(reader)
        assert reply.startswith(b"SIP/2.0 513 "), reply[:80]
        assert b"Call-ID: attack@example.com" in reply  # a real answer to that request
        assert recorder.seen == []
        writer.close()
        await settle(lambda: stack.transports.connection_count == 0)
        assert stack.transports.connection_count == 0
        await still_serves(stack)
        await stack.close()


async def test_oversized_datagram_gets_513() -> None:
    stack = SipStack(listen(Transport.UDP, Transport.TCP), limits=LIMITS)
    recorder = Recorder()
    stack.on_request(recorder)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10), running(stack):
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Catcher(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Catcher, local_addr=("127.0.0.1", 0))
        try:
            pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 200) for i in range(30))
            head = HEAD.replace(b"TCP 127.0.0.1:9", b"UDP 127.0.0.1:9;rport")
            data = head + pad + b"Content-Length: 0\r\n\r\n"
            transport.sendto(data, ("127.0.0.1", port_of(stack, Transport.UDP)))
            reply = await asyncio.wait_for(received.get(), 3)
            assert reply.startswith(b"SIP/2.0 513 ")
            assert recorder.seen == []
        finally:
            transport.close()
