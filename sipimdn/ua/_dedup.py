"""The duplicate cache for received messages (peers.md pain point 5).

Retransmissions are absorbed by the server transaction and never get here.
What does get here is a MESSAGE the peer sent again in a *new* transaction
(a UAC retry after a lost 200 over TCP, where Timer J is 0, a relay
re-delivering), which must be answered but not handed to the application
twice. Messages with a CPIM ``imdn.Message-ID`` are de-duplicated by the
tracker on (sender, Message-ID), persistently; this cache is for plain
text, which has no Message-ID: its key is the sender plus the SIP
transaction identity (Call-ID, From tag, CSeq number), never Call-ID alone,
since reSIProcate reuses one Call-ID across pager MESSAGEs. Sans-IO: time
comes in as ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["DuplicateCache"]


class DuplicateCache:
    """Bounded, time-limited memory of message keys already handed up."""

    def __init__(self, capacity: int, ttl: float) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity must be >= 1 and ttl > 0")
        self._capacity = capacity
        self._ttl = ttl
        # key -> [expiry, final status answered or None while undecided];
        # insertion order is expiry order because ttl is constant.
        self._entries: OrderedDict[Hashable, tuple[float, int | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (expiry, _) = next(iter(self._entries.items()))
            if expiry > now:
                break
            del self._entries[key]

    def seen(self, key: Hashable, now: float) -> bool:
        """Record ``key``; return True if it was already recorded and not expired."""
        self._expire(now)
        if key in self._entries:
            return True
        self._entries[key] = (now + self._ttl, None)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return False

    def set_answer(self, key: Hashable, status: int) -> None:
        """Remember the final status the first copy of ``key`` was answered with."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries[key] = (entry[0], status)

    def answer(self, key: Hashable) -> int | None:
        """The status the first copy got, or None if not (yet) decided or unknown."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def forget(self, key: Hashable) -> None:
        """Drop ``key`` (e.g. the message was refused and may be sent again)."""
        self._entries.pop(key, None)
