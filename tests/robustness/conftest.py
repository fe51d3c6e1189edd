"""Fixtures of the robustness suite (tests/robustness): certificates and a tidy event loop."""

from __future__ import annotations

import pytest
from robust_helpers import Pki, make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A CA, a server certificate for 127.0.0.1 and contexts trusting it."""
    return make_pki()
