"""Memory per tracked message and the SQLite store at scale, through the project's own APIs.

    python bench/micro_memory.py tracker --count 100000
    python bench/micro_memory.py store --count 1000000 --path /tmp/store.db

``tracker``: one :class:`~sipimdn.imdn.tracker.DispositionTracker` holding ``count`` sent
messages that were answered 200 and still await their delivery and display notifications,
then (fresh tracker) ``count`` received messages answered 200 whose delivered IMDN went out and
whose display notification is still owed (the receiver's side), once with a bare sender URI
and once shaped as the user agent passes them (name-addr CPIM From, SIP From, CPIM To, a
DateTime each: ``received_ua_shaped_bytes_per_message``). RSS growth divided by the count is
the memory per tracked message (the tracker's write-behind queue is drained, as the user
agent does, so only the tracker's own state is counted). Both RSS readings are taken after
the C allocator gave its free heap back (``malloc_trim``): the tables' hash arrays grow by
doubling, and the smaller arrays they replaced stay resident, freed, until then (about 40
bytes per message at 100,000); ``*_untrimmed`` keys keep the figure read without it.

``store``: :class:`~sipimdn.store.SqliteStore` on a file filled with ``count`` sent records
(in transactions of 1,000 operations, as the UA's writer batches them): insert rate, RSS
sampled every tenth of the way (it must stay flat: the store keeps nothing in memory), file
size on disk, the rate of upserts that change a record's state, and keyed lookups on the
store's table through a second read-only connection (the store's protocol has no single-key
read: the tracker keeps hot state in memory and loads the store only at start).

Runs in its own process (``run.py`` starts it), and each tracker phase in a process of its own,
so the RSS figures are that work's only. The tracker is pumped every 1,000 messages as the user
agent pumps it after every input (events, writes, ``get_timer``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import gc
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sipimdn.imdn.tracker import DispositionTracker, TrackerConfig
from sipimdn.store import Put, SqliteStore
from sipimdn.store.base import SentRecord


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _trimmed_rss() -> int:
    """RSS once the C allocator gave back the heap it holds free (glibc ``malloc_trim``)."""
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):  # glibc
            libc.malloc_trim(0)
    return _rss()


def _drain(tracker: DispositionTracker) -> None:
    """Pump the tracker as the user agent's ``_pump`` does: events, writes, then the timer
    (which also drops the stale timer entries at the top of the heap)."""
    while tracker.next_event() is not None:
        pass
    tracker.writes_to_apply()
    tracker.get_timer()


_NOW = 1_800_000_000.0
#: The trackers' working_set_max: None (the default here) keeps every record in memory, so the
#: figures are the memory per tracked record; a cap shows what stays per message beyond it.
_WORKING_SET_MAX: int | None = None
_PHASES = ("sent", "received", "received-ua-shaped")


def tracker_memory(count: int, working_set_max: int | None = None) -> dict[str, Any]:
    """RSS per sent message awaiting notifications, and per received message still owed one.

    Each phase runs in a process of its own: in one process, a phase would reuse the memory
    the previous one freed but the allocator kept, and look cheaper than it is.
    """
    results: dict[str, Any] = {}
    for phase in _PHASES:
        done = subprocess.run(
            [sys.executable, __file__, "tracker-phase", phase, "--count", str(count),
             *(["--working-set-max", str(working_set_max)] if working_set_max else [])],
            check=True,
            capture_output=True,
            text=True,
        )
        results.update(json.loads(done.stdout))
    return {
        "count": count,
        "working_set_max": working_set_max,
        "sent_bytes_per_message": results["sent_bytes_per_message"],
        "sent_state": results["sent_state"],
        "received_bytes_per_message": results["received_bytes_per_message"],
        "received_ua_shaped_bytes_per_message": results["received_ua_shaped_bytes_per_message"],
        "sent_untrimmed_bytes_per_message": results["sent_untrimmed_bytes_per_message"],
        "received_untrimmed_bytes_per_message": results["received_untrimmed_bytes_per_message"],
        "received_ua_shaped_untrimmed_bytes_per_message": results[
            "received_ua_shaped_untrimmed_bytes_per_message"
        ],
        "delivered_imdns_owed_and_acknowledged": results["delivered_imdns_owed_and_acknowledged"],
    }


def tracker_phase(phase: str, count: int, working_set_max: int | None = None) -> dict[str, Any]:
    """One phase of :func:`tracker_memory`, in this (fresh) process."""
    global _WORKING_SET_MAX  # noqa: PLW0603 - one phase per process
    _WORKING_SET_MAX = working_set_max
    if phase == "sent":
        (sent_bytes, untrimmed), state = _sent_memory(count, _NOW)
        return {
            "sent_bytes_per_message": sent_bytes,
            "sent_untrimmed_bytes_per_message": untrimmed,
            "sent_state": state,
        }
    if phase == "received":
        (received_bytes, untrimmed), owed = _received_memory(count, _NOW, ua_shaped=False)
        return {
            "received_bytes_per_message": received_bytes,
            "received_untrimmed_bytes_per_message": untrimmed,
            "delivered_imdns_owed_and_acknowledged": owed,
        }
    (ua_shaped_bytes, untrimmed), _ = _received_memory(count, _NOW, ua_shaped=True)
    return {
        "received_ua_shaped_bytes_per_message": ua_shaped_bytes,
        "received_ua_shaped_untrimmed_bytes_per_message": untrimmed,
    }


def _per_message(base: int, count: int) -> tuple[float, float]:
    """(trimmed, untrimmed) RSS growth over ``base`` (a trimmed reading) per message."""
    gc.collect()
    untrimmed = _rss()
    return (_trimmed_rss() - base) / count, (untrimmed - base) / count


def _sent_memory(count: int, now: float) -> tuple[tuple[float, float], str | None]:
    """RSS per sent message answered 200 and awaiting its notifications (trimmed, untrimmed);
    a record's state."""
    gc.collect()
    base = _trimmed_rss()
    tracker = DispositionTracker(TrackerConfig(working_set_max=_WORKING_SET_MAX), now=now)
    for i in range(count):
        message_id = f"m{i:08d}x{random.getrandbits(64):016x}"
        tracker.register_sent(
            message_id=message_id,
            recipients=[f"sip:user{i}@example.com"],
            requested={"positive-delivery", "display"},
            now=now,
        )
        tracker.response_received(message_id, 200, now)
        if i % 1000 == 999:
            _drain(tracker)
    _drain(tracker)
    sent_bytes = _per_message(base, count)
    sent_check = tracker.sent(message_id)
    return sent_bytes, str(sent_check.recipients[0].state) if sent_check else None


def _received_memory(count: int, now: float, *, ua_shaped: bool) -> tuple[tuple[float, float], int]:
    """RSS per received message still owed its display notification (trimmed, untrimmed); and
    the IMDNs acknowledged.

    ``ua_shaped``: the inputs the user agent passes, each a string of its own as the parser
    makes them: CPIM From as a name-addr (so its identity key is a string apart), SIP From
    URI, CPIM To, and a DateTime per message; 100 messages a second, each call with a clock
    reading of its own (as ``time.time()`` gives the UA). Otherwise a bare sender URI, one
    shared DateTime and one instant for everything (the target's original measurement, kept
    for comparison across runs).
    """
    gc.collect()
    base = _trimmed_rss()
    tracker = DispositionTracker(TrackerConfig(rate_limit=10**9, working_set_max=_WORKING_SET_MAX), now=now)
    owed = 0
    answered_at = acknowledged_at = now
    for i in range(count):
        message_id = f"r{i:08d}x{random.getrandbits(64):016x}"
        if ua_shaped:
            arrived_at = now + i / 100
            answered_at, acknowledged_at = arrived_at + 0.001, arrived_at + 0.002
            sender = f"<sip:user{i}@example.com>"
            tracker.record_received(
                message_id=message_id,
                sender=sender,
                now=arrived_at,
                requested={"positive-delivery", "display"},
                sip_from=f"sip:user{i}@example.com",
                recipient="".join(("<sip:me", "@example.org>")),  # our URI, parsed anew each time
                datetime=f"2026-06-15T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
            )
        else:
            sender = f"sip:user{i}@example.com"
            tracker.record_received(
                message_id=message_id,
                sender=sender,
                now=now,
                requested={"positive-delivery", "display"},
                datetime="2026-06-15T10:00:00Z",
            )
        tracker.message_answered(message_id, sender, 200, answered_at)
        while (event := tracker.next_event()) is not None:
            notification = getattr(event, "notification", None)
            if notification is not None:
                owed += 1
                tracker.notification_outcome(notification.notification_id, 200, acknowledged_at)
        if i % 1000 == 999:
            _drain(tracker)
    _drain(tracker)
    return _per_message(base, count), owed


def store_scale(count: int, path: Path) -> dict[str, Any]:
    """Fill a SqliteStore with ``count`` sent records; rates, RSS samples and size on disk."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    now = 1_800_000_000.0
    tracker = DispositionTracker(TrackerConfig(), now=now)
    tracker.register_sent(
        message_id="template",
        recipients=["sip:bob@example.com"],
        requested={"positive-delivery", "display"},
        now=now,
    )
    template = next(op.record for op in tracker.writes_to_apply() if isinstance(op, Put))
    assert isinstance(template, SentRecord)
    store = SqliteStore(str(path))
    batch = 1000
    samples: list[int] = []
    gc.collect()
    rss_start = _rss()
    started = time.perf_counter()
    for first in range(0, count, batch):
        ops = [
            Put(dataclasses.replace(template, message_id=f"m{i:09d}"))
            for i in range(first, min(count, first + batch))
        ]
        store.apply(ops)
        if (first // batch) % max(1, count // batch // 10) == 0:
            samples.append(_rss())
    insert_seconds = time.perf_counter() - started
    samples.append(_rss())
    rss_after_inserts = samples[-1]
    # State changes: upserts of existing keys (what a delivered/displayed IMDN writes).
    updates = min(count, 100_000)
    keys = random.sample(range(count), updates)
    accepted = dataclasses.replace(
        template.recipients[0], state="delivered", delivery="delivered", updated_at=now + 1
    )
    started = time.perf_counter()
    for first in range(0, updates, batch):
        store.apply(
            [
                Put(
                    dataclasses.replace(
                        template, message_id=f"m{k:09d}", recipients=(accepted,), sip_status=200
                    )
                )
                for k in keys[first : first + batch]
            ]
        )
    update_seconds = time.perf_counter() - started
    rss_after_updates = _rss()
    # Keyed lookups through a second, read-only connection.
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    lookups = min(count, 100_000)
    found = 0
    started = time.perf_counter()
    for k in random.sample(range(count), lookups):
        row = reader.execute("SELECT data FROM sent WHERE key = ?", (f"m{k:09d}",)).fetchone()
        found += row is not None
    lookup_seconds = time.perf_counter() - started
    reader.close()
    store.close()
    size = sum(
        Path(f"{path}{suffix}").stat().st_size for suffix in ("", "-wal") if Path(f"{path}{suffix}").exists()
    )
    return {
        "count": count,
        "insert_per_s": count / insert_seconds,
        "update_per_s": updates / update_seconds,
        "lookup_per_s": lookups / lookup_seconds,
        "lookups_found": found,
        "lookups": lookups,
        "size_bytes": size,
        "bytes_per_entry": size / count,
        "rss_start": rss_start,
        "rss_samples": samples,
        "rss_growth": max(samples) - rss_start,
        "rss_after_inserts": rss_after_inserts,
        "rss_after_updates": rss_after_updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["tracker", "store", "tracker-phase"])
    parser.add_argument("phase", nargs="?", choices=_PHASES, help="tracker-phase only (internal)")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument(
        "--working-set-max", type=int, default=None, help="tracker: cap the records in memory (default: none)"
    )
    parser.add_argument("--path", type=Path, default=Path(f"/tmp/sipimdn-bench-store-{os.getpid()}.db"))
    args = parser.parse_args()
    if args.what == "tracker":
        result = tracker_memory(args.count, args.working_set_max)
    elif args.what == "tracker-phase":
        result = tracker_phase(args.phase or "sent", args.count, args.working_set_max)
    else:
        try:
            result = store_scale(args.count, args.path)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{args.path}{suffix}").unlink(missing_ok=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
