"""No leaks: after many messages through one stack / one user agent, every count returns to baseline.

Counted: asyncio tasks, the stack's handler tasks and waiters, client and server transactions,
TCP connections, open file descriptors, RSS; for the user agent also the tracker's sent and owed
records and the store's rows once their expiry has passed.

CI runs a few thousand messages. The bench run is the same test with a bigger count:

    SIPIMDN_LEAK_COUNT=1000000 SIPIMDN_LEAK_T1=0.5 \\
        python -m pytest -q -s tests/robustness/test_leaks.py -k stack
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass

import pytest
from robust_helpers import listen, message_to, open_fds, port_of, running, settle

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.store import MemoryStore
from sipimdn.transport.base import TransportConfig
from sipimdn.transport.flow import Transport

COUNT = int(os.environ.get("SIPIMDN_LEAK_COUNT", "4000"))
UA_COUNT = int(os.environ.get("SIPIMDN_LEAK_UA_COUNT", "400"))
CONCURRENCY = 16
# Timer J (64*T1 = 2.6 s) and K (T4) end soon enough to be waited out; T1 is not shorter so a
# loaded CI machine does not turn into a retransmission storm., so lingering transactions can be waited out.
T1 = float(os.environ.get("SIPIMDN_LEAK_T1", "0.04"))  # the bench uses 0.5 (RFC default): no spurious F
TIMERS = TimerConfig(t1=T1, t2=4 * T1, t4=0.05)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@dataclass(frozen=True)
class Census:
    tasks: int
    handler_tasks: int
    waiters: int
    transactions: int
    connections: int
    fds: int


def census(*stacks: SipStack) -> Census:
    gc.collect()
    return Census(
        tasks=len(asyncio.all_tasks()),
        handler_tasks=sum(len(s._tasks) for s in stacks),
        waiters=sum(len(s._waiters) for s in stacks),
        transactions=sum(s.layer.transaction_count for s in stacks),
        connections=sum(s.transports.connection_count for s in stacks),
        fds=open_fds(),
    )


async def pump(a: SipStack, port: int, count: int, params: str = "") -> float:
    """Send ``count`` MESSAGEs, ``CONCURRENCY`` at a time; returns messages per second."""
    began = time.monotonic()
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            if index and index % 100_000 == 0:  # progress of bench-sized runs: the rate must not sag
                print(f"  {index:,} sent, {index / (time.monotonic() - began):,.0f}/s, {census(a)}, "
                      f"RSS {rss() / 1e6:.0f} MB", flush=True)
            response = await a.send_request(message_to("127.0.0.1", port, body=b"%d" % index, params=params))
            assert response.status_code == 200

    await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    return count / (time.monotonic() - began)


@pytest.mark.parametrize("kind", [Transport.UDP, Transport.TCP])
async def test_stack_counts_return_to_baseline(kind: Transport) -> None:
    # A short idle timeout lets the census see connections close; the bench keeps §18's 64*T1,
    # since on a loaded machine a stall longer than 0.3 s would close a busy connection as idle.
    config = TransportConfig(idle_timeout=0.3 if COUNT <= 20_000 else 64 * T1)
    a = SipStack(listen(Transport.UDP, Transport.TCP), timers=TIMERS, transport_config=config)
    b = SipStack(listen(Transport.UDP, Transport.TCP), timers=TIMERS, transport_config=config)

    handed_up = 0

    async def handler(incoming: IncomingRequest) -> None:  # an async handler: one task per request
        nonlocal handed_up
        await asyncio.sleep(0)
        handed_up += 1  # counted, not kept: keeping a million requests would be the test's own leak
        incoming.respond(200)

    b.on_request(handler)
    params = ";transport=tcp" if kind is Transport.TCP else ""
    deadline = max(60.0, COUNT / 200 + 300 * T1)
    async with asyncio.timeout(deadline), running(a, b):
        port = port_of(b, kind)
        await pump(a, port, 200, params)  # warm-up: caches, interned strings, the first connection
        assert await settle(lambda: census(a, b).transactions == 0 and census(a, b).connections == 0,
                            15 + 70 * T1)
        baseline = census(a, b)
        # Two halves: memory freed by the first is reused by the second, so RSS growth across the
        # second half is what a leak would add (RSS never shrinks, so one batch cannot tell).
        rate = await pump(a, port, COUNT // 2, params)
        during = census(a, b)
        # The counters do count: UDP server transactions linger (Timer J), TCP keeps its connection.
        assert during.transactions > 0 if kind is Transport.UDP else during.connections > 0
        assert await settle(lambda: census(a, b) == baseline, timeout=15 + 70 * T1), (census(a, b), baseline)
        handed_up = 0
        gc.collect()
        rss_half = rss()
        rate = (rate + await pump(a, port, COUNT - COUNT // 2, params)) / 2
        assert await settle(lambda: census(a, b) == baseline, timeout=15 + 70 * T1), (census(a, b), baseline)
        received = handed_up
        gc.collect()
        growth = rss() - rss_half
        print(f"\n{kind.value}: {COUNT} messages at {rate:,.0f}/s; after: {census(a, b)}; "
              f"RSS growth over the second half {growth / 1e6:.1f} MB")
        assert received == COUNT - COUNT // 2
        # A leak of even 1 kB per message would show as COUNT/2 kB.
        assert growth < max(4 * 1024 * 1024, COUNT * 200)


def ua_config(name: str) -> UserAgentConfig:
    return UserAgentConfig(
        aor=f"sip:{name}@127.0.0.1:0",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
        udp_implies_tcp=False,
        t1=TIMERS.t1, t2=TIMERS.t2, t4=TIMERS.t4,
        state_expiry=60.0,
        # The per-destination budgets (RFC 5438 §14) would rightly stop 600 IMDNs a minute to one peer.
        imdn_rate_limit=1_000_000,
        imdn_byte_budget=1 << 40,
    )


TABLES = ("sent", "owed", "received", "seen", "peers")
WEEK = 7 * 24 * 3600.0


def store_rows(store: MemoryStore, now: float) -> dict[str, int]:
    snapshot = store.load(now)
    return {name: len(getattr(snapshot, name)) for name in TABLES}


async def test_user_agent_counts_return_to_baseline() -> None:
    alice_store, bob_store = MemoryStore(), MemoryStore()
    got = 0
    async with asyncio.timeout(120), UserAgent(ua_config("alice"), store=alice_store) as alice, \
            UserAgent(ua_config("bob"), store=bob_store) as bob:

        @bob.on_message
        async def receive(message: object) -> None:
            nonlocal got
            got += 1

        stacks = [alice.stack, bob.stack]
        callbacks = asyncio.all_tasks()  # the test's own; any other task is the user agents'

        async def send_all(count: int) -> None:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(index: int) -> None:
                async with gate:
                    handle = await alice.send_message(bob.aor, f"m{index}", notify={"positive-delivery"})
                    assert await handle.await_disposition("delivered", timeout=20) == "delivered"

            await asyncio.gather(*(one(i) for i in range(count)))

        def quiet() -> bool:
            tracker_a, tracker_b = alice.tracker, bob.tracker
            c = census(*stacks)
            return (c.transactions == 0 and not tracker_a.owed() and not tracker_b.owed()
                    and not tracker_a.snapshot().sent and not asyncio.all_tasks() - callbacks)

        await send_all(50)
        assert await settle(quiet, 10)
        baseline = census(*stacks)
        await send_all(UA_COUNT)
        assert got == UA_COUNT + 50
        assert await settle(quiet, 10)
        assert census(*stacks) == baseline  # type: ignore[arg-type]
        await alice.flush()
        await bob.flush()
        now = time.time()
        # Nothing is owed or awaited any more; bob keeps one dedup row per message received
        # (the tracker's dedup window, 7 days, is not tied to state_expiry) and nothing else.
        assert store_rows(alice_store, now) == dict.fromkeys(TABLES, 0)
        bob_rows = store_rows(bob_store, now)
        assert bob_rows["sent"] == bob_rows["owed"] == bob_rows["peers"] == 0
        assert bob_rows["received"] + bob_rows["seen"] <= UA_COUNT + 50
        # Every row has an expiry: past the longest one, both stores are empty.
        for store in (alice_store, bob_store):
            assert store_rows(store, now + WEEK + 60) == dict.fromkeys(TABLES, 0)
