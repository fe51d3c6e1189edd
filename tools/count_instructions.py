"""Instructions per received plain MESSAGE, counted by valgrind: a figure the machine's load cannot move.

    python tools/count_instructions.py [--tree DIR] [--kind ua|ua-pd] [--count 1000]
    python tools/count_instructions.py --tree /tmp/old --tree /tmp/new     # before/after

On a shared machine the CPU time per message of ``profile_stack.py run`` moves by 10-20 % from
one round to the next, so a change worth 1 % needs many alternating rounds to show. This counts
the instructions the interpreter executes instead (``valgrind --tool=cachegrind``, no cache
simulation): a ``UserAgent`` with a trivial ``on_message`` handler, as ``profile_stack.py serve
ua`` runs it, is fed pre-built MESSAGEs (``profile_stack.build_messages``) straight into its UDP
endpoint, one per loop turn, with the socket's ``sendto`` replaced by a counter (the 200s are
built, encoded and handed to the transport, not sent). Two runs, with ``count`` messages more in
the second, give the instructions per message without start-up; ``PYTHONHASHSEED`` is fixed, so
the figure repeats to about 0.1 %. Instructions are not time (cache misses, system calls and the
kernel's side of a send are not in it): confirm a cut with ``profile_stack.py run`` as well.
``KIND@DIR`` trees as in ``profile_stack.py`` (``git archive REV sipimdn | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_WARM = 300


class _CountingTransport:
    """Stands in for the endpoint's asyncio transport: counts what would be sent."""

    sent = 0

    def sendto(self, data: bytes, addr: object) -> None:
        _CountingTransport.sent += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def _feed(count: int, kind: str) -> None:
    sys.path.insert(0, str(HERE))
    import profile_stack  # noqa: PLC0415 - the load's messages, from the tool beside this one

    from sipimdn import ListenEndpoint, UserAgent, UserAgentConfig  # noqa: PLC0415
    from sipimdn._gc import tune_for_throughput  # noqa: PLC0415

    known = {field.name for field in dataclasses.fields(UserAgentConfig)}
    lifted = {"imdn_rate_limit": 1 << 30, "imdn_byte_budget": 1 << 40}  # as profile_stack's servers
    config = UserAgentConfig(
        aor="sip:bob@127.0.0.1:0",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
        **{name: value for name, value in lifted.items() if name in known},
    )
    async with UserAgent(config) as ua:

        @ua.on_message
        async def nothing(message: object) -> None:
            return None

        endpoint = ua._stack.transports._udp[0]  # (a measurement harness: the agent's own socket)
        real = endpoint._transport
        endpoint._transport = _CountingTransport()
        tune_for_throughput()
        messages = profile_stack.build_messages(count, endpoint.local[1], 40000, "countinstr", kind)
        for data in messages:
            endpoint.datagram_received(data, ("127.0.0.1", 40000))
            await asyncio.sleep(0)  # one loop turn per message: the handler's task runs
        for _ in range(2000):  # answers held for the store's write (positive delivery) come later
            if _CountingTransport.sent >= count:
                break
            await asyncio.sleep(0.005)
        if _CountingTransport.sent < count:
            raise SystemExit(f"only {_CountingTransport.sent} of {count} messages were answered")
        endpoint._transport = real


def _instructions(tree: str | None, count: int, kind: str) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree:
        env["PYTHONPATH"] = tree
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               sys.executable, __file__, "--feed", str(count), "--kind", kind]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if match is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", help="import sipimdn from DIR (repeat to compare)")
    parser.add_argument("--kind", default="ua", choices=["ua", "ua-pd"])
    parser.add_argument("--count", type=int, default=1000, help="messages between the two runs")
    parser.add_argument("--feed", type=int, help=argparse.SUPPRESS)  # (the process valgrind runs)
    args = parser.parse_args()
    if args.feed is not None:
        asyncio.run(_feed(args.feed, args.kind))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    for tree in args.tree or [None]:
        base = _instructions(tree, _WARM, args.kind)
        more = _instructions(tree, _WARM + args.count, args.kind)
        per_message = (more - base) / args.count
        print(f"{tree or 'sipimdn on sys.path'} {args.kind}: {per_message:,.0f} instructions per message",
              flush=True)


if __name__ == "__main__":
    main()
