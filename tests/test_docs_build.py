"""The API reference (docs/api) builds from the docstrings with warnings as errors (Sphinx -W)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from _peers import skip_unless_ci

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    if importlib.util.find_spec("sphinx") is None:
        skip_unless_ci("sphinx is not installed (pip install -e '.[docs]'; scripts/test does)")
    out = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(ROOT / "docs" / "api"),
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The pages hold what autodoc read from the modules, not just the headings.
    useragent = (out / "useragent.html").read_text(encoding="utf-8")
    for anchor in (
        "sipimdn.ua.UserAgent.send_message",
        "sipimdn.config.UserAgentConfig",
        "sipimdn.errors.SipError",
    ):
        assert f'id="{anchor}"' in useragent
    assert 'id="sipimdn.parser.StreamFramer"' in (out / "sip.html").read_text(encoding="utf-8")
    testing = (out / "testing.html").read_text(encoding="utf-8")
    for anchor in ("sipimdn.testing.ua_pair", "sipimdn.testing.Recorder.next",
                   "sipimdn.testing.pytest_plugin.sipimdn_pair"):
        assert f'id="{anchor}"' in testing
