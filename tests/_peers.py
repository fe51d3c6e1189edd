"""External peer programs (SIPp, Kamailio, linphone, ...) for the tests.

A module with a name of its own: pytest imports every ``conftest.py`` under the
module name ``conftest``, so ``from conftest import ...`` can pick up the wrong one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_unless_ci(message: str) -> NoReturn:
    """Skip on a developer machine; with CI=true fail instead, since there a missing
    prerequisite means the machine or its install step is broken, and a skip would
    hide a test that never ran (tests/conftest.py also fails a CI run with any skip)."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Return the path of an external peer program (skip, or fail with CI=true, if missing)."""
    path = shutil.which(name)
    if path is None:
        skip_unless_ci(f"{name} is not installed (scripts/test installs it with apt-get)")
    return path


def has_ipv6_loopback() -> bool:
    """True if a UDP socket can bind ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


#: Whether the IPv6 tests run: always with CI=true (a CI machine without ::1 fails them,
#: loudly), elsewhere only where ::1 exists.
IPV6_TESTED = IN_CI or has_ipv6_loopback()
#: Mark for tests on ::1: skipped on a developer machine without it, never under CI.
needs_ipv6 = pytest.mark.skipif(not IPV6_TESTED, reason="no IPv6 loopback (::1) on this machine")


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """End a peer started with ``start_new_session=True``: SIGTERM to its process group, SIGKILL
    after 5 s, then SIGKILL to the group again for workers left behind (Kamailio's children may
    outlive the main process). By PID only: never by name, never anything we did not start."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
