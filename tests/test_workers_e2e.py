"""End to end: two ``sipimdn listen`` worker processes, one AOR, one PostgreSQL, one killed.

A raw UDP sender does what a round-robin balancer in front of the workers does: consecutive
MESSAGEs go to alternate workers. It asks for positive-delivery, resends some Message-IDs with
a new Call-ID to the other worker, and leaves the IMDNs unanswered so they pile up as owed (in
flight, retransmitted). Halfway, one worker gets SIGKILL and is not restarted; requests the
balancer still sends it time out and fail over to the survivor. Then the sender answers. Every
accepted message must get its delivered IMDN from the survivor (it takes over the dead
worker's once their lease runs out), and no Message-ID may reach the application twice.

The crash window: a worker claims a Message-ID in the store before handing the message up. A
claim its worker never answered (it died while the application decided) is taken over by
another worker after ``worker_lease + handler_deadline``, so that message is not lost but may
reach the application twice: at most the messages the dead worker was deciding when it died.
Here the kill falls between two answered transactions, so that window holds none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import ExitStack
from typing import Any

from test_cli_ua import listener
from test_ua_workers import answer, im_bytes, notified
from ua_helpers import RawPeer

MESSAGES = 40
#: The worker is killed just before this message is sent.
KILL_AT = 20
LEASE = "2"


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_two_workers_one_killed_every_message_delivered_once(postgres_url: str) -> None:
    with ExitStack() as stack:
        procs = []
        addresses = []
        aors = []
        for name in ("w1", "w2"):
            proc, listening = stack.enter_context(
                listener("--store", postgres_url, "--worker-id", name, "--worker-lease", LEASE)
            )
            procs.append(proc)
            host, port = listening["endpoints"][0].split(":")[1:]
            addresses.append((host, int(port)))
            aors.append(listening["aor"])  # bob on each worker's port (behind a balancer: one AOR)
        raw = await RawPeer.open()
        try:
            finals: dict[str, int] = {}
            failed_over = 0
            for i in range(MESSAGES):
                if i == KILL_AT:
                    # SIGKILL mid-run, not restarted; its IMDNs are owed, in flight, unanswered.
                    # First the printer's delay: the lines of the messages it took are written
                    # (a SIGKILL loses what a process holds, and listen holds lines for tens of ms).
                    await asyncio.sleep(0.2)
                    procs[0].kill()
                    procs[0].wait(10)
                mid, turn = f"e2e-{i}", i % 2
                if turn == 0 and i >= KILL_AT:
                    # Round-robin still picks the dead worker until its probes fail: no answer,
                    # so the request fails over to the next worker (a new transaction).
                    data, branch = im_bytes(raw, aors[0], mid, f"call-{i}-dead")
                    with contextlib.suppress(TimeoutError):
                        await raw.transact(data, branch, addresses[0], timeout=0.5)
                        raise AssertionError("a killed worker answered")
                    failed_over += 1
                    turn = 1
                data, branch = im_bytes(raw, aors[turn], mid, f"call-{i}")
                finals[mid] = (await raw.transact(data, branch, addresses[turn], timeout=10)).status_code
                if i % 3 == 0:  # the sender retries with a new Call-ID, on the other (live) worker
                    other = 1 - turn if i < KILL_AT else 1
                    data, branch = im_bytes(raw, aors[other], mid, f"call-{i}-again")
                    again = await raw.transact(data, branch, addresses[other], timeout=10)
                    assert again.status_code == finals[mid]  # the first copy's answer
            accepted = {mid for mid, status in finals.items() if 200 <= status < 300}
            assert accepted == set(finals) and failed_over == (MESSAGES - KILL_AT) // 2
            await asyncio.sleep(1.0)  # the IMDNs pile up as owed, unanswered
            delivered: set[str] = set()
            deadline = time.monotonic() + 30
            while not accepted <= delivered and time.monotonic() < deadline:
                try:
                    request = await asyncio.wait_for(raw.requests.get(), deadline - time.monotonic())
                except TimeoutError:
                    break
                if b"imdn+xml" not in request.body:
                    continue
                via = request.top_via
                if (via.host, via.port) != addresses[1]:
                    continue  # sent by the dead worker before it died, never answered
                note = notified(request)
                if str(note.status) == "delivered":
                    delivered.add(note.message_id)
                answer(raw, request, addresses[1])
            # All from the survivor: its own and, taken over, the ones the dead worker owed.
            assert accepted <= delivered, sorted(accepted - delivered)
        finally:
            raw.close()
        procs[1].terminate()
        out = [proc.communicate(timeout=15)[0] for proc in procs]
    handed_up = [e["message_id"] for text in out for e in _events(text) if e.get("event") == "message"]
    # The crash window holds nothing here (the kill falls between two answered transactions),
    # so every Message-ID reached the application exactly once.
    assert sorted(handed_up) == sorted(finals), "a Message-ID reached the application twice (or never)"
