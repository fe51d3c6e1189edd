"""The typed API catches typos: mypy --strict accepts tests/typing/user_app.py and rejects each typo.

Notification kinds, statuses and requests are ``Literal`` strings or ``StrEnum`` members, handler
answers :class:`~sipimdn.ua.Answer` members: a misspelt one must be a type error, on its own line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "typing" / "user_app.py"
_TYPO = re.compile(r"  #\s*typo:\s*(.+?)\s*->\s*(.+?)\s*$")


def _with_typos(source: str) -> tuple[str, set[int]]:
    lines = source.splitlines()
    changed: set[int] = set()
    for number, line in enumerate(lines, start=1):
        match = _TYPO.search(line)
        if match is None:
            continue
        old, new = match.groups()
        code = line[: match.start()]
        assert code.count(old) == 1, f"line {number}: {old!r} must occur once in {code!r}"
        lines[number - 1] = code.replace(old, new)
        changed.add(number)
    return "\n".join(lines) + "\n", changed


def test_mypy_accepts_the_example_and_rejects_each_typo(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    source = EXAMPLE.read_text()
    typo_source, typo_lines = _with_typos(source)
    assert len(typo_lines) == 7
    good = tmp_path / "user_app.py"
    bad = tmp_path / "user_app_typos.py"
    good.write_text(source)
    bad.write_text(typo_source)
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
            "--cache-dir", str(tmp_path / "cache"), "--config-file", str(ROOT / "pyproject.toml"),
            str(good), str(bad),
        ],
        cwd=ROOT,  # sipimdn is found in the checkout, whether or not it is installed
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith(str(good))], result.stdout
    flagged = {int(e.split(":")[1]) for e in errors if e.startswith(str(bad))}
    assert flagged == typo_lines, result.stdout
