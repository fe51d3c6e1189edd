"""Positive-delivery messages/s: one and two ``sipimdn listen`` workers behind Kamailio's dispatcher.

    python bench/bench_scaleout.py                       # all configurations, 3-s steps
    python bench/bench_scaleout.py --seconds 2 --rounds 2 --store postgres --json out.json

Three configurations, measured side by side in one run (``--rounds N`` repeats them, the
order rotating each round so that machine load hits them alike):

* ``kamailio-alone``: Kamailio answering every MESSAGE 200 statelessly
  (bench/kamailio_stateless.cfg): the ceiling of SIPp plus one SIP hop on this machine;
* ``1 worker`` and ``2 workers``: Kamailio with the dispatcher configuration the tests use
  (tests/kamailio/dispatcher.cfg.tmpl: round-robin, OPTIONS probes each second, failover
  route) in front of real ``python -m sipimdn listen`` processes sharing one public AOR; each
  worker sends its delivered IMDNs through Kamailio back to SIPp.

The load is SIPp (bench/sipp_scenarios/uac_cpim_pd.xml: a CPIM MESSAGE asking for
positive-delivery from a sender of its own, expecting 200; the IMDNs coming back are answered
200 by ooc_imdn_ack.xml) at stepped offered rates, each step bounded (``-m`` calls, a timeout),
until two steps in a row are not sustained (one may be a spike of load on a shared machine).
A step is sustained when every MESSAGE got its 200 with under 1 % retransmissions, at 90 % of
the offered rate or more, and (behind the dispatcher) SIPp received a delivered IMDN for at
least 97 % of them before it ended (the last few milliseconds of IMDNs arrive after SIPp has
exited). The figure reported per configuration is the highest sustained step's achieved rate,
with the CPU per message of Kamailio's process group and of the workers (from /proc).

Stores: ``--store memory`` (the default: ``sipimdn listen``'s private in-memory SQLite per
worker) or ``--store postgres`` (one temporary PostgreSQL server shared by the workers, started
like the tests do, fsync on). SIPp is pinned to CPU 0 and the stateless Kamailio to CPU 1 as in
bench/run.py; the dispatcher and the workers are not pinned (on two cores, Kamailio, SIPp and
two workers share them). Needs sipp, kamailio (with its dispatcher module) and kamcmd; the
test extras installed (``pip install -e '.[test,bench,postgres]'``): the harness is the tests'.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

from kamailio.dispatcher import (  # noqa: E402
    Dispatcher,
    DispatcherSettings,
    Worker,
    module_path,
)
from load import kamailio_ref, sipp_load  # noqa: E402
from load.common import LOOPBACK, group_cpu_seconds, process_cpu_seconds  # noqa: E402

RATES = (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000, 6000, 8000, 12000, 16000)
CONFIGS = ("kamailio-alone", "1 worker", "2 workers")
#: Share of MESSAGEs whose delivered IMDN must have reached SIPp for a step to count.
IMDN_SHARE = 0.97


def _idle(cpu: Callable[[], float], limit: float = 15.0, interval: float = 0.25) -> None:
    """Wait until the responders use under 5 % of a CPU (a previous step's backlog drained)."""
    started = time.monotonic()
    last = cpu()
    while time.monotonic() - started < limit:
        time.sleep(interval)
        now = cpu()
        if now - last < 0.05 * interval:
            return
        last = now


@contextlib.contextmanager
def _postgres(kind: str) -> Iterator[Any]:
    if kind != "postgres":
        yield None
        return
    from _postgres import PostgresServer, find_postgres_bin

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    server = PostgresServer(bin_dir, fsync=True)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@contextlib.contextmanager
def _kamailio_alone(workdir: Path) -> Iterator[tuple[tuple[str, int], dict[str, Callable[[], float]], bool]]:
    binary = kamailio_ref.kamailio_binary()
    assert binary is not None
    server = kamailio_ref.start(binary, workdir)
    try:
        yield (LOOPBACK, server.port("udp")), {"kamailio": server.cpu_seconds}, False
    finally:
        server.stop()


@contextlib.contextmanager
def _behind_dispatcher(
    workdir: Path, count: int, store: Any
) -> Iterator[tuple[tuple[str, int], dict[str, Callable[[], float]], bool]]:
    kamailio, kamcmd = shutil.which("kamailio"), shutil.which("kamcmd")
    assert kamailio is not None and kamcmd is not None
    # debug=1: the per-request INFO line of the dispatch route is not logged under load.
    dispatcher = Dispatcher(kamailio, kamcmd, workdir, DispatcherSettings(debug=1))
    # SIPp addresses the service as sip:bob@127.0.0.1:<kamailio port>: that is the public AOR.
    aor = f"sip:bob@{LOOPBACK}:{dispatcher.port}"
    workers: list[Worker] = []
    # SIPp sends every call from its one address (a fresh user part each): the notification
    # budgets per destination address (RFC 5438 §14, 120 a minute by default) are lifted.
    extra = ["--proxy", dispatcher.proxy_uri(), "--imdn-rate-limit", str(1 << 30),
             "--imdn-byte-budget", str(1 << 40)]
    if store is not None:
        extra += ["--store", store.create_database()]  # one database, shared by the workers
    try:
        for index in range(1, count + 1):
            workers.append(Worker(f"w{index}", aor, extra=extra, collect=False, log_dir=workdir))
        for worker in workers:
            worker.wait_ready()
        dispatcher.start([w.address for w in workers])

        pid = dispatcher.pid
        assert pid is not None

        def kamailio_cpu() -> float:
            return group_cpu_seconds(pid)

        def workers_cpu() -> float:
            return sum(process_cpu_seconds(w.process.pid) for w in workers)

        yield (LOOPBACK, dispatcher.port), {"kamailio": kamailio_cpu, "workers": workers_cpu}, True
    finally:
        for worker in workers:
            worker.stop()
        dispatcher.stop()


def _sweep(
    sipp: str,
    config: str,
    *,
    rates: tuple[int, ...],
    seconds: float,
    log_dir: Path,
    store: Any,
) -> list[dict[str, Any]]:
    workdir = log_dir / "servers"
    workdir.mkdir(parents=True, exist_ok=True)
    if config == "kamailio-alone":
        context = _kamailio_alone(workdir)
    else:
        context = _behind_dispatcher(workdir, int(config.split(maxsplit=1)[0]), store)
    steps: list[dict[str, Any]] = []
    with context as (remote, meters, imdns):

        def cpu() -> float:
            return sum(meter() for meter in meters.values())

        failures = 0
        for rate in rates:
            _idle(cpu)
            before = {name: meter() for name, meter in meters.items()}
            step = sipp_load.run_uac(
                sipp,
                "uac_cpim_pd.xml",
                remote,
                "udp",
                rate,
                seconds,
                log_dir / f"step-{rate}",
                cpu,
                ooc_scenario="ooc_imdn_ack.xml" if imdns else None,
            )
            split = {name: meter() - before[name] for name, meter in meters.items()}
            imdn_share = step.ooc_answered / step.successful if step.successful else 0.0
            sustained = step.sustained and (not imdns or imdn_share >= IMDN_SHARE)
            per_msg = {
                f"{name}_cpu_us_per_msg": used * 1e6 / step.successful if step.successful else float("nan")
                for name, used in split.items()
            }
            entry = step.as_dict() | per_msg | {"imdn_share": imdn_share, "sustained": sustained}
            steps.append(entry)
            print(
                f"  {config:>15} offered {rate:>6}/s: {step.achieved:8.0f}/s answered, "
                + (f"IMDNs {imdn_share:6.1%}, " if imdns else "")
                + f"failed {step.failed}, retrans {step.retransmissions}, "
                f"CPU/msg (µs): "
                + ", ".join(f"{k.split('_')[0]} {v:.0f}" for k, v in per_msg.items())
                + ("" if sustained else "  <- not sustained"),
                flush=True,
            )
            failures = 0 if sustained else failures + 1
            if failures == 2:  # two in a row: one can be a load spike of a shared machine
                break
    return steps


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[str]:
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="sipimdn-scaleout-") as tmp:
        yield tmp


def _best(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    sustained = [s for s in steps if s["sustained"]]
    return max(sustained, key=lambda s: s["achieved"]) if sustained else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one step (default 3)")
    parser.add_argument("--rounds", type=int, default=1, help="times to measure every configuration")
    parser.add_argument("--rates", help="comma-separated offered rates (default: 250 ... 16000)")
    parser.add_argument("--store", choices=["memory", "postgres"], default="memory")
    parser.add_argument("--json", help="write every step to this file")
    parser.add_argument("--keep", help="keep the logs (SIPp, Kamailio, workers) in this directory")
    args = parser.parse_args()
    sipp = sipp_load.sipp_binary()
    missing = [name for name in ("sipp", "kamailio", "kamcmd") if shutil.which(name) is None]
    if sipp is None or missing or module_path() is None:
        print(f"missing: {', '.join(missing) or 'the Kamailio dispatcher module'}", file=sys.stderr)
        return 1
    rates = tuple(int(r) for r in args.rates.split(",")) if args.rates else RATES
    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start; "
        f"store: {args.store}; steps of {args.seconds:g} s",
        flush=True,
    )
    results: dict[str, list[list[dict[str, Any]]]] = {config: [] for config in CONFIGS}
    with _workdir(args.keep) as tmp, _postgres(args.store) as store:
        for round_no in range(args.rounds):
            order = CONFIGS[round_no % len(CONFIGS) :] + CONFIGS[: round_no % len(CONFIGS)]
            print(f"round {round_no + 1}: {', '.join(order)}", flush=True)
            for config in order:
                log_dir = Path(tmp) / f"r{round_no}-{config.replace(' ', '-')}"
                results[config].append(
                    _sweep(sipp, config, rates=rates, seconds=args.seconds, log_dir=log_dir, store=store)
                )
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")
    print("highest sustained rate per round (positive-delivery MESSAGEs/s; responders' CPU per message):")
    for config in CONFIGS:
        cells = []
        for steps in results[config]:
            best = _best(steps)
            if best is None:
                cells.append("none sustained")
                continue
            split = ", ".join(
                f"{name} {best[f'{name}_cpu_us_per_msg']:.0f}"
                for name in ("kamailio", "workers")
                if f"{name}_cpu_us_per_msg" in best
            )
            cells.append(f"{best['achieved']:.0f}/s (CPU µs/msg: {split})")
        print(f"  {config:>15}: {' | '.join(cells)}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"store": args.store, "rates": rates, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
