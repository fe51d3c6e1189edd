"""One worker process for the tests: a UserAgent sharing a PostgreSQL store, with SIP timers
and IMDN retries shorter than ``sipimdn listen`` offers (so what a worker does after a pause
shows within seconds).

``python worker_process.py URL WORKER_ID LEASE``: accepts every message; prints one JSON line
``{"event": "listening", "host": ..., "port": ...}`` once ready, and on SIGTERM (after closing)
``{"event": "stats", ...}`` with its ``ua.stats()``. Logs (WARNING and up) go to stderr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import sys

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.ua import IncomingMessage


async def main(url: str, worker_id: str, lease: float) -> None:
    config = UserAgentConfig(
        aor="sip:bob@127.0.0.1:0",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
        store_path=url,
        worker_id=worker_id,
        worker_lease=lease,
        t1=0.05,  # Timer F: 3.2 s
        imdn_park_base=0.5,  # an unanswered IMDN is tried again half a second after Timer F
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with UserAgent(config) as ua:

        @ua.on_message
        async def accept(message: IncomingMessage) -> None:
            return None

        endpoint = ua.endpoints[0]
        print(json.dumps({"event": "listening", "host": endpoint.host, "port": endpoint.port}), flush=True)
        await stop.wait()
        stats = ua.stats()
    print(json.dumps({"event": "stats", **dataclasses.asdict(stats)}), flush=True)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
