"""Bounded memo tables for immutable parse results and derived texts; no I/O.

The parsers see the same few values over and over (our own AOR, a peer's
From, ``message/cpim``, ``Disposition-Notification: positive-delivery,
display``), and their results are immutable, so they are kept in plain dicts
by input text. Every such table must stay bounded whatever a peer sends; the
functions here are the one way they store. The policy is the simplest that is
bounded: a full table is emptied, and the handful of hot values come straight
back. Unlike least-recently-used order this costs nothing on a hit, which is
the case that matters: a hit is the dict's own ``get`` (the tables stay plain
dicts because CPython calls ``dict.get`` fastest on an exact dict).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

__all__ = ["remember", "remember_text"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, capacity: int) -> V:
    """Store ``value`` under ``key`` in ``table`` (emptied first if it holds ``capacity`` entries).

    Returns ``value``, so a miss reads ``return remember(table, key, parse(key), N)``.
    """
    if len(table) >= capacity:
        table.clear()
    table[key] = value
    return value


def remember_text(table: dict[str, V], key: str, value: V, capacity: int, *, max_key: int = 256) -> V:
    """:func:`remember` for a table keyed by received text: keys over ``max_key`` characters are
    not stored, so a peer cannot pin much memory by sending long values. Returns ``value``."""
    if len(key) <= max_key:
        if len(table) >= capacity:
            table.clear()
        table[key] = value
    return value
