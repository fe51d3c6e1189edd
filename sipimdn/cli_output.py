"""Command line output: the printer of events (text or JSON), wire tracing and progress lines."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import json
import logging
import sys
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


class Printer:
    """Prints events either readably or as one JSON object per line.

    Lines are written in order, a loop turn's worth at a time: inside a running event loop a
    line waits in a buffer until the loop's next turn, which writes and flushes every line of
    the turn at once (one write instead of one or two per line, so a busy ``listen`` does not
    pay a system call per event while ``listen --json | jq`` still sees each event a turn after
    it happened). Outside a loop, or on a terminal (where the lines keep their place among the
    progress and log lines of standard error), a line is written at once. The commands call
    :meth:`flush` before they return, so nothing printed is lost at exit or on a signal.
    """

    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self._json = as_json
        self._stream = stream if stream is not None else sys.stdout
        try:
            self._by_line = self._stream.isatty()
        except ValueError:  # a closed stream: writing will say so
            self._by_line = True
        self._lines: list[str] = []
        self._flush_handle: asyncio.Handle | None = None

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
        """Print ``text`` as one line: at the loop's next turn, or now (outside a loop, on a terminal)."""
        self._lines.append(text)
        if self._flush_handle is not None:
            return  # this turn's flush is already due
        if not self._by_line:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self._flush_handle = loop.call_soon(self._turn_ended)
                return
        self.flush()

    def flush(self) -> None:
        """Write every line still buffered, in order, and flush the stream."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # the turn's flush would have nothing left to do
        self._turn_ended()

    def _turn_ended(self) -> None:
        self._flush_handle = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        lines.append("")  # the last line's end
        self._stream.write("\n".join(lines))
        self._stream.flush()


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
