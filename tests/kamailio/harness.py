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
import secrets
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _peers import require_binary

from kamailio.process import (
    HOST,
    KamailioProcess,
    KamailioProcessError,
    find_module_dir,
    free_ports,
    render_placeholders,
)

__all__ = [
    "DEFAULT_USERS",
    "Kamailio",
    "KamailioError",
    "KamailioSettings",
    "kamailio",
    "kamailio_factory",
]

TEMPLATE = Path(__file__).with_name("kamailio.cfg.tmpl")
DEFAULT_USERS: dict[str, str] = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


class KamailioError(KamailioProcessError):
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
    path = find_module_dir("auth")
    if path is None:
        raise KamailioError("cannot find Kamailio's module directory (set KAMAILIO_MODULE_PATH)")
    return path


_CHALLENGE_FLAGS = {"auth": "1", "auth-int": "2", None: "0"}


class Kamailio(KamailioProcess):
    """One Kamailio process on 127.0.0.1, with its own config, certificate and log."""

    error = KamailioError

    def __init__(self, binary: str, workdir: Path, settings: KamailioSettings | None = None) -> None:
        super().__init__(binary, workdir, "kamailio.cfg")
        self.settings = settings or KamailioSettings()
        # UDP and TCP share one port, as on a real server (RFC 3261 §18.2.1): a request
        # that outgrows UDP (§18.1.1) is sent over TCP to the same port.
        self.udp_port, self.tls_port = free_ports(2)
        self.tcp_port = self.udp_port
        self.cafile = workdir / "ca.pem"

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
        text = render_placeholders(TEMPLATE, values, KamailioError)
        self.config_path.write_text(text)
        return text

    def start(self, timeout: float = 15.0) -> None:
        """Start Kamailio in the foreground and wait until every transport answers."""
        self.render()
        self._launch()
        deadline = time.monotonic() + timeout
        pending = ["udp", "tcp", "tls"]
        while pending:
            self._raise_if_exited()
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

    def __enter__(self) -> Kamailio:
        self.start()
        return self

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
