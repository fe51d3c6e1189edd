"""Log lines that a peer's traffic can cause, written at most once per period.

A hostile or broken peer decides how often the stack meets a refused connection, a forged
notification or a notification it declines to send; one log line per occurrence would let it
fill the operator's disk and drown everything else. :class:`RateLimitedLog` writes the first
line of each period and folds the rest into a count carried by the next line it writes;
:class:`RateLimitedTally` is the counting underneath, for callers that report a count in a line of
their own (the tracker's evictions). The counters in ``UserAgent.stats()`` (and the metrics)
still count every occurrence.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_PERIOD", "RateLimitedLog", "RateLimitedTally"]

#: Seconds between two lines of one :class:`RateLimitedLog`.
LOG_PERIOD = 10.0


class RateLimitedTally:
    """Occurrences counted, reported at most once per ``period`` seconds.

    :meth:`add` returns the count to report when a report is due (everything added since the
    last one, these included), else None; ``now`` (any monotonic clock) is given by the caller.
    """

    def __init__(self, period: float = LOG_PERIOD) -> None:
        self.period = period
        self._next = float("-inf")
        self._pending = 0

    def add(self, now: float, count: int = 1) -> int | None:
        self._pending += count
        if not self._pending or now < self._next:
            return None
        due, self._pending = self._pending, 0
        self._next = now + self.period
        return due

    @property
    def pending(self) -> int:
        """Occurrences added since the last report."""
        return self._pending


class RateLimitedLog:
    """Log through ``logger`` at ``level``, at most once per ``period`` seconds, telling how many
    lines were held back meanwhile. ``now`` (any monotonic clock) is given by the caller."""

    def __init__(self, logger: logging.Logger, level: int, period: float = LOG_PERIOD) -> None:
        self._logger = logger
        self._level = level
        self._tally = RateLimitedTally(period)

    def __call__(self, now: float, message: str, *args: object) -> None:
        due = self._tally.add(now)
        if due is None:
            return
        if due > 1:  # this line and the ones held back since the last
            message += f" ({due - 1} more like this in the last {self._tally.period:g} s)"
        self._logger.log(self._level, message, *args)

    @property
    def held(self) -> int:
        """Lines held back since the last one written."""
        return self._tally.pending
