"""A real PostgreSQL server for the tests, from Debian's ``postgresql`` package.

``initdb`` and ``pg_ctl`` run as the ``postgres`` user (when we are root) in a
temporary directory owned by it; the server listens on a Unix socket in that
directory only (``listen_addresses=''``: no TCP port), trusts local
connections, and is stopped by its pid (``pg_ctl stop -m fast``, then SIGKILL).

Fixtures: ``postgres_server`` (one server for the whole run) and
``postgres_url`` (a fresh database per test, created from a template, which
is fast). On a developer machine a missing PostgreSQL or asyncpg skips the
tests; with CI=true it fails them (``scripts/test`` installs both).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _peers import skip_unless_ci

__all__ = ["PostgresServer", "find_postgres_bin", "postgres_server", "postgres_url", "require_postgres"]


def find_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl, if any."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        version = bin_dir.parent.name
        if (bin_dir / "pg_ctl").exists() and version.replace(".", "").isdigit():
            found.append((float(version), bin_dir))
    return max(found)[1] if found else None


def require_postgres() -> Path:
    """The PostgreSQL bin directory, and asyncpg importable: else skip (fail with CI=true)."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        skip_unless_ci("PostgreSQL is not installed (scripts/test installs Debian's postgresql package)")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        skip_unless_ci("asyncpg is not installed (pip install -e '.[postgres]'; scripts/test does)")
    assert bin_dir is not None
    return bin_dir


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, reachable by Unix socket only."""

    def __init__(self, bin_dir: Path, *, fsync: bool = False) -> None:
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="sipimdn-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.pid: int | None = None
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            # The server refuses to run as root: everything runs as the postgres user.
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)
        self._databases = itertools.count(1)
        self._initdb()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_postgres, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def _initdb(self) -> None:
        done = self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--no-sync", "--locale=C.UTF-8",
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    def url(self, database: str = "postgres") -> str:
        """A libpq URL reaching ``database`` over the Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        options = f"-k {self.root} -c listen_addresses='' -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        done = self._run(
            str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
            "-w", "-t", "60", "-o", options,
            timeout=90,
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log}")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are cut), SIGKILL by pid if it lingers."""
        if self.pid is None:
            return
        done = self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                         "-w", "-t", "20", timeout=30)  # fmt: skip
        if done.returncode != 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self.pid = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command with psql; return its output (raises on failure)."""
        done = self._run(
            str(self.bin_dir / "psql"), "-h", self.socket_dir, "-U", "postgres", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, template: str = "template1") -> str:
        """A new, empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._databases)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run."""
    server = PostgresServer(require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()
