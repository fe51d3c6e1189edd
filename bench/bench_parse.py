"""How many typical SIP MESSAGEs per second the parsers turn into message objects.

Benchmark only (not a test). In one run, on the same interpreter:

* sipimdn's ``parse_message`` on typical MESSAGEs carrying a ~600-byte
  message/cpim body (built from tests/data/message_cpim.sip), four ways:
  parse only (every line checked, header rows and typed values left to
  first use), parse plus the first header read (the rows built, what aiosip
  builds), parse plus the fields a transaction layer and a user agent read
  for every MESSAGE, and parse plus ``validate()`` (every typed header
  parsed);
* aiosip 0.2.0's ``Message.from_raw_message`` on the same bytes;
* pyVoIP 1.6.8's ``SIPMessage`` on the same bytes (it refuses them) and on
  the closest message it can parse, with sipimdn timed on that variant too.

The references live in a throwaway virtualenv (``--setup`` creates it with
pip; they are never dependencies of sipimdn) and run in a worker process.
Every message differs from the next in its Via branch, From tag, Call-ID and
CSeq number, as real traffic does, so no parser gains from seeing the same
bytes twice. Rounds of every case are interleaved so that load on the
machine hits all of them alike (sipimdn first in even rounds, the
references first in odd ones); CPU time (``time.process_time``) is
measured. Reported: the median, lowest and highest round of each case, and
each ratio as the median of the per-round ratios (both sides measured in the
same round) with its lowest and highest round.

    python bench/bench_parse.py --setup          # first time: make the venv
    python bench/bench_parse.py                  # afterwards
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipimdn import parse_message  # noqa: E402

MESSAGE_FILE = ROOT / "tests" / "data" / "message_cpim.sip"
DEFAULT_VENV = Path("/tmp/sipimdn-bench-venv")
REFERENCES = ("aiosip==0.2.0", "pyVoIP==1.6.8")
DISTINCT = 256  # distinct messages cycled through


def distinct_messages(template: bytes, count: int) -> list[bytes]:
    """``count`` copies of ``template`` with per-transaction values changed."""
    out = []
    for i in range(count):
        out.append(
            template.replace(b"branch=z9hG4bK776sgdkse", b"branch=z9hG4bK%08x" % (0x5EED0000 + i * 7919))
            .replace(b"tag=49583", b"tag=%x" % (0xA1C3 + i * 104729))
            .replace(
                b"Call-ID: asd88asd77a@1.2.3.4", b"Call-ID: %016x@1.2.3.4" % (i * 0x9E3779B97F4A7C15 % 2**64)
            )
            .replace(b"CSeq: 1 ", b"CSeq: %d " % (i + 1))
        )
    return out


def pyvoip_variant(data: bytes) -> bytes:
    """The typical MESSAGE made parseable by pyVoIP 1.6.8.

    pyVoIP only accepts INVITE/ACK/BYE/CANCEL, splits the datagram on the
    first empty line expecting exactly two parts (a CPIM body has a blank line
    of its own), and splits every body line on "=" (failing on lines without
    one). So: INVITE, text/plain, and a body of the same size whose lines
    each hold an "=".
    """
    head, _, body = data.partition(b"\r\n\r\n")
    lines: list[bytes] = []
    size = 0
    while size < len(body):
        line = b"line%02d=Hello Bob, this is the same amount of text as the CPIM body." % len(lines)
        lines.append(line)
        size += len(line) + 2
    new_body = b"\r\n".join(lines)[: len(body)]
    head = head.replace(b"MESSAGE sip:", b"INVITE sip:").replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 INVITE")
    head = head.replace(b"Content-Type: message/cpim", b"Content-Type: text/plain")
    head = head.replace(b"Content-Length: %d" % len(body), b"Content-Length: %d" % len(new_body))
    return head + b"\r\n\r\n" + new_body


def measure_round(func: Callable[[], object], seconds: float) -> float:
    """Calls of ``func`` per CPU second over about ``seconds`` of CPU time."""
    calls = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        func()
        calls += 1
        now = time.process_time()
        if now >= deadline:
            return calls / (now - start)


# -- sipimdn ---------------------------------------------------------------------------------


def sipimdn_cases(messages: list[bytes], variants: list[bytes]) -> dict[str, Callable[[], object]]:
    def parse_only() -> object:
        for data in messages:
            parse_message(data)
        return None

    def rows_built() -> object:
        for data in messages:
            len(parse_message(data).headers)  # any header read builds the rows
        return None

    def routing_fields() -> object:
        for data in messages:
            m = parse_message(data)
            via = m.top_via
            read = (via.branch, via.sent_by, m.from_.tag, m.to.tag, m.call_id, m.cseq, m.content_type)
        return read

    def validated() -> object:
        for data in messages:
            parse_message(data).validate()
        return None

    def variant_parse() -> object:
        for data in variants:
            parse_message(data)
        return None

    return {
        "sipimdn parse_message (typed headers lazy)": parse_only,
        "sipimdn parse_message + header rows built": rows_built,
        "sipimdn + top Via, From/To tags, Call-ID, CSeq, Content-Type": routing_fields,
        "sipimdn + validate() (every typed header)": validated,
        "sipimdn parse_message, pyVoIP variant": variant_parse,
    }


# -- the reference worker, run by the venv's interpreter -------------------------------------

WORKER = r"""
import asyncio, base64, collections, collections.abc, json, sys, time, warnings
warnings.simplefilter("ignore")
setup = json.loads(sys.stdin.readline())
messages = [base64.b64decode(m) for m in setup["messages"]]
variants = [base64.b64decode(m) for m in setup["variants"]]
exec(setup["measure_round"])
cases, errors = {}, {}

# aiosip 0.2.0 predates Python 3.10/3.11: these aliases only let it import.
asyncio.coroutine = lambda f: f
for name in ("MutableMapping", "Mapping", "MutableSet", "Callable"):
    setattr(collections, name, getattr(collections.abc, name))
asyncio.set_event_loop(asyncio.new_event_loop())  # its Request() makes a Future
try:
    from aiosip.message import Message
    def aiosip_parse():
        for data in messages:
            Message.from_raw_message(data.decode("utf-8"))
    assert Message.from_raw_message(messages[0].decode("utf-8")).method == "MESSAGE"
    cases["aiosip 0.2.0 Message.from_raw_message"] = aiosip_parse
except Exception as exc:
    errors["aiosip 0.2.0 Message.from_raw_message"] = f"{type(exc).__name__}: {exc}"

try:
    import pyVoIP.VoIP  # imports pyVoIP.SIP without its circular-import error
    from pyVoIP.SIP import SIPMessage
    try:
        SIPMessage(messages[0])
        def pyvoip_parse():
            for data in messages:
                SIPMessage(data)
        cases["pyVoIP 1.6.8 SIPMessage"] = pyvoip_parse
    except Exception as exc:
        errors["pyVoIP 1.6.8 SIPMessage"] = f"{type(exc).__name__}: {exc}"
    SIPMessage(variants[0])
    def pyvoip_variant():
        for data in variants:
            SIPMessage(data)
    cases["pyVoIP 1.6.8 SIPMessage, pyVoIP variant"] = pyvoip_variant
except Exception as exc:
    errors["pyVoIP 1.6.8 SIPMessage, pyVoIP variant"] = f"{type(exc).__name__}: {exc}"

print(json.dumps({"cases": sorted(cases), "errors": errors}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    rate = measure_round(cases[request["case"]], request["seconds"])
    print(json.dumps({"rate": rate}), flush=True)
"""


class ReferenceWorker:
    """The venv interpreter, measuring one round of a reference case per request."""

    def __init__(self, python: Path, messages: list[bytes], variants: list[bytes]) -> None:
        import inspect

        self.proc = subprocess.Popen(
            [str(python), "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        setup: dict[str, object] = {
            "messages": [base64.b64encode(m).decode() for m in messages],
            "variants": [base64.b64encode(m).decode() for m in variants],
            "measure_round": "import time\n"
            + inspect.getsource(measure_round).replace("func: Callable[[], object]", "func"),
        }
        hello = self._ask(setup)
        self.cases = cast("list[str]", hello["cases"])
        self.errors = cast("dict[str, str]", hello["errors"])

    def _ask(self, request: dict[str, object]) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"reference worker exited with {self.proc.wait(timeout=10)}")
        answer: dict[str, object] = json.loads(line)
        return answer

    def measure(self, case: str, seconds: float) -> float:
        rate = self._ask({"case": case, "seconds": seconds})["rate"]
        assert isinstance(rate, float)
        return rate

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def setup_venv(path: Path) -> str | None:
    """Create the throwaway venv and pip-install the references; the error text if it fails."""
    if not (path / "bin" / "python").exists():
        venv.create(path, with_pip=True)
    result = subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "-q", *REFERENCES],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip()[-2000:]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, help=f"reference venv (default {DEFAULT_VENV})"
    )
    parser.add_argument("--setup", action="store_true", help="create the venv and pip-install the references")
    parser.add_argument(
        "--seconds", type=float, default=0.3, help="CPU seconds per round and case (default 0.3)"
    )
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved rounds; median and spread reported (default 15)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    template = MESSAGE_FILE.read_bytes()
    messages = distinct_messages(template, DISTINCT)
    variants = distinct_messages(pyvoip_variant(template), DISTINCT)
    for data in messages + variants:
        parse_message(data).validate()  # the inputs are valid SIP

    ours = sipimdn_cases(messages, variants)
    errors: dict[str, str] = {}
    worker: ReferenceWorker | None = None
    setup_error = setup_venv(args.venv) if args.setup else None
    python = args.venv / "bin" / "python"
    if setup_error is not None:
        errors["aiosip / pyVoIP"] = f"pip install {' '.join(REFERENCES)} failed: {setup_error}"
    elif not python.exists():
        errors["aiosip / pyVoIP"] = f"no venv at {args.venv}; run with --setup"
    else:
        worker = ReferenceWorker(python, messages, variants)
        errors.update(worker.errors)

    rounds: dict[str, list[float]] = {}

    def run_ours() -> None:
        for name, func in ours.items():
            rounds.setdefault(name, []).append(DISTINCT * measure_round(func, args.seconds))

    def run_references() -> None:
        if worker is not None:
            for name in worker.cases:
                rounds.setdefault(name, []).append(DISTINCT * worker.measure(name, args.seconds))

    try:
        for index in range(args.rounds):
            # Alternate which side goes first, so neither gains from its place in the round.
            for run in (run_ours, run_references) if index % 2 == 0 else (run_references, run_ours):
                run()
    finally:
        if worker is not None:
            worker.close()
    median = {name: statistics.median(rates) for name, rates in rounds.items()}
    pairs = [
        (
            "sipimdn parse_message (typed headers lazy)",
            "aiosip 0.2.0 Message.from_raw_message",
            "typical MESSAGE",
        ),
        (
            "sipimdn parse_message + header rows built",
            "aiosip 0.2.0 Message.from_raw_message",
            "typical MESSAGE, rows built",
        ),
        (
            "sipimdn parse_message, pyVoIP variant",
            "pyVoIP 1.6.8 SIPMessage, pyVoIP variant",
            "pyVoIP variant",
        ),
    ]
    ratios: dict[str, dict[str, float]] = {}
    for ours_name, ref_name, what in pairs:
        if ours_name in rounds and ref_name in rounds:
            per_round = [a / b for a, b in zip(rounds[ours_name], rounds[ref_name], strict=True)]
            ratios[f"{what}: {ours_name} / {ref_name}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
                "of_medians": median[ours_name] / median[ref_name],
            }

    if args.json:
        print(
            json.dumps(
                {
                    "median_msg_per_s": median,
                    "msg_per_s": {name: max(rates) for name, rates in rounds.items()},
                    "rounds_msg_per_s": rounds,
                    "ratios": ratios,
                    "errors": errors,
                },
                indent=2,
            )
        )
        return 0
    body = len(template.partition(b"\r\n\r\n")[2])
    print(
        f"Python {sys.version.split()[0]}; MESSAGE of {len(template)} bytes (message/cpim body {body});"
        f" {DISTINCT} distinct messages; CPU time; {args.rounds} interleaved rounds of {args.seconds} s"
    )
    print(f"  {'case':62} {'median msg/s':>12} {'us/msg':>7} {'lowest-highest round':>22}")
    for name, rates in rounds.items():
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        print(f"  {name:62} {median[name]:12,.0f} {1e6 / median[name]:7.2f} {spread:>22}")
    for name, error in errors.items():
        print(f"  {name:62} cannot run: {error}")
    for ours_name, ref_name, what in pairs:
        key = f"{what}: {ours_name} / {ref_name}"
        if key in ratios:
            r = ratios[key]
            reference = " ".join(ref_name.split()[:2])
            print(
                f"  {what}: sipimdn is {r['median']:.2f}x {reference} (median of per-round ratios;"
                f" rounds {r['min']:.2f}x-{r['max']:.2f}x; ratio of medians {r['of_medians']:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
