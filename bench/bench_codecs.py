"""Codec throughput: decode and build of a typical IMDN (CPIM wrapper + message/imdn+xml).

Not a test. Measures, in one process on one core:

* ``decode``: ``cpim.parse`` + ``imdn.recognise`` (IMDN headers, XML parse with the
  hardened parser, XSD validation) of the delivery IMDN a peer typically sends;
* ``build``: ``imdn.build_imdn`` answering a received IM (XML build, XSD check,
  CPIM build and its self-check), then ``to_bytes()``;
* ``parse-im``: ``cpim.parse`` + ``imdn.imdn_headers`` of a typical IM, for scale;
* ``xml-only``: ``imdn.parse_notification`` alone;
* ``xml-build``: ``Notification.to_xml()`` alone.

Figures are CPU microseconds per operation (``time.process_time``), the median
over interleaved rounds.

Usage: ``python bench/bench_codecs.py [--seconds 2] [--rounds 7] [--json]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable

import lxml.etree

from sipimdn import cpim, imdn

COPIES = 256
"""Inputs cycle through this many messages that differ where real traffic differs
(Message-ID, DateTime, the reported message-id), so caches of per-message values
flatter nothing; the peer addresses repeat, as they do in a conversation."""


def _im(i: int) -> bytes:
    return imdn.build_im(
        from_=cpim.CpimAddress("sip:alice@example.com", "Alice"),
        to=cpim.CpimAddress("sip:bob@example.com", "Bob"),
        body="Hello Bob, lunch at noon? 🍜".encode(),
        now=1_700_000_000.0 + i * 1.001,
        notify=["positive-delivery", "negative-delivery", "display"],
    ).to_bytes()


IMS = [_im(i) for i in range(COPIES)]
RECEIVED_IMS = [cpim.parse(im) for im in IMS]
NOTIFICATIONS = [
    imdn.build_imdn(im, kind="delivery", status="delivered", now=1_700_000_001.0 + i * 1.001).to_bytes()
    for i, im in enumerate(RECEIVED_IMS)
]
RECEIVED_XMLS = [cpim.parse(n).body for n in NOTIFICATIONS]
NOTIFICATION_VALUES = [imdn.parse_notification(x) for x in RECEIVED_XMLS]
IM = IMS[0]
NOTIFICATION = NOTIFICATIONS[0]
_turn = itertools.count()


def decode() -> None:
    received = imdn.recognise(cpim.parse(NOTIFICATIONS[next(_turn) % COPIES]))
    assert received is not None


def build() -> None:
    i = next(_turn)
    im = RECEIVED_IMS[i % COPIES]
    imdn.build_imdn(im, kind="delivery", status="delivered", now=1_800_000_000.0 + i * 0.001).to_bytes()


def parse_im() -> None:
    imdn.imdn_headers(cpim.parse(IMS[next(_turn) % COPIES]))


def xml_only() -> None:
    imdn.parse_notification(RECEIVED_XMLS[next(_turn) % COPIES])


def xml_build() -> None:
    NOTIFICATION_VALUES[next(_turn) % COPIES].to_xml()


CASES: dict[str, Callable[[], None]] = {
    "decode": decode,
    "build": build,
    "parse-im": parse_im,
    "xml-only": xml_only,
    "xml-build": xml_build,
}


def _batch(fn: Callable[[], None]) -> int:
    """A batch size of roughly 20 ms of CPU for ``fn``."""
    batch = 1
    while True:
        start = time.process_time()
        for _ in range(batch):
            fn()
        if time.process_time() - start > 0.02:
            return batch
        batch *= 2


def measure(cases: dict[str, Callable[[], None]], seconds: float, rounds: int) -> dict[str, list[float]]:
    """CPU microseconds per operation of each case, one figure per round.

    CPU time (``time.process_time``), not wall time: on a shared machine the
    process is descheduled, which wall time would count. Rounds interleave the
    cases, so a burst of load elsewhere hits all of them alike.
    """
    batches = {name: _batch(fn) for name, fn in cases.items()}
    per_case = seconds / rounds
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            batch = batches[name]
            done = 0
            start = time.process_time()
            while (elapsed := time.process_time() - start) < per_case:
                for _ in range(batch):
                    fn()
                done += batch
            figures[name].append(elapsed / done * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU time per case (default 2)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per case, interleaved (default 7)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    figures = measure(CASES, args.seconds, max(1, args.rounds))
    results = {}
    for name, us in figures.items():
        median = statistics.median(us)
        results[name] = {
            "us_per_op": round(median, 2),
            "best_us_per_op": round(min(us), 2),
            "ops_per_s": round(1e6 / median),
            "best_ops_per_s": round(1e6 / min(us)),
        }
    meta = {
        "python": platform.python_version(),
        "lxml": lxml.etree.__version__,
        "libxml2": ".".join(map(str, lxml.etree.LIBXML_VERSION)),
        "notification_bytes": len(NOTIFICATION),
        "im_bytes": len(IM),
        "clock": "process CPU time",
        "rounds": max(1, args.rounds),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}))
        return
    print(f"python {meta['python']}, lxml {meta['lxml']}, libxml2 {meta['libxml2']}")
    print(
        f"IMDN {meta['notification_bytes']} bytes, IM {meta['im_bytes']} bytes, "
        f"{args.seconds:g} s CPU per case in {meta['rounds']} interleaved rounds"
    )
    for name, r in results.items():
        print(
            f"{name:9s} {r['us_per_op']:7.1f} us/op CPU median  (best {r['best_us_per_op']:.1f}; "
            f"{r['ops_per_s']:,} /s per core)"
        )


if __name__ == "__main__":
    main()
