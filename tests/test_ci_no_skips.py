"""The no-skips rule of CI (tests/conftest.py): with CI=true a skipped test fails the run.

A throwaway suite with this repository's conftest.py and its helpers, one passing test and one
skipped, run by pytest in a subprocess: exit 0 without CI, exit 1 with CI=true; and a skip
through the helpers (a missing peer program, ``skip_unless_ci``) is a failure under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SUITE = """
import pytest

def test_passes():
    assert 1 + 1 == 2

def test_skips():
    pytest.skip("a prerequisite is missing")
"""

HELPERS = """
from _peers import require_binary, skip_unless_ci

def test_missing_peer():
    require_binary("no-such-peer-program-sipimdn")

def test_missing_feature():
    skip_unless_ci("this build lacks the feature")
"""


def run_suite(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess[str]:
    # The conftest and the private helper modules it imports (_peers, _postgres, ...).
    for path in [HERE / "conftest.py", *HERE.glob("_*.py")]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "test_demo.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_demo.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("ci", [False, True])
def test_a_skip_fails_the_run_only_under_ci(tmp_path: Path, ci: bool) -> None:
    result = run_suite(tmp_path, SUITE, ci)
    assert "1 passed, 1 skipped" in result.stdout, result.stdout
    if ci:
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
        assert "SKIPPED test_demo.py::test_skips" in result.stdout
    else:
        assert result.returncode == pytest.ExitCode.OK, result.stdout


def test_helpers_fail_instead_of_skipping_under_ci(tmp_path: Path) -> None:
    result = run_suite(tmp_path, HELPERS, ci=True)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "2 failed in" in result.stdout, result.stdout
