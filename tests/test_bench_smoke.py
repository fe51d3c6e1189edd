"""CI check that the benchmark entry command runs on a tiny load and writes its report.

It checks that ``python bench/run.py --quick`` finishes, that every part produced figures
(a SIPp run that answered calls, a latency run, the micro benchmarks) and that RESULTS.md
has its tables. It never checks speed: benchmarks are not tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _require_binary(name: str) -> str:
    # Load tests/conftest.py by path (pytest imports every conftest under one module name).
    spec = importlib.util.spec_from_file_location(
        "sipimdn_bench_root_conftest", ROOT / "tests" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: str = module.require_binary(name)
    return path


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    _require_binary("sipp")
    _require_binary("kamailio")
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--require-peers", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
        env=dict(os.environ),
    )
    return done, out


def _results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def test_entry_command_succeeds_and_writes_the_report(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = quick_run
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    text = (out / "RESULTS.md").read_text()
    for heading in (
        "## Targets (ratios, same run)",
        "## Receive path: SIPp -> responder -> 200",
        "## Receive path with positive-delivery requested",
        "## TLS over one connection",
        "## Sustained:",
        "## Send path",
        "## Micro benchmarks",
        "## Profile of the receive path",
        "## Soak: positive delivery through `sipimdn listen`",
        "## Fuzzing (recorded by `python bench/fuzz/run.py`",
    ):
        assert heading in text, heading
    assert "| command | `python bench/run.py --quick" in text
    assert "## Errors" not in text
    # Every responder appears in the summary table with its two transports.
    for name in ("floor", "kamailio", "sipimdn-stack", "sipimdn-ua", "sipimdn-listen"):
        assert f"| {name} | UDP |" in text, name
        assert f"| {name} | TCP |" in text, name
    # The target ratios come from the alternating rounds (two in a quick run), not single steps.
    assert "### Target ratios, plain receive: 2 alternating rounds at 300/s (UDP)" in text
    assert "### Target ratios, positive delivery: 2 alternating rounds at 300/s (UDP)" in text
    assert "median of 2 per-round ratios" in text


def test_each_part_ran_load_through_the_real_processes(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _done, out = quick_run
    results = _results(out)
    assert results["errors"] == {}
    assert results["skipped"] == {}
    for name, entry in results["receive"].items():
        for transport in ("udp", "tcp"):
            steps = entry[transport]
            assert steps and steps[0]["successful"] > 0, (name, transport, steps)
            assert steps[0]["server_cpu"] >= 0.0
        assert entry["latency"][0]["answered"] > 0, (name, entry["latency"])
    for part, rate, members in (
        ("receive", "300", ("sipimdn-ua", "sipimdn-listen")),
        ("positive-delivery", "300", ("sipimdn-ua", "sipimdn-listen")),
    ):
        for name in members:
            record = results[part][name]["ratio_rounds"][rate]
            assert record["reference"] == "floor"
            assert [r["round"] for r in record["rounds"]] == [1, 2]
            for r in record["rounds"]:
                assert r["step"]["successful"] > 0 and r["reference_step"]["successful"] > 0, r
            assert record["summary"]["ratio"]["median"] > 0, record["summary"]
    # Each sipimdn responder of the positive-delivery rounds sent its IMDNs and saw them answered.
    assert results["positive-delivery"]["sipimdn-ua"]["ratio_rounds"]["300"]["server"]["imdn_2xx"] > 0
    imdn_counts = results["positive-delivery"]["sipimdn-ua"]["udp_server"]
    assert imdn_counts["imdn_sent"] > 0
    # `sipimdn listen` (the CLI process): its delivered IMDNs reached SIPp and were answered 2xx.
    listen_counts = results["positive-delivery"]["sipimdn-listen"]["udp_server"]
    assert listen_counts["messages"] > 0 and listen_counts["imdn_2xx"] > 0, listen_counts
    assert results["sustain"]["sipp"]["successful"] > 0
    assert all(r["ok"] > 0 for r in results["send"]), results["send"]
    assert results["tls"]["kamailio"][0]["answered"] > 0
    assert results["tls"]["sipimdn-ua"][0]["answered"] > 0
    micro = results["micro"]
    assert "error" not in micro["codecs"], micro["codecs"]
    assert micro["tracker"]["count"] > 0 and micro["store"]["count"] > 0
    assert micro["store"]["lookups_found"] == micro["store"]["lookups"]
    assert results["profile"]["receive"]["messages"] > 0
    # The soak: `sipimdn listen` answered, sent delivered IMDNs, and the client matched them.
    soak = results["soak"]
    assert soak["ok"] > 0 and soak["imdns"] > 0 and soak["server"]["imdn_2xx"] > 0, soak
