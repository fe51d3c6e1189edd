"""The benchmark's measurements, each a function returning plain data for the report.

``run.py`` calls these in order; every one is bounded in time and starts and ends the
processes it needs (responders by process group, SIPp by PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import pstats
import signal
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
    notification sent, line-buffered as on a terminal) into the log, the delivered IMDNs sent on its
    own, the collector tuned as the CLI tunes it, the notification state in SQLite ``:memory:``."""

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
