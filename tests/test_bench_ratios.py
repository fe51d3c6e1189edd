"""bench/run.py's target ratios: measured in alternating rounds, judged on the median of the
per-round ratios (bench/load/scenarios.py ``ratio_rounds``, bench/load/report.py ``targets``).

The rounds themselves run SIPp against real responders in tests/test_bench_smoke.py; here the
responders and SIPp are replaced by a fake whose cost drifts from round to round, as a shared
machine's load does, to check what the report makes of it.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from load import report, scenarios, sipp_load  # noqa: E402


def _responder(name: str) -> scenarios.Responder:
    def start(_log_dir: Path) -> Any:
        raise AssertionError("the fake never starts a process")

    return scenarios.Responder(name=name, kind="sipimdn", loop="asyncio", start=start)


def _members(uvloop: bool = False) -> list[scenarios.RatioMember]:
    members = [
        scenarios.RatioMember(_responder("sipimdn-ua"), reference="floor"),
        scenarios.RatioMember(_responder("floor")),
        scenarios.RatioMember(_responder("sipimdn-listen"), reference="floor"),
    ]
    if uvloop:
        members += [
            scenarios.RatioMember(_responder("sipimdn-ua+uvloop"), reference="floor+uvloop"),
            scenarios.RatioMember(_responder("floor+uvloop")),
        ]
    return members


@pytest.mark.parametrize("uvloop", [False, True])
def test_each_round_measures_every_member_once_next_to_its_reference(uvloop: bool) -> None:
    members = _members(uvloop)
    orders = [[m.name for m in scenarios.round_order(members, index)] for index in range(4)]
    for order in orders:
        assert sorted(order) == sorted(m.name for m in members)
        for member in members:
            if member.reference is not None:
                here, there = order.index(member.name), order.index(member.reference)
                assert abs(here - there) == 1, (member.name, order)
    # Every other round runs backwards: no member is always first, or always after the same one.
    assert orders[1] == orders[0][::-1] and orders[2] == orders[0]
    assert orders[0][0] != orders[1][0]


class _FakeServer:
    """A responder whose CPU clock the fake SIPp advances."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cpu = 0.0
        self.log_path = Path("/nonexistent")

    def cpu_seconds(self) -> float:
        return self.cpu

    def port(self, _transport: str) -> int:
        return 5060


#: CPU microseconds per message of each responder on an idle machine.
_COST = {"floor": 60.0, "sipimdn-ua": 150.0, "sipimdn-listen": 170.0}


def _fake_machine(monkeypatch: pytest.MonkeyPatch, drift: list[float], calls: list[str]) -> None:
    """Replace the responders and SIPp: the step number ``k`` of responder R costs
    ``_COST[R] * drift[round]`` per message, the round being counted from the order of calls
    (three members per round, after no warm-up)."""
    servers: dict[str, _FakeServer] = {}

    @contextlib.contextmanager
    def running(responder: scenarios.Responder, log_dir: Path) -> Iterator[_FakeServer]:
        server = servers.setdefault(responder.name, _FakeServer(responder.name))
        yield server

    def run_uac(_sipp: str, scenario: str, _remote: Any, _transport: str, rate: int, seconds: float,
                _log_dir: Path, cpu_of_server: Any, *, ooc_scenario: str | None = None) -> sipp_load.Step:
        server = next(s for s in servers.values() if s.cpu_seconds == cpu_of_server)
        round_index = len(calls) // len(_COST)
        calls.append(server.name)
        messages = int(rate * seconds)
        before = cpu_of_server()
        server.cpu += messages * _COST[server.name] * drift[round_index] / 1e6
        return sipp_load.Step(
            offered=rate, calls=messages, successful=messages, failed=0, retransmissions=0,
            elapsed=seconds, exit_code=0, server_cpu=cpu_of_server() - before,
        )  # fmt: skip

    monkeypatch.setattr(scenarios, "running", running)
    monkeypatch.setattr(scenarios.sipp_load, "run_uac", run_uac)
    monkeypatch.setattr(scenarios, "_wait_all_idle", lambda _servers: None)


def test_load_drift_between_rounds_leaves_the_per_round_ratio_exact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Other work on the machine makes round 2 twice and round 4 three times as expensive for
    # every responder measured in it: the CPU per message moves, the per-round ratio does not.
    drift = [1.0, 2.0, 1.0, 3.0, 1.2]
    calls: list[str] = []
    _fake_machine(monkeypatch, drift, calls)
    group = scenarios.ratio_rounds("sipp", _members(), 3000, 1.0, len(drift), tmp_path)
    assert calls[:3] == ["sipimdn-ua", "floor", "sipimdn-listen"]
    assert calls[3:6] == ["sipimdn-listen", "floor", "sipimdn-ua"]
    ua = group["summary"]["sipimdn-ua"]
    assert ua["rounds"] == 5 and ua["sustained_rounds"] == 5 and ua["failed"] == 0
    assert ua["ratio"]["median"] == pytest.approx(2.5)
    assert ua["ratio"]["min"] == pytest.approx(2.5) and ua["ratio"]["max"] == pytest.approx(2.5)
    assert ua["cpu"]["min"] == pytest.approx(150.0) and ua["cpu"]["max"] == pytest.approx(450.0)
    listen = group["summary"]["sipimdn-listen"]
    assert listen["ratio"]["median"] == pytest.approx(170 / 60)
    floor = group["summary"]["floor"]
    assert floor["reference"] is None and "ratio" not in floor
    assert floor["cpu"]["median"] == pytest.approx(60.0 * 1.2)


def test_the_median_of_per_round_ratios_is_not_the_ratio_of_medians() -> None:
    def step(cpu: float, sustained: bool = True, failed: int = 0) -> dict[str, Any]:
        return {"cpu_us_per_msg": cpu, "sustained": sustained, "failed": failed}

    rounds = [
        {"round": 1, "order": [], "steps": {"floor": step(50.0), "ua": step(100.0)}},
        {"round": 2, "order": [], "steps": {"floor": step(100.0), "ua": step(150.0, False, 7)}},
        {"round": 3, "order": [], "steps": {"floor": step(80.0), "ua": step(400.0)}},
    ]
    summary = scenarios.summarise_rounds(rounds, [("ua", "floor"), ("floor", None)])
    ua = summary["ua"]
    assert ua["ratios"] == [2.0, 1.5, 5.0]
    assert ua["ratio"] == {"median": 2.0, "min": 1.5, "max": 5.0}
    assert ua["ratio_of_medians"] == pytest.approx(150.0 / 80.0)
    assert ua["sustained_rounds"] == 2 and ua["failed"] == 7


def _results(receive: dict[str, Any], pd: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"receive": receive, "positive-delivery": pd or {}}


def _group(rate: int, ratios: list[float], floor_cpu: float = 60.0, failed: int = 0) -> dict[str, Any]:
    rounds = []
    for index, ratio in enumerate(ratios):
        floor = {"cpu_us_per_msg": floor_cpu, "sustained": True, "failed": 0, "achieved": rate}
        ua = {"cpu_us_per_msg": floor_cpu * ratio, "sustained": not failed, "failed": failed,
              "achieved": rate}  # fmt: skip
        rounds.append({"round": index + 1, "order": ["sipimdn-ua", "floor"],
                       "steps": {"floor": floor, "sipimdn-ua": ua}})  # fmt: skip
    members = [("sipimdn-ua", "floor"), ("floor", None)]
    return {
        "rate": rate, "transport": "udp", "seconds": 5.0, "rounds": rounds,
        "members": {name: {"reference": ref, "scenario": "uac_cpim.xml"} for name, ref in members},
        "summary": scenarios.summarise_rounds(rounds, members), "server": {},
    }  # fmt: skip


def _sweep(rate: int, cpu: float) -> list[dict[str, Any]]:
    calls = rate * 5
    return [{"offered": rate, "achieved": float(rate), "successful": calls, "failed": 0,
             "retransmissions": 0, "cpu_us_per_msg": cpu, "sustained": True}]  # fmt: skip


def test_the_target_row_is_judged_on_the_median_per_round_ratio() -> None:
    # One round alone says 1.6x (met) or 2.6x (missed); the median of five says 2.1x: missed.
    receive: dict[str, Any] = {
        "floor": {"kind": "reference", "loop": "asyncio", "udp": _sweep(3000, 60.0)},
        "sipimdn-ua": {"kind": "sipimdn", "loop": "asyncio", "udp": _sweep(3000, 96.0)},
    }
    for name, record in scenarios.per_member(_group(3000, [1.6, 2.1, 2.6, 2.2, 2.0])).items():
        receive[name]["ratio_rounds"] = {"3000": record}
    row = report.targets(_results(receive))[0]
    assert row[1] == "<= 2.0x"
    assert row[2].startswith("2.10x, median of 5 per-round ratios (range 1.60-2.60x)")
    assert "at 3,000/s" in row[2]
    assert row[3] == "missed (1.1x off)"


def test_without_rounds_the_single_step_gets_no_verdict() -> None:
    receive = {
        "floor": {"kind": "reference", "loop": "asyncio", "udp": _sweep(3000, 60.0)},
        "sipimdn-ua": {"kind": "sipimdn", "loop": "asyncio", "udp": _sweep(3000, 96.0)},
    }
    row = report.targets(_results(receive))[0]
    assert row[2].startswith("one step each, not repeated: 1.6x")
    assert row[3].startswith("not measured")


def test_positive_delivery_rows_per_rate_and_unsustained_rounds_qualify_a_met_ratio() -> None:
    pd: dict[str, Any] = {"sipimdn-ua": {"loop": "asyncio", "udp": []}}
    records = {}
    for rate, failed in ((1000, 0), (2000, 3)):
        records[str(rate)] = scenarios.per_member(_group(rate, [3.0, 3.2, 3.4], failed=failed))["sipimdn-ua"]
    pd["sipimdn-ua"]["ratio_rounds"] = records
    rows = [r for r in report.targets(_results({}, pd)) if r[0].startswith("positive-delivery")]
    assert [r[0].rsplit(", ", 1)[1] for r in rows] == ["1,000/s", "2,000/s"]
    assert rows[0][3] == "met"
    assert rows[1][3] == "ratio met, load not carried in every round"
    assert "not sustained in 3 of its rounds" in rows[1][2] and "9 failed calls" in rows[1][2]


def test_the_report_shows_every_round_and_the_medians() -> None:
    receive: dict[str, Any] = {
        "floor": {"kind": "reference", "loop": "asyncio", "udp": _sweep(3000, 60.0)},
        "sipimdn-ua": {"kind": "sipimdn", "loop": "asyncio", "udp": _sweep(3000, 96.0)},
    }
    for name, record in scenarios.per_member(_group(3000, [1.5, 2.5, 2.0])).items():
        receive[name]["ratio_rounds"] = {"3000": record}
    text = "\n".join(report._receive_section(_results(receive)))
    assert "### Target ratios, plain receive: 3 alternating rounds at 3,000/s (UDP)" in text
    assert "| sipimdn-ua | 3,000 | floor | 3 | 120 (90 - 150) | 60 (60 - 60) | 2.00x (1.50 - 2.50x) |" in text
    for index, ratio in enumerate((1.5, 2.5, 2.0), start=1):
        assert f"| sipimdn-ua | 3,000 | {index} | sipimdn-ua -> floor | " in text
        assert f"| {ratio:.2f}x |" in text
    assert "a single sample" in text  # the sweep's every-step table says what its rows are
    assert not math.isnan(receive["sipimdn-ua"]["ratio_rounds"]["3000"]["summary"]["ratio_of_medians"])


def test_a_reference_step_under_one_cpu_tick_gives_no_ratio_for_its_round() -> None:
    # CPU time comes in 10 ms ticks: a tiny step of the floor can read 0, which is no ratio.
    group = _group(300, [2.0, 3.0], floor_cpu=60.0)
    group["rounds"][0]["steps"]["floor"]["cpu_us_per_msg"] = 0.0
    summary = scenarios.summarise_rounds(group["rounds"], [("sipimdn-ua", "floor"), ("floor", None)])
    assert math.isnan(summary["sipimdn-ua"]["ratios"][0])
    assert summary["sipimdn-ua"]["ratio"] == {"median": 3.0, "min": 3.0, "max": 3.0}
    group["rounds"][1]["steps"]["floor"]["cpu_us_per_msg"] = 0.0
    group["summary"] = scenarios.summarise_rounds(group["rounds"], [("sipimdn-ua", "floor"), ("floor", None)])
    measured, verdict = report.rounds_target(scenarios.per_member(group)["sipimdn-ua"], 2.0)
    assert verdict == "not measured" and "read zero" in measured
