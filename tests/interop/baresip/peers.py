"""baresip 1.0 (Debian baresip-core) as a test peer: text/plain only, no CPIM, no IMDN.

What it does (shared/interop-linphone.md section 3): it accepts only ``text/plain`` MESSAGEs
(anything else gets ``415`` with ``Accept: text/plain``) for its local account, and prints
each as ``<from>: "<text>"``; ``/message TEXT`` sends a text/plain MESSAGE to its current
contact (the first line of ``contacts``). Its stdio UI needs stdin to be a pipe or a tty, so
the driver keeps a pipe open and types commands into it. No registration (``regint=0``),
pinned to 127.0.0.1, a free port; ended by ``/quit`` and then by its PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..sipp import LOOPBACK, free_port

_MODULE_PATHS = (
    "/usr/lib/baresip/modules",
    "/usr/lib/x86_64-linux-gnu/baresip/modules",
    "/usr/local/lib/baresip/modules",
)


class BaresipError(RuntimeError):
    """baresip did not start or did not do what it was asked."""


def _module_path() -> str:
    for path in _MODULE_PATHS:
        if (Path(path) / "menu.so").exists():
            return path
    raise BaresipError("no baresip module directory with menu.so found")


@dataclass
class Baresip:
    """One baresip account ``sip:<user>@127.0.0.1`` whose only contact is ``contact``."""

    binary: str
    home: Path
    user: str
    contact: str
    port: int = field(default_factory=lambda: free_port(("udp",)))
    process: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """Where to send it MESSAGEs."""
        return f"sip:{self.user}@{LOOPBACK}:{self.port}"

    @property
    def output_path(self) -> Path:
        return self.home / "baresip.out"

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        return f"baresip (pid {self.process.pid if self.process else '-'}) output:\n{self.output()[-4000:]}"

    def start(self, timeout: float = 10.0) -> None:
        """Write config, accounts and contacts; start it with SIP tracing; wait until ready."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config").write_text(
            "\n".join([
                "poll_method epoll",
                f"sip_listen {LOOPBACK}:{self.port}",
                f"net_interface {LOOPBACK}",
                f"module_path {_module_path()}",
                "module stdio.so",
                "module g711.so",
                "module_app account.so",
                "module_app contact.so",
                "module_app menu.so",
                "",
            ])
        )  # fmt: skip
        (self.home / "accounts").write_text(f"<sip:{self.user}@{LOOPBACK}>;regint=0\n")
        (self.home / "contacts").write_text(f'"peer" <{self.contact}>\n')
        self._out = self.output_path.open("wb")
        self.process = subprocess.Popen(
            [self.binary, "-f", str(self.home), "-s"],  # -s: print every SIP message
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.home,
            env=dict(os.environ, HOME=str(self.home)),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "baresip is ready." in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BaresipError(f"baresip did not start\n{self.describe()}")

    def type(self, line: str) -> None:
        """Type one command line into its stdio UI."""
        if self.process is None or self.process.stdin is None:
            raise BaresipError("baresip is not running")
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def send_message(self, text: str) -> None:
        """``/message TEXT``: a text/plain MESSAGE to its contact."""
        self.type(f"/message {text}")

    def received_texts(self) -> list[str]:
        """The texts of the MESSAGEs it accepted and printed, in order."""
        pattern = re.compile(r'^sip:\S+: "(.*?)\r?\n?"', re.M | re.S)
        return [match.group(1) for match in pattern.finditer(self.output())]

    def wait_for(self, needle: str, timeout: float) -> bool:
        """Wait (bounded) until ``needle`` appears in its output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return True
            time.sleep(0.05)
        return needle in self.output()

    def stop(self) -> None:
        """``/quit``, then SIGTERM / SIGKILL by PID if it lingers."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    self.type("/quit")
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
                    try:
                        process.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(process.pid, signal.SIGKILL)
                        process.wait(timeout=5)
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            self.process = None
        if self._out is not None:
            self._out.close()
            self._out = None
