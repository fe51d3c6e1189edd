"""The benchmark's measurements, each a function returning plain data for the report.

``run.py`` calls these in order; every one is bounded in time and starts and ends the
processes it needs (responders by process group, SIPp by PID).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pstats
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import kamailio_ref, sipp_load
from .common import (
    BENCH_DIR,
    LOAD_CPU,
    LOOPBACK,
    REPO_DIR,
    SERVER_CPU,
    ServerProcess,
    free_port,
    pinned,
    python_command,
    rss_bytes,
    start_server,
)


@dataclass(frozen=True)
class Plan:
    """How much load each part gets (``--quick`` shrinks everything)."""

    rates: tuple[int, ...]
    step_seconds: float
    pd_rates: tuple[int, ...]
    latency_rates: tuple[int, ...]
    latency_seconds: float
    tls_rates: tuple[int, ...]
    sustain_rate: int
    sustain_seconds: float
    send_count: int
    tracker_count: int
    store_count: int
    micro_seconds: float
    profile_rate: int
    profile_seconds: float
    soak_rate: int = 1000
    soak_seconds: float = 600.0
    #: The target ratios (plain receive at ``ratio_rate``, positive delivery at each of
    #: ``pd_ratio_rates``, both against the floor) are measured in ``ratio_rounds`` alternating
    #: rounds of one ``ratio_seconds`` step per responder (see :func:`ratio_rounds`); 0: not at all.
    ratio_rate: int = 3000
    pd_ratio_rates: tuple[int, ...] = (1000, 2000)
    ratio_rounds: int = 5
    #: Long enough that CPU time's 10 ms ticks stay small against a step (the floor at 1,000/s
    #: spends 0.3-0.4 s in 5 s: a tick is under 3 %).
    ratio_seconds: float = 5.0
    #: An unrecorded step per responder before the first round (imports, caches, first tables).
    ratio_warmup_seconds: float = 1.0


@dataclass(frozen=True)
class Responder:
    """A process answering MESSAGE with 200, started fresh for each group of measurements."""

    name: str
    kind: str  # "reference" or "sipimdn"
    loop: str  # "asyncio", "uvloop" or "C"
    start: Callable[[Path], ServerProcess]
    #: Counters read from the responder's log when it prints no ``STATS {json}`` line of its own.
    stats_from_log: Callable[[Path], dict[str, Any]] | None = None


def floor(uvloop: bool) -> Responder:
    args = ["--uvloop"] if uvloop else []
    return Responder(
        name="floor" + ("+uvloop" if uvloop else ""),
        kind="reference",
        loop="uvloop" if uvloop else "asyncio",
        start=lambda d: start_server("floor", python_command(BENCH_DIR / "floor_responder.py", *args), d),
    )


def sipimdn(mode: str, uvloop: bool, extra: tuple[str, ...] = (), suffix: str = "") -> Responder:
    args = [mode, *(["--uvloop"] if uvloop else []), *extra]
    return Responder(
        name=f"sipimdn-{mode}{suffix}" + ("+uvloop" if uvloop else ""),
        kind="sipimdn",
        loop="uvloop" if uvloop else "asyncio",
        start=lambda d: start_server(
            f"sipimdn-{mode}", python_command(BENCH_DIR / "load" / "sipimdn_server.py", *args), d
        ),
    )


#: ``sipimdn listen``'s per-destination notification budgets for the benchmark. SIPp sends every
#: call from its one address (a fresh user part each), so the defaults (RFC 5438 §14: 120
#: notifications and 128 KiB a minute per destination address) would rightly decline nearly all
#: of the load's IMDNs. A deliberate benchmark setting, the same as sipimdn_server.py's.
LISTEN_BUDGETS = ("--imdn-rate-limit", str(1 << 30), "--imdn-byte-budget", str(1 << 40))


def listen_cli(extra: tuple[str, ...] = (), suffix: str = "") -> Responder:
    """``python -m sipimdn listen`` as a user runs it: its text output (one line per message and per
    notification sent, written some milliseconds' worth at a time) into the log, the delivered
    IMDNs sent on its own, the collector tuned as the CLI tunes it, the notification state in
    SQLite ``:memory:``."""

    def start(log_dir: Path) -> ServerProcess:
        port = free_port()
        command = [
            sys.executable, "-u", "-m", "sipimdn", "listen",
            "--aor", f"sip:bob@{LOOPBACK}:{port}",
            "--listen", f"udp:{LOOPBACK}:{port}", "--listen", f"tcp:{LOOPBACK}:{port}",
            *LISTEN_BUDGETS, *extra,
        ]  # fmt: skip

        def ready(line: str) -> dict[str, Any] | None:
            return {"udp": port, "tcp": port, "tls": None} if " listening on " in line else None

        return start_server("sipimdn-listen", command, log_dir, ready=ready)

    return Responder(
        name="sipimdn-listen" + suffix,
        kind="sipimdn",
        loop="asyncio",
        start=start,
        stats_from_log=_listen_counts,
    )


def _listen_counts(log_path: Path) -> dict[str, Any]:
    """Messages and notifications ``sipimdn listen`` reported, counted from its text output."""
    counts = {"messages": 0, "imdn_sent": 0, "imdn_2xx": 0, "imdn_other": 0}
    # Line by line: a soak's log holds two lines per message (hundreds of MB for ten minutes).
    with log_path.open(errors="replace") as lines:
        for line in lines:
            if line.startswith("message from "):
                counts["messages"] += 1
            elif line.startswith("sent ") and " notification " in line:
                counts["imdn_sent"] += 1
                status = line.rstrip("\n").rsplit(": SIP ", 1)
                ok = len(status) == 2 and status[1][:1] == "2"
                counts["imdn_2xx" if ok else "imdn_other"] += 1
    return counts


def kamailio(binary: str, tls: tuple[str, str] | None = None) -> Responder:
    return Responder(
        name="kamailio", kind="reference", loop="C", start=lambda d: kamailio_ref.start(binary, d, tls)
    )


@contextlib.contextmanager
def running(responder: Responder, log_dir: Path) -> Iterator[ServerProcess]:
    server = responder.start(log_dir)
    try:
        yield server
    finally:
        stats = server.stop()
        if not stats and responder.stats_from_log is not None:
            stats = responder.stats_from_log(server.log_path)
        (log_dir / "server-stats.json").write_text(json.dumps(stats))


def sweep(  # noqa: PLR0917
    sipp: str,
    server: ServerProcess,
    scenario: str,
    transport: str,
    rates: tuple[int, ...],
    seconds: float,
    log_dir: Path,
    ooc: str | None = None,
) -> list[dict[str, Any]]:
    """Stepped offered rates until the first unsustained step."""

    def step(rate: int) -> sipp_load.Step:
        server.wait_idle()
        return sipp_load.run_uac(
            sipp,
            scenario,
            (LOOPBACK, server.port(transport)),
            transport,
            rate,
            seconds,
            log_dir / f"{transport}-{rate}",
            server.cpu_seconds,
            ooc_scenario=ooc,
        )

    return [s.as_dict() for s in sipp_load.sweep(rates, step)]


@dataclass(frozen=True)
class RatioMember:
    """One responder of a ratio measurement and the SIPp scenario it gets.

    A member with a ``reference`` (the name of another member, e.g. ``floor``) is compared to
    it round by round; a member without one is a reference.
    """

    responder: Responder
    scenario: str = "uac_cpim.xml"
    ooc: str | None = None
    reference: str | None = None

    @property
    def name(self) -> str:
        return self.responder.name


def round_order(members: list[RatioMember], index: int) -> list[RatioMember]:
    """The order of round ``index`` (0-based): each reference sits between the members compared
    to it (with two, one is measured right before it and one right after), and every other
    round runs in reverse, so no member always follows the same neighbour or comes first.
    """
    order: list[RatioMember] = []
    for ref in (m for m in members if m.reference is None):
        compared = [m for m in members if m.reference == ref.name]
        half = len(compared) // 2
        order += [*compared[:half], ref, *compared[half:]]
    order += [m for m in members if m.reference is not None and m not in order]  # reference absent
    return order if index % 2 == 0 else order[::-1]


def _spread(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite)}


def summarise_rounds(
    rounds: list[dict[str, Any]], members: list[tuple[str, str | None]]
) -> dict[str, dict[str, Any]]:
    """Per member (``(name, reference)``): its CPU per message in every round, their median and
    range, and for a compared member the ratio to its reference *within each round* (both
    measured back to back), the median and range of those per-round ratios, and the ratio of
    the two medians beside it. ``rounds`` are ``{"round", "order", "steps": {name: step}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, reference in members:
        cpu = [r["steps"][name]["cpu_us_per_msg"] for r in rounds if name in r["steps"]]
        entry: dict[str, Any] = {
            "reference": reference,
            "rounds": len(cpu),
            "cpu_us_per_msg": cpu,
            "cpu": _spread(cpu),
            "sustained_rounds": sum(1 for r in rounds if r["steps"].get(name, {}).get("sustained")),
            "failed": sum(r["steps"][name]["failed"] for r in rounds if name in r["steps"]),
        }
        if reference is not None:
            ratios = []
            for r in rounds:
                own, ref = r["steps"].get(name), r["steps"].get(reference)
                if own is None or ref is None:
                    continue
                value, base = own["cpu_us_per_msg"], ref["cpu_us_per_msg"]
                ratios.append(value / base if base and not math.isnan(base) else math.nan)
            entry["ratios"] = ratios
            entry["ratio"] = _spread(ratios)
            ref_median = _spread(
                [r["steps"][reference]["cpu_us_per_msg"] for r in rounds if reference in r["steps"]]
            )["median"]
            entry["ratio_of_medians"] = (
                entry["cpu"]["median"] / ref_median if ref_median and not math.isnan(ref_median) else math.nan
            )  # fmt: skip
        out[name] = entry
    return out


def ratio_rounds(  # noqa: PLR0917
    sipp: str,
    members: list[RatioMember],
    rate: int,
    seconds: float,
    rounds: int,
    log_dir: Path,
    *,
    transport: str = "udp",
    warmup_seconds: float = 0.0,
) -> dict[str, Any]:
    """Every member at ``rate`` offered, ``rounds`` times, in alternating rounds (:func:`round_order`).

    The members run side by side for the whole measurement (fresh processes, all on the
    responder CPU; an idle one costs nothing measurable) so that a round takes each one's step
    within seconds of the others: a reference and the member compared to it are measured back
    to back, and load from elsewhere on a shared machine hits both. Before each step every
    member must be idle (the previous step's backlog drained). The report reads the median of
    the per-round ratios and their range, not a single step.
    """
    names = [m.name for m in members]
    assert len(set(names)) == len(names), names
    out: dict[str, Any] = {
        "rate": rate, "transport": transport, "seconds": seconds,
        "members": {m.name: {"reference": m.reference, "scenario": m.scenario} for m in members},
    }  # fmt: skip
    done: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {m.name: stack.enter_context(running(m.responder, log_dir / m.name)) for m in members}

        def step(member: RatioMember, seconds: float, where: Path) -> sipp_load.Step:
            _wait_all_idle(list(servers.values()))
            server = servers[member.name]
            return sipp_load.run_uac(
                sipp, member.scenario, (LOOPBACK, server.port(transport)), transport, rate, seconds,
                where, server.cpu_seconds, ooc_scenario=member.ooc,
            )  # fmt: skip

        if warmup_seconds > 0:
            for member in members:
                step(member, warmup_seconds, log_dir / member.name / "warmup")
        for index in range(rounds):
            order = round_order(members, index)
            steps = {
                m.name: step(m, seconds, log_dir / m.name / f"round-{index + 1}").as_dict() for m in order
            }
            done.append({"round": index + 1, "order": [m.name for m in order], "steps": steps})
    out["rounds"] = done
    out["summary"] = summarise_rounds(done, [(m.name, m.reference) for m in members])
    out["server"] = {
        m.name: json.loads(path.read_text())
        for m in members
        if (path := log_dir / m.name / "server-stats.json").exists()
    }
    return out


def _wait_all_idle(servers: list[ServerProcess], limit: float = 15.0, interval: float = 0.25) -> None:
    """Wait until the responders together use under 5 % of a CPU (or ``limit`` seconds)."""
    started = time.monotonic()
    last = sum(s.cpu_seconds() for s in servers)
    while time.monotonic() - started < limit:
        time.sleep(interval)
        now = sum(s.cpu_seconds() for s in servers)
        if now - last < 0.05 * interval:
            return
        last = now


def latency(
    server: ServerProcess, transport: str, rate: int, seconds: float, *, settle: bool = True
) -> dict[str, Any]:
    """Our own client at a fixed rate; the responder's CPU per answered message beside it."""
    if settle:
        server.wait_idle()
    before = server.cpu_seconds()
    command = pinned(
        python_command(BENCH_DIR / "load" / "latency_client.py", transport, LOOPBACK,
                       str(server.port(transport)), "--rate", str(rate), "--duration", str(seconds)),
        LOAD_CPU,
    )  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=False, text=True)
    except subprocess.TimeoutExpired:
        return {"transport": transport, "offered": rate, "error": f"client timed out ({seconds + 30:g} s)"}
    cpu = server.cpu_seconds() - before
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"transport": transport, "offered": rate, "error": (done.stderr or done.stdout)[-500:]}
    answered = result.get("answered", 0)
    result["cpu_us_per_msg"] = cpu * 1e6 / answered if answered else float("nan")
    return result


def sustained(sipp: str, server: ServerProcess, rate: int, seconds: float, log_dir: Path) -> dict[str, Any]:
    """SIPp at 90 % of ``rate`` and our latency client at 10 %, together, for ``seconds``."""
    sipp_rate = max(1, int(rate * 0.9))
    client_rate = max(1, rate - sipp_rate)
    holder: dict[str, Any] = {}

    def client() -> None:
        holder["latency"] = latency(server, "udp", client_rate, seconds, settle=False)

    thread = threading.Thread(target=client)
    thread.start()
    step = sipp_load.run_uac(
        sipp,
        "uac_cpim.xml",
        (LOOPBACK, server.port("udp")),
        "udp",
        sipp_rate,
        seconds,
        log_dir / "sustain",
        server.cpu_seconds,
    )
    thread.join(timeout=seconds + 60)
    return {"rate": rate, "seconds": seconds, "sipp": step.as_dict(), "latency": holder.get("latency", {})}


def soak(server: ServerProcess, rate: int, seconds: float, *, grace: float = 5.0) -> dict[str, Any]:
    """``soak_client.py`` against ``server`` for ``seconds`` at ``rate`` (positive-delivery asked,
    every IMDN answered); the server's CPU per 200 and its RSS sampled along the way."""
    server.wait_idle()
    window = 60.0 if seconds >= 300 else max(1.0, seconds / 10)
    command = pinned(
        python_command(BENCH_DIR / "load" / "soak_client.py", LOOPBACK, str(server.port("udp")),
                       "--rate", str(rate), "--duration", str(seconds), "--grace", str(grace),
                       "--window", str(window)),
        LOAD_CPU,
    )  # fmt: skip
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    rss = [(0.0, rss_bytes(server.pid))]
    every = max(1.0, seconds / 60)  # at most ~60 samples
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    limit = started + seconds + grace + 60
    try:
        while process.poll() is None and time.monotonic() < limit:
            time.sleep(min(every, 0.25) if seconds < 5 else every)
            with contextlib.suppress(OSError):
                rss.append((round(time.monotonic() - started, 1), rss_bytes(server.pid)))
        timed_out = process.poll() is None
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    cpu = server.cpu_seconds() - cpu_before
    rss_end = rss_bytes(server.pid)
    if timed_out:
        return {"offered": rate, "seconds": seconds, "error": f"client timed out ({limit - started:g} s)"}
    try:
        result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"offered": rate, "seconds": seconds, "error": (stderr or stdout)[-800:]}
    ok = result.get("ok", 0)
    result["server_cpu_s"] = round(cpu, 2)
    result["cpu_us_per_msg"] = cpu * 1e6 / ok if ok else float("nan")
    result["rss_start"] = rss[0][1]
    result["rss_end"] = rss_end
    result["rss_max"] = max(rss_end, *(r for _, r in rss))
    result["rss_samples"] = rss
    return result


def send_path(  # noqa: PLR0917
    sipp: str, transport: str, count: int, destinations: int, log_dir: Path, uvloop: bool = False
) -> dict[str, Any]:
    """A SIPp UAS and our sender process (pinned to the server CPU: it is what is measured)."""
    timeout = 120.0
    process, port = sipp_load.start_uas(sipp, transport, count, timeout, log_dir)
    try:
        command = pinned(
            python_command(BENCH_DIR / "load" / "sender.py", transport, LOOPBACK, str(port),
                           "--count", str(count), "--destinations", str(destinations),
                           *(["--uvloop"] if uvloop else [])),
            SERVER_CPU,
        )  # fmt: skip
        env_path = f"{REPO_DIR}"
        done = subprocess.run(
            command, capture_output=True, timeout=timeout, check=False, text=True,
            env={**_env(), "PYTHONPATH": env_path},
        )  # fmt: skip
        try:
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"error": (done.stderr or done.stdout)[-800:]}
    finally:
        uas = sipp_load.uas_result(process, log_dir, 10)
    result["uas"] = uas
    result["loop"] = "uvloop" if uvloop else "asyncio"
    return result


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def run_json(command: list[str], timeout: float, cpu: str | None = None) -> dict[str, Any]:
    """Run a helper that prints one JSON object last; its object, or ``{"error": ...}``."""
    if cpu is not None:
        command = pinned(command, cpu)
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=timeout, check=False, text=True,
            env={**_env(), "PYTHONPATH": f"{REPO_DIR}"}, cwd=REPO_DIR,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s: {' '.join(command)}"}
    text = done.stdout.strip()
    with contextlib.suppress(json.JSONDecodeError):
        whole: dict[str, Any] = json.loads(text[text.find("{") :]) if "{" in text else {}
        if whole:
            return whole
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value: dict[str, Any] = json.loads(line)
                return value
    return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-800:]}"}


def profile_receive(  # noqa: PLR0917
    sipp: str,
    rate: int,
    seconds: float,
    log_dir: Path,
    scenario: str = "uac_cpim.xml",
    ooc: str | None = None,
) -> dict[str, Any]:
    """cProfile of the UA receiving SIPp load over UDP; the top functions and a per-area split."""
    out = log_dir / "receive.pstats"
    responder = sipimdn("ua", False, ("--profile", str(out)))
    with running(responder, log_dir) as server:
        step = sipp_load.run_uac(
            sipp,
            scenario,
            (LOOPBACK, server.port("udp")),
            "udp",
            rate,
            seconds,
            log_dir / "load",
            server.cpu_seconds,
            ooc_scenario=ooc,
        )
    if not out.exists():
        return {"error": "no profile written", "step": step.as_dict()}
    stats = pstats.Stats(str(out))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())  # tottime
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in raw.items():
        rows.append(
            {"function": f"{_short(filename)}:{line}({name})", "calls": nc, "tottime": tt, "cumtime": ct}
        )
    top_tottime = sorted(rows, key=lambda r: r["tottime"], reverse=True)[:20]
    top_cumtime = sorted(
        (r for r in rows if "sipimdn" in r["function"]), key=lambda r: r["cumtime"], reverse=True
    )[:20]
    areas: dict[str, float] = {}
    for (filename, _line, name), entry in raw.items():
        area = _area(filename, name)
        areas[area] = areas.get(area, 0.0) + entry[2]
    return {
        "rate": rate,
        "seconds": seconds,
        "step": step.as_dict(),
        "total_tottime": total,
        "messages": step.successful,
        "areas": dict(sorted(areas.items(), key=lambda kv: kv[1], reverse=True)),
        "top_tottime": top_tottime,
        "top_cumtime": top_cumtime,
    }


def _short(filename: str) -> str:
    marker = "/sipimdn/"
    if marker in filename:
        return "sipimdn/" + filename.split(marker, 1)[1]
    if "/lib/python" in filename:
        return filename.split("/lib/python", 1)[1].split("/", 1)[-1]
    return filename


def _area(filename: str, name: str) -> str:
    if "/sipimdn/" in filename:
        rest = filename.split("/sipimdn/", 1)[1]
        if rest.startswith("bench/") or "/bench/" in filename:
            return "bench harness"
        top = rest.split("/", 1)[0]
        if top.endswith(".py"):
            top = top[:-3]
        return f"sipimdn.{top}"
    if "/bench/" in filename:
        return "bench harness"
    if "asyncio" in filename:
        return "asyncio"
    if filename == "~":
        if "lxml" in name or "etree" in name:
            return "lxml (C)"
        if "sqlite" in name:
            return "sqlite3 (C)"
        if "socket" in name or "sendto" in name or "recvfrom" in name or "select" in name or "poll" in name:
            return "socket/poll syscalls (C)"
        return "builtins (C)"
    if "sqlite3" in filename:
        return "sqlite3"
    if "threading" in filename or "concurrent" in filename or "queue.py" in filename:
        return "threads (store writer)"
    return "other stdlib"


def python_version() -> str:
    return sys.version.split()[0]


def per_member(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`ratio_rounds`'s result split by member, for the member's entry in results.json:
    its steps round by round (with its reference's step of the same round), its summary and its
    reference's, and its counters."""
    out: dict[str, dict[str, Any]] = {}
    for name, info in group["members"].items():
        reference = info["reference"]
        rounds = []
        for r in group["rounds"]:
            row = {"round": r["round"], "order": r["order"], "step": r["steps"].get(name)}
            if reference is not None:
                row["reference_step"] = r["steps"].get(reference)
            rounds.append(row)
        out[name] = {
            "rate": group["rate"],
            "transport": group["transport"],
            "seconds": group["seconds"],
            "scenario": info["scenario"],
            "reference": reference,
            "rounds": rounds,
            "summary": group["summary"][name],
            "reference_summary": group["summary"].get(reference) if reference is not None else None,
            "server": group["server"].get(name, {}),
        }
    return out
