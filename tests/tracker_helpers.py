"""Helpers for the sans-IO disposition tracker tests: a tracker with predictable ids, and
its events drained.

Time is a plain float handed to the tracker (it reads no clock); notification ids come
out as ``n1``, ``n2``... so tests can name them.
"""

from __future__ import annotations

import itertools
from typing import Any

from sipimdn.imdn.tracker import DispositionTracker, TrackerConfig, TrackerEvent

__all__ = ["drain", "make_tracker"]


def make_tracker(**config: Any) -> DispositionTracker:
    """A tracker created at time 0 with ``TrackerConfig(**config)`` whose notification ids
    are ``n1``, ``n2``..."""
    counter = itertools.count(1)
    return DispositionTracker(TrackerConfig(**config), now=0.0, id_factory=lambda: f"n{next(counter)}")


def drain(tracker: DispositionTracker) -> list[TrackerEvent]:
    """Every event the tracker has queued, in order."""
    events: list[TrackerEvent] = []
    while (event := tracker.next_event()) is not None:
        events.append(event)
    return events
