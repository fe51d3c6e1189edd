"""Helpers for the user-agent tests: configs per transport, event recorders, a raw SIP peer."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.events import DispositionChanged, DispositionEvent, DispositionState
from sipimdn.message import Request, Response
from sipimdn.parser import parse_message


@dataclass(frozen=True)
class Tls:
    """Server and client contexts from one trustme CA."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def make_tls() -> Tls:
    """A CA, a certificate for 127.0.0.1 and ::1, and contexts trusting it."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return Tls(server, client)


def ua_config(
    name: str,
    transport: str = "udp",
    tls: Tls | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    **extra: Any,
) -> UserAgentConfig:
    """A loopback user agent config; port 0 in the AOR becomes the bound port."""
    bracketed = f"[{host}]" if ":" in host else host
    if transport == "udp":
        aor = f"sip:{name}@{bracketed}:{port}"
    elif transport == "tcp":
        aor = f"sip:{name}@{bracketed}:{port};transport=tcp"
    else:
        aor = f"sips:{name}@{bracketed}:{port}"
    return UserAgentConfig(
        aor=aor,
        display_name=name.capitalize(),
        listen=(ListenEndpoint(transport, host, port),),
        tls_server_context=tls.server if tls else None,
        tls_client_context=tls.client if tls else None,
        **extra,
    )


class Recorder:
    """An ``on_disposition``/``on_notification`` handler keeping every event."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._arrived = asyncio.Event()

    async def __call__(self, event: DispositionEvent | Any) -> None:
        self.events.append(event)
        self._arrived.set()

    def states(self, message_id: str) -> list[DispositionState]:
        """The successive states of one message, from DispositionChanged events."""
        return [
            e.state for e in self.events if isinstance(e, DispositionChanged) and e.message_id == message_id
        ]

    def of(self, kind: type[Any]) -> list[Any]:
        """Events of one type."""
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for_more(self, seen: int, timeout: float = 5.0) -> None:
        """Wait until more than ``seen`` events arrived in total."""

        async def wait() -> None:
            while len(self.events) <= seen:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(wait(), timeout)

    async def wait_for(self, kind: type[Any], count: int = 1, timeout: float = 5.0) -> list[Any]:
        """Wait until ``count`` events of ``kind`` arrived."""

        async def wait() -> list[Any]:
            while len(self.of(kind)) < count:
                self._arrived.clear()
                await self._arrived.wait()
            return self.of(kind)

        return await asyncio.wait_for(wait(), timeout)


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket speaking hand-written SIP, to send what a user agent never would."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.requests: asyncio.Queue[Request] = asyncio.Queue()

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> RawPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Response):
            self.responses.put_nowait(message)
        else:
            self.requests.put_nowait(message)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def request_bytes(
        self,
        method: str,
        to: str,
        *,
        from_uri: str | None = None,
        call_id: str | None = None,
        cseq: int = 1,
        from_tag: str = "raw1",
        content_type: str | None = None,
        body: bytes = b"",
        extra: Iterable[str] = (),
    ) -> tuple[bytes, str]:
        """A request from this peer; returns it and its branch."""
        host, port = self.address
        branch = "z9hG4bK" + secrets.token_hex(8)
        sender = from_uri or f"sip:raw@{host}:{port}"
        lines = [
            f"{method} {to} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{sender}>;tag={from_tag}",
            f"To: <{to}>",
            f"Call-ID: {call_id or secrets.token_hex(8)}",
            f"CSeq: {cseq} {method}",
            *extra,
        ]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch

    async def transact(
        self, data: bytes, branch: str, dest: tuple[str, int], timeout: float = 3.0
    ) -> Response:
        """Send ``data`` to ``dest`` and wait for the final response of that branch."""
        assert self.transport is not None
        self.transport.sendto(data, dest)

        async def wait() -> Response:
            while True:
                response = await self.responses.get()
                if response.top_via.branch == branch and response.status_code >= 200:
                    return response

        return await asyncio.wait_for(wait(), timeout)


class StackPeer:
    """A bare :class:`SipStack` playing a peer that is not a sipimdn user agent.

    ``answer(request)`` returns the status (and extra headers) for each request
    it receives, or None to leave it to the test (via ``incoming``).
    """

    def __init__(self, name: str, answer: Any = None, transport: str = "udp") -> None:
        from sipimdn.stack import SipStack
        from sipimdn.transport.base import ListenSpec
        from sipimdn.transport.flow import Transport

        self.name = name
        self._answer = answer
        self.stack = SipStack([ListenSpec(Transport.from_token(transport), "127.0.0.1", 0)])
        self.requests: list[Request] = []
        self.incoming: asyncio.Queue[Any] = asyncio.Queue()
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> StackPeer:
        await self.stack.start()
        self.stack.on_request(self._on_request)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.close()

    @property
    def aor(self) -> str:
        _, (host, port) = self.stack.endpoints[0]
        return f"sip:{self.name}@{host}:{port}"

    def _on_request(self, incoming: Any) -> None:
        self.requests.append(incoming.request)
        self._arrived.set()
        decision = self._answer(incoming.request) if self._answer is not None else None
        if decision is None:
            self.incoming.put_nowait(incoming)
        elif isinstance(decision, int):
            incoming.respond(decision)
        else:
            status, headers = decision
            incoming.respond(status, None, headers)

    async def wait_requests(self, count: int, timeout: float = 5.0) -> list[Request]:
        """Wait until ``count`` requests arrived."""

        async def wait() -> list[Request]:
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
            return self.requests

        return await asyncio.wait_for(wait(), timeout)

    async def send_message(self, to: str, content_type: str, body: bytes) -> Response:
        """Send a MESSAGE from this peer (its AOR as SIP From)."""
        from sipimdn.dialog.factory import build_request

        request = build_request(
            "MESSAGE", to, f"<{self.aor}>", f"<{to}>", body=body, content_type=content_type
        )
        return await self.stack.send_request(request)
