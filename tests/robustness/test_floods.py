"""A UDP garbage flood at full local speed while valid MESSAGEs keep flowing through SipStack.

The flooder is a separate process (so it is not slowed by our event loop) sending, as fast as
one core allows, a mix of random bytes, truncated requests whose Via is readable (each one
costs the stack a stateless 400) and stray responses matching no transaction. Meanwhile stack A
sends MESSAGEs to stack B on the flooded port. Measured: the share of valid MESSAGEs answered
200 (retransmissions recover datagrams lost in the flooded socket buffer), the flood rate, and
B's memory (RSS and live transactions) staying bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable

from robust_helpers import Recorder, listen, message_to, port_of, running

from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import TransactionTimeout, TransportError
from sipimdn.stack import SipStack
from sipimdn.transport.flow import Transport

FLOOD_SECONDS = 3.0
VALID_MESSAGES = 150
# T1 = 100 ms: a lost MESSAGE is retransmitted after 0.1, 0.2, 0.4, 0.8 ... s; Timer F = 6.4 s.
TIMERS = TimerConfig(t1=0.1, t2=0.8, t4=0.5)

FLOODER = textwrap.dedent("""
    import os, random, socket, sys, time
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    rng = random.Random(1)
    head = (b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\\r\\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKflood%d;rport\\r\\n"
            b"From: <sip:mallory@example.com>;tag=x\\r\\nTo: <sip:bob@example.com>\\r\\n"
            b"Call-ID: %d@flood\\r\\n"
            b"CSeq: 1 MESSAGE\\r\\nContent-Length: 99\\r\\n\\r\\nshort")
    stray = (b"SIP/2.0 200 OK\\r\\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKnobody%d\\r\\n"
             b"From: <sip:a@b>;tag=1\\r\\nTo: <sip:b@b>;tag=2\\r\\nCall-ID: %d@stray\\r\\n"
             b"CSeq: 1 MESSAGE\\r\\n"
             b"Content-Length: 0\\r\\n\\r\\n")
    pool = [os.urandom(rng.randint(1, 1400)) for _ in range(64)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read the 400s we provoke
    sent, i, end = 0, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            i += 1
            kind = i % 4
            if kind == 0:
                data = head % (i, i)
            elif kind == 1:
                data = stray % (port, i, i)
            else:
                data = pool[i % 64]
            try:
                s.sendto(data, ("127.0.0.1", port))
                sent += 1
            except OSError:
                pass  # ENOBUFS and the like: the kernel is full, keep going
    print(sent)
""")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_valid_traffic_survives_a_garbage_flood(record_property: Callable[[str, object], None]) -> None:
    a = SipStack(listen(Transport.UDP), timers=TIMERS)
    b = SipStack(listen(Transport.UDP), timers=TIMERS)
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(60), running(a, b):
        port = port_of(b, Transport.UDP)
        # Warm up so the baseline includes the code paths' own allocations.
        for _ in range(20):
            await a.send_request(message_to("127.0.0.1", port))
        rss_before = rss_bytes()
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOODER, str(port), str(FLOOD_SECONDS),
            stdout=subprocess.PIPE)
        peak_transactions = 0
        peak_rss = rss_before

        async def one(index: int) -> bool:
            nonlocal peak_transactions, peak_rss
            await asyncio.sleep(index * FLOOD_SECONDS / VALID_MESSAGES)  # spread over the flood
            try:
                response = await a.send_request(message_to("127.0.0.1", port, body=b"valid %d" % index))
            except (TransactionTimeout, TransportError):
                return False
            finally:
                peak_transactions = max(peak_transactions, b.layer.transaction_count)
                peak_rss = max(peak_rss, rss_bytes())
            return response.status_code == 200

        results = await asyncio.gather(*(one(i) for i in range(VALID_MESSAGES)))
        stdout, _ = await flooder.communicate()
        flood_count = int(stdout)
        share = sum(results) / len(results)
        record_property("valid_share", share)
        record_property("flood_datagrams", flood_count)
        record_property("rss_growth_bytes", peak_rss - rss_before)
        print(f"\nflood: {flood_count} garbage datagrams in {FLOOD_SECONDS} s "
              f"({flood_count / FLOOD_SECONDS:,.0f}/s); valid MESSAGEs answered 200: {sum(results)}/"
              f"{len(results)} = {share:.1%}; peak server transactions {peak_transactions}; "
              f"RSS growth {(peak_rss - rss_before) / 1e6:.1f} MB")
        assert flood_count > 10_000, "the flooder did not flood"
        assert share >= 0.95
        # Garbage never creates transactions; the stray responses and broken requests are stateless.
        assert peak_transactions <= VALID_MESSAGES + 20
        assert peak_rss - rss_before < 64 * 1024 * 1024
        # Every valid MESSAGE reached the application exactly once (retransmissions absorbed).
        bodies = [r.request.body for r in recorder.seen[20:]]
        assert len(bodies) == len(set(bodies)) >= sum(results)
