"""Codec throughput: decode and build of a typical IMDN (CPIM wrapper + message/imdn+xml).

Not a test. Measures, in one process on one core:

* ``decode``: ``cpim.parse`` + ``imdn.recognise`` (IMDN headers, XML parse with the
  hardened parser, XSD validation) of the delivery IMDN a peer typically sends;
* ``build``: ``imdn.build_imdn`` answering a received IM (XML build, XSD check,
  CPIM build and its self-check), then ``to_bytes()``;
* ``parse-im``: ``cpim.parse`` + ``imdn.imdn_headers`` of a typical IM, for scale;
* ``xml-only``: ``imdn.parse_notification`` alone.

Usage: ``python bench/bench_codecs.py [--seconds 2] [--json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import lxml.etree

from sipimdn import cpim, imdn

IM = imdn.build_im(
    from_=cpim.CpimAddress("sip:alice@example.com", "Alice"),
    to=cpim.CpimAddress("sip:bob@example.com", "Bob"),
    body="Hello Bob, lunch at noon? 🍜".encode(),
    now=1_700_000_000.0,
    notify=["positive-delivery", "negative-delivery", "display"],
).to_bytes()
RECEIVED_IM = cpim.parse(IM)
NOTIFICATION = imdn.build_imdn(
    RECEIVED_IM, kind="delivery", status="delivered", now=1_700_000_001.0
).to_bytes()


def decode() -> None:
    received = imdn.recognise(cpim.parse(NOTIFICATION))
    assert received is not None


def build() -> None:
    imdn.build_imdn(RECEIVED_IM, kind="delivery", status="delivered", now=1_700_000_001.0).to_bytes()


def parse_im() -> None:
    imdn.imdn_headers(cpim.parse(IM))


def xml_only() -> None:
    imdn.parse_notification(RECEIVED_XML)


RECEIVED_XML = cpim.parse(NOTIFICATION).body


def measure(fn: Callable[[], None], seconds: float, rounds: int = 5) -> tuple[float, float]:
    """Return (median ops/s, best ops/s) over ``rounds`` timed rounds of about ``seconds`` total."""
    # Calibrate a batch size of roughly 50 ms.
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - start > 0.05:
            break
        batch *= 2
    rates = []
    per_round = seconds / rounds
    for _ in range(rounds):
        done = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < per_round:
            for _ in range(batch):
                fn()
            done += batch
        rates.append(done / elapsed)
    return statistics.median(rates), max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    cases = {"decode": decode, "build": build, "parse-im": parse_im, "xml-only": xml_only}
    results = {}
    for name, fn in cases.items():
        median, best = measure(fn, args.seconds)
        results[name] = {"ops_per_s": round(median), "best_ops_per_s": round(best), "us_per_op": 1e6 / median}
    meta = {
        "python": platform.python_version(),
        "lxml": lxml.etree.__version__,
        "libxml2": ".".join(map(str, lxml.etree.LIBXML_VERSION)),
        "notification_bytes": len(NOTIFICATION),
        "im_bytes": len(IM),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}))
        return
    print(f"python {meta['python']}, lxml {meta['lxml']}, libxml2 {meta['libxml2']}")
    print(
        f"IMDN {meta['notification_bytes']} bytes, IM {meta['im_bytes']} bytes, {args.seconds:g} s per case"
    )
    for name, r in results.items():
        rate = f"{r['ops_per_s']:>9,} /s"
        print(f"{name:9s} {rate}  (best {r['best_ops_per_s']:,} /s, {r['us_per_op']:.1f} us/op)")


if __name__ == "__main__":
    main()
