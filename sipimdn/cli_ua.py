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
import dataclasses
import enum
import json
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Any, TextIO, TypeVar

from ._wirelog import WIRE_LOGGER, TraceFormatter
from .auth import Credentials
from .cli import explain
from .config import ListenEndpoint, UserAgentConfig
from .errors import SipParseError, StoreError
from .events import (
    DispositionChanged,
    DispositionEvent,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationEvent,
    NotificationRejected,
    NotificationsDeclined,
    NotificationSent,
    RegistrationEvent,
    RegistrationExpired,
    RegistrationFailed,
    RegistrationSucceeded,
    TrackingEnded,
    Unregistered,
)
from .imdn.tracker import DeclineReason
from .imdn.vocabulary import DispositionRequest, DispositionState
from .iscomposing import ComposingStateChanged
from .metrics import MetricsExporter, require_prometheus_client
from .store import open_store
from .transport.dns import parse_nameserver
from .transport.flow import is_ip_literal
from .ua import IncomingMessage, SentMessage, UserAgent
from .uri import Uri

__all__ = ["PASSWORD_ENV", "register", "run_demo", "run_listen", "run_send"]

#: Environment variable holding the digest password (the alternative to --password-file).
PASSWORD_ENV = "SIPIMDN_PASSWORD"

#: Decline reasons after which the notification still goes, to the sender instead of the route.
_ROUTED_TO_SENDER = frozenset({DeclineReason.ROUTE_UNTRUSTED, DeclineReason.ROUTE_TOO_LONG})
_NOTIFY_KINDS = ("positive-delivery", "negative-delivery", "display")
#: The state each positive request must reach for ``send`` to succeed.
_POSITIVE_TARGETS = {"positive-delivery": "delivered", "display": "displayed"}

_T = TypeVar("_T")


# -- output ----------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def _event_name(event: object) -> str:
    name = type(event).__name__
    return "".join("-" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


class Printer:
    """Prints events either readably or as one JSON object per line."""

    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self._json = as_json
        self._stream = stream if stream is not None else sys.stdout

    def emit(self, event: str, human: str, /, **fields: Any) -> None:
        """Print one event: ``text`` for people, ``{"event": event, **fields}`` as JSON."""
        if self._json:
            line = json.dumps({"event": event, **{k: _jsonable(v) for k, v in fields.items()}})
        else:
            line = human
        print(line, file=self._stream, flush=True)

    def emit_dataclass(self, event: object, human: str) -> None:
        """Print a library event (a dataclass) with all its fields."""
        fields = _jsonable(event)
        assert isinstance(fields, dict)
        self.emit(_event_name(event), human, **fields)


def _describe(event: object) -> str:
    """One readable line for a library event."""
    if isinstance(event, DispositionChanged):
        if event.sip_status is not None:
            cause = f"SIP {event.sip_status}"
        elif event.kind is not None:
            cause = f"{event.kind} notification: {event.status}"
        else:
            cause = "no notification in time"
        return f"{event.recipient}: {event.previous} -> {event.state} ({cause})"
    if isinstance(event, NotificationAccepted):
        return f"notification from {event.recipient}: {event.kind} {event.status}"
    if isinstance(event, NotificationRejected):
        return (
            f"UNVERIFIED notification not applied ({event.reason}): {event.kind} {event.status} "
            f"for {event.message_id}, claimed by {event.sender}"
        )
    if isinstance(event, TrackingEnded):
        states = ", ".join(f"{uri} {state}" for uri, state in event.states)
        return f"no more notifications awaited for {event.message_id} ({states})"
    if isinstance(event, NotificationSent):
        outcome = f"SIP {event.sip_status}" if event.sip_status is not None else "no answer"
        again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
        what = f"{event.kind} notification {str(event.status)!r} for {event.message_id}"
        return f"sent {what} to {event.to}: {outcome}{again}"
    if isinstance(event, NotificationAbandoned):
        return f"gave up notification {event.notification_id} for {event.message_id}: {event.reason}"
    if isinstance(event, NotificationsDeclined):
        if event.reason in _ROUTED_TO_SENDER:  # sent all the same, to the sender
            return (
                f"not following the IMDN route for {', '.join(event.kinds)} of {event.message_id}"
                f" ({event.reason}): sending to {event.sender}"
            )
        return (
            f"not sending {', '.join(event.kinds)} for {event.message_id} to {event.sender}: {event.reason}"
        )
    if isinstance(event, RegistrationSucceeded):
        again = "refreshed" if event.refreshed else "registered"
        return f"{event.aor} {again} for {event.expires}s"
    if isinstance(event, RegistrationFailed):
        code = f"SIP {event.status_code}" if event.status_code is not None else "no answer"
        then = "giving up" if event.retry_at is None else "will retry"
        return f"registration of {event.aor} failed ({code}: {event.reason}); {then}"
    if isinstance(event, RegistrationExpired):
        return f"registration of {event.aor} expired"
    if isinstance(event, Unregistered):
        return f"{event.aor} unregistered" + ("" if event.confirmed else " (unconfirmed)")
    return repr(event)


def _message_fields(message: IncomingMessage) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "from": message.sender,
        "to": message.recipient,
        "content_type": message.content_type,
        "text": message.text,
        "subject": message.subject,
        "notify": sorted(message.notify),
        "transport": message.transport,
    }


# -- shared option handling --------------------------------------------------------------------


def _endpoint(text: str) -> ListenEndpoint:
    try:
        return ListenEndpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dns_server(text: str) -> str:
    """A name server as ``host:port`` (argparse ``type=``)."""
    try:
        parse_nameserver(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _notify(text: str) -> frozenset[DispositionRequest]:
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = kinds - set(_NOTIFY_KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown notification {sorted(unknown)} (use {','.join(_NOTIFY_KINDS)})"
        )
    return frozenset(DispositionRequest(kind) for kind in kinds)


def _uri(text: str) -> str:
    """A SIP or SIPS URI (argparse ``type=``); a missing scheme gets a suggestion."""
    try:
        uri = Uri.parse(text)
    except SipParseError as exc:
        bare = "@" in text and ":" not in text.split("@", 1)[0]
        suggestion = f"; did you mean sip:{text}?" if bare else ""
        raise argparse.ArgumentTypeError(f"{exc.reason}{suggestion}") from None
    if uri.scheme not in ("sip", "sips"):
        raise argparse.ArgumentTypeError(f"{text!r} is a {uri.scheme}: URI; give a sip: or sips: URI")
    return text


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse ``type=``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _delay(text: str) -> float:
    """Zero or more seconds (argparse ``type=``)."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _seconds(text)


def _expires(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError("the binding lifetime must be between 1 and 2147483647 seconds")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is between 0 and 65535")
    return port


def _count(text: str) -> int:
    """A whole number, at least 1 (argparse ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _status(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a status code") from None
    if not 200 <= code <= 699:
        raise argparse.ArgumentTypeError("the status must be a final response code (200-699)")
    return code


def _tls_contexts(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None
    if args.key and not args.cert:
        raise _UsageError("--key needs --cert")
    try:
        if args.cert:
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server.load_cert_chain(args.cert, args.key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise _UsageError(f"cannot load --cert {args.cert}" + (f" / --key {args.key}" if args.key else "")
                          + f": {_load_error(exc)}") from None
    try:
        if args.ca:
            client = ssl.create_default_context(cafile=args.ca)
    except (OSError, ValueError) as exc:
        raise _UsageError(f"cannot load --ca {args.ca}: {_load_error(exc)}") from None
    return server, client


def _load_error(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a PEM file of the right kind ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _add_common(parser: argparse.ArgumentParser, *, listen_default: str | None) -> None:
    parser.add_argument(
        "--aor", required=True, type=_uri, help="our address of record, e.g. sip:bob@127.0.0.1"
    )
    parser.add_argument("--display-name", default=None, help="display name for From")
    parser.add_argument(
        "--listen",
        action="append",
        type=_endpoint,
        default=None,
        help=f"transport:host:port to listen on, repeatable (default {listen_default or 'none'})",
    )
    parser.add_argument(
        "--store",
        default=":memory:",
        metavar="PATH|URL",
        help="notification state: a SQLite file, or a postgresql:// URL shared by several workers",
    )
    parser.add_argument("--cert", default=None, help="PEM certificate chain for TLS listening")
    parser.add_argument("--key", default=None, help="PEM private key for --cert")
    parser.add_argument("--ca", default=None, help="PEM CA bundle to verify TLS peers")
    parser.add_argument(
        "--proxy", default=None, type=_uri, help="outbound proxy URI: every request goes through it"
    )
    parser.add_argument(
        "--dns-server",
        action="append",
        type=_dns_server,
        default=None,
        metavar="HOST:PORT",
        help="name server for RFC 3263 location (NAPTR, SRV, A), repeatable; needs sipimdn[dns]",
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="register our contact with the registrar (the AOR's domain, through --proxy) while running",
    )
    parser.add_argument("--registrar", default=None, type=_uri, help="registrar URI (implies --register)")
    parser.add_argument(
        "--register-expires", type=_expires, default=3600, metavar="SECONDS",
        help="binding lifetime to ask for",
    )
    parser.add_argument("--username", default=None, help="digest user name for 401/407 challenges")
    parser.add_argument(
        "--password-file",
        type=_password_file,
        default=None,
        metavar="PATH",
        help=f"file whose first line is the digest password (or set ${PASSWORD_ENV})",
    )
    # Refused, not taken: see the module docstring. Hidden from --help.
    parser.add_argument("--password", action=_RefusePassword, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object per event and line")
    _add_trace(parser)


def _add_trace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print every SIP message sent and received, in full, on standard error "
        "(time, transport, direction, both ends: like SIPp's -trace_msg)",
    )


class _Password(str):
    """A password read from a file; its repr never shows it (argparse and tracebacks print reprs)."""

    def __repr__(self) -> str:
        return "<password>"


def _password_file(path: str) -> _Password:
    """The first line of ``path`` (argparse ``type=``): usage error if unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read password file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        # The message would quote the undecodable bytes, which are part of the secret.
        raise argparse.ArgumentTypeError(f"password file {path!r} is not UTF-8") from None
    if not line:
        raise argparse.ArgumentTypeError(f"password file {path!r} is empty")
    return _Password(line)


class _RefusePassword(argparse.Action):
    """``--password``: a usage error that does not echo the value."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error(
            "--password is not accepted (visible to other users): "
            f"use --password-file PATH or ${PASSWORD_ENV}"
        )


class _UsageError(Exception):
    """A combination of options that cannot work: exit 2 with this message."""


def _credentials(args: argparse.Namespace) -> tuple[Credentials, ...]:
    password: str | None = args.password_file
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    if args.username is None:
        if args.password_file is not None:
            raise _UsageError("--password-file needs --username")
        return ()
    if password is None:
        raise _UsageError(f"--username needs a password: --password-file PATH or ${PASSWORD_ENV}")
    return (Credentials(args.username, password),)


def _reachable_aor(aor: str, listen: Sequence[ListenEndpoint]) -> str:
    """The AOR with the port we listen on, when it names one of our IP addresses without a port.

    Notifications come back to the AOR. Without a registrar, ``--aor
    sip:alice@127.0.0.1`` with ``--listen udp:127.0.0.1:0`` would send them to
    port 5060, where nobody listens; the listen port (0: the one bound) is
    what the user means.
    """
    try:
        uri = Uri.parse(aor)
    except SipParseError:
        return aor  # UserAgentConfig reports it
    if uri.port is not None or uri.scheme not in ("sip", "sips") or not is_ip_literal(uri.host):
        return aor
    wanted = "tls" if uri.secure else (uri.transport or "udp")
    for endpoint in listen:
        if endpoint.host == uri.host and endpoint.transport == wanted:
            return str(dataclasses.replace(uri, port=endpoint.port))
    return aor


def _config(args: argparse.Namespace, default_listen: str, **extra: Any) -> UserAgentConfig:
    listen = tuple(args.listen) if args.listen else (ListenEndpoint.parse(default_listen),)
    server, client = _tls_contexts(args)
    registers = args.register or args.registrar is not None
    try:
        return UserAgentConfig(
            # A registered AOR is a name at the registrar, not our address: keep it as given.
            aor=args.aor if registers else _reachable_aor(args.aor, listen),
            outbound_proxy=args.proxy,
            credentials=_credentials(args),
            register=registers,
            registrar=args.registrar,
            register_expires=args.register_expires,
            display_name=args.display_name,
            listen=listen,
            store_path=args.store,
            tls_server_context=server,
            tls_client_context=client,
            dns_servers=tuple(args.dns_server or ()),
            **extra,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


# -- trace and progress ------------------------------------------------------------------------


@contextmanager
def _tracing(enabled: bool, stream: TextIO | None = None) -> Iterator[None]:
    """With ``--trace``: every message on the ``sipimdn.wire`` logger, printed in full on ``stream``."""
    if not enabled:
        yield
        return
    wire = logging.getLogger(WIRE_LOGGER)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(TraceFormatter())
    saved = wire.level
    wire.addHandler(handler)
    wire.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        wire.removeHandler(handler)
        wire.setLevel(saved)


class _Progress(logging.Handler):
    """Progress lines on standard error while we wait.

    As a logging handler it takes the transaction layer's INFO record of each Timer E
    retransmission of a request nobody answers, and prints the 2nd, 3rd and 4th, then every
    other one: with default timers at 1.5, 3.5, 7.5, 15.5, 23.5 and 31.5 s. With ``-v`` the log
    line itself shows each one, so nothing is printed twice. :meth:`waiting` prints the lines of
    the waits with no retransmission to show (a stream transport, a notification to come).
    """

    def __init__(self, command: str, stream: TextIO | None = None) -> None:
        super().__init__(logging.INFO)
        self._command = command
        self._stream = stream if stream is not None else sys.stderr
        #: Retransmissions seen so far.
        self.retransmissions = 0
        #: Set once the outcome is printed: retransmissions while closing are not news.
        self.finished = False

    def emit(self, record: logging.LogRecord) -> None:
        """Count a retransmission record and print it at the rate above."""
        n = getattr(record, "sip_retransmission", None)
        if not isinstance(n, int):
            return
        self.retransmissions += 1
        if self.finished or logging.getLogger("sipimdn").isEnabledFor(logging.INFO):
            return  # the -v handler prints it
        if 2 <= n <= 4 or n % 2 == 0:
            self.say(record.getMessage())

    def say(self, text: str) -> None:
        """Print one progress line."""
        print(f"sipimdn {self._command}: {text}", file=self._stream, flush=True)


@contextmanager
def _progress(command: str) -> Iterator[_Progress]:
    layer_log = logging.getLogger("sipimdn.dialog.layer")
    handler = _Progress(command)
    saved = layer_log.level
    layer_log.addHandler(handler)
    if not layer_log.isEnabledFor(logging.INFO):
        layer_log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        layer_log.removeHandler(handler)
        layer_log.setLevel(saved)


async def _waiting(awaitable: Awaitable[_T], timeout: float, tick: Callable[[float], None]) -> _T:
    """``asyncio.wait_for(awaitable, timeout)`` that calls ``tick(seconds waited)`` after 1, 3, 7
    and 15 s, then every 8 s, while nothing has come."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(awaitable)
    start = loop.time()
    end = start + timeout
    step = 1.0
    next_tick = start + step
    try:
        while True:
            now = loop.time()
            if task.done():
                return task.result()
            if now >= end:
                raise TimeoutError
            await asyncio.wait({task}, timeout=min(end, next_tick) - now)
            now = loop.time()
            if not task.done() and next_tick <= now < end:
                tick(now - start)
                step = min(2 * step, 8.0)
                next_tick += step
    finally:
        task.cancel()


# -- listen ------------------------------------------------------------------------------------


async def _listen(args: argparse.Namespace, printer: Printer) -> int:
    extra: dict[str, Any] = {
        "auto_delivery": not args.no_auto_delivery, "worker_id": args.worker_id,
        "worker_lease": args.worker_lease, "gc_tuning": True,
    }
    for option in ("dedup_max", "imdn_rate_limit", "imdn_byte_budget"):
        if getattr(args, option) is not None:
            extra[option] = getattr(args, option)
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
                printer.emit(
                    "message",
                    f"message from {message.sender}: {message.text!r}"
                    + (
                        f" (notifications requested: {', '.join(sorted(message.notify))})"
                        if message.notify
                        else ""
                    ),
                    answer=args.status or 200,
                    **_message_fields(message),
                )
                if args.auto_display is not None and message.message_id is not None:
                    ua.spawn(_display_later(message, args.auto_display))
                return args.status  # type: ignore[no-any-return]

            async def on_notification(event: NotificationEvent) -> None:
                printer.emit_dataclass(event, _describe(event))

            async def on_disposition(event: DispositionEvent) -> None:
                printer.emit_dataclass(event, _describe(event))

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
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(store.close)
    printer.emit("stopped", "stopped")
    return 0


def _print_registration(printer: Printer) -> Any:
    async def show(event: RegistrationEvent) -> None:
        printer.emit_dataclass(event, _describe(event))

    return show


def _usage_error(command: str, exc: _UsageError) -> int:
    print(f"sipimdn {command}: error: {exc}", file=sys.stderr, flush=True)
    return 2


async def _display_later(message: IncomingMessage, delay: float) -> None:
    await asyncio.sleep(delay)
    await message.mark_displayed()


def run_listen(args: argparse.Namespace) -> int:
    """``sipimdn listen``: print every message and notification until SIGINT/SIGTERM."""
    try:
        with _tracing(args.trace), _progress("listen"):
            return asyncio.run(_listen(args, Printer(as_json=args.json)))
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
            printer.emit_dataclass(event, _describe(event))

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
    try:
        with _tracing(args.trace), _progress("send") as progress:
            return asyncio.run(_send(args, Printer(as_json=args.json), progress))
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
    with _tracing(args.trace), _progress("demo") as progress:
        return asyncio.run(_demo(args, Printer(as_json=args.json), progress))


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
