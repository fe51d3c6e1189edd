"""A private DNS server for the RFC 3263 tests: dnsmasq on 127.0.0.1, a free UDP port.

dnsmasq (Debian package ``dnsmasq``) serves only the records given on its command line
(``--no-resolv --no-hosts``), answers NXDOMAIN for any other name of the test domain
(``--local=/sipimdn.test/``), and logs every query to a file so tests can count them.
It runs as a child of the test process and is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from _peers import require_binary, stop_process_group

DOMAIN = "sipimdn.test"


@dataclass
class DnsServer:
    """A running dnsmasq: where it listens and its query log."""

    port: int
    log_path: Path

    @property
    def address(self) -> str:
        """``host:port`` for ``DnsLocator(nameservers=...)``."""
        return f"127.0.0.1:{self.port}"

    def queries(self, name: str | None = None) -> list[str]:
        """The query lines logged so far (``query[SRV] _sip._udp.x from 127.0.0.1``), optionally
        only those for ``name``."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        found = [line.split(": ", 1)[-1] for line in lines if ": query[" in line]
        found = [q for q in found if q.split()[1] != f"ready.{DOMAIN}"]  # the readiness probes
        if name is not None:
            found = [q for q in found if q.split()[1].rstrip(".") == name]
        return found


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, name: str) -> bool:
    """True once the server answers a query for ``name`` (one DNS A query over UDP)."""
    import dns.exception
    import dns.message
    import dns.query

    try:
        dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return True


@contextlib.contextmanager
def dnsmasq(records: Sequence[str], tmp_path: Path, *, ttl: int = 60) -> Iterator[DnsServer]:
    """Run dnsmasq with ``records`` (``--srv-host=...``, ``--naptr-record=...``,
    ``--host-record=...`` options) for the duration of the block. ``ttl`` is the TTL of every
    answer (``--local-ttl``; also the negative TTL)."""
    # Debian puts dnsmasq in /usr/sbin, which a non-root user's PATH may lack.
    sbin = Path("/usr/sbin/dnsmasq")
    binary = shutil.which("dnsmasq") or (str(sbin) if os.access(sbin, os.X_OK) else require_binary("dnsmasq"))
    user = getpass.getuser()
    last_error = ""
    for _attempt in range(5):  # the free port can be taken between probe and bind: try another
        port = _free_udp_port()
        log_path = tmp_path / f"dnsmasq-{port}.log"
        command = [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts",
            f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file=",
            f"--user={user}", f"--local=/{DOMAIN}/", f"--local-ttl={ttl}", f"--neg-ttl={ttl}",
            "--log-queries", f"--log-facility={log_path}", "--cache-size=0",
            f"--host-record=ready.{DOMAIN},127.0.0.1", *records,
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process.poll() is None:
                if _answers(port, f"ready.{DOMAIN}"):
                    break
            if process.poll() is not None:
                assert process.stderr is not None
                last_error = process.stderr.read().decode(errors="replace").strip()
                continue
            if not _answers(port, f"ready.{DOMAIN}"):
                raise RuntimeError(f"dnsmasq on port {port} does not answer")
            yield DnsServer(port, log_path)
            return
        finally:
            stop_process_group(process)
            if process.stderr is not None:
                process.stderr.close()
    raise RuntimeError(f"dnsmasq did not start: {last_error}")
