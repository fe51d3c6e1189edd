"""Log lines that a peer's traffic can cause, written at most once per period.

A hostile or broken peer decides how often the stack meets a refused connection, a forged
notification or a notification it declines to send; one log line per occurrence would let it
fill the operator's disk and drown everything else. :class:`RateLimitedLog` writes the first
line of each period and folds the rest into a count carried by the next line it writes. The
counters in ``UserAgent.stats()`` (and the metrics) still count every occurrence.
"""

from __future__ import annotations

import logging

__all__ = ["LOG_PERIOD", "RateLimitedLog"]

#: Seconds between two lines of one :class:`RateLimitedLog`.
LOG_PERIOD = 10.0


class RateLimitedLog:
    """Log through ``logger`` at ``level``, at most once per ``period`` seconds, telling how many
    lines were held back meanwhile. ``now`` (any monotonic clock) is given by the caller."""

    def __init__(self, logger: logging.Logger, level: int, period: float = LOG_PERIOD) -> None:
        self._logger = logger
        self._level = level
        self._period = period
        self._next = float("-inf")
        self._held = 0

    def __call__(self, now: float, message: str, *args: object) -> None:
        if now < self._next:
            self._held += 1
            return
        if self._held:
            message += f" ({self._held} more like this in the last {self._period:g} s)"
            self._held = 0
        self._next = now + self._period
        self._logger.log(self._level, message, *args)

    @property
    def held(self) -> int:
        """Lines held back since the last one written."""
        return self._held
