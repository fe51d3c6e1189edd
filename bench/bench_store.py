"""The store's cost per message: SQLite vs PostgreSQL, side by side in one run.

Not a test. First records what the user agents really write: alice sends ``--messages``
MESSAGEs asking for positive-delivery to bob over loopback UDP, both user agents on a
recording in-memory store, and every ``Store.apply`` batch (the operations the tracker
produced, as the store writer hands them over) is kept. Then the recorded batches of both
sides are replayed, in order, against each backend:

* ``sqlite``: a file in a temporary directory (WAL, ``synchronous=NORMAL``: the embedded
  default; a commit does not wait for the disk, a crash may lose the last batches);
* ``pg-durable``: PostgreSQL with its defaults (``synchronous_commit=on``: each commit waits
  for its WAL flush, the durability the issue asks of a shared store);
* ``pg-async``: PostgreSQL with ``synchronous_commit=off`` for the benchmark database (the
  same promise as SQLite's ``synchronous=NORMAL``: no corruption, the last commits may be lost).

Two shapes of replay: ``idle`` (each recorded batch is one ``apply``, as at low load) and
``grouped`` (the batches of ``--group`` messages coalesced into one ``apply``, as the store
writer does under load). Reported per backend and shape: wall-clock and client CPU
microseconds per message (alice's and bob's writes together), and for PostgreSQL the server's
CPU per message (every postgres process, from /proc). Rounds of the backends are
interleaved; medians are printed.

PostgreSQL: ``--postgres-url URL`` to use a running server (the benchmark creates and drops
tables in that database), otherwise a temporary server is started from Debian's
``postgresql`` package (as the tests do: tests/_postgres.py, fsync on).

Usage: ``python bench/bench_store.py [--messages 200] [--rounds 5] [--group 32] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.store import MemoryStore, SqliteStore, Store, StoreOp
from sipimdn.ua._persist import coalesce

HERE = Path(__file__).resolve().parent


class RecordingStore(MemoryStore):
    """A MemoryStore keeping every batch handed to :meth:`apply`."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[StoreOp]] = []

    def apply(self, ops: Sequence[StoreOp]) -> None:
        self.batches.append(list(ops))
        super().apply(ops)


async def record(messages: int) -> list[list[StoreOp]]:
    """The batches alice's and bob's user agents write for ``messages`` positive-delivery messages."""
    stores = [RecordingStore(), RecordingStore()]
    configs = [
        UserAgentConfig(aor=f"sip:{name}@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),))
        for name in ("alice", "bob")
    ]
    async with UserAgent(configs[0], store=stores[0]) as alice, UserAgent(configs[1], store=stores[1]) as bob:
        for i in range(messages):
            handle = await alice.send_message(bob.aor, f"message {i}", notify={"positive-delivery"})
            await handle.await_disposition("delivered", timeout=10)
    # Both sides' writes count for the message (replayed one side after the other).
    return [*stores[0].batches, *stores[1].batches]


def _server_cpu(postmaster: int | None) -> float:
    """CPU seconds used so far by the postmaster and its children (0 when unknown)."""
    if postmaster is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if postmaster in (pid, ppid):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def replay(store: Store, batches: list[list[StoreOp]], postmaster: int | None) -> tuple[float, float, float]:
    """Apply ``batches`` in order; return (wall, client CPU, server CPU) seconds."""
    server0 = _server_cpu(postmaster)
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for ops in batches:
        store.apply(ops)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return wall, cpu, _server_cpu(postmaster) - server0


def grouped(batches: list[list[StoreOp]], per_message: float, group: int) -> list[list[StoreOp]]:
    """The batches of ``group`` messages coalesced into one, as the store writer does under load."""
    size = max(1, round(per_message * group))
    return [
        coalesce([op for ops in batches[i : i + size] for op in ops]) for i in range(0, len(batches), size)
    ]


def _start_postgres() -> tuple[str, Callable[[], None], int | None, Callable[[str], None]]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _postgres import PostgresServer, find_postgres_bin

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise SystemExit(
            "PostgreSQL is not installed (apt-get install postgresql) and no --postgres-url given"
        )
    server = PostgresServer(bin_dir, fsync=True)
    server.start()
    return server.url(), server.destroy, server.pid, server.psql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--group", type=int, default=32, help="messages per batch in the grouped shape")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from sipimdn.store.postgres import PostgresStore

    batches = asyncio.run(record(args.messages))
    ops = sum(len(b) for b in batches)
    shapes = {
        "idle": batches,
        "grouped": grouped(batches, len(batches) / args.messages, args.group),
    }
    stop: Callable[[], None] = lambda: None  # noqa: E731
    postmaster: int | None = None
    psql: Callable[[str], None] | None = None
    url = args.postgres_url
    if url is None:
        url, stop, postmaster, psql = _start_postgres()
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            durable = PostgresStore(url, worker_id="bench", channel=None)
            if psql is not None:
                psql("CREATE DATABASE bench_async")
                psql("ALTER DATABASE bench_async SET synchronous_commit = off")
                relaxed = PostgresStore(
                    url.replace("/postgres?", "/bench_async?"), worker_id="bench", channel=None
                )
            else:
                relaxed = None
            backends: dict[str, Callable[[], Store]] = {
                "sqlite": lambda: SqliteStore(str(Path(tmp) / "bench.db")),
                "pg-durable": lambda: durable,
            }
            if relaxed is not None:
                backends["pg-async"] = lambda: relaxed
            for _ in range(args.rounds):
                for shape, shaped in shapes.items():
                    for name, make in backends.items():
                        store = make()
                        store.purge(float("inf"))  # every round starts empty
                        figures = replay(store, shaped, None if name == "sqlite" else postmaster)
                        results.setdefault(name, {}).setdefault(shape, []).append(figures)
                        if name == "sqlite":
                            store.close()
            durable.close()
            if relaxed is not None:
                relaxed.close()
    finally:
        stop()

    report = {
        "messages": args.messages,
        "batches_idle": len(shapes["idle"]),
        "batches_grouped": len(shapes["grouped"]),
        "ops": ops,
        "results_us_per_message": {
            name: {
                shape: {
                    "wall": statistics.median(r[0] for r in runs) / args.messages * 1e6,
                    "client_cpu": statistics.median(r[1] for r in runs) / args.messages * 1e6,
                    "server_cpu": statistics.median(r[2] for r in runs) / args.messages * 1e6,
                }
                for shape, runs in by_shape.items()
            }
            for name, by_shape in results.items()
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.messages} positive-delivery messages (alice's and bob's writes): {ops} operations in "
        f"{len(shapes['idle'])} batches idle, {len(shapes['grouped'])} grouped "
        f"({args.group} messages/batch); median of {args.rounds} rounds, microseconds per message"
    )
    print(f"{'backend':<12}{'shape':<9}{'wall':>10}{'client CPU':>12}{'server CPU':>12}")
    for name, by_shape in results.items():
        for shape, runs in by_shape.items():
            fig = {
                "wall": statistics.median(r[0] for r in runs) / args.messages * 1e6,
                "client_cpu": statistics.median(r[1] for r in runs) / args.messages * 1e6,
                "server_cpu": statistics.median(r[2] for r in runs) / args.messages * 1e6,
            }
            server = "-" if name == "sqlite" or postmaster is None else f"{fig['server_cpu']:.0f}"
            print(f"{name:<12}{shape:<9}{fig['wall']:>10.0f}{fig['client_cpu']:>12.0f}{server:>12}")


if __name__ == "__main__":
    main()
