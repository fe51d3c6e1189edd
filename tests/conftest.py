"""Shared fixtures and helpers for the whole test suite, and the no-skips rule of CI.

With CI=true a skipped test fails the run: a skip there means a prerequisite (a peer
program, ::1, an OpenSSL feature) is missing, so the test proved nothing while the run
would still look green. Helpers that skip (``require_binary``, ``skip_unless_ci``,
``needs_ipv6``) already fail instead under CI; this hook catches any other skip.
"""

from __future__ import annotations

import pytest
from _peers import IN_CI, IPV6_TESTED, needs_ipv6, require_binary, skip_unless_ci
from _postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

__all__ = ["IN_CI", "IPV6_TESTED", "needs_ipv6", "require_binary", "skip_unless_ci"]

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (expected failures, xfail, are not skips)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module skipped at collection (``allow_module_level``) is a skip too."""
    if report.skipped:
        _skipped.append(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CI=true, any skip turns a passing run into a failed one."""
    if IN_CI and _skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say why a CI run with skips failed."""
    if IN_CI and _skipped:
        terminalreporter.section("skipped under CI=true", sep="=", red=True, bold=True)
        for nodeid in _skipped:
            terminalreporter.line(f"SKIPPED {nodeid}")
        count = len(_skipped)
        terminalreporter.line(f"{count} skipped with CI=true: the run fails (no silent skips)", red=True)
