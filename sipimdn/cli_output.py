"""Command line output: the printer of events (text or JSON), wire tracing and progress lines."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import json
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from ._wirelog import WIRE_LOGGER, TraceFormatter
from .events import (
    DispositionChanged,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationRejected,
    NotificationsDeclined,
    NotificationSent,
    RegistrationExpired,
    RegistrationFailed,
    RegistrationSucceeded,
    TrackingEnded,
    Unregistered,
)
from .imdn.tracker import DeclineReason
from .ua import IncomingMessage

#: Decline reasons after which the notification still goes, to the sender instead of the route.
_ROUTED_TO_SENDER = frozenset({DeclineReason.ROUTE_UNTRUSTED, DeclineReason.ROUTE_TOO_LONG})

_T = TypeVar("_T")


# -- output ----------------------------------------------------------------------------------


#: Types :func:`_jsonable` returns as they are (exact types: a str enum is not one of them).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
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
    return _kebab(type(event).__name__)


@functools.cache
def _kebab(name: str) -> str:
    """``NotificationSent`` -> ``notification-sent``."""
    return "".join("-" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


#: How long a printed line may wait for others (seconds) before they are all written at once,
#: when the output is not a terminal.
FLUSH_DELAY = 0.02

#: Characters held back at most: a line that brings the buffer to this many writes it at once.
FLUSH_SIZE = 64 * 1024


class Printer:
    """Prints events either readably or as one JSON object per line.

    On a terminal, or outside a running event loop, a line is written (and flushed) at once:
    on a terminal the lines keep their place among the progress and log lines of standard
    error. Otherwise (a file, a pipe) a line waits in a buffer for at most ``delay`` seconds
    (:data:`FLUSH_DELAY`) and goes out with every line printed meanwhile in one write: a busy
    ``listen`` pays one system call per few dozen events instead of one per event, and no extra
    pass of the event loop, while ``listen --json | jq`` still sees each event within ``delay``.
    A buffer reaching ``max_size`` characters (:data:`FLUSH_SIZE`) is written at once. Lines
    are written in the order they were printed. The commands call :meth:`flush` before they
    return, whatever ended them (a signal, an error), and before anything is written on
    standard error (:func:`_flushed_before_logging`), so nothing printed is lost or overtaken.
    Only a process killed outright (SIGKILL) loses what it holds: ``delay`` seconds of lines.
    """

    def __init__(
        self,
        *,
        as_json: bool,
        stream: TextIO | None = None,
        delay: float = FLUSH_DELAY,
        max_size: int = FLUSH_SIZE,
    ) -> None:
        self._json = as_json
        self._stream = stream if stream is not None else sys.stdout
        try:
            self._by_line = self._stream.isatty()
        except ValueError:  # a closed stream: writing will say so
            self._by_line = True
        self._delay = delay
        self._max_size = max_size
        self._lines: list[str] = []
        #: Characters in ``_lines`` (without their line ends).
        self._held = 0
        #: The timer that writes ``_lines``: set while lines wait.
        self._flush_handle: asyncio.TimerHandle | None = None

    @property
    def as_json(self) -> bool:
        """True if events are printed as JSON (``--json``): skip building their readable text."""
        return self._json

    def emit(self, event: str, human: str, /, **fields: Any) -> None:
        """Print one event: ``text`` for people, ``{"event": event, **fields}`` as JSON."""
        if self._json:
            self.line(json.dumps({"event": event, **{k: _jsonable(v) for k, v in fields.items()}}))
        else:
            self.line(human)

    def emit_dataclass(self, event: object, human: str | None = None) -> None:
        """Print a library event (a dataclass) with all its fields; readably as ``human``, by
        default the line :func:`_describe` gives it."""
        if self._json:
            fields = _jsonable(event)
            assert isinstance(fields, dict)
            self.line(json.dumps({"event": _event_name(event), **fields}))
        else:
            self.line(_describe(event) if human is None else human)

    def line(self, text: str) -> None:
        """Print ``text`` as one line: within ``delay``, or now (outside a loop, on a terminal,
        or when the buffer is full)."""
        self._lines.append(text)
        self._held += len(text)
        if self._held >= self._max_size:
            self.flush()
        elif self._flush_handle is None:  # the first line to wait: start the timer
            if not self._by_line:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass
                else:
                    self._flush_handle = loop.call_later(self._delay, self._due)
                    return
            self.flush()

    def flush(self) -> None:
        """Write every line still buffered, in order, and flush the stream."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # the timer would have nothing left to write
        self._due()

    def _due(self) -> None:
        self._flush_handle = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        self._held = 0
        lines.append("")  # the last line's end
        self._stream.write("\n".join(lines))
        self._stream.flush()


class _FlushFirst(logging.Filter):
    """A handler filter that writes what a :class:`Printer` holds before the record goes out."""

    def __init__(self, printer: Printer) -> None:
        super().__init__()
        self._printer = printer
        # The printer belongs to the event loop's thread (its timer, its buffer).
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        """Flush the printer (from its own thread only); keep the record.

        A record from another thread (the store's worker logging a failed write) goes out as
        it comes: flushing from there would race the loop on the buffer and cancel its timer
        from the wrong thread."""
        if threading.get_ident() == self._thread:
            self._printer.flush()
        return True


@contextmanager
def _flushed_before_logging(printer: Printer) -> Iterator[None]:
    """While inside, the handlers of the root logger and of ``sipimdn.wire`` (``-v``, ``--trace``:
    standard error) first write what ``printer`` holds, so a log line never comes before an
    event printed earlier when both streams go to one file (``listen > log 2>&1``)."""
    flush_first = _FlushFirst(printer)
    handlers = [*logging.getLogger().handlers, *logging.getLogger(WIRE_LOGGER).handlers]
    for handler in handlers:
        handler.addFilter(flush_first)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(flush_first)


@contextmanager
def command_output(command: str, printer: Printer, *, trace: bool) -> Iterator[_Progress]:
    """What each command runs inside: the wire trace when asked (``--trace``), progress lines on
    standard error, and ``printer``'s buffered lines written before any of those log lines."""
    with _tracing(trace), _progress(command, printer) as progress, _flushed_before_logging(printer):
        yield progress


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


def _message_line(message: IncomingMessage) -> str:
    """The readable line of a received message (``listen``)."""
    asserted = _asserted(message)
    seen = "" if asserted is None else f" (asserted: {asserted})"
    notify = message.notify
    asked = f" (notifications requested: {', '.join(sorted(notify))})" if notify else ""
    return f"message from {message.sender}{seen}: {message.text!r}{asked}"


def _message_fields(message: IncomingMessage) -> dict[str, Any]:
    fields = {
        "message_id": message.message_id,
        "from": message.sender,
        "to": message.recipient,
        "content_type": message.content_type,
        "text": message.text,
        "subject": message.subject,
        "notify": sorted(message.notify),
        "transport": message.transport,
    }
    asserted = _asserted(message)
    if asserted is not None:
        fields["asserted_identity"] = asserted
    return fields


def _asserted(message: IncomingMessage) -> str | None:
    """The identity a trusted proxy asserted, as printed: ``withheld`` under Privacy: id."""
    if message.asserted_identity is None:
        return None
    return "withheld" if message.identity_withheld else message.asserted_identity


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
    ``before`` (a :meth:`Printer.flush`) is called before each line, so the events printed
    earlier come first when both streams go to one file.
    """

    def __init__(
        self, command: str, stream: TextIO | None = None, *, before: Callable[[], None] | None = None
    ) -> None:
        super().__init__(logging.INFO)
        self._command = command
        self._stream = stream if stream is not None else sys.stderr
        self._before = before
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
        if self._before is not None:
            self._before()
        print(f"sipimdn {self._command}: {text}", file=self._stream, flush=True)


@contextmanager
def _progress(command: str, printer: Printer | None = None) -> Iterator[_Progress]:
    layer_log = logging.getLogger("sipimdn.dialog.layer")
    handler = _Progress(command, before=None if printer is None else printer.flush)
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
