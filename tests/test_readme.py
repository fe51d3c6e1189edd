"""The README's Python program runs as written and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_snippet_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    script = tmp_path / "snippet.py"
    script.write_text(blocks[0], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"bob got 'Hello Bob' from sip:alice@127\.0\.0\.1:\d+", lines[0])
    assert "SIP answer: 200 OK" in lines
    states = [line.rsplit(" ", 3)[1:] for line in lines if line.startswith("alice: ")]
    assert [(before, after) for before, _, after in states] == [
        ("pending", "accepted"), ("accepted", "delivered"), ("delivered", "displayed"),
    ]
    assert list(tmp_path.iterdir()) == [script]  # nothing left behind (the store is in memory)
