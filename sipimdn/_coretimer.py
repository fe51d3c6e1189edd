"""One event-loop timer for a sans-IO core: the adapter's side of ``get_timer()``/``handle_timer(now)``.

Every core here (the transaction layer, the tracker, the intermediary's
forwarder and exploder) reports its earliest deadline and acts on
``handle_timer(now)``; its asyncio adapter keeps exactly one loop timer for it
and re-arms it after every input (aioquic's ``QuicConnectionProtocol`` keeps one
``TimerHandle`` the same way). :class:`CoreTimer` is that timer:

- deadlines are in the core's clock: the wall clock (``time.time``) for the
  cores whose records survive restarts (tracker, forwarder, exploder), where
  monotonic time would mean nothing after a restart, or the loop's own
  monotonic clock for the transaction layer (``clock=None``);
- ``fire(now)`` never runs before the deadline and ``now`` is never before it
  (asyncio may run a handle a hair early, and the wall clock drifts from the
  loop's);
- re-arming at the deadline already armed is free; with ``lazy`` a deadline
  that moved *later* keeps the armed handle (it fires, the core finds nothing
  due, the adapter re-arms), which saves a ``call_at``/``cancel`` pair on
  almost every input of a busy transaction layer;
- with ``slot`` deadlines are rounded up to a multiple of ``slot`` seconds, so
  deadlines close together share one wake-up.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

__all__ = ["CoreTimer"]


class CoreTimer:
    """Call ``fire(now)`` once ``clock`` reaches the armed deadline (never before it)."""

    __slots__ = ("_at", "_clock", "_fire", "_handle", "_lazy", "_loop", "slot")

    def __init__(
        self,
        fire: Callable[[float], None],
        *,
        clock: Callable[[], float] | None = time.time,
        slot: float = 0.0,
        lazy: bool = False,
    ) -> None:
        """``clock``: the clock of the deadlines, None for the event loop's own (``loop.time()``)."""
        self._fire = fire
        self._clock = clock
        self.slot = slot
        """Deadlines are rounded up to a multiple of this many seconds; 0 keeps them exact."""
        self._lazy = lazy
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._at: float | None = None

    def arm(self, at: float | None) -> None:
        """Fire at ``at`` instead of any earlier arming; None disarms (unless ``lazy``)."""
        if at is None:
            if not self._lazy:
                self.cancel()
            return
        slot = self.slot
        if slot > 0:
            rounded = math.ceil(at / slot) * slot
            at = rounded if rounded >= at else rounded + slot  # never before the deadline
        armed = self._at
        if armed is not None and self._handle is not None and (armed == at or (self._lazy and armed < at)):
            return
        self.cancel()
        self._at = at
        loop = self._loop = asyncio.get_running_loop()
        clock = self._clock
        when = at if clock is None else loop.time() + max(0.0, at - clock())
        self._handle = loop.call_at(when, self._on_timer)

    @property
    def at(self) -> float | None:
        """The armed deadline (after rounding to the slot), None when disarmed."""
        return self._at if self._handle is not None else None

    def cancel(self) -> None:
        """Disarm."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = None

    def _on_timer(self) -> None:
        self._handle = None
        at, self._at = self._at, None
        clock = self._clock
        now = clock() if clock is not None else self._loop.time() if self._loop is not None else 0.0
        self._fire(max(at or 0.0, now))
