"""Run a real Kamailio (registrar + authenticating proxy) for interoperability tests.

:class:`Kamailio` renders ``kamailio.cfg.tmpl`` into a private temporary
directory with ports chosen free at run time, makes a TLS certificate with
trustme, starts ``kamailio -f CFG -DD -E`` in the foreground (never the
packaged service, never 0.0.0.0:5060), waits until it answers an OPTIONS on
every transport, and on stop kills exactly the process it started, by PID.

Fixtures (import them into a test module, or use them from ``tests/kamailio/``
where ``conftest.py`` re-exports them):

* ``kamailio`` - one MD5 instance shared by a test module;
* ``kamailio_factory`` - ``kamailio_factory(algorithm="SHA-256", ...)`` starts
  more instances, all stopped when the test ends.

With ``CI=true`` a missing ``kamailio`` binary fails the test (``require_binary``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from _peers import require_binary, stop_process_group

__all__ = [
    "DEFAULT_USERS",
    "Kamailio",
    "KamailioError",
    "KamailioSettings",
    "kamailio",
    "kamailio_factory",
]

TEMPLATE = Path(__file__).with_name("kamailio.cfg.tmpl")
HOST = "127.0.0.1"
DEFAULT_USERS: dict[str, str] = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}

# Debian's module directory; overridable for other layouts.
_MODULE_PATHS = (
    os.environ.get("KAMAILIO_MODULE_PATH", ""),
    "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules/",
    "/usr/lib/kamailio/modules/",
    "/usr/local/lib64/kamailio/modules/",
    "/usr/local/lib/kamailio/modules/",
)


class KamailioError(RuntimeError):
    """Kamailio could not be started, or died; carries the tail of its log."""


@dataclass(frozen=True)
class KamailioSettings:
    """What a rendered configuration contains besides the ports."""

    domain: str = "sipimdn.test"
    """SIP domain served (an alias of the server) and the digest realm."""
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    """username -> password, written into the config's htable."""
    algorithm: str = "MD5"
    """Digest algorithm of the challenges: "MD5" or "SHA-256" (Kamailio 5.6)."""
    qop: str | None = "auth"
    """qop offered in challenges: "auth", "auth-int" or None (RFC 2069 style)."""
    default_expires: int = 3600
    min_expires: int = 1
    max_expires: int = 3600
    nonce_expire: int = 300
    debug: int = 2


def _module_path() -> str:
    for candidate in _MODULE_PATHS:
        if candidate and Path(candidate, "auth.so").exists():
            return candidate if candidate.endswith("/") else candidate + "/"
    raise KamailioError("cannot find Kamailio's module directory (set KAMAILIO_MODULE_PATH)")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_ports(count: int) -> list[int]:
    """Ports free for both UDP and TCP, distinct from each other."""
    ports: list[int] = []
    for _ in range(200):
        port = _free_port(socket.SOCK_STREAM)
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
    raise KamailioError("no free ports on 127.0.0.1")


_CHALLENGE_FLAGS = {"auth": "1", "auth-int": "2", None: "0"}


class Kamailio:
    """One Kamailio process on 127.0.0.1, with its own config, certificate and log."""

    def __init__(self, binary: str, workdir: Path, settings: KamailioSettings | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.settings = settings or KamailioSettings()
        self.host = HOST
        # UDP and TCP share one port, as on a real server (RFC 3261 §18.2.1): a request
        # that outgrows UDP (§18.1.1) is sent over TCP to the same port.
        self.udp_port, self.tls_port = _free_ports(2)
        self.tcp_port = self.udp_port
        self.config_path = workdir / "kamailio.cfg"
        self.log_path = workdir / "kamailio.log"
        self.cafile = workdir / "ca.pem"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- addresses ------------------------------------------------------------

    @property
    def domain(self) -> str:
        """The SIP domain (and digest realm) the server is responsible for."""
        return self.settings.domain

    def port(self, transport: str) -> int:
        """The port of ``"udp"``, ``"tcp"`` or ``"tls"``."""
        return {"udp": self.udp_port, "tcp": self.tcp_port, "tls": self.tls_port}[transport.lower()]

    def address(self, transport: str) -> tuple[str, int]:
        """(host, port) to send to over ``transport``."""
        return self.host, self.port(transport)

    def proxy_uri(self, transport: str = "udp") -> str:
        """A loose-routing URI of this server, usable as an outbound proxy."""
        scheme = "sips" if transport == "tls" else "sip"
        suffix = "" if transport in ("udp", "tls") else f";transport={transport}"
        return f"{scheme}:{self.host}:{self.port(transport)};lr{suffix}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the test CA (server name: the domain or 127.0.0.1)."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        return context

    # -- life cycle ------------------------------------------------------------

    def render(self) -> str:
        """Write the configuration and certificate files; return the config text."""
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(HOST, self.domain, "localhost")
        cert_path = self.workdir / "server.pem"
        key_path = self.workdir / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in cert.cert_chain_pems[1:]:
            with cert_path.open("ab") as chain:
                chain.write(extra.bytes())
        cert.private_key_pem.write_to_path(str(key_path))
        ca.cert_pem.write_to_path(str(self.cafile))
        settings = self.settings
        users = "\n".join(
            f'\t$sht(users=>{_cfg_string(name)}) = "{_cfg_string(password)}";'
            for name, password in settings.users.items()
        )
        values = {
            "DEBUG": str(settings.debug),
            "DOMAIN": settings.domain,
            "UDP_PORT": str(self.udp_port),
            "TCP_PORT": str(self.tcp_port),
            "TLS_PORT": str(self.tls_port),
            "MODULE_PATH": _module_path(),
            "DEFAULT_EXPIRES": str(settings.default_expires),
            "MIN_EXPIRES": str(settings.min_expires),
            "MAX_EXPIRES": str(settings.max_expires),
            "ALGORITHM": settings.algorithm,
            "NONCE_EXPIRE": str(settings.nonce_expire),
            "TLS_CERT": str(cert_path),
            "TLS_KEY": str(key_path),
            "USERS": users,
            "AUTH_FLAGS": "0",  # passwords are plain text, not HA1
            "CHALLENGE_FLAGS": _CHALLENGE_FLAGS[settings.qop],
            "STALE_FLAGS": str(int(_CHALLENGE_FLAGS[settings.qop]) | 16),
        }
        text = TEMPLATE.read_text()
        for name, value in values.items():
            text = text.replace(f"@@{name}@@", value)
        leftover = re.search(r"@@[A-Z_]+@@", text)
        if leftover is not None:
            raise KamailioError(f"unrendered placeholder {leftover.group(0)} in kamailio.cfg.tmpl")
        self.config_path.write_text(text)
        return text

    def start(self, timeout: float = 15.0) -> None:
        """Start Kamailio in the foreground and wait until every transport answers."""
        self.render()
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise KamailioError("config check failed:\n" + check.stderr.decode(errors="replace")[-4000:])
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        log = self.log_path.open("wb")
        self._log_file = log
        self._process = subprocess.Popen(
            [
                self.binary,
                "-f", str(self.config_path),
                "-DD",  # do not daemonize: the PID we hold is the main process
                "-E",  # log to stderr (our log file)
                "-Y", str(rundir),  # private runtime dir, not the packaged /run/kamailio
                "-m", "64",
                "-M", "8",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,  # its children share our PID as process group
        )
        deadline = time.monotonic() + timeout
        pending = ["udp", "tcp", "tls"]
        while pending:
            if self._process.poll() is not None:
                raise KamailioError(f"kamailio exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise KamailioError(
                    f"kamailio did not answer on {pending} within {timeout}s:\n{self.log_tail()}"
                )
            transport = pending[0]
            if self._answers_options(transport):
                pending.pop(0)
            else:
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill the process we started (and its children, its own process group), by PID."""
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

    def __enter__(self) -> Kamailio:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- readiness probe -------------------------------------------------------

    def _options(self, transport: str) -> bytes:
        branch = "z9hG4bK" + secrets.token_hex(8)
        proto = transport.upper()
        return (
            f"OPTIONS sip:{self.host}:{self.port(transport)} SIP/2.0\r\n"
            f"Via: SIP/2.0/{proto} {self.host}:9;branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{self.domain}>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{self.host}>\r\n"
            f"Call-ID: probe-{secrets.token_hex(8)}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def _answers_options(self, transport: str) -> bool:
        request = self._options(transport)
        try:
            if transport == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(0.3)
                    sock.sendto(request, self.address("udp"))
                    data = sock.recv(65535)
            else:
                with socket.create_connection(self.address(transport), timeout=1.0) as raw:
                    raw.settimeout(1.0)
                    conn: socket.socket = raw
                    if transport == "tls":
                        conn = self.client_ssl_context().wrap_socket(raw, server_hostname=self.host)
                    conn.sendall(request)
                    data = conn.recv(65535)
        except (OSError, ssl.SSLError):
            return False
        return data.startswith(b"SIP/2.0 200 ")


def _cfg_string(text: str) -> str:
    if any(ch in text for ch in '"\\\r\n$'):
        raise KamailioError(f"unsupported character in a Kamailio config string: {text!r}")
    return text


def _kamailio_binary() -> str:
    return require_binary("kamailio")  # tests/_peers.py: skip, or fail with CI=true


@contextlib.contextmanager
def running_kamailio(settings: KamailioSettings | None = None) -> Iterator[Kamailio]:
    """Start a Kamailio in a fresh temporary directory; always stop it."""
    binary = _kamailio_binary()
    with tempfile.TemporaryDirectory(prefix="sipimdn-kamailio-") as tmp:
        server = Kamailio(binary, Path(tmp), settings)
        try:
            server.start()
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def kamailio() -> Iterator[Kamailio]:
    """A Kamailio (MD5 challenges, qop=auth, users alice/bob/carol) shared by a module."""
    with running_kamailio() as server:
        yield server


@pytest.fixture
def kamailio_factory() -> Iterator[Callable[..., Kamailio]]:
    """Start extra Kamailio instances: ``kamailio_factory(algorithm="SHA-256")``."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: object) -> Kamailio:
            settings = KamailioSettings(**overrides)  # type: ignore[arg-type]
            return stack.enter_context(running_kamailio(settings))

        yield start


def which_kamailio() -> str | None:
    """The path of the kamailio binary, or None (for reporting)."""
    return shutil.which("kamailio")
