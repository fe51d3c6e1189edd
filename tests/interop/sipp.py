"""A small driver for SIPp: run one scenario in the foreground and read back what happened.

Every run is bounded and leaves its traces in a directory of its own:

- SIPp always gets ``-nostdin -default_behaviors all,-bye -timeout Ns -timeout_error -m N``
  (``all,-bye`` because a failed MESSAGE "call" would otherwise make SIPp send a BYE) and
  runs with ``TZ=UTC``, bound to 127.0.0.1 on a port picked free at run time.
- It never runs with ``-bg``, which hides the real exit code; it runs in the foreground of a
  child process that we wait for, and that we kill by its PID if it outlives its timeout.
- Statistics (``-trace_stat -stf``), unexpected messages (``-trace_err``), every message
  sent and received (``-trace_msg``) and scenario ``<log>`` lines (``-trace_logs``) are
  written into the run's directory, so a failing assertion can show them.

SIPp's exit codes: 0 every call succeeded, 1 at least one failed, 97 stopped by an internal
command, 99 no call was processed, 255 fatal error (a scenario that does not load, a port
in use, the global timeout reached with ``-timeout_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Required, TypedDict, Unpack

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
"""Directory holding the SIPp scenario files of the interop suite."""

Transport = Literal["udp", "tcp"]

#: SIPp's ``-t`` value per transport: one socket for UDP, one connection for TCP.
_TRANSPORT_FLAG: dict[Transport, str] = {"udp": "u1", "tcp": "t1"}

#: Extra seconds we give SIPp beyond its own ``-timeout`` before killing it: it needs a
#: moment to write its final statistics.
_KILL_GRACE = 5.0

#: Seconds we wait for a SIPp server to bind its port before giving up.
_BIND_WAIT = 10.0

#: How many times SIPp is started on fresh ports when the ones picked were taken meanwhile.
_BIND_ATTEMPTS = 3

LOOPBACK = "127.0.0.1"


def free_port(transports: Iterable[Transport] = ("udp", "tcp"), host: str = LOOPBACK) -> int:
    """Return a port number that is free on ``host`` for every transport in ``transports``.

    The kernel picks the number (bind to port 0); the sockets are closed again before
    returning, so another process could in principle take it in between. Callers that
    start a server on it check with :func:`wait_bound` that their server got it.
    """
    wanted = tuple(transports)
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, _socket_type(wanted[0]))
        try:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
            if all(_port_is_free(host, port, transport) for transport in wanted[1:]):
                return port
        finally:
            probe.close()
    raise RuntimeError(f"no port free for {wanted} on {host} after 50 tries")


def _free_media_port(host: str = LOOPBACK) -> int:
    """A UDP port ``p`` with ``p + 2`` free too: SIPp's ``-mp`` binds both (audio, video)."""
    for _ in range(50):
        port = free_port(("udp",), host)
        if port + 2 <= 65535 and _port_is_free(host, port + 2, "udp"):
            return port
    raise RuntimeError("no pair of free UDP ports for SIPp's media sockets")


def _socket_type(transport: Transport) -> int:
    return socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM


def _port_is_free(host: str, port: int, transport: Transport) -> bool:
    # No SO_REUSEADDR on purpose: the bind then fails whenever anything holds the port.
    probe = socket.socket(socket.AF_INET, _socket_type(transport))
    try:
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        probe.close()
    return True


def wait_bound(
    port: int, transport: Transport, *, process: subprocess.Popen[bytes] | None = None, host: str = LOOPBACK
) -> None:
    """Wait until something holds ``host:port`` for ``transport`` (a server is listening).

    Raises ``RuntimeError`` if ``process`` exits first or nothing binds within a few seconds.
    """
    deadline = time.monotonic() + _BIND_WAIT
    while time.monotonic() < deadline:
        if not _port_is_free(host, port, transport):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"SIPp exited with {process.returncode} before binding {transport}:{port}")
        time.sleep(0.01)
    raise RuntimeError(f"nothing bound {transport} {host}:{port} within {_BIND_WAIT} s")


def owns_port(pid: int, port: int, transport: Transport, host: str = LOOPBACK) -> bool:
    """True if process ``pid`` holds a socket bound to ``host:port`` (TCP: listening).

    Reads /proc (Linux): the socket's inode in /proc/net/{udp,tcp}, then the process's
    file descriptors. Unlike a bind probe, this cannot mistake someone else's socket on
    the port for the one we are waiting for.
    """
    wanted = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    table = Path("/proc/net") / ("udp" if transport == "udp" else "tcp")
    inodes = set()
    try:
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            listening = transport == "udp" or fields[3] == "0A"
            if fields[1] == wanted and listening:
                inodes.add(fields[9])
        if not inodes:
            return False
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return True
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class SippResult:
    """What one SIPp run did: its exit code, its final counters and where its logs are."""

    exit_code: int
    """SIPp's exit code (0, 1, 97, 99, 255), or -9 if we had to kill it."""
    successful: int
    """Calls that reached the end of the scenario (``SuccessfulCall(C)``)."""
    failed: int
    """Calls that failed (``FailedCall(C)``)."""
    retransmissions: int
    """Requests or responses SIPp sent again (``Retransmissions(C)``)."""
    stats: Mapping[str, str]
    """Every cumulative counter of the last statistics line, by column name."""
    log_dir: Path
    """Directory with ``stats.csv``, ``errors.log``, ``messages.log``, ``actions.log``, ``stdout.txt``."""
    command: tuple[str, ...]
    """The exact command line that was run."""
    pid: int = 0
    """SIPp's process id (it appears in [pid]-based values the scenarios send)."""
    timed_out: bool = False
    """True if SIPp outlived its own ``-timeout`` and was killed by the driver."""

    @property
    def errors_log(self) -> str:
        """SIPp's error log: unexpected messages, failed regular expressions, timeouts."""
        return _read(self.log_dir / "errors.log")

    @property
    def messages_log(self) -> str:
        """Every SIP message SIPp sent and received, with timestamps."""
        return _read(self.log_dir / "messages.log")

    @property
    def actions_log(self) -> str:
        """Lines written by the scenario's ``<log>`` actions."""
        return _read(self.log_dir / "actions.log")

    def counter(self, name: str) -> int:
        """A cumulative counter by its bare name, e.g. ``counter("FailedRegexpDoesntMatch")``."""
        return int(self.stats.get(f"{name}(C)", "0") or 0)

    def describe(self) -> str:
        """A readable summary for assertion messages: counters, command and the tail of the logs."""
        nonzero = {k: v for k, v in self.stats.items() if k.startswith("Failed") and v not in ("", "0")}
        parts = [
            f"sipp exit={self.exit_code} successful={self.successful} failed={self.failed} "
            f"retransmissions={self.retransmissions} timed_out={self.timed_out} failures={nonzero}",
            "command: " + " ".join(self.command),
            f"logs: {self.log_dir}",
        ]
        for title, text in (("errors.log", self.errors_log), ("stdout", _read(self.log_dir / "stdout.txt"))):
            if text.strip():
                parts.append(f"--- {title} (tail) ---\n{text[-3000:]}")
        return "\n".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def read_stats(path: Path) -> dict[str, str]:
    """The cumulative columns of the last line of a ``-trace_stat`` file, by column name."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return {}
    if len(lines) < 2:
        return {}
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(names, values, strict=False))


@dataclass
class Sipp:
    """One SIPp process: built by :func:`start_sipp`, finished by :meth:`wait`."""

    process: subprocess.Popen[bytes]
    command: tuple[str, ...]
    log_dir: Path
    port: int
    transport: Transport
    timeout: float
    _stdout: IO[bytes] | None = field(repr=False, default=None)
    _result: SippResult | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The SIPp process id (used to stop it, never a name)."""
        return self.process.pid

    def wait(self) -> SippResult:
        """Wait for SIPp to end by itself (bounded by its ``-timeout``), killing it if it does not."""
        if self._result is not None:
            return self._result
        timed_out = False
        try:
            self.process.wait(timeout=self.timeout + _KILL_GRACE)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
        self.close_output()
        exit_code = self.process.returncode
        stats = read_stats(self.log_dir / "stats.csv")
        self._result = SippResult(
            exit_code=exit_code,
            successful=int(stats.get("SuccessfulCall(C)", "0") or 0),
            failed=int(stats.get("FailedCall(C)", "0") or 0),
            retransmissions=int(stats.get("Retransmissions(C)", "0") or 0),
            stats=stats,
            log_dir=self.log_dir,
            command=self.command,
            pid=self.process.pid,
            timed_out=timed_out,
        )
        return self._result

    def close_output(self) -> None:
        """Close our handle on SIPp's stdout file (SIPp keeps its own until it exits)."""
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    async def wait_async(self) -> SippResult:
        """:meth:`wait` without blocking the event loop (for tests that run sipimdn in-process)."""
        return await asyncio.to_thread(self.wait)

    def quit(self) -> SippResult:
        """Ask SIPp to stop gracefully (SIGUSR1 to its PID, as pressing 'q') and wait for it.

        For a server whose last call cannot end the run cleanly by ``-m``: over TCP, a
        SIPp that exits on its last call closes the connection under a peer that may not
        be done. SIPp still writes its statistics and exits 0 only if no call failed.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGUSR1)
        return self.wait()

    async def quit_async(self) -> SippResult:
        """:meth:`quit` without blocking the event loop."""
        return await asyncio.to_thread(self.quit)

    def stop(self) -> None:
        """End SIPp by its PID: SIGTERM, then SIGKILL if it is still there after a moment."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5.0)


class SippOptions(TypedDict, total=False):
    """Keyword options of :func:`start_sipp` and :func:`run_sipp`."""

    calls: Required[int]
    timeout: Required[float]
    remote: tuple[str, int] | None
    transport: Transport
    port: int | None
    ooc_scenario: Path | str | None
    lost: int | None
    rate: int
    limit: int | None
    keys: Mapping[str, str]
    global_vars: Mapping[str, str]
    service: str
    extra: Sequence[str]


def start_sipp(binary: str, scenario: Path | str, log_dir: Path, **options: Unpack[SippOptions]) -> Sipp:
    """Start SIPp on ``scenario`` and return at once; call :meth:`Sipp.wait` for the result.

    ``scenario`` is a path, or a bare file name looked up in :data:`SCENARIOS`. Without
    ``remote`` SIPp acts as a server: this call waits until its port is bound, so a peer can
    send to :attr:`Sipp.port` right away. ``calls`` is ``-m``, ``timeout`` is ``-timeout``
    in seconds, ``lost`` is ``-lost`` (percent of what SIPp sends that it drops), ``rate``
    and ``limit`` are ``-r`` and ``-l``. ``keys`` become ``-key NAME VALUE`` (``[NAME]`` in
    the scenario), ``global_vars`` become ``-set NAME VALUE`` (global variables).

    Ports are picked free just before SIPp starts, so another process can take one in
    between: when SIPp then fails to bind ("Address already in use") and the caller did
    not ask for a ``port``, it is started again on fresh ports (at most three times).
    """
    attempts = 1 if options.get("port") is not None else _BIND_ATTEMPTS
    for attempt in range(attempts):
        sipp = _spawn(binary, scenario, log_dir, options)
        if _started(sipp) or attempt == attempts - 1:
            break
    if options.get("remote") is None and not _is_bound(sipp):
        sipp.stop()
        sipp.close_output()
        output = _read(log_dir / "stdout.txt")[-2000:]
        raise RuntimeError(
            f"SIPp did not bind {sipp.transport} {LOOPBACK}:{sipp.port} (exit {sipp.process.returncode})\n"
            f"command: {' '.join(sipp.command)}\n--- output ---\n{output}"
        )
    return sipp


def _is_bound(sipp: Sipp) -> bool:
    return sipp.process.poll() is None and owns_port(sipp.pid, sipp.port, sipp.transport)


def _started(sipp: Sipp) -> bool:
    """Wait until SIPp holds its port; False only if it gave up because a port was taken."""
    deadline = time.monotonic() + _BIND_WAIT
    while time.monotonic() < deadline:
        if owns_port(sipp.pid, sipp.port, sipp.transport):
            return True
        if sipp.process.poll() is not None:
            sipp.close_output()
            # A client may also simply have finished before we looked.
            return "Address already in use" not in _read(sipp.log_dir / "stdout.txt")
        time.sleep(0.01)
    return True  # alive but not bound in time: not a port clash; _is_bound decides for servers


def _spawn(binary: str, scenario: Path | str, log_dir: Path, options: SippOptions) -> Sipp:
    """Start one SIPp process with fresh ports (see :func:`start_sipp`)."""
    calls = options["calls"]
    timeout = options["timeout"]
    remote = options.get("remote")
    transport: Transport = options.get("transport", "udp")
    port = options.get("port")
    ooc_scenario = options.get("ooc_scenario")
    lost = options.get("lost")
    limit = options.get("limit")
    log_dir.mkdir(parents=True, exist_ok=True)
    scenario_path = _scenario_path(scenario)
    if port is None:
        port = free_port((transport,))
    command = [
        binary,
        "-sf", str(scenario_path),
        "-i", LOOPBACK,
        "-p", str(port),
        "-t", _TRANSPORT_FLAG[transport],
        "-m", str(calls),
        "-r", str(options.get("rate", 200)),
        "-s", options.get("service", "bob"),
        # SIPp also opens a UDP control socket (default 0.0.0.0:8888) and RTP echo sockets
        # (default 6000 and 6002): pin them to loopback on ports free now.
        "-ci", LOOPBACK, "-cp", str(free_port(("udp",))),
        "-mi", LOOPBACK, "-mp", str(_free_media_port()),
        "-nostdin",
        "-default_behaviors", "all,-bye",
        "-timeout", f"{timeout:g}s",
        "-timeout_error",
        "-trace_stat", "-stf", str(log_dir / "stats.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(log_dir / "errors.log"),
        "-trace_msg", "-message_file", str(log_dir / "messages.log"),
        "-trace_logs", "-log_file", str(log_dir / "actions.log"),
    ]  # fmt: skip
    if ooc_scenario is not None:
        command += ["-oocsf", str(_scenario_path(ooc_scenario))]
    if lost is not None:
        command += ["-lost", str(lost)]
    if limit is not None:
        command += ["-l", str(limit)]
    for name, value in options.get("keys", {}).items():
        command += ["-key", name, value]
    for name, value in options.get("global_vars", {}).items():
        command += ["-set", name, value]
    command += list(options.get("extra", ()))
    if remote is not None:
        command.append(f"{remote[0]}:{remote[1]}")
    env = dict(os.environ, TZ="UTC")
    stdout = (log_dir / "stdout.txt").open("wb")
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=log_dir
    )
    sipp = Sipp(
        process=process,
        command=tuple(command),
        log_dir=log_dir,
        port=port,
        transport=transport,
        timeout=timeout,
        _stdout=stdout,
    )
    return sipp


def run_sipp(binary: str, scenario: Path | str, log_dir: Path, **options: Unpack[SippOptions]) -> SippResult:
    """Run SIPp on ``scenario`` to its end (see :func:`start_sipp` for the options)."""
    return start_sipp(binary, scenario, log_dir, **options).wait()


def _scenario_path(scenario: Path | str) -> Path:
    path = Path(scenario)
    if not path.is_absolute() and not path.exists():
        path = SCENARIOS / path
    if not path.is_file():
        raise FileNotFoundError(f"SIPp scenario not found: {path}")
    return path


class SippRunner:
    """Starts SIPp processes for one test, each with its own log directory, and ends them all.

    Tests use it through the ``sipp`` fixture; :meth:`stop_all` runs at teardown so that no
    SIPp outlives its test, whatever the test did.
    """

    def __init__(self, binary: str, base_dir: Path) -> None:
        self.binary = binary
        self.base_dir = base_dir
        self.started: list[Sipp] = []

    def start(self, name: str, scenario: Path | str, **options: Unpack[SippOptions]) -> Sipp:
        """Start SIPp with logs in ``<base_dir>/<name>`` (see :func:`start_sipp`)."""
        sipp = start_sipp(self.binary, scenario, self.base_dir / name, **options)
        self.started.append(sipp)
        return sipp

    def run(self, name: str, scenario: Path | str, **options: Unpack[SippOptions]) -> SippResult:
        """Run SIPp to its end with logs in ``<base_dir>/<name>``."""
        return self.start(name, scenario, **options).wait()

    async def run_async(self, name: str, scenario: Path | str, **options: Unpack[SippOptions]) -> SippResult:
        """:meth:`run` for asyncio tests: the event loop keeps running while SIPp does."""
        sipp = self.start(name, scenario, **options)
        return await sipp.wait_async()

    def stop_all(self) -> None:
        """End every SIPp this runner started that is still running (by PID)."""
        for sipp in self.started:
            sipp.stop()
            sipp.close_output()
