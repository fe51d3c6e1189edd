"""Run sipimdn's own command line (``python -m sipimdn listen|send --json``) as a peer process.

The interop tests drive sipimdn the way a user or a script would: a separate process on
loopback, talking SIP with SIPp, reporting what happened as JSON lines. Every process is
bounded in time and ended by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .sipp import LOOPBACK, Transport, free_port

#: Seconds a ``listen`` process gets to print its "listening" line.
_START_TIMEOUT = 15.0


def _command(subcommand: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "sipimdn", subcommand, *args, "--json"]


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON objects printed one per line (other lines, e.g. warnings, are skipped)."""
    events: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return events
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    events.append(value)
    return events


@dataclass
class Listener:
    """A running ``sipimdn listen`` process."""

    process: subprocess.Popen[bytes]
    port: int
    aor: str
    log_dir: Path
    _stdout: IO[bytes] = field(repr=False)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / "listen.jsonl"

    def current_events(self) -> list[dict[str, Any]]:
        """What it has printed so far."""
        return read_events(self.stdout_path)

    def messages(self) -> list[dict[str, Any]]:
        """The ``message`` events printed so far (one per MESSAGE handed to the application)."""
        return [event for event in self.current_events() if event.get("event") == "message"]

    def stop(self) -> int:
        """SIGTERM by PID (``listen`` exits cleanly on it), SIGKILL if it lingers; its exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._stdout.close()
        self.events = read_events(self.stdout_path)
        return self.process.returncode

    def describe(self) -> str:
        """Its output, for assertion messages."""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return f"sipimdn listen (pid {self.process.pid}) output:\n{out[-4000:]}"


def start_listen(
    log_dir: Path,
    port: int | None = None,
    *,
    transports: Sequence[Transport] = ("udp", "tcp"),
    extra: Sequence[str] = (),
) -> Listener:
    """Start ``sipimdn listen`` as bob on 127.0.0.1 and wait for its "listening" line.

    Without ``port`` a free one is picked (the same number for every transport); if the
    process exits before listening (the port was taken meanwhile) it is started again on a
    fresh port, at most three times.
    """
    attempts = 1 if port is not None else 3
    failure = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port(tuple(transports))
        listener = _spawn_listen(log_dir, chosen, transports, extra)
        if _wait_listening(listener):
            return listener
        listener.stop()
        failure = listener.describe()
    raise RuntimeError(f"sipimdn listen did not start\n{failure}")


def _spawn_listen(
    log_dir: Path, port: int, transports: Sequence[Transport], extra: Sequence[str]
) -> Listener:
    log_dir.mkdir(parents=True, exist_ok=True)
    aor = f"sip:bob@{LOOPBACK}"
    args = ["--aor", aor]
    for transport in transports:
        args += ["--listen", f"{transport}:{LOOPBACK}:{port}"]
    stdout = (log_dir / "listen.jsonl").open("wb")
    process = subprocess.Popen(
        _command("listen", [*args, *extra]),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        cwd=log_dir,
    )
    return Listener(process=process, port=port, aor=aor, log_dir=log_dir, _stdout=stdout)


def _wait_listening(listener: Listener) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if any(event.get("event") == "listening" for event in listener.current_events()):
            return True
        if listener.process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@dataclass(frozen=True)
class SendResult:
    """What one ``sipimdn send`` did."""

    exit_code: int
    events: list[dict[str, Any]]
    output: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind (``sent``, ``response``, ``disposition-event``, ...)."""
        return [event for event in self.events if event.get("event") == kind]

    def describe(self) -> str:
        return f"sipimdn send exit={self.exit_code}, output:\n{self.output[-4000:]}"


def run_send(
    log_dir: Path,
    to: str,
    text: str,
    *,
    notify: Sequence[str] = ("positive-delivery",),
    wait: float = 5.0,
    transport: Transport | None = None,
) -> SendResult:
    """Run ``sipimdn send`` as alice to ``to`` and wait for it (bounded by ``wait``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    args = ["--aor", f"sip:alice@{LOOPBACK}", "--listen", f"udp:{LOOPBACK}:0", "--to", to, "--text", text]
    args += [f"--notify={','.join(notify)}", "--wait", f"{wait:g}"]
    if transport is not None:
        args += ["--transport", transport]
    path = log_dir / "send.jsonl"
    with path.open("wb") as stdout:
        process = subprocess.Popen(
            _command("send", args),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
        try:
            process.wait(timeout=wait + 30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    return SendResult(process.returncode, read_events(path), path.read_text(errors="replace"))
