"""Run every benchmark of sipimdn and write bench/RESULTS.md (plus PNG plots and results.json).

    python bench/run.py            # the full run (about 30 minutes on 2 cores, 10 of them the soak)
    python bench/run.py --quick    # a tiny load, about 70 s (what CI runs)
    python bench/run.py --out DIR  # write RESULTS.md, results.json and the plots into DIR
    python bench/run.py --only soak                     # the 10-minute soak at 1000/s alone
    python bench/run.py --only soak --soak-seconds 60   # a shorter one
    python bench/run.py --only receive,positive-delivery --rounds 7 --no-uvloop   # the target ratios

A run of some parts (``--only``) merges into the OUT/results.json already there: the parts it did
not run keep their figures, and RESULTS.md says which command and date each of those came from.

The target ratios (plain receive at 3,000/s, positive delivery at 1,000 and 2,000/s, each against
the floor) are not read off the sweeps' single steps: the receive and positive-delivery parts end
with ``--rounds`` alternating rounds at those rates, the floor and the sipimdn responders running
side by side and measured back to back in each round, and the targets use the median of the
per-round ratios (scenarios.ratio_rounds).

Every figure is meant to be read as a ratio against the references measured in the same run:
the Python floor (bench/floor_responder.py, raw asyncio, no SIP library), Kamailio answering
statelessly (bench/kamailio_stateless.cfg), and each again under uvloop when it imports.
Load comes from SIPp (bounded runs at stepped offered rates until failures appear), from
our own latency client (bench/load/latency_client.py), and for the soak (positive delivery at a
fixed rate for ten minutes, the IMDN's delay after the 200) from bench/load/soak_client.py.
Responders run in their own process groups pinned to one CPU, load generators on the other,
and CPU per message is read from /proc/<pid>/stat of the responder's process group.

With ``--require-peers`` (what CI's smoke test passes when CI=true), a missing sipp or kamailio
is an error instead of a section marked "not run".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from load import kamailio_ref, report, scenarios, sipp_load  # noqa: E402
from load.common import SERVER_CPU, priority_note, python_command, uvloop_available  # noqa: E402

FULL = scenarios.Plan(
    rates=(250, 500, 1000, 2000, 4000, 8000, 16000, 24000, 32000, 48000, 64000),
    step_seconds=3.0,
    pd_rates=(125, 250, 500, 1000, 2000, 4000),
    latency_rates=(1000, 3000),
    latency_seconds=4.0,
    tls_rates=(500, 1000, 2000, 4000),
    sustain_rate=10_000,
    sustain_seconds=60.0,
    send_count=5000,
    tracker_count=100_000,
    store_count=1_000_000,
    micro_seconds=2.0,
    profile_rate=250,
    profile_seconds=8.0,
    soak_rate=1000,
    soak_seconds=600.0,
    # The targets' rates; five rounds of 5 s steps add about six minutes to a full run.
    ratio_rate=3000,
    pd_ratio_rates=(1000, 2000),
    ratio_rounds=5,
    ratio_seconds=5.0,
    ratio_warmup_seconds=1.0,
)

#: Every part, in the order a full run runs them.
PARTS = ("micro", "receive", "positive-delivery", "tls", "sustain", "send", "profile", "soak")

QUICK = scenarios.Plan(
    rates=(300,),
    step_seconds=1.0,
    pd_rates=(100,),
    latency_rates=(300,),
    latency_seconds=0.5,
    tls_rates=(300,),
    sustain_rate=500,
    sustain_seconds=1.0,
    send_count=200,
    tracker_count=2000,
    store_count=5000,
    micro_seconds=0.3,
    profile_rate=300,
    profile_seconds=1.0,
    soak_rate=200,
    soak_seconds=3.0,
    ratio_rate=300,
    pd_ratio_rates=(300,),  # the floor's CPU in a 1 s step: a few 10 ms ticks, not zero
    ratio_rounds=2,
    ratio_seconds=1.0,
    ratio_warmup_seconds=0.0,
)


class Runner:
    """Runs each part, records its result or its error, never lets one part stop the others."""

    def __init__(self, args: argparse.Namespace, plan: scenarios.Plan) -> None:
        self.args = args
        self.plan = plan
        self.logs: Path = args.logs
        self.results: dict[str, Any] = {"errors": {}, "skipped": {}}
        self.sipp = sipp_load.sipp_binary()
        self.kamailio = kamailio_ref.kamailio_binary()
        # Quick runs leave the uvloop variants out: the same code paths, half the time.
        self.uvloop = uvloop_available() and not args.no_uvloop and not args.quick

    def part(self, name: str, fn: Callable[[], Any]) -> None:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            self.results[name] = fn()
        except Exception:
            self.results["errors"][name] = traceback.format_exc()[-3000:]
            print(self.results["errors"][name], file=sys.stderr, flush=True)
        self.results.setdefault("durations", {})[name] = round(time.monotonic() - started, 1)

    def skip(self, name: str, why: str) -> None:
        self.results["skipped"][name] = why
        print(f"== {name}: skipped ({why})", flush=True)

    # -- the parts ------------------------------------------------------------------------

    def responders(self) -> list[scenarios.Responder]:
        found = [scenarios.floor(False)]
        if self.uvloop:
            found.append(scenarios.floor(True))
        if self.kamailio:
            found.append(scenarios.kamailio(self.kamailio))
        found += [scenarios.sipimdn("stack", False), scenarios.sipimdn("ua", False)]
        if not self.args.quick:
            # The same UA with MemoryStore instead of the SQLite write-behind: what persistence costs.
            found.append(scenarios.sipimdn("ua", False, ("--store", "memory"), suffix="-memstore"))
            # The collector tuned as `sipimdn listen` tunes it (UserAgentConfig.gc_tuning).
            found.append(scenarios.sipimdn("ua", False, ("--gc-tuning",), suffix="-gctuned"))
        if self.uvloop:
            found.append(scenarios.sipimdn("ua", True))
        # `sipimdn listen` as users run it: the CLI process, its output, its collector tuning.
        found.append(scenarios.listen_cli())
        return found

    def receive(self) -> dict[str, Any]:
        assert self.sipp is not None
        out: dict[str, Any] = {}
        plan = self.plan
        for responder in self.responders():
            print(f"   {responder.name}", flush=True)
            log_dir = self.logs / "receive" / responder.name
            entry: dict[str, Any] = {"kind": responder.kind, "loop": responder.loop}
            with scenarios.running(responder, log_dir) as server:
                for transport in ("udp", "tcp"):
                    entry[transport] = scenarios.sweep(
                        self.sipp, server, "uac_cpim.xml", transport, plan.rates, plan.step_seconds, log_dir
                    )
                entry["latency"] = [
                    scenarios.latency(server, "udp", rate, plan.latency_seconds)
                    for rate in plan.latency_rates
                ]
            out[responder.name] = entry
        if plan.ratio_rounds > 0:
            members = [
                scenarios.RatioMember(scenarios.sipimdn("ua", False), reference="floor"),
                scenarios.RatioMember(scenarios.floor(False)),
                scenarios.RatioMember(scenarios.listen_cli(), reference="floor"),
            ]
            if self.uvloop:
                members += [
                    scenarios.RatioMember(scenarios.sipimdn("ua", True), reference="floor+uvloop"),
                    scenarios.RatioMember(scenarios.floor(True)),
                ]
            self.rounds("receive", out, members, plan.ratio_rate, self.logs / "receive" / "rounds")
        return out

    def rounds(
        self, part: str, out: dict[str, Any], members: list[scenarios.RatioMember], rate: int, log_dir: Path
    ) -> None:
        """The target ratios at ``rate``: alternating rounds (scenarios.ratio_rounds), each
        member's record under ``out[name]["ratio_rounds"][rate]``. A failure is the part's error
        (RESULTS.md shows it) without losing the part's sweeps."""
        assert self.sipp is not None
        print(f"   ratio rounds at {rate}/s: {', '.join(m.name for m in members)}", flush=True)
        try:
            group = scenarios.ratio_rounds(
                self.sipp,
                members,
                rate,
                self.plan.ratio_seconds,
                self.plan.ratio_rounds,
                log_dir / str(rate),
                warmup_seconds=self.plan.ratio_warmup_seconds,
            )
        except Exception:
            error = f"ratio rounds at {rate}/s:\n" + traceback.format_exc()[-3000:]
            self.results["errors"][part] = (self.results["errors"].get(part, "") + "\n" + error).strip()
            print(error, file=sys.stderr, flush=True)
            return
        kinds = {m.name: m.responder for m in members}
        for name, record in scenarios.per_member(group).items():
            entry = out.setdefault(name, {"kind": kinds[name].kind, "loop": kinds[name].loop})
            entry.setdefault("ratio_rounds", {})[str(rate)] = record

    def positive_delivery(self) -> dict[str, Any]:
        assert self.sipp is not None
        out: dict[str, Any] = {}
        variants = [scenarios.sipimdn("ua", False), scenarios.listen_cli()]
        if self.uvloop:
            variants.append(scenarios.sipimdn("ua", True))
        for responder in variants:
            log_dir = self.logs / "positive-delivery" / responder.name
            entry: dict[str, Any] = {"loop": responder.loop}
            for transport in ("udp", "tcp"):
                if transport == "tcp" and responder.loop == "uvloop":
                    continue
                with scenarios.running(responder, log_dir / transport) as server:
                    entry[transport] = scenarios.sweep(
                        self.sipp,
                        server,
                        "uac_cpim_pd.xml",
                        transport,
                        self.plan.pd_rates,
                        self.plan.step_seconds,
                        log_dir,
                        ooc="ooc_imdn_ack.xml",
                    )
                entry[f"{transport}_server"] = json.loads(
                    (log_dir / transport / "server-stats.json").read_text()
                )
            out[responder.name] = entry
        if self.plan.ratio_rounds > 0:
            for rate in self.plan.pd_ratio_rates:
                # The floor answers the plain scenario: what the least asyncio program pays for a
                # MESSAGE -> 200, against the whole exchange (200 + delivered IMDN answered).
                members = [
                    scenarios.RatioMember(
                        scenarios.sipimdn("ua", False), "uac_cpim_pd.xml", "ooc_imdn_ack.xml", "floor"
                    ),
                    scenarios.RatioMember(scenarios.floor(False)),
                    scenarios.RatioMember(
                        scenarios.listen_cli(), "uac_cpim_pd.xml", "ooc_imdn_ack.xml", "floor"
                    ),
                ]
                log_dir = self.logs / "positive-delivery" / "rounds"
                self.rounds("positive-delivery", out, members, rate, log_dir)
            # The floor's steps are in each member's record (reference_step), not a PD entry.
            out.pop("floor", None)
        return out

    def tls(self) -> dict[str, Any]:
        cert, key = report.make_tls_files(self.logs / "tls")
        out: dict[str, Any] = {}
        tls_files = ("--tls-cert", cert, "--tls-key", key)
        # The UA is what the target is about; the bare stack beside it shows what TLS and the SIP
        # core cost without the UA's own work (compare with the stack's TCP rows of "receive").
        candidates = [scenarios.sipimdn("ua", False, tls_files), scenarios.sipimdn("stack", False, tls_files)]
        if self.kamailio:
            candidates.insert(0, scenarios.kamailio(self.kamailio, (cert, key)))
        for responder in candidates:
            with scenarios.running(responder, self.logs / "tls" / responder.name) as server:
                out[responder.name] = [
                    scenarios.latency(server, "tls", rate, self.plan.latency_seconds)
                    for rate in self.plan.tls_rates
                ]
        return out

    def sustain(self) -> dict[str, Any]:
        assert self.sipp is not None
        responder = scenarios.sipimdn("ua", False)
        log_dir = self.logs / "sustain"
        with scenarios.running(responder, log_dir) as server:
            return scenarios.sustained(
                self.sipp, server, self.plan.sustain_rate, self.plan.sustain_seconds, log_dir
            )

    def soak(self) -> dict[str, Any]:
        """`sipimdn listen` as users run it, positive delivery asked at a fixed rate, every IMDN
        answered: when the delivered IMDN leaves after the 200, over a long run."""
        responder = scenarios.listen_cli()
        log_dir = self.logs / "soak"
        with scenarios.running(responder, log_dir) as server:
            result = scenarios.soak(server, self.plan.soak_rate, self.plan.soak_seconds)
        result["responder"] = responder.name
        result["server"] = json.loads((log_dir / "server-stats.json").read_text())
        return result

    def send(self) -> list[dict[str, Any]]:
        assert self.sipp is not None
        results = []
        for transport in ("udp", "tcp"):
            for destinations in (64,) if self.args.quick else (1, 64):
                results.append(
                    scenarios.send_path(
                        self.sipp,
                        transport,
                        self.plan.send_count,
                        destinations,
                        self.logs / "send" / f"{transport}-{destinations}",
                    )
                )
        if self.uvloop:
            results.append(
                scenarios.send_path(
                    self.sipp,
                    "udp",
                    self.plan.send_count,
                    64,
                    self.logs / "send" / "udp-64-uvloop",
                    uvloop=True,
                )
            )
        return results

    def micro(self) -> dict[str, Any]:
        plan = self.plan
        out: dict[str, Any] = {}
        seconds = str(plan.micro_seconds)
        parse_script = BENCH / "bench_parse.py"
        if parse_script.exists():
            # Full runs let it set up its throwaway venv of reference parsers (aiosip, pyVoIP).
            extra = ["--rounds", "2"] if self.args.quick else ["--setup"]
            out["parse"] = scenarios.run_json(
                python_command(parse_script, "--seconds", str(plan.micro_seconds / 4), "--json", *extra),
                900,
                SERVER_CPU,
            )
        else:
            out["parse"] = {"error": "bench/bench_parse.py is not in the tree yet"}
        out["codecs"] = scenarios.run_json(
            python_command(BENCH / "bench_codecs.py", "--seconds", seconds, "--json"), 300, SERVER_CPU
        )
        out["tracker"] = scenarios.run_json(
            python_command(BENCH / "micro_memory.py", "tracker", "--count", str(plan.tracker_count)),
            600,
            SERVER_CPU,
        )
        store_path = self.logs / "store.db"
        out["store"] = scenarios.run_json(
            python_command(BENCH / "micro_memory.py", "store", "--count", str(plan.store_count),
                           "--path", str(store_path)),
            900, SERVER_CPU,
        )  # fmt: skip
        return out

    def profile(self) -> dict[str, Any]:
        assert self.sipp is not None
        receive = scenarios.profile_receive(
            self.sipp, self.plan.profile_rate, self.plan.profile_seconds, self.logs / "profile" / "receive"
        )
        if self.args.quick:
            return {"receive": receive}  # same machinery; the IMDN profile only in full runs
        return {
            "receive": receive,
            "positive-delivery": scenarios.profile_receive(
                self.sipp,
                max(1, self.plan.profile_rate // 2),
                self.plan.profile_seconds,
                self.logs / "profile" / "pd",
                scenario="uac_cpim_pd.xml",
                ooc="ooc_imdn_ack.xml",
            ),
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny load, well under a minute (CI)")
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds per offered-rate step (default 3, quick 1), the ratio rounds' steps too",
    )
    parser.add_argument("--rates", help="comma-separated offered rates of the receive sweeps")
    parser.add_argument("--pd-rates", help="comma-separated offered rates of the positive-delivery sweeps")
    parser.add_argument(
        "--latency-rates", help="comma-separated rates of our latency client in the receive part"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="alternating rounds of the target ratios (default 5, quick 2; 0: none)",
    )
    parser.add_argument(
        "--round-seconds", type=float, help="seconds per step of the ratio rounds (default 5, quick 1)"
    )
    parser.add_argument(
        "--ratio-rate", type=int, help="offered rate of the plain-receive ratio rounds (default 3000)"
    )
    parser.add_argument(
        "--pd-ratio-rates", help="comma-separated rates of the positive-delivery ratio rounds (1000,2000)"
    )
    parser.add_argument("--sustain", type=float, help="seconds of the sustained 10k/s run (default 60)")
    parser.add_argument("--soak-seconds", type=float, help="seconds of the soak (default 600, quick 3)")
    parser.add_argument("--soak-rate", type=int, help="messages/s of the soak (default 1000, quick 200)")
    parser.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md, results.json and plots go")
    parser.add_argument("--logs", type=Path, help="SIPp and responder logs (default OUT/logs)")
    parser.add_argument("--only", help="comma-separated parts: " + ",".join(PARTS))
    parser.add_argument(
        "--render-only", action="store_true", help="only re-render RESULTS.md from OUT/results.json"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop variants")
    parser.add_argument("--require-peers", action="store_true", help="fail if sipp or kamailio is missing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        # Re-render RESULTS.md and the plots from OUT/results.json (report layout changes only).
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "RESULTS.md").write_text(report.render(results, report.plots(results, args.out)))
        return 0
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.duration is not None:
        overrides["step_seconds"] = overrides["ratio_seconds"] = args.duration
    if args.round_seconds is not None:
        overrides["ratio_seconds"] = args.round_seconds
    if args.rates:
        overrides["rates"] = tuple(int(r) for r in args.rates.split(","))
    if args.pd_rates:
        overrides["pd_rates"] = tuple(int(r) for r in args.pd_rates.split(","))
    if args.latency_rates:
        overrides["latency_rates"] = tuple(int(r) for r in args.latency_rates.split(","))
    if args.rounds is not None:
        overrides["ratio_rounds"] = max(0, args.rounds)
    if args.ratio_rate is not None:
        overrides["ratio_rate"] = args.ratio_rate
    if args.pd_ratio_rates:
        overrides["pd_ratio_rates"] = tuple(int(r) for r in args.pd_ratio_rates.split(","))
    if args.sustain is not None:
        overrides["sustain_seconds"] = args.sustain
    if args.soak_seconds is not None:
        overrides["soak_seconds"] = args.soak_seconds
    if args.soak_rate is not None:
        overrides["soak_rate"] = args.soak_rate
    if overrides:
        plan = scenarios.Plan(**{**plan.__dict__, **overrides})
    args.out.mkdir(parents=True, exist_ok=True)
    if args.logs is None:
        args.logs = args.out / "logs"
    if args.logs.exists():
        shutil.rmtree(args.logs)
    args.logs.mkdir(parents=True)
    runner = Runner(args, plan)
    if args.require_peers:
        missing = [n for n, p in (("sipp", runner.sipp), ("kamailio", runner.kamailio)) if p is None]
        if missing:
            print(f"missing peers: {', '.join(missing)}", file=sys.stderr)
            return 2
    only = set(args.only.split(",")) if args.only else None
    if only is not None and only - set(PARTS):
        print(f"unknown parts: {', '.join(sorted(only - set(PARTS)))}", file=sys.stderr)
        return 2
    started = time.monotonic()
    runner.results["meta"] = report.machine_info(
        argv if argv is not None else sys.argv[1:], runner.sipp, runner.kamailio, quick=args.quick
    )
    runner.results["meta"]["pinning"] = priority_note()
    runner.results["plan"] = plan.__dict__
    parts: list[tuple[str, Callable[[], Any], bool]] = [
        ("micro", runner.micro, True),
        ("receive", runner.receive, runner.sipp is not None),
        ("positive-delivery", runner.positive_delivery, runner.sipp is not None),
        ("tls", runner.tls, True),
        ("sustain", runner.sustain, runner.sipp is not None),
        ("send", runner.send, runner.sipp is not None),
        ("profile", runner.profile, runner.sipp is not None),
        ("soak", runner.soak, True),
    ]
    assert [name for name, _fn, _possible in parts] == list(PARTS)
    for name, fn, possible in parts:
        if only is not None and name not in only:
            continue
        if possible:
            runner.part(name, fn)
        else:
            runner.skip(name, "sipp is not installed (Debian package sip-tester)")
    runner.results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    runner.results["meta"]["loadavg_end"] = os.getloadavg()
    results = runner.results
    previous_path = args.out / "results.json"
    if only is not None and previous_path.exists():
        # A partial run: the parts it did not run keep the figures of the run that measured them.
        try:
            previous = json.loads(previous_path.read_text())
        except ValueError as exc:
            print(f"{previous_path} is unreadable ({exc}): writing this run's parts only", file=sys.stderr)
        else:
            results = report.merge(previous, results, ran=[name for name in PARTS if name in only])
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    plots = report.plots(results, args.out)
    text = report.render(results, plots)
    (args.out / "RESULTS.md").write_text(text)
    print(f"wrote {args.out / 'RESULTS.md'} in {results['meta']['total_seconds']} s", flush=True)
    return 1 if runner.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
