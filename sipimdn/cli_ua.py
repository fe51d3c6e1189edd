"""The ``listen``, ``send`` and ``demo`` subcommands of the ``sipimdn`` CLI.

Shapes (scripts and tests rely on them)::

    sipimdn listen --aor sip:bob@127.0.0.1 --listen udp:127.0.0.1:5070 [--listen tcp:127.0.0.1:5070]
                   [--listen tls:...] [--status CODE] [--auto-display SECONDS] [--store PATH|URL]
                   [--worker-id NAME] [--metrics-port PORT [--metrics-host HOST]] [--json]
    sipimdn send --aor sip:alice@127.0.0.1 [--listen udp:127.0.0.1:0] --to sip:bob@127.0.0.1:5070
                 --text TEXT [--notify positive-delivery,negative-delivery,display] [--wait SECONDS]
                 [--transport udp|tcp|tls] [--probe-options] [--json]
    (both also take --dns-server HOST:PORT (RFC 3263 NAPTR/SRV location),
     --proxy URI, --register [--registrar URI] [--register-expires SECONDS],
     --username NAME with the password in --password-file PATH or $SIPIMDN_PASSWORD,
     --cert/--key/--ca, --store PATH|URL: a SQLite file or postgresql://user@host/db)
    sipimdn demo [--json] [--text TEXT]
    (all three also take --trace: every SIP message sent and received, in full, on standard
     error; and -v/-vv: logging on standard error)

With ``--json`` every printed event is one JSON object on one line, with an
``"event"`` member naming it. ``send`` exits 0 only if the MESSAGE got a 2xx
and every requested positive notification (``delivered`` for
positive-delivery, ``displayed`` for display) arrived within ``--wait``
seconds; otherwise 1. Usage errors exit 2. While the MESSAGE goes unanswered
or a notification is awaited, progress lines go to standard error (from the
second retransmission, or after 1, 3, 7, 15 s and then every 8 s).

JSON events: ``listening``, ``message``, ``composing`` (``from``, ``state``,
``content_type``, ``refresh``, ``last_active``, ``cause``), ``stopped`` (listen); ``sent``,
``response``, ``timeout``, ``failed``, ``outcome``, ``done`` (send, demo);
``demo``; and the library events by name: ``disposition-changed``,
``notification-accepted``, ``notification-rejected``, ``tracking-ended``,
``notification-sent``, ``notification-abandoned``, ``notifications-declined``,
``registration-succeeded``, ``registration-failed``, ``registration-expired``,
``unregistered``.

A password is never taken on the command line (other users see it in the
process list and it lands in shell history): ``--password`` is refused with
a usage error naming the two accepted sources. With ``--register``, ``send``
waits (within ``--wait``) for the registration before sending and fails
with exit 1 if it is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from contextlib import AsyncExitStack
from typing import Any

from .cli import explain
from .cli_options import (
    PASSWORD_ENV,
    _add_common,
    _add_trace,
    _config,
    _count,
    _delay,
    _notify,
    _port,
    _seconds,
    _status,
    _uri,
    _UsageError,
)
from .cli_output import (
    Printer,
    _describe,
    _message_fields,
    _message_line,
    _Progress,
    _waiting,
    command_output,
)
from .config import UserAgentConfig
from .errors import StoreError
from .events import (
    DispositionChanged,
    DispositionEvent,
    NotificationEvent,
    RegistrationEvent,
    RegistrationSucceeded,
)
from .imdn.vocabulary import DispositionRequest, DispositionState
from .iscomposing import ComposingStateChanged
from .metrics import MetricsExporter, require_prometheus_client
from .store import open_store
from .ua import IncomingMessage, SentMessage, UserAgent

__all__ = ["PASSWORD_ENV", "register", "run_demo", "run_listen", "run_send"]

#: The state each positive request must reach for ``send`` to succeed.
_POSITIVE_TARGETS = {"positive-delivery": "delivered", "display": "displayed"}


# -- listen ------------------------------------------------------------------------------------


async def _listen(args: argparse.Namespace, printer: Printer) -> int:
    extra: dict[str, Any] = {
        "auto_delivery": not args.no_auto_delivery, "worker_id": args.worker_id,
        "worker_lease": args.worker_lease, "gc_tuning": True,
    }
    for option in ("dedup_max", "working_set_max", "imdn_rate_limit", "imdn_byte_budget"):
        if getattr(args, option) is not None:
            extra[option] = getattr(args, option)
    if args.trusted_asserter:
        extra["trusted_asserters"] = tuple(args.trusted_asserter)
    config = _config(args, "udp:127.0.0.1:5060", **extra)
    if args.metrics_port is not None:
        try:
            require_prometheus_client()
        except ImportError as exc:
            raise _UsageError(f"--metrics-port: {exc}") from None
    # Opened here (a SQLite file or a PostgreSQL URL) so a store that cannot be opened is one line.
    store = await asyncio.to_thread(
        open_store, config.store_path, worker_id=config.worker_id, lease=config.worker_lease
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with UserAgent(config, store=store) as ua, AsyncExitStack() as exporters:
            metrics: dict[str, str] = {}
            if args.metrics_port is not None:
                exporter = MetricsExporter(ua, port=args.metrics_port, host=args.metrics_host)
                await exporters.enter_async_context(exporter)
                host = f"[{args.metrics_host}]" if ":" in args.metrics_host else args.metrics_host
                metrics["metrics"] = f"http://{host}:{exporter.port}/metrics"

            async def on_message(message: IncomingMessage) -> int | None:
                # Only what is printed is built: the readable line, or the JSON fields.
                if printer.as_json:
                    printer.emit("message", "", answer=args.status or 200, **_message_fields(message))
                else:
                    printer.line(_message_line(message))
                if args.auto_display is not None and message.message_id is not None:
                    ua.spawn(_display_later(message, args.auto_display))
                return args.status  # type: ignore[no-any-return]

            async def on_notification(event: NotificationEvent) -> None:
                printer.emit_dataclass(event)

            async def on_disposition(event: DispositionEvent) -> None:
                printer.emit_dataclass(event)

            async def on_composing(event: ComposingStateChanged) -> None:
                what = f" {event.content_type}" if event.content_type else ""
                printer.emit(
                    "composing",
                    f"{event.sender} is {event.state}{what} ({event.cause.value})",
                    **{"from": event.sender},
                    state=event.state,
                    content_type=event.content_type,
                    refresh=event.refresh,
                    last_active=event.last_active.isoformat() if event.last_active else None,
                    cause=event.cause,
                )

            ua.on_message(on_message)
            ua.on_composing(on_composing)
            ua.on_notification(on_notification)
            ua.on_disposition(on_disposition)
            ua.on_registration(_print_registration(printer))
            printer.emit(
                "listening",
                f"{ua.aor} listening on "
                + ", ".join(str(e) for e in ua.endpoints)
                + (f", metrics on {metrics['metrics']}" if metrics else "")
                + " (Ctrl-C stops)",
                aor=ua.aor,
                endpoints=[str(e) for e in ua.endpoints],
                **metrics,
            )
            printer.flush()  # the ready signal scripts wait for: not held back
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(store.close)
    printer.emit("stopped", "stopped")
    return 0


def _print_registration(printer: Printer) -> Any:
    async def show(event: RegistrationEvent) -> None:
        printer.emit_dataclass(event)

    return show


def _usage_error(command: str, exc: _UsageError) -> int:
    print(f"sipimdn {command}: error: {exc}", file=sys.stderr, flush=True)
    return 2


async def _display_later(message: IncomingMessage, delay: float) -> None:
    await asyncio.sleep(delay)
    await message.mark_displayed()


def run_listen(args: argparse.Namespace) -> int:
    """``sipimdn listen``: print every message and notification until SIGINT/SIGTERM."""
    printer = Printer(as_json=args.json)
    try:
        try:
            with command_output("listen", printer, trace=args.trace):
                return asyncio.run(_listen(args, printer))
        finally:
            printer.flush()  # what is still buffered, whatever ended the run, before any error line
    except _UsageError as exc:
        return _usage_error("listen", exc)
    except StoreError as exc:  # unreachable database, unwritable file: one line, exit 1
        print(f"sipimdn listen: error: {exc}", file=sys.stderr, flush=True)
        return 1


# -- send --------------------------------------------------------------------------------------


async def _send(args: argparse.Namespace, printer: Printer, progress: _Progress) -> int:
    config = _config(args, "udp:127.0.0.1:0", probe_options=args.probe_options)
    notify: frozenset[DispositionRequest] = args.notify
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    async with UserAgent(config) as ua:

        async def on_disposition(event: DispositionEvent) -> None:
            printer.emit_dataclass(event)

        ua.on_disposition(on_disposition)
        if config.registers:
            # Registered first, so the answers and notifications can be routed back to us.
            ua.on_registration(_print_registration(printer))
            try:
                registered = await ua.wait_registered(max(0.0, deadline - loop.time()))
            except TimeoutError:
                printer.emit("timeout", "not registered in time", waiting_for="registration")
                return 1
            if not isinstance(registered, RegistrationSucceeded):
                printer.emit(
                    "failed",
                    f"registration failed: {_describe(registered)}",
                    stage="registration",
                    error=getattr(registered, "reason", type(registered).__name__),
                    status=getattr(registered, "status_code", None),
                )
                return 1
        handle = await ua.send_message(
            args.to, args.text, notify=notify, transport=args.transport, to_list=args.to_list
        )
        printer.emit(
            "sent",
            f"MESSAGE {handle.message_id} to {args.to}"
            + (f", requesting {', '.join(sorted(notify))}" if notify else ""),
            message_id=handle.message_id,
            to=args.to,
            aor=ua.aor,
            notify=sorted(notify),
        )
        return await _await_outcome(handle, args.to, notify, deadline, printer, progress=progress)


async def _await_outcome(
    handle: SentMessage,
    to: str,
    notify: frozenset[DispositionRequest],
    deadline: float,
    printer: Printer,
    *,
    progress: _Progress,
    show_response: bool = True,
) -> int:
    try:
        return await _outcome(
            handle, to, notify, deadline, printer, progress=progress, show_response=show_response
        )
    finally:
        progress.finished = True


async def _outcome(
    handle: SentMessage,
    to: str,
    notify: frozenset[DispositionRequest],
    deadline: float,
    printer: Printer,
    *,
    progress: _Progress,
    show_response: bool,
) -> int:
    loop = asyncio.get_running_loop()

    def no_answer_yet(waited: float) -> None:
        if not progress.retransmissions:  # over UDP the retransmission lines say it
            progress.say(f"no answer from {to} yet after {waited:.0f} s, waiting")

    try:
        response = await _waiting(handle.final_response(), max(0.0, deadline - loop.time()), no_answer_yet)
    except TimeoutError:
        printer.emit("timeout", "no final response in time (--wait)", waiting_for="response")
        return 1
    except Exception as exc:  # TransactionTimeout, TransportError: report, exit 1
        text, hint = explain(exc)
        printer.emit(
            "failed", f"send failed: {text}" + (f"; hint: {hint}" if hint else ""), error=str(exc), hint=hint
        )
        return 1
    if show_response:
        printer.emit(
            "response",
            f"{response.status_code} {response.reason}",
            message_id=handle.message_id,
            status=response.status_code,
            reason=response.reason,
        )
    if not 200 <= response.status_code < 300:
        return 1
    ok = True
    wanted = [kind for kind in _POSITIVE_TARGETS if kind in notify]
    for kind in wanted:
        target = _POSITIVE_TARGETS[kind]

        def still_waiting(waited: float, target: str = target) -> None:
            left = deadline - loop.time()
            progress.say(f"waiting for the {target} notification from {to} ({left:.0f} s of --wait left)")

        left = max(0.0, deadline - loop.time())
        try:
            state = await _waiting(handle.await_disposition(target, timeout=left), left + 1.0, still_waiting)
        except TimeoutError:
            printer.emit("timeout", f"no {target} notification in time", waiting_for=target)
            return 1
        if state is DispositionState.UNSUPPORTED:
            # Accepted, but the peer takes no CPIM: the message went as text/plain and no
            # notification can come. Said once; not a failure of the message.
            printer.emit(
                "outcome",
                f"accepted as text/plain: {to} takes no message/cpim, so no notification can come",
                state=state,
                expected=target,
            )
            wanted = []
            break
        if not handle.reached(target):
            printer.emit("outcome", f"ended as {state}, not {target}", state=state, expected=target)
            ok = False
    summary = " -> ".join(
        [
            "MESSAGE",
            str(response.status_code),
            *(_POSITIVE_TARGETS[k] for k in wanted),
        ]
    )
    printer.emit("done", f"done: {summary}" if ok else "done (not every notification arrived)", ok=ok)
    return 0 if ok else 1


def run_send(args: argparse.Namespace) -> int:
    """``sipimdn send``: one message, then the SIP outcome and every notification."""
    printer = Printer(as_json=args.json)
    try:
        try:
            with command_output("send", printer, trace=args.trace) as progress:
                return asyncio.run(_send(args, printer, progress))
        finally:
            printer.flush()
    except _UsageError as exc:
        return _usage_error("send", exc)


# -- demo --------------------------------------------------------------------------------------


_STAGE_TEXT = {
    "accepted": "1/3 accepted: bob answered {sip_status} to the MESSAGE",
    "delivered": "2/3 delivered: bob's user agent sent a delivery notification",
    "displayed": "3/3 displayed: bob's application showed the message and sent a display notification",
}


async def _demo(args: argparse.Namespace, printer: Printer, progress: _Progress) -> int:
    # Port 0 in an AOR means "the port we get": no registrar is needed on loopback.
    bob_config = UserAgentConfig(aor="sip:bob@127.0.0.1:0", display_name="Bob")
    alice_config = UserAgentConfig(aor="sip:alice@127.0.0.1:0", display_name="Alice")
    notify = frozenset({DispositionRequest.POSITIVE_DELIVERY, DispositionRequest.DISPLAY})
    async with UserAgent(bob_config) as bob, UserAgent(alice_config) as alice:

        async def show(message: IncomingMessage) -> None:
            printer.emit(
                "message",
                f"[bob]   received {message.text!r} (Message-ID {message.message_id}, "
                f"asks for {', '.join(sorted(message.notify))})",
                **_message_fields(message),
            )
            # Bob "reads" it a moment later: that sends the display notification.
            bob.spawn(_display_later(message, 0.2))

        async def report(event: DispositionEvent) -> None:
            if isinstance(event, DispositionChanged):
                line = _STAGE_TEXT.get(str(event.state), "{state}").format(
                    sip_status=event.sip_status, state=event.state
                )
                printer.emit_dataclass(event, f"[alice] {line}")

        bob.on_message(show)
        alice.on_disposition(report)
        printer.emit(
            "demo",
            f"alice {alice.aor} sends to bob {bob.aor} over UDP on loopback, "
            "asking for delivery and display notifications",
            alice=alice.aor,
            bob=bob.aor,
        )
        handle = await alice.send_message(bob.aor, args.text, notify=notify)
        deadline = asyncio.get_running_loop().time() + args.wait
        return await _await_outcome(
            handle, bob.aor, notify, deadline, printer, progress=progress, show_response=False
        )


def run_demo(args: argparse.Namespace) -> int:
    """``sipimdn demo``: two user agents on loopback, a message and its two notifications."""
    printer = Printer(as_json=args.json)
    try:
        with command_output("demo", printer, trace=args.trace) as progress:
            return asyncio.run(_demo(args, printer, progress))
    finally:
        printer.flush()


# -- registration ------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``listen``, ``send`` and ``demo`` to the CLI's subparsers.

    Each subparser gets ``func``: a callable taking the parsed namespace and
    returning the exit status.
    """
    listen = subparsers.add_parser("listen", help="receive messages and answer notifications")
    _add_common(listen, listen_default="udp:127.0.0.1:5060")
    listen.add_argument("--status", type=_status, default=None, help="answer every MESSAGE with this status")
    listen.add_argument(
        "--auto-display",
        type=_delay,
        default=None,
        metavar="SECONDS",
        help="mark each message displayed after SECONDS (sends the display notification)",
    )
    listen.add_argument(
        "--no-auto-delivery", action="store_true", help="do not send delivered notifications on our own"
    )
    listen.add_argument(
        "--dedup-max",
        type=_count,
        default=None,
        metavar="N",
        help="most received Message-IDs remembered for dedup, oldest forgotten first "
        "(default 100000; a copy of a message older than that window reaches the application again)",
    )
    listen.add_argument(
        "--working-set-max",
        type=_count,
        default=None,
        metavar="N",
        help="most received and most sent messages awaiting notifications kept in memory; the "
        "store keeps them all and reads an older one back when needed (default 10000)",
    )
    listen.add_argument(
        "--imdn-rate-limit",
        type=_count,
        default=None,
        metavar="N",
        help="most notifications per minute to one destination address (default 120; a load test "
        "whose senders share one address needs more)",
    )
    listen.add_argument(
        "--imdn-byte-budget",
        type=_count,
        default=None,
        metavar="BYTES",
        help="most notification bytes per minute to one destination address (default 131072)",
    )
    listen.add_argument(
        "--trusted-asserter",
        action="append",
        default=None,
        metavar="ADDRESS",
        help="believe P-Asserted-Identity (RFC 3325) in requests whose transport source is this IP "
        "address, network (10.0.0.0/24) or host name: the proxy that authenticates senders; "
        "repeatable (default: believed from nobody)",
    )
    listen.add_argument(
        "--worker-id",
        default=None,
        metavar="NAME",
        help="this worker's name among those sharing a PostgreSQL --store (default: host name and pid)",
    )
    listen.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs the [metrics] extra; 0: any port)",
    )
    listen.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics server listens on (default 127.0.0.1)",
    )
    listen.add_argument(
        "--worker-lease",
        type=_delay,
        default=20.0,
        metavar="SECONDS",
        help="with a shared --store: a worker that stops renewing for this long has its owed and "
        "awaited notifications taken over by another (default 20)",
    )
    listen.set_defaults(func=run_listen)

    send = subparsers.add_parser("send", help="send one message and wait for its notifications")
    _add_common(send, listen_default="udp:127.0.0.1:0")
    send.add_argument("--to", required=True, type=_uri, help="recipient URI, e.g. sip:bob@127.0.0.1:5070")
    send.add_argument("--text", required=True, help="message text")
    send.add_argument(
        "--notify",
        type=_notify,
        default=frozenset({"positive-delivery", "negative-delivery"}),
        help="notifications to request, comma-separated (default positive-delivery,negative-delivery)",
    )
    send.add_argument(
        "--wait", type=_seconds, default=10.0, metavar="SECONDS", help="how long to wait (default 10)"
    )
    send.add_argument(
        "--transport", choices=("udp", "tcp", "tls"), default=None, help="transport to the peer"
    )
    send.add_argument(
        "--probe-options",
        action="store_true",
        help="ask the peer with OPTIONS first; send text/plain if its Accept lacks message/cpim",
    )
    send.add_argument(
        "--list",
        dest="to_list",
        action="store_true",
        help="--to is a URI list (RFC 5365): await every member's notifications until the deadline",
    )
    send.set_defaults(func=run_send)

    demo = subparsers.add_parser("demo", help="two user agents on loopback: message, delivered, displayed")
    demo.add_argument("--text", default="Hello Bob, this is Alice.", help="message text")
    demo.add_argument(
        "--wait", type=_seconds, default=10.0, metavar="SECONDS", help="how long to wait (default 10)"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object per event and line")
    _add_trace(demo)
    demo.set_defaults(func=run_demo)
