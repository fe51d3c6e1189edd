"""SIP over TCP and TLS on uvloop's event loop, whose transports do not derive from asyncio.Transport.

uvloop is optional (the ``bench`` extra), not a dependency. scripts/test installs that extra, so
with CI=true a missing uvloop fails these tests; on a developer machine without it they skip,
saying so. With it, a MESSAGE and its 200 cross a real connection on 127.0.0.1 both ways.
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from _peers import IN_CI

from sipimdn.dialog.factory import build_request
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Transport

try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    if IN_CI:
        raise  # scripts/test installs the bench extra: a missing uvloop is a broken install
    pytest.skip("uvloop (optional, the 'bench' extra) is not installed: no uvloop round trip",
                allow_module_level=True)


async def round_trip(kind: Transport, server_context: ssl.SSLContext | None,
                     client_context: ssl.SSLContext | None) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    seen: list[IncomingRequest] = []

    def handler(incoming: IncomingRequest) -> None:
        seen.append(incoming)
        incoming.respond(200)

    a = SipStack([ListenSpec(Transport.UDP, "127.0.0.1")],
                 transport_config=TransportConfig(client_ssl_context=client_context))
    b = SipStack([ListenSpec(kind, "127.0.0.1", 0, server_context)])
    b.on_request(handler)
    async with asyncio.timeout(10), a, b:
        port = next(p for k, (_, p) in b.endpoints if k is kind)
        for n in range(3):  # the second and third reuse the connection
            request = build_request("MESSAGE", f"sip:bob@127.0.0.1:{port};transport={kind.value.lower()}",
                                    "<sip:alice@example.com>", "<sip:bob@example.com>",
                                    body=b"hello %d" % n, content_type="text/plain")
            response = await a.send_request(request)
            assert response.status_code == 200
        assert [i.request.body for i in seen] == [b"hello 0", b"hello 1", b"hello 2"]
        assert all(i.flow.transport is kind for i in seen)
        assert a.transports.connection_count == 1 and b.transports.connection_count == 1


def test_tcp_round_trip_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(round_trip(Transport.TCP, None, None))


def test_tls_round_trip_on_uvloop() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(round_trip(Transport.TLS, server, client))
