"""A lossy UDP relay on loopback: forwards datagrams between a client side and one server,
dropping a seeded share of them in each direction.

    relay = await LossyRelay.start(target=("127.0.0.1", bob_port), loss=0.3, seed=1)
    # peers send to relay.port; the server's answers (rport: to the relay's source port) come back
    ...
    relay.close()

Datagrams reaching ``relay.port`` from anyone go to ``target`` from a second socket; datagrams
reaching that second socket go back to whoever last sent from the client side. With RFC 3581
rport the server answers the relay's second socket, so both directions cross the loss.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import cast

Address = tuple[str, int]


@dataclass
class Counters:
    """What the relay did, per direction."""

    forwarded: int = 0
    dropped: int = 0


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay, inbound: bool) -> None:
        self.relay = relay
        self.inbound = inbound
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport: cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay._relay(data, addr, self.inbound)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP from a peer that went away: a lossy network does not report it either


class LossyRelay:
    """Drops ``loss`` of the datagrams in each direction (seeded), forwards the rest unchanged."""

    def __init__(self, target: Address, loss: float, seed: int) -> None:
        self.target = target
        self.loss = loss
        self._rng = random.Random(seed)
        self._front = _Side(self, inbound=True)
        self._back = _Side(self, inbound=False)
        self._client: Address | None = None
        self.to_server = Counters()
        self.to_client = Counters()

    @classmethod
    async def start(cls, target: Address, loss: float, seed: int = 1, host: str = "127.0.0.1") -> LossyRelay:
        """Bind both sockets on ``host`` (port 0) and start relaying."""
        relay = cls(target, loss, seed)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: relay._front, local_addr=(host, 0))
        await loop.create_datagram_endpoint(lambda: relay._back, local_addr=(host, 0))
        return relay

    @property
    def port(self) -> int:
        """Where clients send (the relay's front socket)."""
        assert self._front.transport is not None
        port: int = self._front.transport.get_extra_info("sockname")[1]
        return port

    def _relay(self, data: bytes, addr: Address, inbound: bool) -> None:
        counters = self.to_server if inbound else self.to_client
        if inbound:
            self._client = addr
        if self._rng.random() < self.loss:
            counters.dropped += 1
            return
        out = self._back if inbound else self._front
        destination = self.target if inbound else self._client
        if out.transport is None or destination is None:
            counters.dropped += 1
            return
        counters.forwarded += 1
        out.transport.sendto(data, destination)

    def close(self) -> None:
        """Close both sockets."""
        for side in (self._front, self._back):
            if side.transport is not None:
                side.transport.close()
