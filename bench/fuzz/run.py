"""Long fuzz runs of every peer-data parser; a bench, not a test.

    python bench/fuzz/run.py                       # atheris if installed, 1,000,000 inputs per parser
    python bench/fuzz/run.py --engine mutate --runs 200000 --targets sip,uri
    python bench/fuzz/run.py --worker sip --runs 1000 # one target in this process (used by the driver)

The targets and the invariant live in ``tests/robustness/fuzz_targets.py`` (shared with CI):
an input parses, or the parser raises its own ``SipError`` subclass. Anything else is a
finding: the input is saved under ``bench/fuzz/crashes/`` and counted (deduplicated by
exception type and raising line), and the run goes on, so one bug does not hide the next.
An input running longer than ``--timeout`` seconds is a hang (libFuzzer kills the worker).

Engines: ``atheris`` (coverage-guided libFuzzer, ``pip install atheris``) or ``mutate``
(a seeded dumb mutator over the seed corpus, no dependency). Each target runs in its own
worker process; the driver writes ``bench/fuzz/results.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "robustness"))

CRASH_DIR = HERE / "crashes"
FLUSH_EVERY = 20_000


class Recorder:
    """Counts inputs and distinct unexpected exceptions of one target; saves crashing inputs."""

    def __init__(self, name: str, stats_path: Path) -> None:
        self.name = name
        self.stats_path = stats_path
        self.runs = 0
        self.accepted = 0
        self.refused = 0
        self.findings: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.slowest = 0.0

    def record(self, data: bytes, run: Any, error: type[BaseException]) -> None:
        self.runs += 1
        began = time.perf_counter()
        try:
            run(data)
            self.accepted += 1
        except error:
            self.refused += 1
        except Exception as exc:  # a bug: anything else escaping the parser
            self._finding(data, exc)
        self.slowest = max(self.slowest, time.perf_counter() - began)
        if self.runs % FLUSH_EVERY == 0:
            self.flush()

    def _finding(self, data: bytes, exc: Exception) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
                      if "sipimdn" in f.filename), "?")
        key = f"{type(exc).__name__} at {where}"
        entry = self.findings.setdefault(key, {"count": 0, "message": str(exc)[:300], "input": None})
        entry["count"] += 1
        if entry["input"] is None:
            CRASH_DIR.mkdir(exist_ok=True)
            path = CRASH_DIR / f"{self.name}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
            path.write_bytes(data)
            entry["input"] = str(path.relative_to(ROOT))

    def flush(self) -> None:
        elapsed = time.monotonic() - self.started
        self.stats_path.write_text(json.dumps({
            "target": self.name, "runs": self.runs, "accepted": self.accepted, "refused": self.refused,
            "findings": self.findings, "seconds": round(elapsed, 1),
            "slowest_input_seconds": round(self.slowest, 4),
        }, indent=1))


def worker(name: str, runs: int, engine: str, stats_path: Path, *, timeout: int, seed: int) -> None:
    """Fuzz one target in this process until ``runs`` inputs were tried."""
    if engine == "atheris":
        import atheris  # type: ignore[import-untyped]

        with atheris.instrument_imports(include=["sipimdn"]):
            import fuzz_targets
    else:
        import fuzz_targets
    target = fuzz_targets.TARGETS[name]
    recorder = Recorder(name, stats_path)

    if engine == "mutate":
        rng = random.Random(seed)
        seeds = list(target.seeds)
        while recorder.runs < runs:
            data = fuzz_targets.mutate(rng.choice(seeds), rng, max_len=target.max_len)
            recorder.record(data, target.run, target.error)
            if rng.random() < 0.01:
                seeds.append(data)  # keep some mutants: mutations of mutations go deeper
        recorder.flush()
        return

    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for index, seed_input in enumerate(target.seeds):
        (corpus / f"seed-{index}").write_bytes(seed_input)

    def one_input(data: bytes) -> None:
        recorder.record(data, target.run, target.error)
        if recorder.runs >= runs:
            recorder.flush()

    # libFuzzer owns the loop; -runs counts executed inputs, -timeout catches hangs.
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-timeout={timeout}", f"-max_len={target.max_len}",
                   f"-seed={seed}", "-print_final_stats=1", str(corpus)], one_input)
    atheris.Fuzz()


def drive(args: argparse.Namespace) -> int:
    import fuzz_targets

    names = list(fuzz_targets.TARGETS) if args.targets == "all" else args.targets.split(",")
    results: list[dict[str, Any]] = []
    for name in names:
        stats_path = HERE / f".stats-{name}.json"
        stats_path.unlink(missing_ok=True)
        began = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--runs", str(args.runs), "--engine", args.engine,
             "--timeout", str(args.timeout), "--seed", str(args.seed)],
            capture_output=True, text=True, check=False)
        stats: dict[str, Any] = (json.loads(stats_path.read_text()) if stats_path.exists()
                                 else {"target": name, "runs": 0})
        stats["engine"] = args.engine
        stats["exit_code"] = proc.returncode
        stats["wall_seconds"] = round(time.monotonic() - began, 1)
        done = re.search(r"Done (\d+) runs", proc.stderr)
        if done:
            stats["libfuzzer_runs"] = int(done.group(1))
        if "ERROR: libFuzzer: timeout" in proc.stderr:
            stats.setdefault("findings", {})["hang (libFuzzer timeout)"] = {"count": 1,
                                                                         "message": proc.stderr[-500:]}
        elif proc.returncode not in (0,) and not done:
            stats.setdefault("findings", {})[f"worker exit {proc.returncode}"] = {
                "count": 1, "message": proc.stderr[-800:]}
        stats_path.unlink(missing_ok=True)
        results.append(stats)
        print(f"{name}: {stats.get('runs')} inputs, {len(stats.get('findings', {}))} finding(s), "
              f"{stats['wall_seconds']} s", flush=True)
        write_results(Path(args.out), results)  # after each target: a stopped run keeps what it did
    print(table(results))
    return 1 if any(r.get("findings") for r in results) else 0


def write_results(out: Path, results: list[dict[str, Any]]) -> None:
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "python": sys.version.split()[0], "results": results}, indent=1))


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table for bench/README.md."""
    lines = ["| parser | engine | inputs | parsed | refused (typed error) | findings | slowest input "
             "| time |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in results:
        findings = "; ".join(f"{k} x{v['count']}" for k, v in r.get("findings", {}).items()) or "none"
        lines.append(f"| {r['target']} | {r.get('engine')} | {r.get('runs', 0):,} | "
                     f"{r.get('accepted', 0):,} | "
                     f"{r.get('refused', 0):,} | {findings} | {r.get('slowest_input_seconds', '?')} s | "
                     f"{r.get('wall_seconds')} s |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["atheris", "mutate"], default=None)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--targets", default="all")
    parser.add_argument("--timeout", type=int, default=10, help="seconds before one input counts as a hang")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine is None:
        try:
            import atheris  # noqa: F401
            args.engine = "atheris"
        except ImportError:
            args.engine = "mutate"
    if args.worker:
        worker(args.worker, args.runs, args.engine, HERE / f".stats-{args.worker}.json",
               timeout=args.timeout, seed=args.seed)
        return 0
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
