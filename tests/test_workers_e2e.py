"""End to end: two ``sipimdn listen`` worker processes, one AOR, one PostgreSQL, one killed.

A raw UDP sender does what a round-robin balancer in front of the workers does: consecutive
MESSAGEs go to alternate workers. It asks for positive-delivery, resends some Message-IDs with
a new Call-ID to the other worker, and leaves the IMDNs unanswered for a while so they pile up
as owed (in flight, retransmitted). Then one worker gets SIGKILL and is not restarted; the
sender starts answering. Every accepted message must get its delivered IMDN (the survivor
takes the dead worker's over once its lease runs out), and no Message-ID may reach the
application twice.

The crash window: a worker claims a Message-ID in the store before handing the message up,
so a copy can never be handed up twice, but a message claimed by a worker that dies before
answering is answered by the survivor as a duplicate and not handed up again (at most once).
Here the kill comes after every message was answered, so that window holds no message.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import ExitStack
from typing import Any

from test_cli_ua import listener
from test_ua_workers import answer, im_bytes, notified
from ua_helpers import RawPeer

MESSAGES = 24
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
            for i in range(MESSAGES):
                target = addresses[i % 2]
                data, branch = im_bytes(raw, aors[i % 2], f"e2e-{i}", f"call-{i}")
                finals[f"e2e-{i}"] = (await raw.transact(data, branch, target, timeout=10)).status_code
                if i % 3 == 0:  # a resend with a new Call-ID, to the other worker
                    data, branch = im_bytes(raw, aors[(i + 1) % 2], f"e2e-{i}", f"call-{i}-again")
                    again = await raw.transact(data, branch, addresses[(i + 1) % 2], timeout=10)
                    assert again.status_code in (200, 202)
            accepted = {mid for mid, status in finals.items() if 200 <= status < 300}
            assert accepted == set(finals)
            await asyncio.sleep(1.0)  # the IMDNs are owed and in flight, unanswered
            procs[0].kill()  # SIGKILL, not restarted
            procs[0].wait(10)
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
    assert sorted(handed_up) == sorted(finals), "a Message-ID reached the application twice (or never)"
