"""Bounded dedup on loopback: a UserAgent receiving thousands of fresh Message-IDs keeps at most
``dedup_max`` of them, and a copy older than that window reaches the application again."""

from __future__ import annotations

import asyncio

from sipimdn import UserAgent, cpim, imdn
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.dialog.factory import build_request
from sipimdn.stack import SipStack
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage

SENDER = "sip:mallory@127.0.0.1"
CAP = 200
COUNT = 2000


def im(to: str, message_id: str) -> bytes:
    return cpim.build_message(
        [("From", f"<{SENDER}>"), ("To", f"<{to}>"), ("NS", "imdn <urn:ietf:params:imdn>"),
         ("imdn.Message-ID", message_id), ("DateTime", "2026-01-01T00:00:00.000Z")],
        content_type="text/plain; charset=utf-8", body=b"hello").to_bytes()


async def test_fresh_message_ids_are_bounded_by_dedup_max() -> None:
    config = UserAgentConfig(
        aor="sip:bob@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),), udp_implies_tcp=False,
        dedup_max=CAP,
    )
    received: list[str] = []
    bob = UserAgent(config)

    @bob.on_message
    async def receive(message: IncomingMessage) -> None:
        received.append(message.message_id or "")

    sender = SipStack([ListenSpec(Transport.UDP, "127.0.0.1", 0, None)])
    ids = [imdn.new_message_id() for _ in range(COUNT)]

    async def send(message_id: str) -> int:
        request = build_request("MESSAGE", bob.aor, f"<{SENDER}>", f"<{bob.aor}>",
                                body=im(bob.aor, message_id), content_type="message/cpim")
        return (await sender.send_request(request)).status_code

    async with asyncio.timeout(60), sender, bob:
        for start in range(0, COUNT, 50):
            statuses = await asyncio.gather(*(send(i) for i in ids[start : start + 50]))
            assert statuses == [200] * len(statuses)
            assert bob.tracker.dedup_size == min(start + 50, CAP)
        assert len(received) == COUNT
        assert bob.tracker.dedup_evictions == COUNT - CAP
        # A recent copy is still a duplicate: answered, never handed up twice.
        assert await send(ids[-1]) == 200
        # The oldest fell out of the window: the documented trade-off, it reaches the app again.
        assert await send(ids[0]) == 200
        assert received[COUNT:] == [ids[0]]
