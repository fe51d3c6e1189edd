"""Machine facts, TLS test files, and the rendering of bench/RESULTS.md and its plots."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import REPO_DIR

# -- machine and versions ---------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def machine_info(argv: list[str], sipp: str | None, kamailio: str | None, *, quick: bool) -> dict[str, Any]:
    """Command line, date, CPU, memory and the versions of everything measured."""
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    versions: dict[str, str] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        from importlib.metadata import version

        versions["sipimdn"] = version("sipimdn")
    except Exception:
        versions["sipimdn"] = "unknown"
    commit = _first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    # Others may be editing the tree while the benchmark runs: say whether the code measured
    # had changes not yet committed.
    dirty = subprocess.run(
        ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "sipimdn"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout.strip()
    changed = len(dirty.splitlines()) if dirty else 0
    note = f", {changed} files under sipimdn/ modified" if changed else ""
    versions["sipimdn"] += f" (git {commit}{note})"
    import lxml.etree

    versions["lxml"] = ".".join(map(str, lxml.etree.LXML_VERSION))
    versions["libxml2"] = ".".join(map(str, lxml.etree.LIBXML_VERSION))
    for name in ("uvloop", "matplotlib"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            versions[name] = "not installed"
    sipp_version = "not installed"
    if sipp:
        raw = _first_line([sipp, "-v"])
        match = re.search(
            r"v\d[\w.\-]*", subprocess.run([sipp, "-v"], capture_output=True, text=True, check=False).stdout
        )
        sipp_version = match.group(0) if match else raw
    versions["sipp"] = sipp_version
    versions["kamailio"] = (
        _first_line([kamailio, "-v"]).replace("version: ", "") if kamailio else "not installed"
    )
    return {
        "command": "python bench/run.py " + " ".join(shlex.quote(a) for a in argv),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_total / 2**30, 1),
        "loadavg_start": os.getloadavg(),
        "versions": versions,
    }


def make_tls_files(directory: Path) -> tuple[str, str]:
    """A self-signed certificate and key for 127.0.0.1 (trustme, else the openssl command)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import trustme

        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return str(cert), str(key)


# -- partial runs ----------------------------------------------------------------------------------

#: Per-part entries of results.json beside the part's own figures.
_PER_PART = ("errors", "skipped", "durations")


def _origin(meta: dict[str, Any]) -> dict[str, Any]:
    """Which run measured a part: its command, date, code and whether it was a quick run."""
    return {
        "command": meta.get("command", "?"),
        "date": meta.get("date", "?"),
        "sipimdn": meta.get("versions", {}).get("sipimdn", "?"),
        "quick": bool(meta.get("quick")),
    }


def merge(previous: dict[str, Any], current: dict[str, Any], *, ran: list[str]) -> dict[str, Any]:
    """``current`` (a run of the parts ``ran``) over ``previous`` (an earlier results.json).

    A part this run did not attempt keeps its figures, error, skip reason and duration from
    ``previous``, and ``carried[part]`` records the run that measured it (kept across further
    partial runs). A part this run attempted takes only this run's entries, so an error or skip
    left from an earlier run does not linger. ``meta`` and ``plan`` are this run's.
    """
    merged = {key: value for key, value in current.items() if key not in _PER_PART}
    for key in _PER_PART:
        merged[key] = dict(current.get(key, {}))
    carried: dict[str, Any] = {}
    known = {key for key in previous if key not in (*_PER_PART, "meta", "plan", "carried")}
    for key in _PER_PART:
        known |= set(previous.get(key, {}))
    for part in sorted(known):
        if part in ran:
            continue
        if part in previous:
            merged[part] = previous[part]
        for key in _PER_PART:
            if part in previous.get(key, {}):
                merged[key][part] = previous[key][part]
        carried[part] = previous.get("carried", {}).get(part) or _origin(previous.get("meta", {}))
    merged["carried"] = carried
    return merged


# -- figures ---------------------------------------------------------------------------------------


def best_sustained(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step with the highest offered rate that was sustained, or None."""
    good = [s for s in steps if s.get("sustained")]
    return max(good, key=lambda s: s["offered"]) if good else None


def step_at(steps: list[dict[str, Any]], rate: int) -> dict[str, Any] | None:
    for s in steps:
        if s["offered"] == rate:
            return s
    return None


def common_rate(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int | None:
    """Highest offered rate at which both sweeps were sustained."""
    ok_a = {s["offered"] for s in a if s.get("sustained")}
    ok_b = {s["offered"] for s in b if s.get("sustained")}
    both = ok_a & ok_b
    return max(both) if both else None


def cpu_ratio(
    receive: dict[str, Any], name: str, reference: str, transport: str = "udp"
) -> dict[str, Any] | None:
    """CPU per message of ``name`` over ``reference`` at the highest rate both sustained."""
    if name not in receive or reference not in receive:
        return None
    a, b = receive[name].get(transport, []), receive[reference].get(transport, [])
    rate = common_rate(a, b)
    if rate is None:
        return None
    sa, sb = step_at(a, rate), step_at(b, rate)
    assert sa is not None and sb is not None
    return {
        "rate": rate,
        "value": sa["cpu_us_per_msg"],
        "reference": sb["cpu_us_per_msg"],
        "ratio": sa["cpu_us_per_msg"] / sb["cpu_us_per_msg"] if sb["cpu_us_per_msg"] else math.nan,
    }


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _verdict(value: float | None, bound: float, higher_is_better: bool = False) -> str:
    if value is None or math.isnan(value):
        return "not measured"
    ok = value >= bound if higher_is_better else value <= bound
    if ok:
        return "met"
    factor = bound / value if higher_is_better else value / bound
    return f"missed ({factor:.1f}x off)"


def round_record(entry: dict[str, Any] | None, rate: int | None = None) -> dict[str, Any] | None:
    """A responder entry's record of the ratio rounds at ``rate`` (the highest rate measured
    when None), or None: see scenarios.ratio_rounds and scenarios.per_member."""
    records: dict[str, Any] = (entry or {}).get("ratio_rounds") or {}
    if not records:
        return None
    if rate is None:
        return records[max(records, key=int)]
    return records.get(str(rate))


def rounds_target(record: dict[str, Any], bound: float) -> tuple[str, str]:
    """(measured, verdict) of a target row from the ratio rounds: the median of the per-round
    ratios against ``bound``; the range, the medians of CPU per message, and the rounds in
    which either side did not carry the load (or calls failed) beside it."""
    s = record["summary"]
    ref = record.get("reference_summary") or {}
    ratio = s["ratio"]
    if math.isnan(ratio["median"]):
        # CPU time comes in 10 ms ticks: a tiny step of the floor may read zero.
        return f"no per-round ratio at {record['rate']:,}/s (the reference's CPU read zero)", "not measured"
    measured = (
        f"{ratio['median']:.2f}x, median of {s['rounds']} per-round ratios "
        f"(range {ratio['min']:.2f}-{ratio['max']:.2f}x); CPU/msg medians "
        f"{s['cpu']['median']:.0f} vs {ref.get('cpu', {}).get('median', math.nan):.0f} us "
        f"at {record['rate']:,}/s"
    )
    short = s["rounds"] - s["sustained_rounds"]
    ref_short = ref.get("rounds", 0) - ref.get("sustained_rounds", 0)
    if short or ref_short:
        measured += f"; not sustained in {short} of its rounds, {ref_short} of the {record['reference']}'s"
    if s["failed"]:
        measured += f"; {s['failed']:,} failed calls"
    verdict = _verdict(ratio["median"], bound)
    if verdict == "met" and (short or ref_short or s["failed"]):
        verdict = "ratio met, load not carried in every round"
    return measured, verdict


def _single_step(ratio: dict[str, Any]) -> str:
    return (
        f"one step each, not repeated: {ratio['ratio']:.1f}x ({ratio['value']:.0f} vs "
        f"{ratio['reference']:.0f} us at {ratio['rate']:,}/s)"
    )


#: Where no ratio rounds ran (``--rounds 0``, or results from before they existed): the sweep's
#: single steps are shown, but a ratio that moves 20-30 % from one run to the next gets no verdict.
_NO_ROUNDS = "not measured (no repeated rounds: --rounds)"


def targets(results: dict[str, Any]) -> list[list[str]]:
    """The performance targets: measured value, the bound, and met / missed by how much.

    The CPU ratios against the floor come from the alternating ratio rounds (the median of the
    per-round ratios); without them the sweep's single steps are shown with no verdict.
    """
    rows: list[list[str]] = []
    receive = results.get("receive", {})
    pd = results.get("positive-delivery", {})
    plain = [
        ("sipimdn-ua", "floor", 2.0,
         "the UA embedded (do-nothing handler): MESSAGE(CPIM) -> 200 over UDP, vs the floor"),
        ("sipimdn-ua+uvloop", "floor+uvloop", 1.5, "the same under uvloop, vs the uvloop floor"),
    ]  # fmt: skip
    if "sipimdn-listen" in receive:
        plain.append(
            ("sipimdn-listen", "floor", 2.0,
             "`sipimdn listen` (the CLI as users run it): MESSAGE(CPIM) -> 200 over UDP, vs the floor")
        )  # fmt: skip
    for name, ref, bound, label in plain:
        record = round_record(receive.get(name))
        if record is not None and record["reference"] == ref:
            rows.append([label, f"<= {bound}x", *rounds_target(record, bound)])
            continue
        if name not in receive or ref not in receive:
            rows.append([label, f"<= {bound}x", "not run in this run", "not measured"])
            continue
        ratio = cpu_ratio(receive, name, ref)
        measured = "no common sustained rate" if ratio is None else _single_step(ratio)
        rows.append([label, f"<= {bound}x", measured, _NO_ROUNDS])
    # Positive delivery: CPU per message (200 + IMDN sent and acknowledged) vs the floor's plain 200.
    floor_steps = receive.get("floor", {}).get("udp", [])
    for name, what in (("sipimdn-ua", "the UA"), ("sipimdn-listen", "`sipimdn listen`")):
        if name not in pd:
            continue
        label = f"positive-delivery requested (200 + delivered IMDN acknowledged), {what}, CPU/msg vs floor"
        records = pd[name].get("ratio_rounds") or {}
        for rate in sorted(records, key=int):
            rows.append([f"{label}, {int(rate):,}/s", "<= 3.5x", *rounds_target(records[rate], 3.5)])
        if records:
            continue
        pd_steps = pd[name].get("udp", [])
        rate = common_rate(pd_steps, floor_steps)
        if rate is None:
            rows.append([label, "<= 3.5x", "no common sustained rate", _NO_ROUNDS])
            continue
        a, b = step_at(pd_steps, rate), step_at(floor_steps, rate)
        assert a is not None and b is not None
        ratio = {
            "rate": rate,
            "value": a["cpu_us_per_msg"],
            "reference": b["cpu_us_per_msg"],
            "ratio": a["cpu_us_per_msg"] / b["cpu_us_per_msg"] if b["cpu_us_per_msg"] else math.nan,
        }
        rows.append([label, "<= 3.5x", _single_step(ratio), _NO_ROUNDS])
    sustain = results.get("sustain")
    if sustain:
        sipp = sustain["sipp"]
        lat = sustain.get("latency", {})
        ok = sipp["failed"] == 0 and sipp["successful"] == sipp["calls"] and lat.get("p99_us", 1e9) < 20_000
        ok = ok and sustain["rate"] >= 10_000 and sustain["seconds"] >= 60
        measured = (
            f"{sustain['rate']:,}/s for {sustain['seconds']:g} s: "
            f"achieved {sipp['achieved']:,.0f}/s (SIPp part), "
            f"{sipp['failed']:,} failed calls, {sipp['retransmissions']:,} retransmissions, "
            f"p99 {lat.get('p99_us', math.nan) / 1000:.1f} ms"
        )
        if sustain["rate"] < 10_000 or sustain["seconds"] < 60:
            status = "not measured at full size (quick run)"
        else:
            status = "met" if ok else "missed"
        rows.append(["10,000 msg/s UDP for 60 s, 0 failed, p99 < 20 ms", "as stated", measured, status])
    tls = results.get("tls", {})
    if "kamailio" in tls and "sipimdn-ua" in tls:
        pairs = [
            (k, s)
            for k, s in zip(tls["kamailio"], tls["sipimdn-ua"], strict=False)
            if "achieved" in k and "achieved" in s
        ]
        if pairs:
            kam, sip = pairs[-1]
            share = sip["achieved"] / kam["achieved"] if kam["achieved"] else math.nan
            unanswered = sip.get("unanswered", 0)
            rows.append(
                [
                    "TLS over one connection, rate vs Kamailio at the same offered load",
                    ">= 70 %",
                    f"{share * 100:.0f} % at {kam['offered']:,.0f}/s offered "
                    f"({sip['achieved']:,.0f} vs {kam['achieved']:,.0f}/s; "
                    f"sipimdn left {unanswered:,} unanswered)",
                    _verdict(share, 0.7, higher_is_better=True),
                ]
            )
    soak = results.get("soak")
    if soak:
        rows.append(soak_target(soak))
    micro = results.get("micro", {})
    tracker = micro.get("tracker", {})
    if "sent_bytes_per_message" in tracker:
        worst = max(tracker["sent_bytes_per_message"], tracker["received_bytes_per_message"])
        rows.append(
            [
                "RAM per tracked message (100k awaiting notifications)",
                "<= 1 KiB",
                f"sent {tracker['sent_bytes_per_message']:,.0f} B, "
                f"received {tracker['received_bytes_per_message']:,.0f} B "
                f"({tracker['count']:,} each)",
                _verdict(worst, 1024),
            ]
        )
    store = micro.get("store", {})
    if "rss_growth" in store:
        growth = store["rss_growth"] / 2**20  # over the insert phase (samples every tenth)
        after_updates = (store.get("rss_after_updates", store["rss_start"]) - store["rss_start"]) / 2**20
        rows.append(
            [
                "SQLite store at 1M entries keeps RSS flat",
                "flat",
                f"{store['count']:,} entries: RSS grew {growth:.1f} MiB "
                f"(start {store['rss_start'] / 2**20:.0f} MiB) while inserting; "
                f"{after_updates:+.1f} MiB after 100k random state upserts",
                "met" if growth < 16 else f"missed (grew {growth:.0f} MiB)",
            ]
        )
    return rows


#: The soak target: the delivered IMDN leaves within this many ms of the 200, at p99.9, for
#: ``SOAK_SECONDS`` at ``SOAK_RATE`` messages/s.
SOAK_BOUND_MS = 100.0
SOAK_RATE = 1000
SOAK_SECONDS = 600.0


def soak_misses(soak: dict[str, Any]) -> int:
    """Messages answered 200 whose delivered IMDN did not come within the bound: later, never,
    or with another status."""
    return int(soak.get("imdn_late", 0) + soak.get("imdn_never", 0) + soak.get("imdn_not_delivered", 0))


def soak_target(soak: dict[str, Any]) -> list[str]:
    """The target row: p99.9 over every message answered 200, a missing or non-delivered IMDN
    counting as later than any bound (nearest rank: met when at most 0.1 % of them missed)."""
    label = (
        f"delivered IMDN within {SOAK_BOUND_MS:g} ms of the 200 at p99.9, "
        f"`sipimdn listen`, {SOAK_SECONDS / 60:g}-minute soak at {SOAK_RATE:,}/s"
    )
    bound = f"p99.9 <= {SOAK_BOUND_MS:g} ms"
    if "error" in soak:
        return [label, bound, "error (see Errors / the soak section)", "not measured"]
    ok = soak["ok"]
    misses = soak_misses(soak)
    allowed = ok - math.ceil(0.999 * ok - 1e-9)
    measured = (
        f"p99.9 {soak['imdn_after_200_p999_ms']:,.1f} ms, max {soak['imdn_after_200_max_ms']:,.1f} ms "
        f"over {soak['imdns']:,} IMDNs at {soak['offered']:,.0f}/s for {soak['seconds']:g} s; "
        f"{misses:,} of {ok:,} late, missing or not delivered ({allowed:,} allowed); "
        f"{soak['unanswered']:,} MESSAGEs unanswered"
    )
    lost = soak["sent"] - ok
    if not ok:
        verdict = "not measured (no 200)"
    elif misses > allowed:
        verdict = f"missed ({misses:,} misses)"
    elif lost:
        # The IMDNs that came were in time, but a run that lost MESSAGEs did not carry the load.
        verdict = f"inconclusive ({lost:,} of {soak['sent']:,} MESSAGEs got no 200)"
    elif soak["offered"] < SOAK_RATE or soak["seconds"] < SOAK_SECONDS:
        verdict = "met at this size, not measured at full size (shorter or slower run)"
    else:
        verdict = "met"
    return [label, bound, measured, verdict]


def render(results: dict[str, Any], plots: list[str]) -> str:
    """The whole RESULTS.md."""
    meta = results["meta"]
    v = meta["versions"]
    out: list[str] = ["# sipimdn benchmark results", ""]
    carried = results.get("carried") or {}
    out += [
        "Generated by the entry command below; every figure comes from this one run"
        + (" except the parts listed under the table, kept from the runs named there." if carried else ".")
        + " Absolute numbers",
        "depend on the machine and on whatever else ran on it; read them as ratios against the",
        "references measured in the same run (the raw asyncio floor, Kamailio, each under uvloop too).",
        "",
    ]
    out += _table(
        ["", ""],
        [
            ["command", f"`{meta['command']}`"],
            ["date", meta["date"]],
            ["machine", f"{meta['nproc']} CPUs ({meta['cpu_model']}), {meta['memory_gib']} GiB RAM"],
            ["pinning", meta.get("pinning", "-")],
            [
                "load average",
                f"start {', '.join(f'{x:.2f}' for x in meta['loadavg_start'])}; "
                f"end {', '.join(f'{x:.2f}' for x in meta.get('loadavg_end', (0, 0, 0)))}",
            ],
            ["duration", f"{meta.get('total_seconds', '-')} s"],
            ["Python", v["python"]],
            ["sipimdn", v["sipimdn"]],
            ["SIPp", v["sipp"]],
            ["Kamailio", v["kamailio"]],
            ["lxml / libxml2", f"{v['lxml']} / {v['libxml2']}"],
            ["uvloop", v["uvloop"]],
            ["matplotlib", v["matplotlib"]],
        ],
    )
    if carried:
        # Parts kept from earlier runs (this one ran only some parts): say where each came from.
        by_run: dict[str, list[str]] = {}
        for part, origin in carried.items():
            quick = ", quick" if origin.get("quick") else ""
            key = f"`{origin['command']}` ({origin['date']}, sipimdn {origin['sipimdn']}{quick})"
            by_run.setdefault(key, []).append(part)
        out += ["The command above ran only some parts; the others are kept from earlier runs:", ""]
        out += [f"- {', '.join(parts)}: {run}" for run, parts in by_run.items()] + [""]
    if meta.get("quick"):
        whose = "the parts this command ran are" if carried else "this run is"
        out += [
            f"**Quick mode**: {whose} a tiny load to prove the benchmarks run; their figures are not"
            " meaningful.",
            "",
        ]
    out += ["## Targets (ratios, same run)", ""]
    out += _table(["target", "bound", "measured", "verdict"], targets(results))
    out += _receive_section(results)
    out += _pd_section(results)
    out += _tls_section(results)
    out += _sustain_section(results)
    out += _send_section(results)
    out += _micro_section(results)
    out += _profile_section(results)
    out += _soak_section(results)
    out += _fuzz_section(FUZZ_RESULTS)
    if plots:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    else:
        out += ["## Plots", "", "Not drawn: matplotlib is not installed (`pip install -e .[bench]`).", ""]
    if results.get("skipped"):
        out += ["## Not run", ""]
        out += [f"- {name}: {why}" for name, why in results["skipped"].items()] + [""]
    if results.get("errors"):
        out += ["## Errors", ""]
        for name, text in results["errors"].items():
            out += [f"### {name}", "", "```", text.strip(), "```", ""]
    durations = results.get("durations", {})
    if durations:
        out += ["Time per part: " + ", ".join(f"{k} {v:g} s" for k, v in durations.items()) + ".", ""]
    return "\n".join(out)


# Written by bench/fuzz/run.py, a run of hours that bench/run.py does not repeat: the report
# carries its recorded counts (with their own date) so every benchmark figure is in one place.
FUZZ_RESULTS = Path(__file__).resolve().parent.parent / "fuzz" / "results.json"


def _fuzz_section(path: Path) -> list[str]:
    out = ["## Fuzzing (recorded by `python bench/fuzz/run.py`, not re-run by this command)", ""]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [*out, f"No recorded fuzz run ({path.name}: {exc}).", ""]
    out += [
        f"Recorded {data.get('date', '?')} (Python {data.get('python', '?')}, atheris "
        f"{data.get('atheris', '-')}). Invariant per input: the parser returns or raises its own "
        "error type; anything else, or an input over the time bound, is a finding.",
        "",
    ]
    rows = []
    for r in data.get("results", []):
        findings = r.get("findings") or {}
        rows.append(
            [
                r.get("target", "?"),
                r.get("engine", "?"),
                f"{r.get('runs', 0):,}",
                "-" if r.get("accepted") is None else f"{r['accepted']:,}",
                "-" if r.get("refused") is None else f"{r['refused']:,}",
                "none" if not findings else "; ".join(f"{k}: {v}" for k, v in findings.items()),
                _f(r.get("wall_seconds"), 1),
            ]
        )
    out += _table(["parser", "engine", "inputs", "parsed", "refused", "findings", "wall s"], rows)
    return out


def _receive_section(results: dict[str, Any]) -> list[str]:
    receive = results.get("receive")
    if not receive:
        return []
    out = [
        "## Receive path: SIPp -> responder -> 200",
        "",
        "SIPp (`bench/sipp_scenarios/uac_cpim.xml`: MESSAGE with a CPIM body, no notification requested)",
        "offers stepped rates, each a bounded run, until a step fails (a failed call, retransmissions",
        "above 1 % of calls, or under 90 % of the offered rate achieved). UDP is one socket, TCP one",
        "connection. CPU is the responder's process group, from /proc, per successful MESSAGE.",
        "`sipimdn-stack` is a bare SipStack answering 200; `sipimdn-ua` is the UserAgent with a",
        "do-nothing handler (CPIM decoded, dedup and tracking, 200).",
        "",
    ]
    rows = []
    for name, entry in receive.items():
        for transport in ("udp", "tcp"):
            steps = entry.get(transport, [])
            best = best_sustained(steps)
            ratio = cpu_ratio(
                receive, name, "floor" if entry["loop"] != "uvloop" else "floor+uvloop", transport
            )
            rows.append(
                [
                    name,
                    transport.upper(),
                    _f(best["offered"]) if best else "none",
                    _f(best["cpu_us_per_msg"], 1) if best else "-",
                    f"{ratio['ratio']:.2f}x at {ratio['rate']:,}/s"
                    if ratio and name not in ("floor", "floor+uvloop")
                    else "-",
                    _f(steps[-1]["offered"]) if steps and not steps[-1]["sustained"] else "not reached",
                ]
            )
    out += ["### Summary", ""]
    out += _table(
        [
            "responder",
            "transport",
            "highest sustained offered rate /s",
            "CPU us/msg there",
            "CPU/msg vs floor (same loop, same rate, one step each)",
            "first failing step /s",
        ],
        rows,
    )
    out += [
        "### Every step",
        "",
        "Each row is one bounded SIPp run, a single sample: a ratio between two rows moves by 20-30 %",
        "from one run to the next. The target ratios are measured in repeated rounds (below).",
        "",
    ]
    rows = []
    for name, entry in receive.items():
        for transport in ("udp", "tcp"):
            for s in entry.get(transport, []):
                rows.append(
                    [
                        name,
                        transport.upper(),
                        _f(s["offered"]),
                        _f(s["achieved"]),
                        _f(s["successful"]),
                        _f(s["failed"]),
                        _f(s["retransmissions"]),
                        _f(s["cpu_us_per_msg"], 1),
                        "yes" if s["sustained"] else "**no**",
                    ]
                )
    out += _table(
        [
            "responder",
            "transport",
            "offered /s",
            "achieved /s",
            "ok calls",
            "failed",
            "retrans",
            "CPU us/msg",
            "sustained",
        ],
        rows,
    )
    out += ["### Latency from our own client (UDP, fixed rate, from scheduled send to 200)", ""]
    rows = []
    for name, entry in receive.items():
        for lat in entry.get("latency", []):
            if "error" in lat:
                rows.append([name, _f(lat.get("offered")), "error", "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    _f(lat["offered"], 0),
                    _f(lat["achieved"]),
                    _f(lat["unanswered"]),
                    _f(lat["p50_us"]),
                    _f(lat["p90_us"]),
                    _f(lat["p99_us"]),
                    _f(lat["cpu_us_per_msg"], 1),
                ]
            )
    out += _table(
        ["responder", "offered /s", "answered /s", "unanswered", "p50 us", "p90 us", "p99 us", "CPU us/msg"],
        rows,
    )
    return out + _rounds_section(receive, "plain receive")


def _pd_section(results: dict[str, Any]) -> list[str]:
    pd = results.get("positive-delivery")
    if not pd:
        return []
    out = [
        "## Receive path with positive-delivery requested",
        "",
        "SIPp sends `bench/sipp_scenarios/uac_cpim_pd.xml` (CPIM MESSAGE requesting positive-delivery, each",
        "call from its own sender, see the scenario); the UA answers 200 and sends the delivered IMDN, which",
        "reaches SIPp's out-of-call scenario (`ooc_imdn_ack.xml`) and is answered 200. CPU per message",
        "covers the whole exchange (the 200 and the IMDN transaction). `IMDN 2xx` counts IMDNs the UA saw",
        "acknowledged during that responder's whole sweep.",
        "",
    ]
    rows = []
    for name, entry in pd.items():
        for transport in ("udp", "tcp"):
            server = entry.get(f"{transport}_server", {})
            for s in entry.get(transport, []):
                rows.append(
                    [
                        name,
                        transport.upper(),
                        _f(s["offered"]),
                        _f(s["achieved"]),
                        _f(s["failed"]),
                        _f(s["retransmissions"]),
                        "",
                        _f(s["cpu_us_per_msg"], 1),
                        "yes" if s["sustained"] else "**no**",
                    ]
                )
            if server:
                rows.append(
                    [
                        name,
                        transport.upper(),
                        "whole sweep",
                        "",
                        "",
                        "",
                        f"IMDN sent {server.get('imdn_sent', 0):,}, 2xx {server.get('imdn_2xx', 0):,}",
                        "",
                        "",
                    ]
                )
    out += _table(
        [
            "responder",
            "transport",
            "offered /s",
            "achieved /s",
            "failed",
            "retrans",
            "IMDNs the UA sent / saw answered 2xx",
            "CPU us/msg",
            "sustained",
        ],
        rows,
    )
    return out + _rounds_section(pd, "positive delivery")


def _range(spread: dict[str, float], digits: int = 0, unit: str = "") -> str:
    if math.isnan(spread.get("median", math.nan)):
        return "-"
    return (
        f"{spread['median']:,.{digits}f}{unit} "
        f"({spread['min']:,.{digits}f} - {spread['max']:,.{digits}f}{unit})"
    )


def _rounds_section(part: dict[str, Any], what: str) -> list[str]:
    """The ratio rounds of one part: medians and ranges per compared responder, then every round."""
    records = [
        (name, rec)
        for name, entry in part.items()
        for rec in (entry.get("ratio_rounds") or {}).values()
        if rec.get("reference") is not None
    ]
    if not records:
        return []
    records.sort(key=lambda item: (item[1]["rate"], item[0]))
    first = records[0][1]
    rates = sorted({rec["rate"] for _, rec in records})
    out = [
        f"### Target ratios, {what}: {first['summary']['rounds']} alternating rounds at "
        f"{', '.join(f'{r:,}' for r in rates)}/s ({first['transport'].upper()})",
        "",
        "What the target rows read. At each rate the responders run side by side (fresh processes,",
        "all on the responder CPU), and each round gives every one of them one "
        f"{first['seconds']:g} s SIPp step,",
        "the floor between the two responders compared to it (one measured right before it, one",
        "right after), every other round in reverse order, every responder idle before each step.",
        "The ratio is taken *within* each round, floor and responder measured seconds apart, and",
        "the target is judged on the median of those per-round ratios; the range is what a single",
        "round could have said. Ranges of CPU per message are over the rounds too.",
        "",
    ]
    if what == "positive delivery":
        out[-1:-1] = [
            "The floor answers the plain scenario (`uac_cpim.xml`) in the same rounds; the sipimdn",
            "responders get `uac_cpim_pd.xml` and the IMDN is answered by `ooc_imdn_ack.xml`.",
        ]
    rows = []
    for name, rec in records:
        s, ref = rec["summary"], rec.get("reference_summary") or {}
        rows.append(
            [
                name,
                f"{rec['rate']:,}",
                rec["reference"],
                s["rounds"],
                _range(s["cpu"]),
                _range(ref.get("cpu", {})),
                _range(s["ratio"], 2, "x"),
                f"{s['ratio_of_medians']:.2f}x",
                f"{s['sustained_rounds']} / {ref.get('sustained_rounds', '-')}",
                _f(s["failed"]),
            ]
        )
    out += _table(
        [
            "responder",
            "offered /s",
            "vs",
            "rounds",
            "CPU us/msg median (range)",
            "reference CPU us/msg median (range)",
            "per-round ratio median (range)",
            "ratio of medians",
            "rounds sustained (own / reference)",
            "failed calls",
        ],
        rows,
    )
    rows = []
    for name, rec in records:
        for r in rec["rounds"]:
            step, ref_step = r.get("step") or {}, r.get("reference_step") or {}
            value, base = step.get("cpu_us_per_msg", math.nan), ref_step.get("cpu_us_per_msg", math.nan)
            rows.append(
                [
                    name,
                    f"{rec['rate']:,}",
                    r["round"],
                    " -> ".join(r["order"]),
                    _f(value, 1),
                    _f(base, 1),
                    f"{value / base:.2f}x" if base and not math.isnan(base) else "-",
                    _f(step.get("achieved")),
                    _f(step.get("failed")),
                    "yes" if step.get("sustained") and ref_step.get("sustained") else "**no**",
                ]
            )
    out += ["Every round:", ""]
    out += _table(
        [
            "responder",
            "offered /s",
            "round",
            "order in the round",
            "CPU us/msg",
            "reference CPU us/msg",
            "ratio",
            "achieved /s",
            "failed",
            "both sustained",
        ],
        rows,
    )
    return out


def _tls_section(results: dict[str, Any]) -> list[str]:
    tls = results.get("tls")
    if not tls:
        return []
    out = [
        "## TLS over one connection: sipimdn (UA, and the bare stack) vs Kamailio",
        "",
        "SIPp here has no TLS, so our own client offers the load over one TLS connection (TLS 1.2+, a",
        "trustme certificate for 127.0.0.1). The client is one Python thread: its own ceiling caps the",
        "highest steps for both responders.",
        "",
    ]
    rows = []
    for name, steps in tls.items():
        for lat in steps:
            if "error" in lat:
                rows.append(
                    [
                        name,
                        _f(lat.get("offered")),
                        "error: " + lat["error"][-120:].replace("\n", " "),
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            rows.append(
                [
                    name,
                    _f(lat["offered"], 0),
                    _f(lat["achieved"]),
                    _f(lat["unanswered"]),
                    _f(lat["p50_us"]),
                    _f(lat["p99_us"]),
                    _f(lat["cpu_us_per_msg"], 1),
                ]
            )
    out += _table(
        ["responder", "offered /s", "answered /s", "unanswered", "p50 us", "p99 us", "CPU us/msg"], rows
    )
    return out


def _sustain_section(results: dict[str, Any]) -> list[str]:
    s = results.get("sustain")
    if not s:
        return []
    sipp, lat = s["sipp"], s.get("latency", {})
    out = [
        f"## Sustained: {s['rate']:,} msg/s over UDP for {s['seconds']:g} s (sipimdn UA)",
        "",
        "SIPp offers 90 % of the rate and our latency client the other 10 % at the same time, so the",
        "failure counts come from SIPp and the latency percentiles from our client.",
        "",
    ]
    out += _table(
        [
            "SIPp offered /s",
            "achieved /s",
            "ok calls",
            "failed",
            "retrans",
            "CPU us/msg",
            "client p50 us",
            "client p99 us",
            "client unanswered",
        ],
        [
            [
                _f(sipp["offered"]),
                _f(sipp["achieved"]),
                _f(sipp["successful"]),
                _f(sipp["failed"]),
                _f(sipp["retransmissions"]),
                _f(sipp["cpu_us_per_msg"], 1),
                _f(lat.get("p50_us")),
                _f(lat.get("p99_us")),
                _f(lat.get("unanswered")),
            ]
        ],
    )
    return out


def _send_section(results: dict[str, Any]) -> list[str]:
    send = results.get("send")
    if not send:
        return []
    out = [
        "## Send path: a sipimdn UA sends N messages to a SIPp UAS",
        "",
        "`bench/load/sender.py`: `UserAgent.send_message` for every message (CPIM, no notification",
        "requested), at most 256 in flight. RFC 3428 §8 allows one outstanding MESSAGE per destination",
        "URI, which the UA enforces: with 1 destination the messages go one after another; with 64",
        "(`sip:bob-0..63@` the same UAS) up to 64 are in flight. The sender process is the one measured",
        "(pinned to the responder CPU); latency is from `send_message` to the final response, queueing",
        "behind the window included.",
        "",
    ]
    rows = []
    for r in send:
        if "error" in r:
            rows.append(
                [
                    r.get("transport", "?"),
                    r.get("destinations", "?"),
                    "error",
                    r["error"][-200:],
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r["transport"].upper() + (" (uvloop)" if r.get("loop") == "uvloop" else ""),
                r["destinations"],
                f"{r['ok']:,}/{r['count']:,}",
                _f(r["achieved"]),
                _f(r["cpu_us_per_msg"], 1),
                _f(r["p50_us"]),
                _f(r["p99_us"]),
                f"{r['uas'].get('successful', 0):,} ok, {r['uas'].get('failed', 0):,} failed",
            ]
        )
    out += _table(
        [
            "transport",
            "destinations",
            "answered 200",
            "messages /s",
            "CPU us/msg",
            "p50 us",
            "p99 us",
            "SIPp UAS",
        ],
        rows,
    )
    return out


def _micro_section(results: dict[str, Any]) -> list[str]:
    micro = results.get("micro")
    if not micro:
        return []
    out = ["## Micro benchmarks", ""]
    for key, title in (
        ("parse", "SIP parser (bench/bench_parse.py)"),
        ("codecs", "CPIM/IMDN codecs (bench/bench_codecs.py)"),
    ):
        data = micro.get(key, {})
        out += [f"### {title}", ""]
        if "error" in data:
            out += [f"Not measured: {data['error'].strip()[-300:]}", ""]
            continue
        out += _parse_table(data) if key == "parse" and "median_msg_per_s" in data else _flatten_table(data)
    tracker = micro.get("tracker", {})
    out += ["### Memory per tracked message (DispositionTracker, RSS)", ""]
    if "error" in tracker:
        out += [f"Not measured: {tracker['error'][-300:]}", ""]
    elif tracker:
        out += _table(
            [
                "messages",
                "sent, answered 200, awaiting delivery + display",
                "received, 200 + delivered IMDN acknowledged, display still owed",
            ],
            [
                [
                    _f(tracker["count"]),
                    f"{tracker['sent_bytes_per_message']:,.0f} B",
                    f"{tracker['received_bytes_per_message']:,.0f} B",
                ]
            ],
        )
    store = micro.get("store", {})
    out += ["### SQLite store (SqliteStore, WAL, batches of 1,000 operations)", ""]
    if "error" in store:
        out += [f"Not measured: {store['error'][-300:]}", ""]
    elif store:
        samples = ", ".join(f"{s / 2**20:.0f}" for s in store["rss_samples"])
        if "rss_after_updates" in store:
            samples += f"; after upserts {store['rss_after_updates'] / 2**20:.0f}"
        out += _table(
            [
                "entries",
                "size on disk",
                "bytes/entry",
                "inserts /s",
                "state upserts /s",
                "keyed lookups /s",
                "RSS start -> samples (MiB)",
            ],
            [
                [
                    _f(store["count"]),
                    f"{store['size_bytes'] / 2**20:,.0f} MiB",
                    _f(store["bytes_per_entry"]),
                    _f(store["insert_per_s"]),
                    _f(store["update_per_s"]),
                    _f(store["lookup_per_s"]),
                    f"{store['rss_start'] / 2**20:.0f} -> {samples}",
                ]
            ],
        )
        out += [
            "Lookups are `SELECT ... WHERE key = ?` on the store's own table through a second",
            "read-only connection: the Store protocol has no single-key read (the tracker keeps the",
            "live state in memory and reads the store only at start).",
            "",
        ]
    return out


def _parse_table(data: dict[str, Any]) -> list[str]:
    """bench_parse.py's JSON: rates per case (median, best, round range), then its ratios."""
    rounds = data.get("rounds_msg_per_s", {})
    rows = []
    for case, median in data["median_msg_per_s"].items():
        spread = rounds.get(case) or []
        rows.append(
            [
                case,
                _f(median),
                _f(data.get("msg_per_s", {}).get(case)),
                f"{_f(min(spread))} - {_f(max(spread))}" if spread else "-",
                len(spread) or "-",
            ]
        )
    out = _table(["case", "median msg/s", "best round msg/s", "rounds lowest - highest", "rounds"], rows)
    ratios = [
        [name, f"{r['median']:.2f}x", f"{r['min']:.2f}x - {r['max']:.2f}x", f"{r['of_medians']:.2f}x"]
        for name, r in data.get("ratios", {}).items()
    ]
    if ratios:
        header = ["ratio (same rounds)", "median of per-round ratios", "range", "ratio of medians"]
        out += _table(header, ratios)
    for case, error in data.get("errors", {}).items():
        out += [f"- {case}: refused the typical MESSAGE ({error.replace('|', '/')[:160]})"]
    return [*out, ""] if data.get("errors") else out


def _flatten_table(data: dict[str, Any]) -> list[str]:
    """Render a bench helper's JSON: ``{case: {figure: value}}``, optionally under ``results``."""
    cases = data["results"] if isinstance(data.get("results"), dict) else data
    items = [(str(k), v) for k, v in cases.items() if isinstance(v, dict) and k != "meta"]
    header: list[str] = []
    for _name, figures in items:
        for key, value in figures.items():
            if isinstance(value, (int, float, str)) and key not in header:
                header.append(key)
    rows = []
    for name, figures in items:
        cells = []
        for key in header:
            value = figures.get(key)
            if isinstance(value, str):
                value = value.replace("|", "/").replace("\n", " ")[:160]
            cells.append(_f(value, 1 if isinstance(value, float) and value < 1000 else 0))
        rows.append([name, *cells])
    out = _table(["case", *header], rows) if rows else []
    meta = data.get("meta")
    if isinstance(meta, dict):
        out += ["Environment: " + ", ".join(f"{k} {v}" for k, v in meta.items()), ""]
    return out


def _profile_section(results: dict[str, Any]) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    out = ["## Profile of the receive path (cProfile, main thread of the UA process)", ""]
    for key, title in (
        ("receive", "MESSAGE(CPIM) -> 200"),
        ("positive-delivery", "MESSAGE + delivered IMDN"),
    ):
        p = profile.get(key, {})
        if not p:
            continue  # not part of this run (quick runs profile the plain receive path only)
        if "error" in p:
            out += [f"### {title}", "", f"Not measured: {p.get('error', 'missing') if p else 'missing'}", ""]
            continue
        n = max(1, p["messages"])
        out += [
            f"### {title}: {p['messages']:,} messages at {p['rate']:,}/s",
            "",
            "Own time (tottime) per area, in microseconds per message (profiling overhead included):",
            "",
        ]
        out += _table(
            ["area", "us/msg", "share"],
            [
                [area, f"{t * 1e6 / n:.1f}", f"{t / p['total_tottime'] * 100:.0f} %"]
                for area, t in list(p["areas"].items())[:12]
            ],
        )
        out += ["Top functions by own time:", ""]
        out += _table(
            ["function", "calls", "own us/msg", "cumulative us/msg"],
            [
                [
                    f"`{r['function']}`",
                    _f(r["calls"]),
                    f"{r['tottime'] * 1e6 / n:.1f}",
                    f"{r['cumtime'] * 1e6 / n:.1f}",
                ]
                for r in p["top_tottime"][:15]
            ],
        )
        out += ["sipimdn functions by cumulative time:", ""]
        out += _table(
            ["function", "calls", "cumulative us/msg"],
            [
                [f"`{r['function']}`", _f(r["calls"]), f"{r['cumtime'] * 1e6 / n:.1f}"]
                for r in p["top_cumtime"][:15]
            ],
        )
    return out


def _soak_section(results: dict[str, Any]) -> list[str]:
    s = results.get("soak")
    if not s:
        return []
    out = [
        "## Soak: positive delivery through `sipimdn listen`, when the delivered IMDN leaves",
        "",
        "`bench/load/soak_client.py` offers MESSAGEs at a fixed rate over UDP, each with a CPIM body",
        "asking for positive-delivery (as `uac_cpim_pd.xml`, each from its own sender URI), answers",
        "every IMDN with 200, and matches each IMDN to its message by `<message-id>`. The 200's latency",
        "runs from the request's scheduled send time (no coordinated omission); the IMDN's delay from",
        "the 200's arrival to the IMDN's arrival (kernel receive timestamps when available). A message",
        "whose IMDN did not come within the grace period after the run counts as never notified. CPU",
        "is the server's per 200; RSS is the server's.",
        "",
    ]
    if "error" in s:
        return [*out, f"Not measured: {str(s['error'])[-500:]}", ""]
    out += _table(["", ""], [
        ["offered", f"{s['offered']:,.0f}/s for {s['seconds']:g} s (grace {s.get('grace_s', 0):g} s)"],
        ["sent / 200 / other answers / unanswered",
         f"{s['sent']:,} / {s['ok']:,} / {s['other_answers']:,} / {s['unanswered']:,}"],
        ["200 latency p50 / p99 / p99.9 / max",
         " / ".join(f"{s[f'ok_{k}_us'] / 1000:,.2f}" for k in ("p50", "p99", "p999", "max")) + " ms"],
        ["the client's own lateness sending, p99 / max (part of the 200's latency); its CPU",
         f"{s.get('send_lag_p99_us', math.nan) / 1000:,.2f} / "
         f"{s.get('send_lag_max_us', math.nan) / 1000:,.2f} ms; {_f(s.get('client_cpu_s'), 1)} s"],
        ["IMDN after the 200 p50 / p99 / p99.9 / max",
         " / ".join(f"{s[f'imdn_after_200_{k}_ms']:,.2f}" for k in ("p50", "p99", "p999", "max")) + " ms"],
        ["IMDNs received / not `delivered` / never came / later than the bound",
         f"{s['imdns']:,} / {s['imdn_not_delivered']:,} / {s['imdn_never']:,} / "
         f"{s.get('imdn_late', 0):,}"],
        ["IMDN before its 200 (stamped / read first) / without a 200 / duplicates / about no message",
         f"{s['imdn_before_200']:,} / {s.get('imdn_read_first', '-')} / {s['imdn_without_200']:,} / "
         f"{s['imdn_duplicates']:,} / {s['imdn_other']:,}"],
        ["retransmissions seen: 200s / IMDNs",
         f"{s['answer_retransmissions']:,} / {s['imdn_retransmissions']:,}"],
        ["server CPU per 200", f"{_f(s.get('cpu_us_per_msg'), 1)} us ({_f(s.get('server_cpu_s'), 1)} s)"],
        ["server RSS start / max / end",
         f"{s['rss_start'] / 2**20:,.1f} / {s['rss_max'] / 2**20:,.1f} / {s['rss_end'] / 2**20:,.1f} MiB"],
        ["server's own count (its output)",
         ", ".join(f"{k} {v:,}" for k, v in s.get("server", {}).items()) or "-"],
        ["timestamps", "kernel (SO_TIMESTAMPNS)" if s.get("kernel_timestamps") else "the client's clock"],
    ])  # fmt: skip
    lag_ms = s.get("send_lag_max_us", 0.0) / 1000
    if lag_ms > 10:
        out += [
            f"The client itself fell behind its schedule by up to {lag_ms:,.0f} ms (a busy machine):",
            "that much of the 200's latency is the client's, and the requests it then sent at once",
            "arrived as a burst.",
            "",
        ]
    windows = s.get("windows", [])
    if len(windows) > 1:
        out += [f"Per {s['window_s']:g}-second window of scheduled send times:", ""]
        samples = s.get("rss_samples", [])

        def rss_at(t: float) -> str:
            # The server's RSS at the last sample taken by the window's end (None: no sample).
            taken = [rss for at, rss in samples if at <= t]
            return f"{taken[-1] / 2**20:,.1f}" if taken else "-"

        out += _table(
            ["from s", "200s", "IMDNs", "200 p99 ms", "IMDN after 200 p99.9 ms", "IMDN after 200 max ms",
             "server RSS MiB at its end"],
            [
                [
                    f"{w['from_s']:g}",
                    _f(w["answered"]),
                    _f(w["imdns"]),
                    f"{w['ok_p99_us'] / 1000:,.2f}",
                    f"{w['imdn_after_200_p999_ms']:,.2f}",
                    f"{w['imdn_after_200_max_ms']:,.2f}",
                    rss_at(w["from_s"] + s["window_s"]),
                ]
                for w in windows
            ],
        )  # fmt: skip
    return out


# -- plots -----------------------------------------------------------------------------------------


def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """Achieved rate and CPU per message against offered rate (PNG), if matplotlib imports."""
    receive = results.get("receive")
    if not receive:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for transport in ("udp", "tcp"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, entry in receive.items():
            steps = entry.get(transport, [])
            if not steps:
                continue
            xs = [s["offered"] for s in steps]
            style = "--" if entry["kind"] == "reference" else "-"
            ax1.plot(xs, [s["achieved"] for s in steps], style, marker="o", label=name)
            ax2.plot(xs, [s["cpu_us_per_msg"] for s in steps], style, marker="o", label=name)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel("offered rate (MESSAGE/s)")
            ax.grid(True, which="both", alpha=0.3)
        ax1.set_ylabel("achieved rate (MESSAGE/s)")
        ax1.set_yscale("log")
        ax1.set_title(f"Achieved rate, {transport.upper()}")
        ax2.set_ylabel("responder CPU per message (us)")
        ax2.set_yscale("log")
        ax2.set_title(f"CPU per message, {transport.upper()}")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"receive_{transport}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written
