"""The application decides the final response, within a deadline.

Applications need 202, 4xx and 6xx, decided asynchronously (RFC 3428 §7).
The ``on_message`` handler runs as a task; whatever it returns within the
configured deadline becomes the final response. If it is still running at
the deadline the stack answers by itself (``deadline_status``), so Timer F
at the sender never fires because the application is slow; the server
transaction absorbs retransmissions meanwhile. A handler that raises gets
500 and the error is logged, never swallowed.

Every received MESSAGE has the same deadline length, so deadlines expire in
the order they were armed: :class:`DeadlineQueue` keeps them in that order under
one loop timer instead of one timer (and one ``asyncio.wait``) per message,
which the receive-path profile showed as a large share of the per-message cost,
and a message answered in time leaves it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeAlias, TypeVar

__all__ = [
    "Answer",
    "DeadlineQueue",
    "Decision",
    "HandlerOutcome",
    "HandlerResult",
    "normalize_decision",
    "outcome_of",
]

_T = TypeVar("_T")

_log = logging.getLogger("sipimdn.ua")


@dataclass(frozen=True, slots=True)
class Decision:
    """A final response chosen by an ``on_message`` handler (or for it)."""

    #: The status code (200-699).
    status: int
    #: Reason phrase, or None for the standard one.
    reason: str | None = None


class Answer(IntEnum):
    """Final answers an ``on_message`` handler commonly returns (RFC 3428 §7, RFC 3261 §21).

    Any final status code (200-699 but 408) is accepted; these names spare a
    magic number, and a misspelt name is a type error where a wrong int is not.
    """

    #: Delivered to the user.
    OK = 200
    #: Accepted for later delivery (stored, relayed): not delivered yet (RFC 3428 §7).
    ACCEPTED = 202
    #: The request is malformed for this application.
    BAD_REQUEST = 400
    #: The recipient refuses messages from this sender.
    FORBIDDEN = 403
    #: No such user here.
    NOT_FOUND = 404
    #: A body this application does not take.
    UNSUPPORTED_MEDIA_TYPE = 415
    #: The user exists but cannot take messages now.
    TEMPORARILY_UNAVAILABLE = 480
    #: The user is busy.
    BUSY_HERE = 486
    #: The application failed.
    SERVER_INTERNAL_ERROR = 500
    #: Overloaded; try later.
    SERVICE_UNAVAILABLE = 503
    #: The user declines, everywhere (no other device will take it either).
    DECLINE = 603


#: What an ``on_message`` handler may return: None (200), a status code (an :class:`Answer`
#: or any final code but 408), ``(status, reason)`` or a :class:`Decision`.
HandlerResult: TypeAlias = Decision | Answer | int | tuple[int, str] | None


def normalize_decision(value: object) -> Decision:
    """Turn what a handler returned into a :class:`Decision`.

    ``None`` means 200; an ``int`` is a status; a ``(status, reason)`` tuple
    or a :class:`Decision` is taken as is. Provisional codes are refused
    (the stack alone may send 100, RFC 4320), and so is 408 (RFC 4320 §4.2).
    """
    if value is None:
        return Decision(200)
    if isinstance(value, Decision):
        decision = value
    elif isinstance(value, bool):
        raise TypeError("a handler must return None, a status code or (status, reason), not a bool")
    elif isinstance(value, int):
        decision = Decision(value)
    elif (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
    ):
        decision = Decision(value[0], value[1])
    else:
        raise TypeError(f"a handler must return None, a status code or (status, reason), not {value!r}")
    if not 200 <= decision.status <= 699:
        raise ValueError(f"a handler must answer with a final status (200-699), not {decision.status}")
    if decision.status == 408:
        # RFC 4320 §4.2: a transaction-stateful element never sends 408 to a non-INVITE.
        raise ValueError("a MESSAGE is never answered 408 (RFC 4320)")
    if decision.reason is not None and any(c in decision.reason for c in "\r\n"):
        raise ValueError("a reason phrase must not contain CR or LF")
    return decision


@dataclass(frozen=True, slots=True)
class HandlerOutcome:
    """How the final response to a received MESSAGE was chosen."""

    #: The response to send.
    decision: Decision
    #: True if the handler itself chose it in time.
    by_handler: bool
    #: The handler's exception, if it raised (or returned something invalid).
    error: BaseException | None = None


def outcome_of(
    result: object, error: BaseException | None, handler: str = "", about: str = ""
) -> HandlerOutcome:
    """The outcome of a handler that returned ``result`` or raised ``error`` in time.

    An error, or a result that is not a valid decision, becomes 500 and is
    logged, naming ``handler`` (its qualified name) and ``about`` (the message).
    """
    if error is not None:
        _log.error(
            "on_message handler %s raised on message %s; answering 500", handler, about or "?", exc_info=error
        )
        return HandlerOutcome(Decision(500), by_handler=False, error=error)
    try:
        return HandlerOutcome(normalize_decision(result), by_handler=True)
    except (TypeError, ValueError) as exc:
        _log.error(
            "on_message handler %s returned an invalid decision on message %s; answering 500: %s",
            handler,
            about or "?",
            exc,
        )
        return HandlerOutcome(Decision(500), by_handler=False, error=exc)


class DeadlineQueue(Generic[_T]):
    """Deadlines of one fixed length, sharing a single loop timer.

    ``add(item)`` arms a deadline ``delay`` seconds from now; when it passes,
    ``on_expiry(item)`` is called. Because every deadline has the same
    length, items expire in the order they were added and only the first
    needs a timer. An item that finishes early is taken out with
    ``discard(item)``, at once: it is not kept (nor anything it holds) until
    its deadline, and the timer never runs for it. ``settled(item)`` (default:
    never) is the other way to say an item no longer cares: settled items are
    dropped from the head whenever the timer runs, *before* their deadline. Either
    way the timer is re-armed for the first item still waiting, or not at all;
    with handlers that answer at once it runs about once per ``delay`` instead
    of once per message (a loop wake-up each at low rates).

    Items are hashable and added at most once while waiting (a received
    message's :class:`~sipimdn.ua._receive.Pending` is).
    """

    def __init__(
        self,
        delay: float,
        on_expiry: Callable[[_T], None],
        settled: Callable[[_T], bool] | None = None,
    ) -> None:
        self._delay = delay
        self._on_expiry = on_expiry
        self._settled = settled
        # item -> its deadline; a dict keeps insertion order, which is deadline order.
        self._entries: dict[_T, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: _T) -> None:
        """Arm ``item``'s deadline (must be called from the running loop)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + self._delay
        self._entries[item] = when
        if self._handle is None:
            self._handle = loop.call_at(when, self._fire)

    def discard(self, item: _T) -> None:
        """Forget ``item``'s deadline (no expiry); nothing if it has none."""
        self._entries.pop(item, None)

    def _fire(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        entries = self._entries
        settled = self._settled
        # One walk from the front (each fresh walk of a dict would skip again the slots of
        # the entries removed before it): what is settled or due, up to the first still waiting.
        dropped: list[_T] = []
        due: list[_T] = []
        for item, when in entries.items():
            if settled is not None and settled(item):
                dropped.append(item)  # finished early: no expiry, and no timer for it
            elif when > now:
                break
            else:
                due.append(item)
        for item in dropped:
            del entries[item]
        for item in due:
            if entries.pop(item, None) is None or (settled is not None and settled(item)):
                continue  # discarded or settled by an expiry before it
            try:
                self._on_expiry(item)
            except Exception:  # one failing expiry must not strand the ones behind it
                _log.exception("deadline expiry handler failed")
        if self._handle is None:  # (an expiry may have added an item, arming it)
            for when in entries.values():
                self._handle = loop.call_at(when, self._fire)
                break

    def close(self) -> None:
        """Cancel the timer and drop every pending deadline."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._entries.clear()
