"""A wheel built from this checkout installs into a fresh virtualenv and works there: the import
(``sipimdn.testing`` too, without pytest), the ``sipimdn`` console script, the package data; no
tests inside. And what the sdist holds."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd="/"
    )


def test_wheel_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    # The build runs in pip's isolated build environment (setuptools from the index or its cache).
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("sipimdn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sipimdn/py.typed" in names and "sipimdn/imdn/imdn.xsd" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not [name for name in names if name.startswith(("tests/", "bench/", "examples/"))]

    # A venv without pip of its own (faster): this interpreter's pip installs into it. lxml is
    # pinned to the version this environment runs, so pip finds it in its cache when it can.
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    lxml = f"lxml=={importlib.metadata.version('lxml')}"
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
            lxml,
        ],
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    imported = _run(
        [str(python), "-c", "import sipimdn, sipimdn.ua; print(sipimdn.__file__, sipimdn.__version__)"],
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    where, version = imported.stdout.split()
    assert where.startswith(str(fresh))  # the installed copy, not this checkout
    # The test helpers ship too, and import without pytest or trustme (neither is in this venv).
    helpers = _run(
        [str(python), "-c", "import sys, sipimdn.testing; print(sipimdn.testing.__file__, "
         "sorted(m for m in ('pytest', 'trustme') if m in sys.modules))"],
        timeout=60,
    )
    assert helpers.returncode == 0, helpers.stderr
    assert helpers.stdout.split() == [f"{where.rsplit('/', 1)[0]}/testing/__init__.py", "[]"]
    assert "sipimdn/testing/pytest_plugin.py" in names
    script = _run([str(fresh / "bin" / "sipimdn"), "--version"], timeout=60)
    assert script.returncode == 0, script.stderr
    assert script.stdout.strip() == f"sipimdn {version}"
    demo = _run([str(fresh / "bin" / "sipimdn"), "demo", "--json"], timeout=60)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.splitlines()[-1] == '{"event": "done", "ok": true}'


def test_sdist_ships_docs_and_examples_not_tests(tmp_path: Path) -> None:
    if importlib.util.find_spec("build") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the build package is not installed: the [test] extra has it")
        pytest.skip("the build package is not installed (pip install -e '.[test]')")
    built = _run([sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path), str(ROOT)], timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (sdist,) = tmp_path.glob("sipimdn-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "sipimdn/py.typed"} <= names
    assert {"examples/send_message.py", "docs/api/conf.py", "docs/ARCHITECTURE.md"} <= names
    # The tests need bench/, tools/, scripts/ and real peers: they stay in the repository.
    assert not [name for name in names if name.startswith(("tests/", "bench/", "tools/", "scripts/"))]
