"""Fixtures for the interop suite: real peers, started and stopped by the tests.

With CI=true a missing peer program fails the test (tests/conftest.py's require_binary);
on a developer machine it skips.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from .linphone.peers import PeerError, build_reader
from .sipp import SippRunner


def _load_root_conftest() -> ModuleType:
    # tests/ is not a package and pytest imports every conftest.py under the same module
    # name "conftest", so `from conftest import ...` could pick up the wrong file. Load the
    # root one by path under a name of its own instead.
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("sipimdn_tests_root_conftest", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ROOT = _load_root_conftest()
require_binary: Callable[[str], str] = _ROOT.require_binary
IN_CI: bool = _ROOT.IN_CI
skip_unless_ci: Callable[[str], NoReturn] = _ROOT.skip_unless_ci


@pytest.fixture(scope="session")
def sipp_binary() -> str:
    """Path of the ``sipp`` program (Debian package sip-tester)."""
    return require_binary("sipp")


@pytest.fixture(scope="session")
def kamailio_binary() -> str:
    """Path of ``kamailio`` (Debian package kamailio), the registrar of the liblinphone tests."""
    return require_binary("kamailio")


@pytest.fixture(scope="session")
def linphone_daemon_binary() -> str:
    """Path of ``linphone-daemon`` (Debian package linphone-cli)."""
    return require_binary("linphone-daemon")


@pytest.fixture(scope="session")
def baresip_binary() -> str:
    """Path of ``baresip`` (Debian package baresip-core), the text/plain-only peer."""
    return require_binary("baresip")


@pytest.fixture(scope="session")
def lpreader_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``linphone/lpreader.c`` compiled against liblinphone-dev (gcc, pkg-config): a liblinphone
    client that marks messages read, so that liblinphone sends display notifications."""
    gcc = require_binary("gcc")
    pkg_config = require_binary("pkg-config")
    try:
        return build_reader(tmp_path_factory.mktemp("lpreader"), gcc, pkg_config)
    except PeerError as exc:
        skip_unless_ci(f"cannot build lpreader (scripts/test installs liblinphone-dev): {exc}")


@pytest.fixture
def sipp(sipp_binary: str, tmp_path: Path) -> Iterator[SippRunner]:
    """Starts SIPp processes with logs under the test's tmp_path; ends them all at teardown."""
    runner = SippRunner(sipp_binary, tmp_path)
    yield runner
    runner.stop_all()
