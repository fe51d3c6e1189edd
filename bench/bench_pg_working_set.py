"""What the PostgreSQL working set costs: resuming, and the reads of its miss path.

    python bench/bench_pg_working_set.py [--rows 50000]

One worker's store on a temporary PostgreSQL server (tests/_postgres.py, the ``postgresql``
package): ``--rows`` sent and as many received records, plus 20,000 final records of ended
messages expiring within the hour (as a busy worker keeps for readers). Times ``load_own``
(everything it owns, what a worker resumed with before the working set) against
``load_working_set`` (10,000 of each), then ``load_sent_due``, ``load_received`` by Message-ID
alone and ``load_sent``, with the version 4 indexes and without them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _postgres import PostgresServer, find_postgres_bin
from test_store import received, sent

from sipimdn.store import Put
from sipimdn.store.base import ENDED_METADATA
from sipimdn.store.postgres import PostgresStore

ENDED_ROWS = 20_000
BATCH = 2000


def timed(label: str, fn: Callable[[], Any], rounds: int) -> Any:
    started = time.perf_counter()
    for _ in range(rounds):
        out = fn()
    print(f"{label}: {(time.perf_counter() - started) / rounds * 1000:.1f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    rows = parser.parse_args().rows
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL is not installed")
    server = PostgresServer(bin_dir)
    server.start()
    try:
        url = server.create_database()
        database = urlsplit(url).path.lstrip("/")
        store = PostgresStore(url, worker_id="w")
        base = time.time() + 3600
        for start in range(0, rows, BATCH):
            end = min(rows, start + BATCH)
            store.apply([Put(sent(f"s{i}", expires_at=base + i)) for i in range(start, end)])
            store.apply([Put(received(f"r{i}", expires_at=base + i)) for i in range(start, end)])
        for start in range(0, ENDED_ROWS, BATCH):
            ended = [
                replace(sent(f"e{i}", expires_at=base - 1800 + i * 0.05), metadata=((ENDED_METADATA, "1"),))
                for i in range(start, start + BATCH)
            ]
            store.apply([Put(record) for record in ended])
        server.psql("ANALYZE", database)
        now = time.time()
        middle = rows // 2
        snap = timed("load_own", lambda: store.load_own(now), 3)
        print(f"  {len(snap.sent)} sent, {len(snap.received)} received")
        snap = timed("load_working_set(now, 10000)", lambda: store.load_working_set(now, 10_000), 3)
        print(f"  {len(snap.sent)} sent, {len(snap.received)} received")
        def reads(label: str) -> None:
            print(label)
            due = lambda: store.load_sent_due(base - 1000, now, 1000)  # noqa: E731
            timed("  load_sent_due (among the ended rows)", due, 20)
            by_id = lambda: store.load_received(f"r{middle}", None, now)  # noqa: E731
            timed("  load_received by Message-ID alone", by_id, 20)
            timed("  load_sent", lambda: store.load_sent(f"s{middle}", now), 20)

        reads("with the version 4 indexes")
        server.psql("DROP INDEX sipimdn_received_message_id; DROP INDEX sipimdn_sent_live; ANALYZE", database)
        reads("without them")
        store.close()
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
