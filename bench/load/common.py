"""Shared helpers of the load benchmarks: free ports, CPU time from /proc, process handling.

CPU time is read from ``/proc/<pid>/stat`` (``utime + stime``, clock ticks) for the server
process and every process of its process group (Kamailio forks workers), so a figure is the
CPU spent by the responder only, not by the load generator.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent

#: CPU the load generators (SIPp, our client) are pinned to, and the one the server gets.
#: On a 2-core machine this keeps them from competing for one core.
LOAD_CPU = "0"
SERVER_CPU = "1"


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


#: Scheduling priority of everything the benchmark starts, when we may raise it (root): the
#: machine may be shared, and both the references and sipimdn get the same boost.
NICE = -10


def pinned(command: list[str], cpu: str) -> list[str]:
    """``command`` under ``taskset -c cpu`` (2+ cores and taskset present) and ``nice -n NICE`` (root)."""
    if cpu_count() >= 2 and shutil.which("taskset"):
        command = ["taskset", "-c", cpu, *command]
    if os.geteuid() == 0 and shutil.which("nice"):
        command = ["nice", "-n", str(NICE), *command]
    return command


def priority_note() -> str:
    """How the processes were scheduled, for the report."""
    parts = []
    if cpu_count() >= 2 and shutil.which("taskset"):
        parts.append(f"responders on CPU {SERVER_CPU}, load generators on CPU {LOAD_CPU} (taskset)")
    else:
        parts.append("no CPU pinning (fewer than 2 CPUs or no taskset)")
    if os.geteuid() == 0 and shutil.which("nice"):
        parts.append(f"all at nice {NICE}")
    return "; ".join(parts)


def free_port(kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free on loopback for every socket kind in ``kinds`` (probed, then released)."""
    for _ in range(100):
        probe = socket.socket(socket.AF_INET, kinds[0])
        try:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        finally:
            probe.close()
        ok = True
        for kind in kinds[1:]:
            other = socket.socket(socket.AF_INET, kind)
            try:
                other.bind((LOOPBACK, port))
            except OSError:
                ok = False
            finally:
                other.close()
        if ok:
            return port
    raise RuntimeError("no free port on loopback after 100 tries")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process whose process group is ``pgid``."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc/<pid>/status."""
    path = Path(f"/proc/{pid or 'self'}/status")
    for line in path.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class ServerProcess:
    """A responder running in its own process group, ready once it printed ``READY {json}``."""

    name: str
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def port(self, transport: str) -> int:
        return int(self.info[transport])

    def cpu_seconds(self) -> float:
        """CPU of the whole process group (the server and any workers it forked)."""
        return group_cpu_seconds(self.process.pid)

    def wait_idle(self, limit: float = 15.0, interval: float = 0.25) -> float:
        """Wait until the responder uses under 5 % of a CPU (a backlog from an overloaded step
        drained); returns the seconds waited (``limit`` at most)."""
        started = time.monotonic()
        last = self.cpu_seconds()
        while time.monotonic() - started < limit:
            time.sleep(interval)
            now = self.cpu_seconds()
            if now - last < 0.05 * interval:
                break
            last = now
        return time.monotonic() - started

    def stop(self) -> dict[str, Any]:
        """SIGTERM by PID (the group), wait, SIGKILL if needed; the ``STATS {json}`` it printed."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind
        self._log.close()
        stats: dict[str, Any] = {}
        with self.log_path.open(errors="replace") as lines:  # line by line: a soak's log is large
            for line in lines:
                if line.startswith("STATS "):
                    stats = json.loads(line[6:])
        return stats


def _ready_line(line: str) -> dict[str, Any] | None:
    """The ports a responder printed as ``READY {json}``, or None for any other line."""
    if line.startswith("READY "):
        info: dict[str, Any] = json.loads(line[6:])
        return info
    return None


def start_server(
    name: str,
    command: list[str],
    log_dir: Path,
    *,
    ready_timeout: float = 20.0,
    cpu: str = SERVER_CPU,
    ready: Callable[[str], dict[str, Any] | None] = _ready_line,
) -> ServerProcess:
    """Start a responder pinned to ``cpu`` and wait until ``ready`` recognises a line of its
    output (by default ``READY {json}``) and returns its ports."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_DIR), str(BENCH_DIR)]))
    process = subprocess.Popen(
        pinned(command, cpu),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: CPU summed and killed by PGID
    )
    server = ServerProcess(name=name, process=process, info={}, log_path=log_path, _log=log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            info = ready(line)
            if info is not None:
                server.info = info
                return server
        if process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{name} did not become ready (exit {process.returncode}):\n{tail}")


def python_command(script: Path | str, *args: str) -> list[str]:
    """``python -u script args`` with this interpreter."""
    return [sys.executable, "-u", str(script), *args]


def uvloop_available() -> bool:
    """True when uvloop imports (an optional bench extra, never required)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]
