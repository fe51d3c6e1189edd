"""Connection-table lockout: half-sent connections must not cut a user agent off.

A peer opening hundreds of TCP connections and sending half a message on each holds every slot
busy (a half-received message is never idle). With one shared table that locked the user agent
out of its own outbound requests and refused every other client. The limits that prevent it: a
cap per source address, a share of the table kept for outbound connections, and the eviction of
a connection stalled in the middle of a message when the table is full. Linux routes all of
127.0.0.0/8 to loopback, so 127.0.0.2 and up are other source addresses on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from robust_helpers import Recorder, listen, message_to, port_of, running, settle

from sipimdn.config import UserAgentConfig
from sipimdn.stack import SipStack
from sipimdn.transport.base import TransportConfig
from sipimdn.transport.flow import Transport
from sipimdn.ua import UserAgent
from sipimdn.ua.incoming import IncomingMessage

#: A request that never ends: its header section is not finished.
HALF = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKhalf\r\n"
        b"From: <sip:mallory@example.com>;tag=1\r\n")

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def full_message(uri: str, source: str, call_id: str) -> bytes:
    body = b"hello from elsewhere"
    return (
        f"MESSAGE {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {source}:9;branch=z9hG4bK{call_id};rport\r\n"
        f"From: <sip:carol@example.com>;tag=1\r\nTo: <{uri}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@contextlib.asynccontextmanager
async def half_sent(port: int, count: int, sources: list[str]) -> AsyncIterator[list[Client]]:
    """``count`` connections to ``port``, spread over ``sources``, each holding half a message."""
    opened: list[Client] = []
    try:
        for n in range(count):
            source = sources[n % len(sources)]
            with contextlib.suppress(ConnectionError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                opened.append((reader, writer))
                writer.write(HALF)
                # One turn of the loop: the server reads the half message (it is busy from then
                # on) before the next connection is accepted.
                await asyncio.sleep(0.001)
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def ask(port: int, source: str, uri: str, call_id: str) -> bytes:
    """Send one whole MESSAGE from ``source`` and return the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(full_message(uri, source, call_id))
        return await reader.readuntil(b"\r\n")
    finally:
        writer.close()


async def test_half_sent_flood_from_one_address_locks_nobody_out(caplog: pytest.LogCaptureFixture) -> None:
    """300 half-sent connections from 127.0.0.1 (more than the whole default table of 256); the
    user agent still sends its own MESSAGE over TCP and still serves a client from 127.0.0.2."""
    caplog.set_level(logging.WARNING, logger="sipimdn.transport")
    bob_config = UserAgentConfig(aor="sip:bob@127.0.0.1:0")  # UDP, and TCP implied (RFC 3261 §18.2.1)
    alice_config = UserAgentConfig(aor="sip:alice@127.0.0.1:0")
    received: list[IncomingMessage] = []

    async def keep(message: IncomingMessage) -> None:
        received.append(message)

    async with asyncio.timeout(30), UserAgent(bob_config) as bob, UserAgent(alice_config) as alice:
        alice.on_message(keep)
        bob.on_message(keep)
        bob_tcp = next(ep.port for ep in bob.endpoints if ep.transport == "tcp")
        async with half_sent(bob_tcp, 300, ["127.0.0.1"]):
            await settle(lambda: bob.connection_counters.refused_per_source >= 300 - 32, timeout=5)
            counters = bob.connection_counters
            assert counters.refused_per_source >= 300 - 32
            # (a) our own request still finds a connection slot.
            handle = await bob.send_message(alice.contact_uri("tcp"), "still here", transport="tcp")
            response = await asyncio.wait_for(handle.final_response(), 5)
            assert response.status_code == 200
            # (b) a client from another address is served.
            status_line = await asyncio.wait_for(
                ask(bob_tcp, "127.0.0.2", bob.contact_uri("tcp"), "lockout-b"), 5)
            assert status_line.startswith(b"SIP/2.0 200 "), status_line
            assert [m.body for m in received] == [b"still here", b"hello from elsewhere"]
    # The refusals were logged, but not once each.
    refusals = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert 1 <= len(refusals) <= 3


async def test_stalled_connections_make_room_when_the_table_is_full() -> None:
    """Half-sent connections from many addresses fill the inbound share: a newcomer is refused
    while they are fresh and admitted once the oldest has been stalled for long enough; our own
    outbound request always finds the reserved slot."""
    config = TransportConfig(max_connections=8, max_connections_per_source=2, stalled_connection_after=2.0)
    assert (config.inbound_share, config.outbound_reserve) == (7, 1)
    stack = SipStack(listen(Transport.TCP), transport_config=config)
    recorder = Recorder()
    stack.on_request(recorder)
    peer = SipStack(listen(Transport.TCP))
    peer.on_request(Recorder())
    async with asyncio.timeout(20), running(stack, peer):
        port = port_of(stack, Transport.TCP)
        sources = [f"127.0.0.{n}" for n in range(3, 10)]  # 7 addresses, one connection each
        async with half_sent(port, 7, sources) as attackers:
            await settle(lambda: stack.transports.inbound_count == 7, timeout=3)
            assert stack.transports.inbound_count == 7
            # Fresh half messages are busy: the newcomer is refused ...
            refused_line = b""
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                refused_line = await asyncio.wait_for(
                    ask(port, "127.0.0.2", f"sip:bob@127.0.0.1:{port}", "early"), 3)
            assert refused_line == b""
            assert stack.transports.counters.refused_inbound == 1
            # ... but our own request uses the reserved slot.
            out = message_to("127.0.0.1", port_of(peer, Transport.TCP), params=";transport=tcp")
            assert (await stack.send_request(out)).status_code == 200
            # Once stalled for long enough, the oldest half message gives its slot up.
            await asyncio.sleep(2.1)
            line = await asyncio.wait_for(ask(port, "127.0.0.2", f"sip:bob@127.0.0.1:{port}", "late"), 3)
            assert line.startswith(b"SIP/2.0 200 ")
            assert stack.transports.counters.evicted_stalled == 1
            async with asyncio.timeout(2):
                assert await attackers[0][0].read() == b""  # the first (oldest) was the one closed
        assert [r.request.call_id for r in recorder.seen] == ["late"]


async def test_per_source_cap_keeps_the_rest_of_the_table_open() -> None:
    config = TransportConfig(max_connections=16, max_connections_per_source=3)
    stack = SipStack(listen(Transport.TCP), transport_config=config)
    stack.on_request(Recorder())
    async with asyncio.timeout(20), running(stack):
        port = port_of(stack, Transport.TCP)
        async with half_sent(port, 10, ["127.0.0.3"]):
            await settle(lambda: stack.transports.counters.refused_per_source == 7, timeout=3)
            assert stack.transports.inbound_count == 3
            assert stack.transports.counters.refused_per_source == 7
            line = await asyncio.wait_for(ask(port, "127.0.0.4", f"sip:bob@127.0.0.1:{port}", "other"), 3)
            assert line.startswith(b"SIP/2.0 200 ")


async def test_idle_connections_of_a_source_at_its_cap_make_room_for_its_next() -> None:
    """A client reconnecting (its old connections idle) is not refused: its own oldest idle
    connection is closed for the new one."""
    config = TransportConfig(max_connections=16, max_connections_per_source=2)
    stack = SipStack(listen(Transport.TCP), transport_config=config)
    stack.on_request(Recorder())
    async with asyncio.timeout(20), running(stack):
        port = port_of(stack, Transport.TCP)
        idle = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
                for _ in range(2)]
        try:
            await settle(lambda: stack.transports.inbound_count == 2, timeout=3)
            line = await asyncio.wait_for(ask(port, "127.0.0.5", f"sip:bob@127.0.0.1:{port}", "again"), 3)
            assert line.startswith(b"SIP/2.0 200 ")
            assert stack.transports.counters.evicted_idle == 1
            assert stack.transports.counters.refused_per_source == 0
            async with asyncio.timeout(2):
                assert await idle[0][0].read() == b""
        finally:
            for _, writer in idle:
                writer.close()
