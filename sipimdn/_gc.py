"""Cyclic garbage collector settings for a long-running user agent.

CPython's cycle collector runs a young collection every 700 net container
allocations and, now and then, a full collection that walks every tracked
object of the process. A user agent under load allocates a few hundred
containers per message (parsed headers, CPIM and IMDN values, transactions,
tasks), so with the defaults it runs a young collection every couple of
messages, promotes whatever happens to be in flight at that moment into the
older generations, and pays for those survivors again in the full
collections, which walk the whole heap: tens of milliseconds each at a few
thousand messages per second, stalling every answer queued behind them.

:func:`tune_for_throughput` changes two things, process-wide:

* **freeze** (``gc.freeze()``, once, after one collection): everything alive at
  start-up (modules, lxml and its schema, compiled regular expressions,
  caches, the configuration) moves to the permanent generation, which
  collections never walk. Frozen objects are still freed by reference
  counting; only a reference cycle among them would outlive its use, and
  start-up state lives as long as the process anyway.
* **thresholds**: a young collection every ``gen0`` allocations instead of 700,
  so that the objects of the messages in flight are mostly dead by the time it
  runs (fewer survivors promoted, less for the full collections to walk),
  and a full collection only after ``gen2`` middle collections instead of 10
  (CPython additionally waits until the objects promoted since the last full
  collection reach a quarter of those that survived it).

What it costs: between two young collections up to ``gen0`` container objects
that are already unreachable through a cycle wait to be freed (reference
counting frees the rest at once), a few megabytes with the defaults here. It
changes interpreter state for the whole process, which is why
:class:`~sipimdn.UserAgentConfig` leaves it off by default: an application
embedding the user agent owns its process and its collector policy; the
``sipimdn listen`` command, which owns its process, turns it on.

Calls nest: every :func:`tune_for_throughput` is undone by calling the
function it returns; the first one applies the settings, the last release
restores the previous thresholds and unfreezes what was frozen.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["THROUGHPUT_THRESHOLDS", "tune_for_throughput"]

THROUGHPUT_THRESHOLDS: Final = (700, 5, 2000)
"""``gc.set_threshold`` values applied by :func:`tune_for_throughput` (CPython's: 700, 10, 10)."""

_lock = threading.Lock()
_users = 0
_saved: tuple[int, int, int] | None = None


def _nothing() -> None:
    pass


def tune_for_throughput(
    thresholds: tuple[int, int, int] = THROUGHPUT_THRESHOLDS, *, enabled: bool = True
) -> Callable[[], None]:
    """Freeze start-up objects and raise the collection thresholds; return the undo function.

    Only the first of nested calls changes anything (its ``thresholds`` win);
    the returned function may be called once, later calls do nothing. With
    ``enabled=False`` nothing changes and the undo function does nothing (so a
    caller holding a configuration switch needs no branch).
    """
    if len(thresholds) != 3 or any(t < 1 for t in thresholds):
        raise ValueError("thresholds must be three positive integers")
    if not enabled:
        return _nothing
    global _users, _saved  # noqa: PLW0603 - process-wide by nature: the collector is
    with _lock:
        _users += 1
        if _users == 1:
            _saved = gc.get_threshold()
            gc.collect()  # what is garbage now must not be frozen with the rest
            gc.freeze()
            gc.set_threshold(*thresholds)
    released = False

    def release() -> None:
        nonlocal released
        global _users, _saved  # noqa: PLW0603
        with _lock:
            if released:
                return
            released = True
            _users -= 1
            if _users == 0 and _saved is not None:
                gc.unfreeze()
                gc.set_threshold(*_saved)
                _saved = None

    return release
