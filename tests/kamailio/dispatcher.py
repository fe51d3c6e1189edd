"""Kamailio's dispatcher in front of several real ``sipimdn listen`` workers.

:class:`Dispatcher` renders ``dispatcher.cfg.tmpl`` (and the dispatcher list
file naming the workers) into a private temporary directory, on a port chosen
free on 127.0.0.1, starts ``kamailio -f CFG -DD -E`` in the foreground and
waits until it answers OPTIONS; :meth:`Dispatcher.destinations` reads the
dispatcher's view of the workers (active, inactive, probing) through the
control socket with ``kamcmd``. :class:`Worker` is one ``python -m sipimdn
listen`` process serving the public AOR on a port of its own, whose ``--json``
events are collected by a reader thread. Both are stopped by their PID (the
process group each was started in), never by name.

With ``CI=true`` a missing ``kamailio``, ``kamcmd`` or dispatcher module fails
the test (:func:`require_dispatcher`); elsewhere it skips.

The benchmark ``bench/bench_scaleout.py`` uses the same classes, so the
configuration measured is the one tested (and the one docs/scale-out.md shows).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _peers import require_binary, skip_unless_ci

from kamailio.process import (
    HOST,
    KamailioProcess,
    KamailioProcessError,
    find_module_dir,
    free_ports,
    render_placeholders,
)

__all__ = [
    "DISPATCHER_TEMPLATE",
    "Dispatcher",
    "DispatcherError",
    "DispatcherSettings",
    "Worker",
    "free_port",
    "options_probe",
    "render_template",
    "require_dispatcher",
]

DISPATCHER_TEMPLATE = Path(__file__).with_name("dispatcher.cfg.tmpl")
REPO = Path(__file__).resolve().parents[2]


class DispatcherError(KamailioProcessError):
    """Kamailio or a worker could not be started, or died; carries the tail of its log."""


def module_path() -> str | None:
    """Kamailio's module directory holding ``dispatcher.so``, or None."""
    return find_module_dir("dispatcher")


def require_dispatcher() -> tuple[str, str]:
    """(kamailio, kamcmd) paths; skips the test when one is missing (fails it with CI=true)."""
    kamailio = require_binary("kamailio")
    kamcmd = require_binary("kamcmd")
    if module_path() is None:
        skip_unless_ci("Kamailio's dispatcher module (dispatcher.so) is not installed")
    return kamailio, kamcmd


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (probed, then released)."""
    return free_ports(1)[0]


def options_probe(
    port: int, *, user: str | None = None, domain: str | None = None, timeout: float = 0.5
) -> int | None:
    """Send one OPTIONS over UDP to 127.0.0.1:``port``; return the status answered, or None.

    Without ``user`` the Request-URI is the bare address (``sip:127.0.0.1:port``), as a
    dispatcher probes a destination.
    """
    ruri = f"sip:{user}@{domain or HOST}" if user else f"sip:{HOST}:{port}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        local = sock.getsockname()[1]
        sock.settimeout(timeout)
        request = (
            f"OPTIONS {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}:{local}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <{ruri}>\r\n"
            f"Call-ID: probe-{secrets.token_hex(8)}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        try:
            sock.sendto(request, (HOST, port))
            data = sock.recv(65535)
        except OSError:
            return None
    match = re.match(rb"SIP/2\.0 (\d{3}) ", data)
    return int(match.group(1)) if match else None


def render_template(values: Mapping[str, str]) -> str:
    """``dispatcher.cfg.tmpl`` with every ``@@NAME@@`` replaced by ``values[NAME]``."""
    return render_placeholders(DISPATCHER_TEMPLATE, values, DispatcherError)


@dataclass(frozen=True)
class DispatcherSettings:
    """What a rendered dispatcher configuration contains besides ports and paths."""

    domain: str = "sipimdn.test"
    """The SIP domain served: the public AOR is ``sip:<service_user>@<domain>``."""
    service_user: str = "bob"
    """The user part of the public AOR the workers share."""
    set_id: int = 1
    """The dispatcher destination set holding the workers."""
    ping_interval: int = 1
    """Seconds between two OPTIONS probes of every worker."""
    failover_timeout_ms: int = 3000
    """How long a worker may stay silent before the next one is tried (tm's fr_timer)."""
    children: int = 2
    """Kamailio's UDP receiver processes (and TCP workers)."""
    debug: int = 2


class Dispatcher(KamailioProcess):
    """One Kamailio with the dispatcher module on 127.0.0.1, in front of workers on loopback."""

    error = DispatcherError

    def __init__(
        self,
        binary: str,
        kamcmd: str | None,
        workdir: Path,
        settings: DispatcherSettings | None = None,
        *,
        port: int | None = None,
    ) -> None:
        super().__init__(binary, workdir, "dispatcher.cfg")
        self.kamcmd = kamcmd
        self.settings = settings or DispatcherSettings()
        self.port = port if port is not None else free_port()
        self.list_path = workdir / "dispatcher.list"
        self.ctl_socket = workdir / "kamailio_ctl"
        self.workers: list[tuple[str, int]] = []

    # -- addresses ------------------------------------------------------------

    @property
    def aor(self) -> str:
        """The public AOR every worker serves."""
        return f"sip:{self.settings.service_user}@{self.settings.domain}"

    def proxy_uri(self) -> str:
        """This Kamailio as a loose-routing outbound proxy (the workers' ``--proxy``)."""
        return f"sip:{self.host}:{self.port};lr"

    @staticmethod
    def destination_uri(worker: tuple[str, int]) -> str:
        host, port = worker
        return f"sip:{host}:{port}"

    # -- configuration ----------------------------------------------------------

    def render(self, workers: Sequence[tuple[str, int]]) -> str:
        """Write the dispatcher list and the configuration; return the configuration text."""
        self.workers = list(workers)
        settings = self.settings
        lines = ["# setid destination flags priority attributes"]
        # Flags 9 (inactive + probing): a worker takes traffic once it has answered a probe.
        lines += [f"{settings.set_id} {self.destination_uri(w)} 9 0" for w in self.workers]
        self.list_path.write_text("\n".join(lines) + "\n")
        path = module_path()
        if path is None:
            raise DispatcherError("Kamailio's dispatcher module (dispatcher.so) is not installed")
        values = {
            "DEBUG": str(settings.debug),
            "CHILDREN": str(settings.children),
            "DOMAIN": settings.domain,
            "SERVICE_USER": settings.service_user,
            "SET_ID": str(settings.set_id),
            "HOST": self.host,
            "PORT": str(self.port),
            "MODULE_PATH": path,
            "CTL_SOCKET": str(self.ctl_socket),
            "LIST_FILE": str(self.list_path),
            "PING_INTERVAL": str(settings.ping_interval),
            "FAILOVER_TIMEOUT_MS": str(settings.failover_timeout_ms),
        }
        text = render_template(values)
        self.config_path.write_text(text)
        return text

    # -- life cycle ---------------------------------------------------------------

    def start(
        self,
        workers: Sequence[tuple[str, int]],
        timeout: float = 15.0,
        *,
        cpu: str | None = None,
        wait_active: bool = True,
    ) -> None:
        """Start Kamailio in front of ``workers`` ((host, port) each) and wait until it answers
        and (``wait_active``, needs kamcmd) its probes have made every worker active."""
        self.render(workers)
        self._launch(cpu=cpu)
        deadline = time.monotonic() + timeout
        while options_probe(self.port) != 200:
            self._raise_if_exited()
            if time.monotonic() > deadline:
                self.stop()
                raise DispatcherError(f"kamailio did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        if wait_active:
            remaining = max(1.0, deadline - time.monotonic())
            self.wait_for_states({self.destination_uri(w): "A" for w in self.workers}, remaining)

    # -- the dispatcher's view ------------------------------------------------------

    def destinations(self) -> dict[str, str]:
        """Destination URI -> dispatcher flags (``AP``: active and probing, ``IP``: inactive...)."""
        if self.kamcmd is None:
            raise DispatcherError("kamcmd is needed to read the dispatcher's state")
        done = subprocess.run(
            [self.kamcmd, "-s", f"unix:{self.ctl_socket}", "dispatcher.list"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise DispatcherError(f"kamcmd dispatcher.list failed: {done.stderr.strip()}")
        found: dict[str, str] = {}
        uri: str | None = None
        for line in done.stdout.splitlines():
            text = line.strip()
            if text.startswith("URI:"):
                uri = text.split(":", 1)[1].strip()
            elif text.startswith("FLAGS:") and uri is not None:
                found[uri] = text.split(":", 1)[1].strip()
                uri = None
        return found

    def wait_for_states(self, wanted: dict[str, str], timeout: float) -> dict[str, str]:
        """Poll :meth:`destinations` until each URI's flags start with the wanted letter
        (``"A"`` active, ``"I"`` inactive, ``"T"`` trying); return the last view."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.destinations()
            if all(seen.get(uri, "").startswith(state) for uri, state in wanted.items()):
                return seen
            if time.monotonic() > deadline:
                raise DispatcherError(f"dispatcher states {seen}, wanted {wanted}:\n{self.log_tail(30)}")
            time.sleep(0.1)

    def __enter__(self) -> Dispatcher:
        return self


class Worker:
    """One ``python -m sipimdn listen`` worker on 127.0.0.1:``port`` (UDP) serving ``aor``.

    ``extra``: more ``listen`` options (``--store URL``, ``--proxy URI``...). With
    ``collect=True`` the ``--json`` events are read by a thread into :attr:`events`;
    otherwise output is discarded (benchmarks: nothing then limits the worker but itself).
    """

    def __init__(
        self,
        name: str,
        aor: str,
        *,
        port: int | None = None,
        extra: Sequence[str] = (),
        collect: bool = True,
        cpu: str | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.aor = aor
        self.port = port if port is not None else free_port()
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        command = [
            sys.executable, "-m", "sipimdn", "listen",
            "--aor", aor, "--listen", f"udp:{HOST}:{self.port}",
            "--worker-id", name, *extra,
        ]  # fmt: skip
        if collect:
            command.append("--json")
        if cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", cpu, *command]
        self._stderr_path = log_dir / f"{name}.stderr" if log_dir is not None else None
        stderr: Any = self._stderr_path.open("wb") if self._stderr_path else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SIPIMDN_PASSWORD", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process: subprocess.Popen[str] = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if collect else subprocess.DEVNULL,
            stderr=stderr, text=True, env=env, start_new_session=True,
        )  # fmt: skip
        if stderr is not subprocess.DEVNULL:
            stderr.close()
        self._reader: threading.Thread | None = None
        if collect:
            self._reader = threading.Thread(target=self._read, name=f"worker-{name}", daemon=True)
            self._reader.start()

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the worker answers an OPTIONS probe with 200."""
        deadline = time.monotonic() + timeout
        while options_probe(self.port, timeout=0.3) != 200:
            if self.process.poll() is not None:
                raise DispatcherError(f"worker {self.name} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise DispatcherError(f"worker {self.name} did not answer OPTIONS within {timeout}s")
            time.sleep(0.05)

    def messages(self) -> list[dict[str, Any]]:
        """The ``message`` events printed so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == "message"]

    def wait_messages(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` messages were printed (bounded); return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == "message"]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    return found
                self._cond.wait(remaining)

    def kill(self) -> None:
        """SIGKILL the worker (its process group), as a crash would end it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; by PID (its own process group)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def workers_behind_dispatcher(
    workdir: Path,
    count: int,
    *,
    settings: DispatcherSettings | None = None,
    extra: Sequence[str] = (),
    per_worker: Sequence[Sequence[str]] = (),
    binaries: tuple[str, str | None] | None = None,
) -> Iterator[tuple[Dispatcher, list[Worker]]]:
    """``count`` workers (``w1``...) serving the dispatcher's public AOR, each sending through it,
    and the dispatcher in front of them; all stopped on exit. ``extra``: ``listen`` options of
    every worker; ``per_worker[i]``: more options for worker ``i + 1`` only."""
    kamailio, kamcmd = binaries if binaries is not None else require_dispatcher()
    dispatcher = Dispatcher(kamailio, kamcmd, workdir, settings)
    workers: list[Worker] = []
    try:
        for index in range(1, count + 1):
            workers.append(
                Worker(
                    f"w{index}",
                    dispatcher.aor,
                    extra=[
                        "--proxy",
                        dispatcher.proxy_uri(),
                        *extra,
                        *(per_worker[index - 1] if index <= len(per_worker) else ()),
                    ],
                    log_dir=workdir,
                )
            )
        for worker in workers:
            worker.wait_ready()
        dispatcher.start([w.address for w in workers])
        yield dispatcher, workers
    finally:
        for worker in workers:
            worker.stop()
        dispatcher.stop()
