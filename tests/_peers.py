"""External peer programs (SIPp, Kamailio, linphone, ...) for the tests.

A module with a name of its own: pytest imports every ``conftest.py`` under the
module name ``conftest``, so ``from conftest import ...`` can pick up the wrong one.
"""

from __future__ import annotations

import os
import shutil

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
