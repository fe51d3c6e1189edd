"""bench/run.py's partial runs (``--only``): the parts not run keep the figures of the run that
measured them (bench/load/report.py ``merge``), RESULTS.md names that run, and the soak's target
row is judged over every message answered 200."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from load import report  # noqa: E402


def _meta(command: str, date: str, *, quick: bool = False) -> dict[str, Any]:
    return {
        "command": command,
        "date": date,
        "quick": quick,
        "nproc": 2,
        "cpu_model": "test",
        "memory_gib": 1.0,
        "loadavg_start": (0.0, 0.0, 0.0),
        "loadavg_end": (0.0, 0.0, 0.0),
        "versions": {
            "python": "3",
            "sipimdn": f"0.1 ({date})",
            "sipp": "-",
            "kamailio": "-",
            "lxml": "-",
            "libxml2": "-",
            "uvloop": "-",
            "matplotlib": "-",
        },
    }


def _soak(**changes: Any) -> dict[str, Any]:
    soak = {
        "offered": 1000.0, "seconds": 600.0, "grace_s": 5.0, "sent": 600_000, "ok": 600_000,
        "other_answers": 0, "unanswered": 0, "imdns": 600_000, "imdn_not_delivered": 0,
        "imdn_never": 0, "imdn_late": 0, "imdn_duplicates": 0, "imdn_other": 0, "imdn_before_200": 0,
        "imdn_without_200": 0, "answer_retransmissions": 0, "imdn_retransmissions": 0,
        "ok_p50_us": 500.0, "ok_p99_us": 2000.0, "ok_p999_us": 9000.0, "ok_max_us": 40000.0,
        "imdn_after_200_p50_ms": 0.2, "imdn_after_200_p99_ms": 1.0, "imdn_after_200_p999_ms": 30.0,
        "imdn_after_200_max_ms": 250.0, "window_s": 60.0, "windows": [], "cpu_us_per_msg": 700.0,
        "server_cpu_s": 420.0, "rss_start": 40 << 20, "rss_max": 60 << 20, "rss_end": 55 << 20,
        "server": {"messages": 600_000}, "kernel_timestamps": True,
    }  # fmt: skip
    soak.update(changes)
    return soak


def test_a_partial_run_keeps_the_parts_it_did_not_run() -> None:
    full = {
        "meta": _meta("python bench/run.py", "day 1"),
        "plan": {"rates": [1]},
        "micro": {"codecs": {"a": 1}},
        "receive": {"floor": {}},
        "errors": {"tls": "Traceback: boom"},
        "skipped": {"send": "sipp is not installed"},
        "durations": {"micro": 10.0, "receive": 20.0, "tls": 1.0},
    }
    soak_only = {
        "meta": _meta("python bench/run.py --only soak", "day 2"),
        "plan": {"rates": [2]},
        "soak": _soak(),
        "errors": {},
        "skipped": {},
        "durations": {"soak": 600.0},
    }
    merged = report.merge(full, soak_only, ran=["soak"])
    assert merged["micro"] == full["micro"] and merged["receive"] == full["receive"]
    assert merged["soak"] == soak_only["soak"]
    assert merged["errors"] == {"tls": "Traceback: boom"}
    assert merged["skipped"] == {"send": "sipp is not installed"}
    assert merged["durations"] == {"micro": 10.0, "receive": 20.0, "tls": 1.0, "soak": 600.0}
    assert merged["meta"] == soak_only["meta"] and merged["plan"] == soak_only["plan"]
    assert set(merged["carried"]) == {"micro", "receive", "tls", "send"}
    assert merged["carried"]["micro"]["date"] == "day 1"
    assert merged["carried"]["micro"]["command"] == "python bench/run.py"

    # A second partial run re-runs "receive" and "tls": they lose their old entries and their
    # carried mark; the others keep naming day 1, not the soak run that carried them along.
    again = {
        "meta": _meta("python bench/run.py --only receive,tls", "day 3"),
        "receive": {"floor": {"new": True}},
        "tls": {"kamailio": []},
        "errors": {},
        "skipped": {},
        "durations": {"receive": 30.0, "tls": 2.0},
    }
    merged2 = report.merge(merged, again, ran=["receive", "tls"])
    assert merged2["receive"] == {"floor": {"new": True}}
    assert merged2["errors"] == {}
    assert merged2["soak"] == soak_only["soak"]
    assert merged2["carried"]["micro"]["date"] == "day 1"
    assert merged2["carried"]["soak"]["date"] == "day 2"
    assert set(merged2["carried"]) == {"micro", "send", "soak"}


def test_results_md_names_the_runs_carried_parts_came_from() -> None:
    previous = {"meta": _meta("python bench/run.py", "day 1"), "receive": {}, "micro": {}}
    current = {"meta": _meta("python bench/run.py --only soak", "day 2", quick=True), "soak": _soak()}
    text = report.render(report.merge(previous, current, ran=["soak"]), [])
    assert "- micro, receive: `python bench/run.py` (day 1, sipimdn 0.1 (day 1))" in text
    assert "the parts this command ran are a tiny load" in text
    assert "## Soak: positive delivery through `sipimdn listen`" in text
    assert "| IMDN after the 200 p50 / p99 / p99.9 / max | 0.20 / 1.00 / 30.00 / 250.00 ms |" in text


def test_soak_target_counts_missing_and_late_imdns_against_the_p999() -> None:
    # 600,000 answered 200: p99.9 allows 600 messages beyond the bound.
    assert report.soak_target(_soak())[3] == "met"
    assert report.soak_target(_soak(imdn_late=300, imdn_never=200, imdn_not_delivered=100))[3] == "met"
    assert report.soak_target(_soak(imdn_late=300, imdn_never=301))[3] == "missed (601 misses)"
    lossy = _soak(ok=599_000, unanswered=1_000)
    assert report.soak_target(lossy)[3] == "inconclusive (1,000 of 600,000 MESSAGEs got no 200)"
    short = _soak(seconds=30.0, sent=30_000, ok=30_000, imdns=30_000)
    assert report.soak_target(short)[3].startswith("met at this size, not measured at full size")
    assert report.soak_target({"error": "client timed out"})[3] == "not measured"
