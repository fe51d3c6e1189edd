"""One event-loop timer for a sans-IO core whose deadlines are wall-clock seconds.

The tracker and the intermediary's forwarder and exploder take ``now`` from ``time.time()`` (their
records survive restarts, so monotonic time would mean nothing there) and report their next
deadline; the asyncio adapters keep exactly one loop timer for it. Re-arming at the deadline
already armed is free, which matters because the adapters re-arm after every input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["WallClockTimer"]


class WallClockTimer:
    """Call ``fire(now)`` once the wall clock reaches the armed deadline (never before it)."""

    __slots__ = ("_at", "_fire", "_handle")

    def __init__(self, fire: Callable[[float], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, at: float | None) -> None:
        """Fire at wall-clock ``at`` instead of any earlier arming; None disarms."""
        if at == self._at and (self._handle is not None or at is None):
            return
        self.cancel()
        self._at = at
        if at is not None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + max(0.0, at - time.time()), self._on_timer)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = None

    def _on_timer(self) -> None:
        self._handle = None
        at, self._at = self._at, None
        # The loop's clock and the wall clock drift apart: never report a time before the deadline.
        self._fire(max(at or 0.0, time.time()))
