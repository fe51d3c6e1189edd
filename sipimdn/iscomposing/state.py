"""Sans-IO state machines of RFC 3994 §3.2 (composer) and §3.3 (receiver of indications).

Theory of operation. Both machines have the two states of RFC 3994 §3, ``idle`` and ``active``,
take ``now`` (a monotonic clock reading, in seconds) with every input, and report their next
deadline with ``get_timer()``; the adapter calls ``handle_timer(now)`` when it passes. Nothing here
sends or sleeps.

Composer (:class:`ComposingSender`, one per conversation)::

    idle --keystroke--> active          send "active" (with refresh and contenttype)
    active --keystroke--> active        push the idle deadline back; send nothing
    active --refresh interval--> active send "active" again (a refresh)
    active --idle timeout--> idle       send "idle" (with lastactive)
    active --message sent--> idle       send nothing: the message itself tells the peer (§3.2)
    active --stop()--> idle             send "idle" (the user cleared the draft)

Receiver (:class:`ComposingReceiver`, one per UA, keyed by sender)::

    idle --"active" received--> active       event; deadline = now + refresh (120 s default) + grace
    active --"active" received--> active     deadline renewed; event only if contenttype changed
    active --"idle" received--> idle         event
    active --deadline passed--> idle         event (cause TIMEOUT, RFC 3994 §3.3)
    active --content message received--> idle event (cause MESSAGE, RFC 3994 §3.3)

The receiver tracks at most ``max_senders`` active senders; past that the one closest to timing
out is set idle early (an event with cause LIMIT), so a flood of senders costs bounded memory.
"""

from __future__ import annotations

import datetime as _dt
import enum
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError
from .codec import ComposingState, IsComposing

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_REFRESH",
    "MIN_REFRESH",
    "ChangeCause",
    "ComposingReceiver",
    "ComposingSender",
    "ComposingStateChanged",
]

DEFAULT_REFRESH: Final = 120
"""Seconds between refreshes of an active state, and the receiver's timeout when an indication
carries no ``<refresh>`` (RFC 3994 §3.2, §3.3)."""

MIN_REFRESH: Final = 60
"""The shortest refresh interval a composer may use: RFC 3994 §3.2 keeps refreshes at least this
far apart so that indications do not load the network."""

DEFAULT_IDLE_TIMEOUT: Final = 15.0
"""Seconds without composing activity after which a composer goes idle (RFC 3994 §3.2)."""

DEFAULT_GRACE: Final = 10.0
"""Seconds the receiver waits past a refresh interval before timing out: a composer refreshing
exactly at the interval it announced (as RFC 3994 §3.2 has it) reaches us a network delay later."""

DEFAULT_MAX_REFRESH: Final = 3600
"""The receiver caps a peer's ``<refresh>`` at this many seconds, so no indication can pin a
sender as active for days (a local bound; RFC 3994 sets no maximum)."""


class ChangeCause(enum.Enum):
    """Why a receiver-side state changed."""

    #: An indication was received.
    INDICATION = "indication"
    #: An active state was not refreshed in time (RFC 3994 §3.3).
    TIMEOUT = "timeout"
    #: A content message arrived from the sender (RFC 3994 §3.3).
    MESSAGE = "message"
    #: Too many active senders: the one closest to timing out was dropped early.
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class ComposingStateChanged:
    """A sender's composing state as the receiver now sees it."""

    #: Who is (not) composing: the sender's address as the adapter keys it (e.g. the From URI).
    sender: str
    #: The new state.
    state: ComposingState
    #: What is being composed, from the last indication (None when not given).
    content_type: str | None
    #: The refresh interval the sender announced (None when not given or when idle).
    refresh: int | None
    #: When the sender was last active, as the sender wrote it (idle indications carry it).
    last_active: _dt.datetime | None
    #: Why the state changed.
    cause: ChangeCause


@dataclass(slots=True)
class _Active:
    deadline: float
    content_type: str | None
    refresh: int | None
    last_active: _dt.datetime | None


class ComposingReceiver:
    """Receiver side of RFC 3994 §3.3 for every sender at once. Drain ``next_event()`` after
    each input."""

    def __init__(
        self,
        *,
        default_refresh: float = DEFAULT_REFRESH,
        grace: float = DEFAULT_GRACE,
        max_refresh: float = DEFAULT_MAX_REFRESH,
        max_senders: int = 1024,
    ) -> None:
        if default_refresh <= 0 or max_refresh <= 0 or max_senders <= 0 or grace < 0:
            raise ValueError("default_refresh, max_refresh and max_senders must be positive, grace >= 0")
        self.default_refresh = default_refresh
        self.grace = grace
        self.max_refresh = max_refresh
        self.max_senders = max_senders
        self._active: dict[str, _Active] = {}
        # (deadline, sequence, sender); an entry is stale when the sender's deadline moved.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._events: deque[ComposingStateChanged] = deque()

    # -- inputs ---------------------------------------------------------------------------------

    def receive(self, sender: str, indication: IsComposing, now: float) -> None:
        """An indication from ``sender`` arrived (already parsed; the UAS answered it 200)."""
        current = self._active.get(sender)
        if indication.state is ComposingState.IDLE:
            if current is not None:
                del self._active[sender]
                self._emit(sender, ComposingState.IDLE,
                           content_type=indication.content_type or current.content_type, refresh=None,
                           last_active=indication.last_active, cause=ChangeCause.INDICATION)
            return
        interval = min(float(indication.refresh or self.default_refresh), self.max_refresh)
        deadline = now + interval + self.grace
        if current is None:
            if len(self._active) >= self.max_senders:
                self._evict_one()
            self._active[sender] = _Active(deadline, indication.content_type, indication.refresh,
                                           indication.last_active)
            self._push(deadline, sender)
            self._emit(sender, ComposingState.ACTIVE, content_type=indication.content_type,
                       refresh=indication.refresh, last_active=indication.last_active,
                       cause=ChangeCause.INDICATION)
            return
        changed = indication.content_type != current.content_type
        current.deadline = deadline
        current.content_type = indication.content_type
        current.refresh = indication.refresh
        current.last_active = indication.last_active or current.last_active
        self._push(deadline, sender)
        if changed:
            self._emit(sender, ComposingState.ACTIVE, content_type=indication.content_type,
                       refresh=indication.refresh, last_active=current.last_active,
                       cause=ChangeCause.INDICATION)

    def message_received(self, sender: str, now: float) -> None:
        """A content message from ``sender`` arrived: an active sender becomes idle (§3.3)."""
        current = self._active.pop(sender, None)
        if current is not None:
            self._emit(sender, ComposingState.IDLE, content_type=current.content_type, refresh=None,
                       last_active=current.last_active, cause=ChangeCause.MESSAGE)

    def handle_timer(self, now: float) -> None:
        """Set idle every active sender whose refresh interval has passed (§3.3)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _seq, sender = heapq.heappop(heap)
            current = self._active.get(sender)
            if current is None or current.deadline != deadline:
                continue  # stale: refreshed, idled or evicted since
            del self._active[sender]
            self._emit(sender, ComposingState.IDLE, content_type=current.content_type, refresh=None,
                       last_active=current.last_active, cause=ChangeCause.TIMEOUT)

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of an active sender, or None when nobody is active."""
        heap = self._heap
        while heap:
            deadline, _seq, sender = heap[0]
            current = self._active.get(sender)
            if current is not None and current.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def next_event(self) -> ComposingStateChanged | None:
        """The next state change, or None."""
        return self._events.popleft() if self._events else None

    def state_of(self, sender: str) -> ComposingState:
        """The state of ``sender`` as last seen (idle for anyone unknown)."""
        return ComposingState.ACTIVE if sender in self._active else ComposingState.IDLE

    def active_senders(self) -> list[str]:
        """Everyone currently active."""
        return list(self._active)

    # -- internals ------------------------------------------------------------------------------

    def _push(self, deadline: float, sender: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, sender))
        if len(self._heap) > 2 * len(self._active) + 64:
            # Refreshes leave stale entries behind: rebuild so the heap stays bounded.
            self._heap = [(a.deadline, i, s) for i, (s, a) in enumerate(self._active.items())]
            heapq.heapify(self._heap)

    def _evict_one(self) -> None:
        sender = min(self._active, key=lambda s: self._active[s].deadline)
        current = self._active.pop(sender)
        self._emit(sender, ComposingState.IDLE, content_type=current.content_type, refresh=None,
                   last_active=current.last_active, cause=ChangeCause.LIMIT)

    def _emit(self, sender: str, state: ComposingState, *, content_type: str | None, refresh: int | None,
              last_active: _dt.datetime | None, cause: ChangeCause) -> None:
        self._events.append(ComposingStateChanged(sender, state, content_type, refresh, last_active, cause))


class ComposingSender:
    """Composer side of RFC 3994 §3.2 for one conversation. Send what ``next_indication()``
    returns, each as its own MESSAGE, after each input.

    ``wall_time`` turns a ``now`` into the wall-clock time written as ``<lastactive>`` in idle
    indications; without it, ``<lastactive>`` is left out (it is optional, RFC 3994 §6).
    """

    def __init__(
        self,
        *,
        refresh: int = DEFAULT_REFRESH,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        content_type: str | None = "text/plain",
        wall_time: Callable[[float], _dt.datetime] | None = None,
    ) -> None:
        if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < MIN_REFRESH:
            raise LocalProtocolError(
                f"refresh must be an integer of at least {MIN_REFRESH} s (RFC 3994 §3.2), not {refresh!r}"
            )
        if idle_timeout <= 0:
            raise LocalProtocolError("idle_timeout must be positive")
        self.refresh = refresh
        self.idle_timeout = idle_timeout
        self.content_type = content_type
        self._wall_time = wall_time
        self._state = ComposingState.IDLE
        self._last_activity: float | None = None
        self._refresh_at: float | None = None
        self._outbox: deque[IsComposing] = deque()

    @property
    def state(self) -> ComposingState:
        """The composer's state."""
        return self._state

    # -- inputs ---------------------------------------------------------------------------------

    def keystroke(self, now: float) -> None:
        """The user did something to the draft (typed, recorded, ...)."""
        self._last_activity = now
        if self._state is ComposingState.IDLE:
            self._state = ComposingState.ACTIVE
            self._refresh_at = now + self.refresh
            self._outbox.append(self._active_indication())

    def message_sent(self, now: float) -> None:
        """The draft was sent as a message: idle, with no idle indication (RFC 3994 §3.2)."""
        self._go_idle(now, announce=False)

    def stop(self, now: float) -> None:
        """The user abandoned the draft: idle now, announced with an idle indication."""
        self._go_idle(now, announce=True)

    def handle_timer(self, now: float) -> None:
        """Act on the idle timeout or the refresh interval if either has passed."""
        if self._state is not ComposingState.ACTIVE:
            return
        assert self._last_activity is not None and self._refresh_at is not None
        if now >= self._last_activity + self.idle_timeout:
            self._go_idle(now, announce=True)
            return
        if now >= self._refresh_at:
            self._outbox.append(self._active_indication())
            # The next refresh counts from this one, so a late timer never causes a burst.
            self._refresh_at = now + self.refresh

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has something to do (None while idle)."""
        if self._state is not ComposingState.ACTIVE:
            return None
        assert self._last_activity is not None and self._refresh_at is not None
        return min(self._last_activity + self.idle_timeout, self._refresh_at)

    def next_indication(self) -> IsComposing | None:
        """The next indication to send, or None."""
        return self._outbox.popleft() if self._outbox else None

    # -- internals ------------------------------------------------------------------------------

    def _active_indication(self) -> IsComposing:
        return IsComposing(ComposingState.ACTIVE, content_type=self.content_type, refresh=self.refresh)

    def _go_idle(self, now: float, *, announce: bool) -> None:
        if self._state is ComposingState.IDLE:
            return
        self._state = ComposingState.IDLE
        self._refresh_at = None
        # An active indication not yet taken is moot now.
        self._outbox = deque(i for i in self._outbox if i.state is not ComposingState.ACTIVE)
        if announce:
            assert self._last_activity is not None
            last = self._wall_time(self._last_activity) if self._wall_time is not None else None
            self._outbox.append(IsComposing(ComposingState.IDLE, last_active=last,
                                            content_type=self.content_type))
        self._last_activity = None
