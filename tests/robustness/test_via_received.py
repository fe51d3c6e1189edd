"""A top Via whose ``received`` is not an IP address: 400 on UDP, TCP and TLS alike, and a log line.

RFC 3261 §20.42 (via-received = "received" EQUAL (IPv4address / IPv6address)) makes such a Via
malformed; §8.2.7 and §18.3 want a 400 for a malformed request. The answer must come back on
every transport, not only the one whose code path happened to handle it, and nothing reaches the
application. A raw client plays the peer so the bad Via is sent exactly as written.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
from robust_helpers import Pki, Recorder, listen, port_of, running

from sipimdn.stack import SipStack
from sipimdn.transport.flow import Transport


def request(transport: str, received: str) -> bytes:
    body = b"hello"
    return (
        f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bKvia{transport};received={received};rport\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKlower\r\n"
        "From: <sip:mallory@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: via-{transport}@example.com\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def exchange_stream(port: int, data: bytes, context: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        return head
    finally:
        writer.close()


async def exchange_udp(port: int, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        transport.sendto(data, ("127.0.0.1", port))
        return await answer
    finally:
        transport.close()


@pytest.mark.parametrize("kind", [Transport.UDP, Transport.TCP, Transport.TLS])
@pytest.mark.parametrize("received", ["attacker.example", "1.2.3", "[not:an:ip]"])
async def test_received_that_is_not_an_ip_gets_400(
    kind: Transport, received: str, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    stack = SipStack(listen(kind, tls=pki.server))
    recorder = Recorder()
    stack.on_request(recorder)
    caplog.set_level(logging.INFO, logger="sipimdn")
    async with asyncio.timeout(5), running(stack):
        port = port_of(stack, kind)
        data = request(kind.value, received)
        if kind is Transport.UDP:
            reply = await exchange_udp(port, data)
        else:
            reply = await exchange_stream(port, data, pki.client if kind is Transport.TLS else None)
    assert reply.startswith(b"SIP/2.0 400 "), reply[:80]
    # Both Vias come back; the bad received is replaced by the address the request came from.
    assert f";branch=z9hG4bKvia{kind.value}".encode() in reply
    assert b"received=127.0.0.1" in reply
    assert received.encode() not in reply.split(b"\r\n", 1)[1]
    assert b"z9hG4bKlower" in reply
    assert recorder.seen == []
    assert any("received= that is not an IP address" in r.getMessage() for r in caplog.records)


async def test_a_good_received_is_still_served() -> None:
    """The repair applies to broken requests only: an IP literal in received is a normal request."""
    stack = SipStack(listen(Transport.TCP))
    recorder = Recorder()
    stack.on_request(recorder)
    async with asyncio.timeout(5), running(stack):
        reply = await exchange_stream(port_of(stack, Transport.TCP), request("TCP", "192.0.2.7"), None)
    assert reply.startswith(b"SIP/2.0 200 "), reply[:80]
    assert len(recorder.seen) == 1
