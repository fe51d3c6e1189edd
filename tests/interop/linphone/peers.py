"""Kamailio (registrar + proxy, no auth) and liblinphone's ``linphone-daemon`` as test peers.

Topology (liblinphone drops ports from its room keys and sends only through its registrar's
route, so every party registers with one Kamailio), everything on 127.0.0.1 with free ports::

    sipimdn UA (tester) <-- REGISTER, MESSAGE, IMDN --> Kamailio <-- REGISTER, MESSAGE, IMDN --> liblinphone
                                                      (registrar + proxy)                        (alice)

liblinphone drops the port of every address it sends to, forces the out-of-dialog requests
of an account whose server has the destination's domain through that server, and sends
IMDNs only while registered with a port-less identity; so alice registers
``sip:alice@127.0.0.1`` with Kamailio, sipimdn registers ``sip:tester@127.0.0.1`` with it
too (and uses it as outbound proxy), and Kamailio routes every MESSAGE by location.

Both processes are started in the foreground and ended by their PID (Kamailio: its own
process group, so its worker children go too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from _peers import stop_process_group

from ..sipp import LOOPBACK, free_port, wait_bound

HERE = Path(__file__).resolve().parent

_MODULE_PATHS = (
    os.environ.get("KAMAILIO_MODULE_PATH", ""),
    "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules/",
    "/usr/lib/kamailio/modules/",
)

#: liblinphone's ``conference_chat_message_event.state`` values (ChatMessage::State).
LINPHONE_STATES = {
    0: "Idle",
    1: "InProgress",
    2: "Delivered",
    3: "NotDelivered",
    4: "FileTransferError",
    5: "FileTransferDone",
    6: "DeliveredToUser",
    7: "Displayed",
    8: "FileTransferInProgress",
}


class PeerError(RuntimeError):
    """A peer process did not start or misbehaved."""


def _module_path() -> str:
    for path in _MODULE_PATHS:
        if path and (Path(path) / "tm.so").exists():
            return path
    raise PeerError("no Kamailio module directory found (set KAMAILIO_MODULE_PATH)")


@dataclass
class Registrar:
    """Kamailio rendered from ``kamailio.cfg.in``: registrar, and proxy routing by location."""

    binary: str
    workdir: Path
    port: int = field(default_factory=lambda: free_port(("udp",)))
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def log_text(self) -> str:
        """What Kamailio logged (binary bodies such as deflated IMDNs decoded leniently)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Check and start Kamailio in the foreground; wait until its UDP port is bound."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = (HERE / "kamailio.cfg.in").read_text()
        for name, value in {"PORT": str(self.port), "MODULE_PATH": _module_path()}.items():
            text = text.replace(f"@@{name}@@", value)
        config = self.workdir / "kamailio.cfg"
        config.write_text(text)
        check = subprocess.run(
            [self.binary, "-c", "-f", str(config)], capture_output=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise PeerError("kamailio config check failed:\n" + check.stderr.decode(errors="replace")[-3000:])
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [self.binary, "-f", str(config), "-DD", "-E", "-Y", str(rundir), "-m", "32", "-M", "4"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # its workers join its process group, ended with it
        )
        try:
            wait_bound(self.port, "udp", process=self.process)
        except RuntimeError as exc:
            self.stop()
            raise PeerError(f"{exc}\n{self.log_text()[-3000:]}") from None

    def start_on_free_port(self, attempts: int = 3) -> None:
        """:meth:`start`, again on a fresh port if the one picked free was taken meanwhile."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except PeerError:
                if attempt == attempts - 1 or "Address already in use" not in self.log_text():
                    raise
                self.port = free_port(("udp",))

    def stop(self) -> None:
        """SIGTERM to Kamailio's process group (its PID), SIGKILL if needed."""
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def render_linphonerc(home: Path, *, user: str, sip_port: int, registrar_port: int, cpim: bool) -> Path:
    """A liblinphone 5.1 config for one account, written to ``home/linphonerc``.

    The keys that matter: loopback UDP only; a port-less
    identity (IMDNs leave only for a registered account matching the port-less To);
    the registrar as proxy (same domain: forced route); CPIM in basic chat rooms read from
    ``[proxy_default_values]`` (5.1.65 ignores it in ``[proxy_0]``); a writable message
    database (without one the daemon crashes on the first chat message).
    """
    (home / "db").mkdir(parents=True, exist_ok=True)
    path = home / "linphonerc"
    path.write_text(
        "\n".join([
            "[sip]",
            f"sip_port={sip_port}",
            "sip_tcp_port=0",
            "sip_tls_port=0",
            f"bind_address={LOOPBACK}",
            "use_ipv6=0",
            "default_proxy=0",
            "im_notif_policy=all",
            "",
            "[proxy_0]",
            f"reg_identity=<sip:{user}@{LOOPBACK}>",
            f"reg_proxy=<sip:{LOOPBACK}:{registrar_port};transport=udp>",
            "reg_sendregister=1",
            "reg_expires=600",
            "publish=0",
            "",
            "[proxy_default_values]",
            f"cpim_in_basic_chat_rooms_enabled={1 if cpim else 0}",
            "",
            "[misc]",
            "aggregate_imdn=0",
            "",
            "[storage]",
            f"uri={home / 'db' / 'linphone.db'}",
            "",
        ])
    )  # fmt: skip
    return path


@dataclass
class LinphoneDaemon:
    """One ``linphone-daemon`` account, driven through its stdin; output in ``home/daemon.out``."""

    binary: str
    home: Path
    user: str
    registrar_port: int
    cpim: bool = True
    sip_port: int = field(default_factory=lambda: free_port(("udp",)))
    process: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{LOOPBACK}"

    @property
    def output_path(self) -> Path:
        return self.home / "daemon.out"

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """liblinphone's own log (``--log``): every SIP message it sent and received."""
        try:
            return (self.home / "linphone.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """Its stdout and the tail of liblinphone's log, for assertion messages."""
        log = self.log_text()[-4000:]
        output = self.output()[-3000:]
        return f"linphone-daemon {self.user} output:\n{output}\n--- linphone.log (tail) ---\n{log}"

    def start(self, register_timeout: float = 15.0) -> None:
        """Start the daemon (HOME in its own scratch directory) and wait for RegistrationOk."""
        config = render_linphonerc(
            self.home,
            user=self.user,
            sip_port=self.sip_port,
            registrar_port=self.registrar_port,
            cpim=self.cpim,
        )
        self._out = self.output_path.open("wb")
        self.process = subprocess.Popen(
            [self.binary, "--config", str(config), "--log", str(self.home / "linphone.log")],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.home,
            env=dict(os.environ, HOME=str(self.home)),
        )
        deadline = time.monotonic() + register_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"linphone-daemon exited with {self.process.returncode}\n{self.describe()}")
            self.command("register-status ALL")
            time.sleep(0.2)
            if "State: LinphoneRegistrationOk" in self.output():
                return
        raise PeerError(f"linphone-daemon did not register within {register_timeout} s\n{self.describe()}")

    def command(self, line: str) -> None:
        """Write one daemon command line (its answer and events go to the output file)."""
        if self.process is None or self.process.stdin is None:
            raise PeerError("linphone-daemon is not running")
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def send_message(self, to: str, text: str, timeout: float = 5.0) -> str:
        """``message TO TEXT``; returns the Id the daemon reports (the imdn.Message-ID with CPIM)."""
        before = len(self.output())
        self.command(f"message {to} {text}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.output()[before:]
            if "Status: Error" in answer:
                raise PeerError(f"message command failed\n{answer}")
            if "Status: Ok" in answer and "Id: " in answer.split("Status: Ok", 1)[1]:
                return answer.split("Status: Ok", 1)[1].split("Id: ", 1)[1].split()[0]
            time.sleep(0.05)
        raise PeerError(f"no answer to `message` within {timeout} s\n{self.describe()}")

    def received_messages(self) -> list[dict[str, str]]:
        """The ``message-received`` events printed so far (From, To, Id, Content)."""
        events = []
        for block in self.output().split("Event-type: message-received")[1:]:
            fields: dict[str, str] = {}
            for line in block.strip().splitlines():
                name, sep, value = line.partition(": ")
                if sep and name in {"From", "To", "Id", "Content"} and name not in fields:
                    fields[name] = value
                if line.startswith("Event-type:") or line.startswith("daemon-linphone>"):
                    break
            events.append(fields)
        return events

    def wait_received(self, count: int, timeout: float) -> list[dict[str, str]]:
        """Wait (bounded) until ``count`` messages were printed (the daemon prints its event
        after answering, so it can come after the 200); return those seen."""
        deadline = time.monotonic() + timeout
        received = self.received_messages()
        while len(received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            received = self.received_messages()
        return received

    def message_state(self, message_id: str) -> str | None:
        """The state liblinphone recorded for one of its messages, read from its database.

        The daemon stops reporting a message after its first final state (the 200), so
        DeliveredToUser and Displayed are only visible here.
        """
        path = self.home / "db" / "linphone.db"
        if not path.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
                row = db.execute(
                    "SELECT state FROM conference_chat_message_event WHERE imdn_message_id = ?", (message_id,)
                ).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else LINPHONE_STATES.get(int(row[0]), str(row[0]))

    def wait_message_state(self, message_id: str, wanted: str, timeout: float) -> str | None:
        """Poll :meth:`message_state` until it is ``wanted`` (or the time is up); the last state seen."""
        deadline = time.monotonic() + timeout
        state = self.message_state(message_id)
        while state != wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            state = self.message_state(message_id)
        return state

    def stop(self) -> None:
        """``quit`` (it un-registers), then SIGTERM / SIGKILL by PID if it lingers."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    self.command("quit")
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


def build_reader(workdir: Path, gcc: str, pkg_config: str) -> Path:
    """Compile ``lpreader.c`` against Debian's liblinphone-dev; return the program's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    flags = subprocess.run(
        [pkg_config, "--cflags", "--libs", "linphone"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if flags.returncode != 0:
        raise PeerError(f"pkg-config linphone failed (is liblinphone-dev installed?)\n{flags.stderr}")
    program = workdir / "lpreader"
    # Debian's linphone.pc lists the libraries liblinphone needs but not liblinphone itself.
    build = subprocess.run(
        [gcc, "-Wall", "-Wextra", "-O1", "-o", str(program), str(HERE / "lpreader.c"), *flags.stdout.split(),
         "-llinphone"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        raise PeerError(f"building lpreader failed\n{build.stderr[-3000:]}")
    return program


@dataclass
class LinphoneReader:
    """liblinphone through ``lpreader``: an account that marks each message read after a delay.

    Same config as :class:`LinphoneDaemon`; it is what makes liblinphone send display IMDNs.
    """

    program: Path
    home: Path
    user: str
    registrar_port: int
    read_delay_ms: int = 300
    run_seconds: int = 60
    cpim: bool = True
    sip_port: int = field(default_factory=lambda: free_port(("udp",)))
    process: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    @property
    def output_path(self) -> Path:
        return self.home / "lpreader.out"

    def output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """lpreader writes liblinphone's log to its stdout too (the config sets no log file)."""
        return self.output()

    def describe(self) -> str:
        return f"lpreader {self.user} output:\n{self.output()[-5000:]}"

    def start(self, register_timeout: float = 15.0) -> None:
        """Start it (HOME in its scratch directory) and wait for RegistrationOk."""
        config = render_linphonerc(
            self.home,
            user=self.user,
            sip_port=self.sip_port,
            registrar_port=self.registrar_port,
            cpim=self.cpim,
        )
        self._out = self.output_path.open("wb")
        self.process = subprocess.Popen(
            [str(self.program), str(config), str(self.read_delay_ms), str(self.run_seconds)],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.home,
            env=dict(os.environ, HOME=str(self.home)),
        )
        deadline = time.monotonic() + register_timeout
        while time.monotonic() < deadline:
            if "registration LinphoneRegistrationOk" in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise PeerError(f"lpreader did not register within {register_timeout} s\n{self.describe()}")

    def compose(self, uri: str) -> None:
        """Type to ``uri``: liblinphone sends an is-composing ``active`` indication (RFC 3994)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"compose {uri}\n".encode())
        self.process.stdin.flush()

    def read_ids(self) -> list[str]:
        """The Message-IDs of the messages it has marked read (display IMDN sent)."""
        return [line.split()[1] for line in self.output().splitlines() if line.startswith("read ")]

    def stop(self) -> None:
        """Close its stdin (it un-registers and exits), then SIGTERM / SIGKILL by PID if needed."""
        process = self.process
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
            self.process = None
        if self._out is not None:
            self._out.close()
            self._out = None
