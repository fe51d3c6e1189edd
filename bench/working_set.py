"""What a working-set miss costs: reading a received record back from SQLite.

    python bench/working_set.py --count 100000 --cap 1000 --samples 2000

A SQLite file is filled (through a tracker, as the user agent writes it) with ``count``
received messages answered 200 whose delivery notification went out and whose display
notification is still owed. A user agent is started on it with ``working_set_max=cap``: it
loads the ``cap`` most recent and leaves the rest in the store. Then ``mark_displayed`` is
timed for ``samples`` messages not in memory (a miss: the record is read back on the store's
thread, re-admitted, then decided) and as many still in memory (a hit), interleaved; both
owe the same display notification, so the difference is the miss's own cost. The read waits
for the writes queued before it (the previous call's, here); ``--flushed`` flushes them
(untimed) before each call, leaving the read itself: the thread hop, the query, re-admission. The store's
single-record reads are timed alone too (by key, and by Message-ID alone through the index).
Prints one JSON object; times are microseconds (median and 90th percentile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.imdn.tracker import DispositionTracker, TrackerConfig
from sipimdn.store import SqliteStore

_ME = "sip:bob@127.0.0.1"


def _sender(i: int) -> str:
    # A closed port each (ICMP refuses the notification, which parks that destination only):
    # the notifications owed go nowhere; only the decision is timed.
    return f"sip:user{i}@127.0.0.1:{20000 + i % 40000}"


def fill(path: str, count: int, now: float) -> list[str]:
    """``count`` received messages awaiting display in a SQLite file; their Message-IDs."""
    tracker = DispositionTracker(TrackerConfig(rate_limit=10**9, working_set_max=None), now=now)
    ids = []
    with SqliteStore(path) as store:
        for i in range(count):
            message_id = f"m{i:08d}"
            ids.append(message_id)
            at = now - count + i  # one a second, the last one now
            tracker.record_received(
                message_id=message_id, sender=_sender(i), sip_from=_sender(i), recipient=_ME,
                now=at, requested=("positive-delivery", "display"),
            )
            tracker.message_answered(message_id, _sender(i), 200, at)
            while (event := tracker.next_event()) is not None:
                notification = getattr(event, "notification", None)
                if notification is not None:
                    tracker.notification_outcome(notification.notification_id, 200, at)
            if i % 1000 == 999:
                store.apply(tracker.writes_to_apply())
        store.apply(tracker.writes_to_apply())
    return ids


def _micros(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_us": round(statistics.median(ordered) * 1e6, 1),
        "p90_us": round(ordered[int(len(ordered) * 0.9)] * 1e6, 1),
    }


def store_reads(path: str, ids: list[str], samples: int, now: float) -> dict[str, Any]:
    tracker = DispositionTracker(TrackerConfig())
    by_key, by_id = [], []
    with SqliteStore(path) as store:
        for n in range(samples):
            i = (n * 7919) % len(ids)
            key = tracker.sender_key(_sender(i))
            started = time.perf_counter()
            assert store.load_received(ids[i], key, now)
            by_key.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert store.load_received(ids[i], None, now)
            by_id.append(time.perf_counter() - started)
    return {"store_read_by_key": _micros(by_key), "store_read_by_message_id": _micros(by_id)}


async def ua_misses(path: str, ids: list[str], cap: int, samples: int, *, flushed: bool) -> dict[str, Any]:
    config = UserAgentConfig(
        aor="sip:bob@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),), store_path=path,
        working_set_max=cap, imdn_rate_limit=10**9, imdn_byte_budget=10**12, close_grace=0.1,
    )
    misses: list[float] = []
    hits: list[float] = []
    owed = 0
    async with UserAgent(config) as ua:
        assert ua.tracker.tracked_received == cap
        recent = len(ids) - cap
        for n in range(min(samples, cap)):
            miss = (n * 7919) % recent
            hit = recent + n
            for index, into in ((miss, misses), (hit, hits)):
                assert (ua.tracker.received(ids[index]) is None) == (into is misses)
                if flushed:
                    await ua.flush()  # not timed: no write of the previous call to wait for
                started = time.perf_counter()
                owed += await ua.mark_displayed(ids[index], _sender(index))
                into.append(time.perf_counter() - started)
        reads = ua.stats().working_set_reads
    return {
        "ua_mark_displayed_miss": _micros(misses),
        "ua_mark_displayed_hit": _micros(hits),
        "miss_cost_median_us": round((statistics.median(misses) - statistics.median(hits)) * 1e6, 1),
        "store_reads": reads,
        "display_notifications_owed": owed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--cap", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument(
        "--flushed", action="store_true",
        help="flush the store (untimed) before each call: the miss then waits for no write",
    )
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "working-set.db")
        ids = fill(path, args.count, now)
        result: dict[str, Any] = {"count": args.count, "cap": args.cap}
        result.update(store_reads(path, ids, args.samples, now))
        result.update(asyncio.run(ua_misses(path, ids, args.cap, args.samples, flushed=args.flushed)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
