"""SIPp as the load generator: bounded runs at stepped offered rates, read back from -trace_stat.

Every run gets ``-m`` (calls = rate x duration), ``-timeout`` (duration + a margin) and
``-recv_timeout`` (a call whose answer never comes fails instead of hanging), always
``-nostdin -default_behaviors all,-bye`` with ``TZ=UTC``, ``-buff_size 4 MiB``, SIPp's
control and media sockets pinned to loopback, and is pinned to :data:`common.LOAD_CPU`.
SIPp is never run with ``-bg`` and is ended by its PID if it outlives its timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import BENCH_DIR, LOAD_CPU, LOOPBACK, free_port, pinned

SCENARIOS = BENCH_DIR / "sipp_scenarios"
_FLAG = {"udp": "u1", "tcp": "t1"}


def sipp_binary() -> str | None:
    """Path of ``sipp`` (Debian package sip-tester), or None."""
    return shutil.which("sipp")


@dataclass
class Step:
    """One bounded SIPp run at one offered rate against one responder."""

    offered: int
    calls: int
    successful: int
    failed: int
    retransmissions: int
    elapsed: float
    exit_code: int
    server_cpu: float
    """CPU seconds the responder (its whole process group) spent during the run."""
    ooc_messages: int = 0
    """SIPp's OutOfCallMsgs counter: requests outside any call that no scenario handled."""
    ooc_answered: int = 0
    """Requests outside any call answered by the -oocsf scenario (IMDNs): SIPp's AutoAnswered."""

    @property
    def achieved(self) -> float:
        """Successful calls per second of the run's wall time."""
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_us_per_msg(self) -> float:
        """Responder CPU microseconds per successful MESSAGE."""
        return self.server_cpu * 1e6 / self.successful if self.successful else float("nan")

    @property
    def sustained(self) -> bool:
        """No failed call, retransmissions under 1 % of calls, >= 90 % of the offered rate."""
        return (
            self.failed == 0
            and self.successful == self.calls
            and self.retransmissions <= 0.01 * self.calls
            and self.achieved >= 0.9 * self.offered
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(achieved=self.achieved, cpu_us_per_msg=self.cpu_us_per_msg, sustained=self.sustained)
        return data


def _stats(path: Path) -> dict[str, str]:
    lines = (
        [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if path.exists()
        else []
    )
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].rstrip(";").split(";"), lines[-1].rstrip(";").split(";"), strict=False))


def _epoch(value: str) -> float:
    # "2026-11-24\t01:42:06.087618\t1795484526.087618": the last field is POSIX time.
    try:
        return float(value.rsplit("\t", maxsplit=1)[-1])
    except ValueError:
        return 0.0


def run_uac(  # noqa: PLR0917
    binary: str,
    scenario: str,
    remote: tuple[str, int],
    transport: str,
    rate: int,
    duration: float,
    log_dir: Path,
    cpu_of_server: Callable[[], float],
    *,
    ooc_scenario: str | None = None,
) -> Step:
    """SIPp sends ``rate`` x ``duration`` calls of ``scenario`` to ``remote`` at ``rate``/s."""
    log_dir.mkdir(parents=True, exist_ok=True)
    calls = max(1, int(rate * duration))
    timeout = duration + 15.0
    stats = log_dir / "stats.csv"
    command = [
        binary, "-sf", str(SCENARIOS / scenario),
        "-i", LOOPBACK, "-p", str(free_port((_sock(transport),))),
        "-t", _FLAG[transport],
        "-m", str(calls), "-r", str(rate), "-rp", "1000",
        "-s", "bob",
        "-ci", LOOPBACK, "-cp", str(free_port((_sock("udp"),))),
        "-mi", LOOPBACK, "-mp", str(_media_port()),
        "-nostdin", "-default_behaviors", "all,-bye",
        "-timeout", f"{timeout:g}s", "-recv_timeout", "4000",
        "-buff_size", "4194304",
        "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_err", "-error_file", str(log_dir / "errors.log"),
    ]  # fmt: skip
    if ooc_scenario is not None:
        command += ["-oocsf", str(SCENARIOS / ooc_scenario)]
    command.append(f"{remote[0]}:{remote[1]}")
    return _run(command, log_dir, rate, calls, timeout, cpu_of_server)


def start_uas(
    binary: str, transport: str, calls: int, timeout: float, log_dir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """A SIPp UAS answering ``calls`` MESSAGEs with 200; returns (process, port) once bound.

    The ports are picked free and handed to SIPp, so another process can take one in between
    (SIPp then exits: "Address already in use"): up to three attempts, each with fresh ports.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        started = _start_uas_once(binary, transport, calls, timeout, log_dir)
        if started is not None:
            return started
    raise RuntimeError(f"SIPp UAS did not bind a {transport} port in 3 attempts; see {log_dir}")


def _start_uas_once(
    binary: str, transport: str, calls: int, timeout: float, log_dir: Path
) -> tuple[subprocess.Popen[bytes], int] | None:
    port = free_port((_sock(transport),))
    command = [
        binary, "-sf", str(SCENARIOS / "uas_message.xml"),
        "-i", LOOPBACK, "-p", str(port), "-t", _FLAG[transport], "-m", str(calls),
        "-ci", LOOPBACK, "-cp", str(free_port((_sock("udp"),))),
        "-mi", LOOPBACK, "-mp", str(_media_port()),
        "-nostdin", "-default_behaviors", "all,-bye",
        "-timeout", f"{timeout:g}s", "-buff_size", "4194304",
        "-trace_stat", "-stf", str(log_dir / "stats.csv"), "-fd", "1",
    ]  # fmt: skip
    out = (log_dir / "stdout.txt").open("wb")
    process = subprocess.Popen(
        pinned(command, LOAD_CPU),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TZ="UTC"),
        cwd=log_dir,
    )
    out.close()
    deadline = time.monotonic() + 5
    import socket

    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_INET, _sock(transport))
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return process, port  # SIPp holds it
        finally:
            probe.close()
        if process.poll() is not None:
            break
        time.sleep(0.02)
    stop(process)
    return None


def uas_result(process: subprocess.Popen[bytes], log_dir: Path, timeout: float) -> dict[str, int]:
    """Wait for a UAS started by :func:`start_uas` and return its counters."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
    stats = _stats(log_dir / "stats.csv")
    return {
        "exit_code": process.returncode,
        "successful": int(stats.get("SuccessfulCall(C)", "0") or 0),
        "failed": int(stats.get("FailedCall(C)", "0") or 0),
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """End one SIPp by its PID: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=3)


def _run(  # noqa: PLR0917
    command: list[str],
    log_dir: Path,
    rate: int,
    calls: int,
    timeout: float,
    cpu_of_server: Callable[[], float],
) -> Step:
    out = (log_dir / "stdout.txt").open("wb")
    cpu_before = cpu_of_server()
    process = subprocess.Popen(
        pinned(command, LOAD_CPU),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TZ="UTC"),
        cwd=log_dir,
    )
    out.close()
    try:
        process.wait(timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        stop(process)
    cpu = cpu_of_server() - cpu_before
    (log_dir / "command.txt").write_text(" ".join(command) + "\n")
    stats = _stats(log_dir / "stats.csv")
    elapsed = _epoch(stats.get("CurrentTime", "")) - _epoch(stats.get("StartTime", ""))
    return Step(
        offered=rate,
        calls=calls,
        successful=int(stats.get("SuccessfulCall(C)", "0") or 0),
        failed=int(stats.get("FailedCall(C)", "0") or 0),
        retransmissions=int(stats.get("Retransmissions(C)", "0") or 0),
        elapsed=max(elapsed, 0.0),
        exit_code=process.returncode,
        server_cpu=cpu,
        ooc_messages=int(stats.get("OutOfCallMsgs(C)", "0") or 0),
        ooc_answered=int(stats.get("AutoAnswered(C)", "0") or 0),
    )


def sweep(rates: Sequence[int], run_step: Callable[[int], Step], *, settle: float = 0.5) -> list[Step]:
    """Run ``run_step`` at each offered rate in turn, stopping after the first unsustained step."""
    steps: list[Step] = []
    for rate in rates:
        step = run_step(rate)
        steps.append(step)
        if not step.sustained:
            break
        time.sleep(settle)  # let the responder drain before the next step
    return steps


def _sock(transport: str) -> int:
    import socket

    return socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM


def _media_port() -> int:
    import socket

    for _ in range(50):
        port = free_port((socket.SOCK_DGRAM,))
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((LOOPBACK, port + 2))
            return port
        except OSError:
            continue
        finally:
            probe.close()
    raise RuntimeError("no free pair of UDP ports for SIPp's media sockets")
