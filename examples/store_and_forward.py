"""A store-and-forward IMDN intermediary with a registrar, for real endpoints.

    python examples/store_and_forward.py --listen udp:0.0.0.0:5060 --domain example.com \\
        --retry 30 --expiry 86400 --store parked.sqlite

Point your user agents at it: they REGISTER their contacts here (no
authentication) and use it as outbound proxy. A MESSAGE for a user of
``--domain`` who is not registered is answered 202 and held; it is
forwarded as soon as the user registers (or on the retry timer, doubling
from ``--retry`` seconds) with this server's IMDN-Record-Route and
Original-To, and a ``processing``/``stored`` notification goes back if the
sender asked for one. After ``--expiry`` seconds the sender gets
``failed`` (if asked). The recipient's own notifications come back through
here along IMDN-Route. Other URIs are forwarded to directly. One line is
printed per event; Ctrl-C stops (held messages stay in ``--store``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time

from sipimdn.config import ListenEndpoint
from sipimdn.intermediary import (
    ForwardConfig,
    ForwardDue,
    Intermediary,
    IntermediaryConfig,
    MessageDeferred,
    MessageFailed,
    MessageForwarded,
    NotificationDue,
    RequestRouted,
)


def describe(event: object) -> str | None:
    """One line for an intermediary event (None: not worth a line)."""
    if isinstance(event, RequestRouted):
        r = event.request
        return f"received MESSAGE {r.from_.uri} -> {r.uri}: {event.route} ({event.status})"
    if isinstance(event, ForwardDue):
        return f"attempt {event.message.attempts} to {event.message.target}"
    if isinstance(event, MessageDeferred):
        status = event.status_code or "unreachable"
        wait = max(0.0, event.retry_at - time.time())
        return f"held for {event.message.target} ({status}); next attempt in {wait:.0f}s"
    if isinstance(event, MessageForwarded):
        return f"forwarded to {event.message.target} ({event.status_code})"
    if isinstance(event, MessageFailed):
        why = "expired" if event.expired else str(event.status_code)
        return f"gave up on {event.message.target} ({why})"
    if isinstance(event, NotificationDue):
        to = event.message.origin.reply_to if event.message.origin else "?"
        return f"notifying {to}: {event.kind} {event.status}"
    return None


def print_events(server: Intermediary) -> None:
    """Print a line per event on stdout."""

    def show(event: object) -> None:
        line = describe(event)
        if line is not None:
            print(line, flush=True)

    server.on_event(show)


async def serve(config: IntermediaryConfig, run_for: float | None) -> int:
    """Run until Ctrl-C/SIGTERM (or ``run_for`` seconds)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    async with Intermediary(config) as server:
        print_events(server)
        print(f"listening as {server.uri}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), run_for)
    return 0


def build_parser(description: str | None) -> argparse.ArgumentParser:
    """The options shared by the intermediary examples."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--listen",
        action="append",
        type=ListenEndpoint.parse,
        help="transport:host:port to listen on (repeatable; default udp:127.0.0.1:5060)",
    )
    parser.add_argument(
        "--domain", action="append", default=[], help="domain whose users must register (repeatable)"
    )
    parser.add_argument("--user", default="imdn", help="user part of our own URI (default %(default)s)")
    parser.add_argument("--uri", help="our own URI when others reach us at another address (NAT)")
    parser.add_argument(
        "--retry", type=float, default=30.0, help="first retry after (s, doubles; default %(default)s)"
    )
    parser.add_argument("--retry-cap", type=float, default=3600.0, help="longest wait between attempts (s)")
    parser.add_argument("--expiry", type=float, default=86400.0, help="hold a message at most this long (s)")
    parser.add_argument("--store", default=":memory:", help="SQLite file for held messages (default: none)")
    parser.add_argument(
        "--next-hop",
        action="append",
        default=[],
        metavar="DOMAIN=URI",
        help="send messages for DOMAIN through the proxy URI (repeatable)",
    )
    parser.add_argument("--no-original-to", action="store_true", help="do not reveal the original recipient")
    parser.add_argument(
        "--run-for", type=float, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    parser.add_argument(
        "--trust-imdn-route",
        action="store_true",
        help="send our own notifications along upstream IMDN-Record-Route (only behind trusted servers)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain for tls: listen endpoints")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert (default: in the same file)")
    parser.add_argument("--tls-ca", help="PEM CA file to verify TLS peers (default: system trust store)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's messages")
    return parser


def tls_contexts(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Server and client TLS contexts from --tls-cert/--tls-key/--tls-ca (None when not given)."""
    server = None
    if args.tls_cert:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(args.tls_cert, args.tls_key)
    client = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    return server, client


def _next_hop(text: str) -> tuple[str, str]:
    domain, sep, uri = text.partition("=")
    if not sep or not domain or not uri:
        raise ValueError(f"--next-hop wants DOMAIN=URI, not {text!r}")
    return domain, uri


def config_from(args: argparse.Namespace, **extra: object) -> IntermediaryConfig:
    """The intermediary configuration the options describe."""
    server_tls, client_tls = tls_contexts(args)
    return IntermediaryConfig(
        listen=tuple(args.listen or [ListenEndpoint("udp", "127.0.0.1", 5060)]),
        trust_imdn_route=args.trust_imdn_route,
        tls_server_context=server_tls,
        tls_client_context=client_tls,
        user=args.user,
        uri=args.uri,
        domains=tuple(args.domain),
        forward=ForwardConfig(retry_base=args.retry, retry_cap=args.retry_cap, expiry=args.expiry),
        store_path=args.store,
        original_to=not args.no_original_to,
        next_hops=tuple(_next_hop(text) for text in args.next_hop),
        **extra,  # type: ignore[arg-type]
    )


def main() -> int:
    """Parse the command line and serve."""
    args = build_parser(__doc__).parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        config = config_from(args)
    except (ValueError, OSError) as exc:  # OSError: unreadable certificate files
        print(f"bad option: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config, args.run_for))


if __name__ == "__main__":
    sys.exit(main())
