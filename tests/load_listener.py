"""Drive a ``sipimdn listen`` process with messages that ask for delivery and display notifications.

Used by the sustained-load memory test and runnable by hand to measure it::

    python tests/load_listener.py --messages 30000 --rounds 6 --working-set-max 500 --dedup-max 2000
    python tests/load_listener.py ... --working-set-max none    # every record in memory, to compare

The listener runs as its own process on TCP (no Timer J: a completed server transaction is
dropped at once, so what stays is the tracker's), with a SQLite store file. Messages come from
a bare SIP stack in this process, as from 100 senders (RFC 3428 §8 allows one MESSAGE
transaction at a time per Request-URI: the notifications to one sender leave one by one), which
answers the listener's delivery notifications 200; the
application never marks anything displayed, so every message keeps a display notification owed.
After each round the listener's resident set size (``VmRSS`` of ``/proc/<pid>/status``) and the
store's ``received`` row count are read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sipimdn import cpim, imdn
from sipimdn.dialog.factory import build_request
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport

__all__ = ["Round", "listener", "send_rounds"]

#: Messages in flight at once.
WINDOW = 200
#: Distinct senders the messages come from.
SENDERS = 100
#: Each message's Subject: kept with the message while a notification may be owed (it is echoed
#: in the notification, RFC 5438 §7.2.1.1), so what a listener keeps per message stands out
#: from the allocator's noise.
SUBJECT = "a subject of a kilobyte " * 42


@dataclass(frozen=True)
class Round:
    """One measurement: messages sent so far, the listener's RSS, the store's received rows."""

    messages: int
    rss: int
    stored: int
    seconds: float


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux ``VmRSS``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, "no VmRSS"
    return int(match.group(1)) * 1024


def stored_rows(path: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM received").fetchone()[0])


@asynccontextmanager
async def listener(
    workdir: Path, *options: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str]]:
    """``sipimdn listen`` on a free TCP port with a SQLite store: (process, AOR, store path)."""
    store = str(workdir / "listen.sqlite")
    out = workdir / "listen.out"
    with out.open("w") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipimdn", "listen", "--aor", "sip:bob@127.0.0.1:0;transport=tcp",
            "--listen", "tcp:127.0.0.1:0", "--json", "--store", store,
            "--imdn-rate-limit", "1000000000", "--imdn-byte-budget", "1000000000", *options,
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        end = time.monotonic() + 30
        while True:
            lines = out.read_text().splitlines()
            if lines:
                first = json.loads(lines[0])
                assert first["event"] == "listening", first
                break
            assert proc.returncode is None, out.read_text()
            assert time.monotonic() < end, "listen did not start"
            await asyncio.sleep(0.05)
        yield proc, first["aor"], store
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _cpim(sender: str, to: str, message_id: str) -> bytes:
    return cpim.build_message(
        [("From", f"<{sender}>"), ("To", f"<{to}>"), ("NS", "imdn <urn:ietf:params:imdn>"),
         ("imdn.Message-ID", message_id), ("DateTime", "2026-01-01T00:00:00.000Z"),
         ("imdn.Disposition-Notification", "positive-delivery, display"), ("Subject", SUBJECT)],
        content_type="text/plain; charset=utf-8", body=b"read me some day").to_bytes()


async def send_rounds(
    proc: asyncio.subprocess.Process, aor: str, store: str, rounds: int, per_round: int
) -> list[Round]:
    """Send ``rounds`` rounds of ``per_round`` messages; measure after each (the first is warm-up)."""
    stack = SipStack([ListenSpec(Transport.TCP, "127.0.0.1", 0, None)])
    notified = 0

    def answer(incoming: IncomingRequest) -> None:
        nonlocal notified
        notified += 1
        incoming.respond(200)  # the listener's delivery notifications

    stack.on_request(answer)
    results = []
    started = time.monotonic()
    async with stack:
        port = stack.endpoints[0][1][1]
        # Many senders, as a server sees them: RFC 3428 §8 allows one MESSAGE transaction at a
        # time per Request-URI, so the notifications to one sender go out one after the other.
        senders = [f"sip:user{n}@127.0.0.1:{port};transport=tcp" for n in range(SENDERS)]

        def senders_of(start: int, count: int) -> list[str]:
            return [senders[(start + n) % SENDERS] for n in range(count)]

        sent = 0
        for _ in range(rounds):
            for start in range(0, per_round, WINDOW):
                requests = [
                    build_request("MESSAGE", aor, f"<{sender}>", f"<{aor}>",
                                  body=_cpim(sender, aor, imdn.new_message_id()), content_type="message/cpim")
                    for sender in senders_of(start, min(WINDOW, per_round - start))
                ]
                responses = await asyncio.gather(*(stack.send_request(r) for r in requests))
                assert all(200 <= r.status_code < 300 for r in responses), {r.status_code for r in responses}
                sent += len(requests)
                # Closed loop: at most one window of delivery notifications still to come, so
                # what the listener holds is its state, not a backlog a busy machine builds up.
                end = time.monotonic() + 30
                while notified < sent - WINDOW:
                    assert time.monotonic() < end, f"{notified} of {sent} delivery notifications came"
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.5)  # the last delivery notifications answered, the store written
            assert proc.pid is not None
            results.append(Round(sent, rss_of(proc.pid), stored_rows(store), time.monotonic() - started))
    return results


async def _main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--working-set-max", default="1000")
    parser.add_argument("--dedup-max", default="5000")
    args = parser.parse_args()
    options = ["--dedup-max", args.dedup_max]
    # "none": a cap no run reaches, every record in memory (as before the working set).
    options += ["--working-set-max", "1000000000" if args.working_set_max == "none" else args.working_set_max]
    with tempfile.TemporaryDirectory() as tmp:
        async with listener(Path(tmp), *options) as (proc, aor, store):
            rounds = await send_rounds(proc, aor, store, args.rounds, args.messages // args.rounds)
    first = rounds[0]
    for one in rounds:
        grown = (one.rss - first.rss) / max(1, one.messages - first.messages)
        print(
            f"{one.messages:>7} messages  {one.seconds:6.1f} s  RSS {one.rss / 2**20:7.1f} MiB"
            f"  stored received rows {one.stored:>7}  growth since round 1: {grown:7.1f} B/message"
        )


if __name__ == "__main__":
    asyncio.run(_main())
