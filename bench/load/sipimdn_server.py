"""sipimdn as the responder under load, in a process of its own so its CPU can be read from /proc.

    python bench/load/sipimdn_server.py stack [--uvloop] [--tls-cert PEM --tls-key PEM]
    python bench/load/sipimdn_server.py ua    [--uvloop] [--tls-cert PEM --tls-key PEM] [--profile OUT]
                                              [--gc-tuning]

``stack``: a bare :class:`sipimdn.SipStack` whose handler answers every request 200 (the
SIP core, transactions and transports, no CPIM). ``ua``: a :class:`sipimdn.ua.UserAgent` whose
``on_message`` handler does nothing (so every MESSAGE is parsed, its CPIM decoded, tracked and
answered 200); when a message requests positive-delivery, the UA sends the delivered IMDN on
its own and counts the answers it gets.

Prints ``READY {"udp": port, "tcp": port, "tls": port|null}`` once listening; on SIGTERM stops,
writes the cProfile statistics if ``--profile`` was given, and prints ``STATS {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import signal
import ssl
from typing import Any

from sipimdn import ListenEndpoint, UserAgent, UserAgentConfig
from sipimdn.events import NotificationSent
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.store import MemoryStore
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport

counters: dict[str, Any] = {"requests": 0, "messages": 0, "imdn_sent": 0, "imdn_2xx": 0, "imdn_other": 0}


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def run_stack(args: argparse.Namespace, stop: asyncio.Event) -> None:
    tls = _tls_context(args.tls_cert, args.tls_key)
    # TCP on port 0 takes the UDP listener's port when free (RFC 3261 §18.2.1).
    specs = [ListenSpec(Transport.UDP, args.host, 0), ListenSpec(Transport.TCP, args.host, 0)]
    if tls is not None:
        specs.append(ListenSpec(Transport.TLS, args.host, 0, ssl_context=tls))
    async with SipStack(specs) as stack:

        def answer(incoming: IncomingRequest) -> None:
            counters["requests"] += 1
            incoming.respond(200)

        stack.on_request(answer)
        ports = {t.value.lower(): address[1] for t, address in stack.endpoints}
        print(
            "READY " + json.dumps({"udp": ports["udp"], "tcp": ports["tcp"], "tls": ports.get("tls")}),
            flush=True,
        )
        await stop.wait()


async def run_ua(args: argparse.Namespace, stop: asyncio.Event) -> None:
    tls = _tls_context(args.tls_cert, args.tls_key)
    listen = [ListenEndpoint("udp", args.host, 0)]
    if tls is not None:
        listen.append(ListenEndpoint("tls", args.host, 0))
    config = UserAgentConfig(
        aor=f"sip:bob@{args.host}:0",
        listen=tuple(listen),
        tls_server_context=tls,
        # The default 2 s deadline never fires with a handler that returns at once.
        gc_tuning=args.gc_tuning,  # what `sipimdn listen` does; off by default for embedding
        # SIPp sends every call from its one address (a fresh user part each): the notification
        # budgets per destination address (RFC 5438 §14, 120 a minute by default) would rightly
        # decline nearly all of the load's IMDNs.
        imdn_rate_limit=1 << 30,
        imdn_byte_budget=1 << 40,
    )
    # The default store is SQLite (":memory:" here), written behind by a worker thread;
    # --store memory swaps in MemoryStore to show what those writes cost.
    store = MemoryStore() if args.store == "memory" else None
    async with UserAgent(config, store=store) as ua:

        @ua.on_message
        async def nothing(message: object) -> None:
            counters["messages"] += 1

        @ua.on_notification
        async def sent(event: object) -> None:
            if not isinstance(event, NotificationSent):
                return  # an IMDN we received, not one we sent
            status = event.sip_status
            counters["imdn_sent"] += 1
            if status is not None and 200 <= status < 300:
                counters["imdn_2xx"] += 1
            else:
                counters["imdn_other"] += 1

        ports = {e.transport: e.port for e in ua.endpoints}
        print(
            "READY " + json.dumps({"udp": ports["udp"], "tcp": ports.get("tcp"), "tls": ports.get("tls")}),
            flush=True,
        )
        await stop.wait()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.mode == "stack":
        await run_stack(args, stop)
    else:
        await run_ua(args, stop)


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["stack", "ua"])
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--gc-tuning", action="store_true",
                        help="UserAgentConfig.gc_tuning: the collector tuned as `sipimdn listen` tunes it")
    parser.add_argument("--profile", help="write cProfile statistics of the whole run to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print("STATS " + json.dumps(counters), flush=True)


if __name__ == "__main__":
    cli()
