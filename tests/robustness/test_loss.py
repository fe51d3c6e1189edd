"""Packet loss on UDP (10% and 30%, seeded) between two SipStacks and between two UserAgents.

The relay (``lossy_relay.py``) drops datagrams in both directions; short timers (T1 = 20 ms)
keep retransmission fast. Promised: every request completes (a final response before Timer F,
64*T1) and reaches the application exactly once; between user agents every message is accepted
once and every requested notification is delivered.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from lossy_relay import LossyRelay
from robust_helpers import Recorder, listen, message_to, port_of, running, settle

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.events import DispositionState
from sipimdn.stack import SipStack
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage

# T2 = 2*T1: with a 1.28 s Timer F a request is retransmitted ~30 times, so even at 30% loss each
# way (49% chance a request/response pair gets through) a failed transaction has odds ~1e-9.
TIMERS = TimerConfig(t1=0.02, t2=0.04, t4=0.1)
MESSAGES = 100
CONCURRENCY = 10


@pytest.mark.parametrize("loss", [0.1, 0.3])
async def test_every_request_completes_exactly_once(loss: float) -> None:
    a = SipStack(listen(Transport.UDP), timers=TIMERS)
    b = SipStack(listen(Transport.UDP), timers=TIMERS)
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(60), running(a, b):
        relay = await LossyRelay.start(("127.0.0.1", port_of(b, Transport.UDP)), loss, seed=int(loss * 100))
        try:
            gate = asyncio.Semaphore(CONCURRENCY)
            durations: list[float] = []

            async def one(index: int) -> int:
                async with gate:
                    began = time.monotonic()
                    request = message_to("127.0.0.1", relay.port, body=b"m%d" % index,
                                         call_id=f"loss-{index}")
                    response = await a.send_request(request)
                    durations.append(time.monotonic() - began)
                    return response.status_code

            statuses = await asyncio.gather(*(one(i) for i in range(MESSAGES)))
        finally:
            relay.close()
        assert statuses == [200] * MESSAGES
        # Exactly once at the application, though many requests arrived several times.
        call_ids = sorted(r.request.call_id for r in recorder.seen)
        assert call_ids == sorted(f"loss-{i}" for i in range(MESSAGES))
        assert max(durations) < TIMERS.timer_f
        dropped = relay.to_server.dropped + relay.to_client.dropped
        total = dropped + relay.to_server.forwarded + relay.to_client.forwarded
        assert abs(dropped / total - loss) < 0.08, f"relay dropped {dropped}/{total}"
        assert relay.to_server.forwarded > MESSAGES  # retransmissions did happen


def ua_config(name: str, advertised_port: int, **extra: object) -> UserAgentConfig:
    """A UDP-only agent whose AOR names the relay in front of it, listening on a free port."""
    return UserAgentConfig(
        aor=f"sip:{name}@127.0.0.1:{advertised_port}",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
        udp_implies_tcp=False,
        t1=TIMERS.t1, t2=TIMERS.t2, t4=TIMERS.t4,
        imdn_retry_base=0.2, imdn_retry_cap=0.5, imdn_max_attempts=10,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("loss", [0.1, 0.3])
async def test_user_agents_deliver_every_message_and_notification(loss: float) -> None:
    """alice -> relay -> bob for MESSAGEs; bob -> relay -> alice for the IMDNs."""
    seed = int(loss * 1000)
    # Relays first, so the AORs can name them; their targets are set once the agents are bound.
    to_bob = await LossyRelay.start(("127.0.0.1", 9), loss, seed=seed)
    to_alice = await LossyRelay.start(("127.0.0.1", 9), loss, seed=seed + 1)
    received: list[IncomingMessage] = []
    count = 30
    try:
        async with asyncio.timeout(60), UserAgent(ua_config("alice", to_alice.port)) as alice, \
                UserAgent(ua_config("bob", to_bob.port)) as bob:
            to_bob.target = ("127.0.0.1", bob.endpoints[0].port)
            to_alice.target = ("127.0.0.1", alice.endpoints[0].port)

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                received.append(message)

            gate = asyncio.Semaphore(CONCURRENCY)
            handles = []

            async def one(index: int) -> DispositionState:
                async with gate:
                    handle = await alice.send_message(bob.aor, f"message {index}",
                                                      notify={"positive-delivery", "display"})
                    handles.append(handle)
                    return await handle.await_disposition("delivered", timeout=20)

            states = await asyncio.gather(*(one(i) for i in range(count)))
            assert states == [DispositionState.DELIVERED] * count
            await settle(lambda: len(received) >= count, timeout=2)
            texts = sorted(m.text for m in received)
            assert texts == sorted(f"message {i}" for i in range(count))  # each exactly once
            # The second notification of each message crosses the loss too.
            assert all([await m.mark_displayed() for m in received])
            displayed = await asyncio.gather(*(h.await_disposition("displayed", timeout=20) for h in handles))
            assert displayed == [DispositionState.DISPLAYED] * count
            assert to_bob.to_server.dropped and to_alice.to_server.dropped  # loss hit both paths
    finally:
        to_bob.close()
        to_alice.close()
