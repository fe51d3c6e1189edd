"""Smoke test of bench/bench_parse.py (the benchmark itself is not a test): it must keep running."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from sipimdn import Request, parse_message

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_parse.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_parse", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_inputs_are_distinct_valid_messages() -> None:
    bench = load_bench()
    template = bench.MESSAGE_FILE.read_bytes()
    messages = bench.distinct_messages(template, 16)
    assert len(set(messages)) == 16
    branches = set()
    for data in messages:
        message = parse_message(data)
        message.validate()
        branches.add(message.top_via.branch)
        assert message.body == parse_message(template).body
    assert len(branches) == 16
    variant = parse_message(bench.pyvoip_variant(template))
    assert isinstance(variant, Request) and variant.method == "INVITE"
    assert all(b"=" in line for line in variant.body.split(b"\r\n"))
    assert len(variant.body) == len(parse_message(template).body)


def test_bench_runs_without_the_reference_venv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    code = bench.main(["--venv", str(tmp_path / "none"), "--seconds", "0.01", "--rounds", "1", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["msg_per_s"]["sipimdn parse_message (typed headers lazy)"] > 0
    assert "no venv" in result["errors"]["aiosip / pyVoIP"]
