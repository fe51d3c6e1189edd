"""baresip (text/plain only) against sipimdn's UserAgent.

- sipimdn -> baresip with CPIM on: baresip answers 415 (Accept: text/plain); sipimdn
  retries once as text/plain by itself, gets 200, and remembers: the next message to baresip
  goes as text/plain straight away.
- baresip -> sipimdn: a plain text MESSAGE arrives and is handed to the application.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.events import DispositionState
from sipimdn.ua import IncomingMessage

from .baresip.peers import Baresip
from .sipp import LOOPBACK

pytestmark = pytest.mark.interop

UNSUPPORTED = "SIP/2.0 415 Unsupported Media Type"


@pytest.fixture
async def pair(
    tmp_path: Path, baresip_binary: str
) -> AsyncIterator[tuple[UserAgent, Baresip, list[IncomingMessage]]]:
    """sipimdn's UserAgent (tester) and baresip (bob, whose contact is tester), both running."""
    # sipimdn first, on a port the system picks, so that baresip's contact can name it.
    config = UserAgentConfig(
        aor=f"sip:tester@{LOOPBACK}",
        listen=(ListenEndpoint("udp", LOOPBACK, 0),),
        udp_implies_tcp=False,
        store_path=":memory:",
    )
    received: list[IncomingMessage] = []
    async with UserAgent(config) as ua:

        async def on_message(message: IncomingMessage) -> None:
            received.append(message)

        ua.on_message(on_message)
        contact = ua.contact_uri("udp")
        peer = Baresip(baresip_binary, tmp_path / "baresip", user="bob", contact=contact)
        await asyncio.to_thread(peer.start)
        try:
            yield ua, peer, received
        finally:
            await asyncio.to_thread(peer.stop)


async def test_cpim_to_baresip_gets_415_and_falls_back_to_text_plain(
    pair: tuple[UserAgent, Baresip, list[IncomingMessage]],
) -> None:
    ua, peer, _ = pair
    first = await ua.send_message(peer.uri, "Hello baresip", notify={"positive-delivery"})
    response = await asyncio.wait_for(first.final_response(), 15)
    assert response.status_code == 200, peer.describe()
    assert first.notify == frozenset()  # text/plain cannot carry notification requests
    # Its notifications cannot come (the body went out without CPIM): a terminal state, not a
    # message left waiting until its deadline.
    assert first.state is DispositionState.UNSUPPORTED
    assert await asyncio.to_thread(peer.wait_for, '"Hello baresip', 5.0), peer.describe()
    assert peer.output().count(UNSUPPORTED) == 1, peer.describe()

    # Remembered for this peer: the next message is text/plain at once, no second 415.
    second = await ua.send_message(peer.uri, "Hello again", notify={"positive-delivery"})
    response = await asyncio.wait_for(second.final_response(), 15)
    assert response.status_code == 200, peer.describe()
    assert second.state is DispositionState.UNSUPPORTED
    assert await asyncio.to_thread(peer.wait_for, '"Hello again', 5.0), peer.describe()
    assert peer.output().count(UNSUPPORTED) == 1, peer.describe()
    assert peer.received_texts() == ["Hello baresip", "Hello again"], peer.describe()


async def test_baresip_plain_text_reaches_sipimdn(
    pair: tuple[UserAgent, Baresip, list[IncomingMessage]],
) -> None:
    _, peer, received = pair
    await asyncio.to_thread(peer.send_message, "Hello from baresip")
    deadline = asyncio.get_running_loop().time() + 10
    while not received and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(received) == 1, peer.describe()
    message = received[0]
    assert message.content_type.startswith("text/plain")
    assert message.text.strip() == "Hello from baresip"
    assert not message.notify
    # baresip traces the answer it got (sipimdn answers once the handler has returned).
    assert await asyncio.to_thread(peer.wait_for, "SIP/2.0 200 OK", 5.0), peer.describe()
