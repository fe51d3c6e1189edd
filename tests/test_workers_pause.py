"""Two worker processes sharing PostgreSQL; one is paused (SIGSTOP) for longer than its lease.

Worker w1 owes delivered IMDNs (unanswered: one in flight, the others waiting behind it for the
destination) when it is stopped, as a long stall (swapping, a debugger, a VM pause) would stop
it. w2 takes them over once w1's lease runs out and sends them. When w1 continues (SIGCONT) it
must not send them again: its timers fire at once, but it holds every owed IMDN until a lease
renewal confirms what it still owns, and finds that it owns none of them (its writes of them are
fenced off, and its late renewal says so too); it stops tracking them, logs it once and counts
it. What w1 may still send is a retransmission of the transaction it had started before the
pause (same Call-ID and branch: the peer absorbs it, and its Message-ID is the one w2 used).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from test_cli_ua import ENV, _read_line
from test_ua_workers import answer, im_bytes, notified
from ua_helpers import RawPeer

from sipimdn.message import Request

N = 5
LEASE = 2.0
WORKER = Path(__file__).with_name("worker_process.py")


@contextlib.contextmanager
def worker(url: str, name: str) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), url, name, str(LEASE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, 20)
        if not line:
            proc.wait(10)
            raise AssertionError(f"worker exited early: {proc.stderr.read() if proc.stderr else ''}")
        ready = json.loads(line)
        assert ready["event"] == "listening"
        yield proc, (ready["host"], int(ready["port"]))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process would not die of SIGTERM yet
            proc.kill()
        proc.wait(10)


def _finish(proc: subprocess.Popen[str]) -> tuple[dict[str, object], str]:
    proc.terminate()
    out, err = proc.communicate(timeout=20)
    stats = [json.loads(line) for line in out.splitlines() if line.startswith('{"event": "stats"')]
    assert stats, err
    return stats[-1], err


async def test_a_paused_worker_does_not_send_what_the_survivor_took_over(postgres_url: str) -> None:
    with worker(postgres_url, "w1") as (w1, at1), worker(postgres_url, "w2") as (w2, at2):
        raw = await RawPeer.open()
        try:
            aor = f"sip:bob@{at1[0]}:{at1[1]}"
            for i in range(N):
                data, branch = im_bytes(raw, aor, f"paused-{i}", f"call-{i}")
                assert (await raw.transact(data, branch, at1, timeout=10)).status_code == 200
            started: set[str] = set()  # Call-IDs of the IMDN transactions w1 started before the pause

            def from_(request: Request, address: tuple[str, int]) -> bool:
                return (request.top_via.host, request.top_via.port) == address

            first = await asyncio.wait_for(raw.requests.get(), 10)
            assert from_(first, at1) and notified(first).message_id.startswith("paused-")
            started.add(first.call_id)
            os.kill(w1.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            delivered: set[str] = set()
            late: list[Request] = []  # new IMDN transactions from w1 after the pause

            def note(request: Request) -> None:
                if b"imdn+xml" not in request.body:
                    return
                if from_(request, at2):
                    delivered.add(notified(request).message_id)
                    answer(raw, request, at2)
                elif from_(request, at1):
                    if request.call_id in started:
                        return  # a retransmission of a transaction started before the pause
                    late.append(request)

            while len(delivered) < N and time.monotonic() - stopped_at < 4 * LEASE + 10:
                with contextlib.suppress(TimeoutError):
                    note(await asyncio.wait_for(raw.requests.get(), 0.5))
            assert delivered == {f"paused-{i}" for i in range(N)}
            # w2 took over after w1's lease ran out, not before.
            os.kill(w1.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            while time.monotonic() - resumed_at < 5.0:  # Timer F, the retry and several lease ticks
                with contextlib.suppress(TimeoutError):
                    note(await asyncio.wait_for(raw.requests.get(), 0.2))
            assert late == [], [notified(r).message_id for r in late]
        finally:
            raw.close()
        stats1, err1 = _finish(w1)
        stats2, _ = _finish(w2)
    assert stats1["records_lost"] == N, err1
    assert stats2["records_lost"] == 0
    warnings = [line for line in err1.splitlines() if "now belong to another worker" in line]
    assert warnings and all(line.startswith("WARNING") for line in warnings), err1
