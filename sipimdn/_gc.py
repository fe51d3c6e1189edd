"""Cyclic garbage collector settings for a long-running user agent.

CPython's cycle collector runs a young collection every 700 net container
allocations, a middle one every 10 young ones and a full one every 10 middle
ones (once the objects promoted since the last full collection reach a quarter
of those that survived it). A full collection walks every tracked object of
the process; under load most of those are alive for a reason (server
transactions held for Timer J, 32 s on UDP; the tracker's records), so each
walk costs 100-500 ms at a few thousand messages per second and stalls every
answer queued behind it, while finding nothing: measured under load, the
stack makes no cyclic garbage once started (bench/README.md, "Per-core speed").

:func:`tune_for_throughput` changes two things, process-wide:

* **freeze** (``gc.freeze()``, once, after one collection): everything alive at
  that moment (modules, lxml and its schema, compiled regular expressions,
  caches, the agent's own start-up state) moves to the permanent generation,
  which collections never walk. Frozen objects are still freed by reference
  counting; a reference cycle among them is collected only after the release.
* **thresholds** :data:`THROUGHPUT_THRESHOLDS`: young collections as CPython
  has them (a larger young generation lengthens each young pause without
  saving CPU here), a middle one every 5 young ones (half the pause), and a
  full one after 2,000 middle ones instead of 10.

What it costs: a cycle that survives two young collections waits for the next
full collection (minutes at load instead of seconds), and the full collection
that does come walks the whole live set as before. It changes interpreter
state for the whole process, which is why :class:`~sipimdn.UserAgentConfig`
leaves it off by default: an application embedding the user agent owns its
process, its own cyclic garbage and its collector policy; the ``sipimdn
listen`` command, which owns its process, turns it on.

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
