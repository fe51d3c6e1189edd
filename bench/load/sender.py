"""The send path: a sipimdn UserAgent sends N messages as fast as it may to a SIPp UAS.

    python bench/load/sender.py udp 127.0.0.1 5060 --count 5000 [--destinations 1] [--window 256] [--uvloop]

"As fast as it may": RFC 3428 §8 lets a UA have one MESSAGE outstanding per destination
URI, and the UA enforces it. With ``--destinations 1`` every message goes to
``sip:bob@host:port`` and waits for the previous one's answer; with ``--destinations K``
they go to ``sip:bob-0@...`` .. ``sip:bob-<K-1>@...`` (one UAS behind them all), so up to
K are in flight, at most ``--window`` at once. Each message is CPIM with no notification
requested. The process measures itself: wall time from the first send to the last final
response, its own CPU (``/proc/self/stat``) per message, and send-to-answer latency.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load.common import percentile, process_cpu_seconds
from sipimdn import ListenEndpoint, UserAgent, UserAgentConfig


async def send_all(args: argparse.Namespace) -> dict[str, Any]:
    config = UserAgentConfig(
        aor="sip:alice@127.0.0.1:0",
        # UDP with TCP on the same port (the UA's default); --transport picks the first hop.
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
    )
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    window = asyncio.Semaphore(args.window)
    async with UserAgent(config) as ua:

        async def one(i: int) -> None:
            user = "bob" if args.destinations == 1 else f"bob-{i % args.destinations}"
            to = f"sip:{user}@{args.host}:{args.port}"
            async with window:
                began = time.perf_counter()
                try:
                    handle = await ua.send_message(to, f"bench message {i}", transport=args.transport)
                    response = await handle.final_response()
                    key = str(response.status_code)
                except Exception as exc:  # a failed send is a figure, not a crash
                    key = type(exc).__name__
                latencies.append((time.perf_counter() - began) * 1e6)
                statuses[key] = statuses.get(key, 0) + 1

        cpu_before = _self_cpu()
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.count))), args.timeout)
        wall = time.perf_counter() - start
        cpu = _self_cpu() - cpu_before
    latencies.sort()
    ok = statuses.get("200", 0)
    return {
        "transport": args.transport,
        "count": args.count,
        "destinations": args.destinations,
        "ok": ok,
        "statuses": statuses,
        "wall": wall,
        "achieved": ok / wall if wall > 0 else 0.0,
        "cpu_us_per_msg": cpu * 1e6 / ok if ok else float("nan"),
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
    }


def _self_cpu() -> float:
    return process_cpu_seconds(os.getpid())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("transport", choices=["udp", "tcp"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--destinations", type=int, default=1)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        result = uvloop.run(send_all(args))
    else:
        result = asyncio.run(send_all(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
