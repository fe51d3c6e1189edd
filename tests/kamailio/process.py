"""What every Kamailio the tests start has in common: finding its modules, filling a
configuration template, checking it, running the server in the foreground and stopping it.

:class:`KamailioProcess` is the shared life cycle of the registrar/proxy harness
(``harness.Kamailio``) and of the dispatcher harness (``dispatcher.Dispatcher``): a subclass
writes its configuration to :attr:`~KamailioProcess.config_path` and decides when the server
is ready; this base checks the configuration (``kamailio -c``), starts ``kamailio -f CFG -DD
-E`` in a session of its own with a private runtime directory (never the packaged service),
logs to a file in the work directory, and stops exactly the process group it started, by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO, ClassVar

from _peers import stop_process_group

__all__ = [
    "HOST",
    "KamailioProcess",
    "KamailioProcessError",
    "find_module_dir",
    "free_ports",
    "render_placeholders",
]

HOST = "127.0.0.1"

# Debian's module directories first; KAMAILIO_MODULE_PATH overrides them for other layouts.
_MODULE_PATHS = (
    os.environ.get("KAMAILIO_MODULE_PATH", ""),
    "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules/",
    "/usr/lib/kamailio/modules/",
    "/usr/local/lib64/kamailio/modules/",
    "/usr/local/lib/kamailio/modules/",
)


class KamailioProcessError(RuntimeError):
    """Kamailio could not be started, or died; carries the tail of its log."""


def find_module_dir(module: str) -> str | None:
    """Kamailio's module directory holding ``<module>.so`` (with a trailing slash), or None."""
    for candidate in _MODULE_PATHS:
        if candidate and Path(candidate, f"{module}.so").exists():
            return candidate if candidate.endswith("/") else candidate + "/"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 for both UDP and TCP (probed, then released)."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
        if port in ports:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((HOST, port))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise KamailioProcessError("no free ports on 127.0.0.1")


def render_placeholders(
    template: Path, values: Mapping[str, str], error: type[KamailioProcessError] = KamailioProcessError
) -> str:
    """``template``'s text with every ``@@NAME@@`` replaced by ``values[NAME]``; a placeholder
    left over raises ``error``."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    leftover = re.search(r"@@[A-Z_]+@@", text)
    if leftover is not None:
        raise error(f"unrendered placeholder {leftover.group(0)} in {template.name}")
    return text


class KamailioProcess:
    """One Kamailio process on 127.0.0.1 that we started, with its configuration and log in
    ``workdir``. Subclasses render :attr:`config_path` and wait for readiness themselves."""

    #: The error this harness raises (a subclass of :class:`KamailioProcessError`).
    error: ClassVar[type[KamailioProcessError]] = KamailioProcessError

    def __init__(self, binary: str, workdir: Path, config_name: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.host = HOST
        self.config_path = workdir / config_name
        self.log_path = workdir / "kamailio.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def _launch(self, *, cpu: str | None = None) -> subprocess.Popen[bytes]:
        """Check the rendered configuration, then start Kamailio in the foreground (pinned to
        ``cpu`` with taskset when given and available); return the process."""
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)], capture_output=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise self.error("config check failed:\n" + check.stderr.decode(errors="replace")[-4000:])
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        command = [
            self.binary, "-f", str(self.config_path),
            "-DD",  # do not daemonize: the PID we hold is the main process
            "-E",  # log to stderr (our log file)
            "-Y", str(rundir),  # private runtime dir, not the packaged /run/kamailio
            "-m", "64", "-M", "8",
        ]  # fmt: skip
        if cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", cpu, *command]
        log = self.log_path.open("wb")
        self._log_file = log
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, start_new_session=True,  # its children share our PID as process group
        )  # fmt: skip
        return self._process

    def _raise_if_exited(self) -> None:
        """Raise :attr:`error` with the log's tail if the process we started has exited."""
        if self._process is not None and self._process.poll() is not None:
            raise self.error(f"kamailio exited with {self._process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Kill the process we started and its children (its own process group), by PID."""
        if self._process is not None:
            # start_new_session made the PID the process-group id of Kamailio's workers.
            stop_process_group(self._process)
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def pid(self) -> int | None:
        """The PID of the running Kamailio, or None."""
        return self._process.pid if self._process is not None else None

    def log_text(self) -> str:
        """Everything Kamailio logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __exit__(self, *exc: object) -> None:
        self.stop()
