"""Helpers for the robustness tests: loopback stacks, a recording handler, certificates, counters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trustme

from sipimdn.dialog.factory import build_request
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.message import Request
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport

#: Short timers so loss recovery fits in CI: E starts at 20 ms, F (64*T1) is 1.28 s.
FAST = TimerConfig(t1=0.02, t2=0.16, t4=0.1)


def message_to(host: str, port: int, body: bytes = b"hello", params: str = "", *, scheme: str = "sip",
               call_id: str | None = None) -> Request:
    """A page-mode MESSAGE to bob at host:port."""
    uri = f"{scheme}:bob@{host}:{port}{params}"
    return build_request("MESSAGE", uri, "<sip:alice@example.com>", "<sip:bob@example.com>",
                         body=body, content_type="text/plain", call_id=call_id)


@dataclass
class Recorder:
    """A request handler that answers ``status`` and keeps every request it saw."""

    status: int | None = 200
    seen: list[IncomingRequest] = field(default_factory=list)

    def __call__(self, incoming: IncomingRequest) -> None:
        self.seen.append(incoming)
        if self.status is not None:
            incoming.respond(self.status)


def port_of(stack: SipStack, kind: Transport) -> int:
    """The bound port of the stack's ``kind`` listener."""
    for transport, (_, port) in stack.endpoints:
        if transport is kind:
            return port
    raise AssertionError(f"{kind} not listening")


def listen(*kinds: Transport, tls: ssl.SSLContext | None = None) -> list[ListenSpec]:
    """Listen specs on 127.0.0.1, port 0."""
    return [ListenSpec(k, "127.0.0.1", 0, tls if k is Transport.TLS else None) for k in kinds]


@contextlib.asynccontextmanager
async def running(*stacks: SipStack) -> AsyncIterator[None]:
    """Start every stack; close them all on the way out."""
    async with contextlib.AsyncExitStack() as exit_stack:
        for stack in stacks:
            await exit_stack.enter_async_context(stack)
        yield


@dataclass(frozen=True)
class Pki:
    """One trustme CA with a server certificate for 127.0.0.1 and contexts around it."""

    ca: trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_pki() -> Pki:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "sip.example.test").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return Pki(ca, server, client)


def open_fds() -> int:
    """Open file descriptors of this process (Linux)."""
    return len(os.listdir("/proc/self/fd"))


async def settle(predicate: object, timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; returns its last value."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(step)
    return True
