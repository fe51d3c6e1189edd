"""External peer programs (SIPp, Kamailio, linphone, ...) for the tests.

A module with a name of its own: pytest imports every ``conftest.py`` under the
module name ``conftest``, so ``from conftest import ...`` can pick up the wrong one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str) -> str:
    """Return the path of an external peer program.

    On a developer machine a missing peer skips the test; with CI=true it
    fails it, because there a missing peer means the install step is broken.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/test installs it with apt-get)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


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
