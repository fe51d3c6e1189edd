"""RFC 3428 §8: one outstanding out-of-dialog MESSAGE transaction per URI.

RFC 3428 §8 forbids a UAC to start a new MESSAGE transaction towards a URI
while an earlier MESSAGE transaction towards that same URI is still pending
(no final response, no timeout, no transport failure yet). The rule keeps a
chatty sender from flooding a congested path with parallel transactions,
each retransmitting on its own over UDP. It applies to every MESSAGE we
originate, instant messages and IMDNs alike, since an IMDN is a MESSAGE too.

:class:`DestinationQueue` enforces it: each destination key (the normalised
Request-URI) has at most one holder; later senders wait in FIFO order, so
messages to one peer also leave in the order the application sent them.
Different destinations never wait for each other. The user agent queues by
Request-URI; the store-and-forward intermediary queues its deliveries to a
contact the same way, so held messages released together arrive in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

__all__ = ["DestinationKey", "DestinationQueue"]


class DestinationKey:
    """A hashable destination (a :class:`~sipimdn.uri.Uri`) whose hash is computed once.

    A turn costs several dictionary operations on its key; the wrapped value
    is hashed once, here (a Uri keeps its own hash, but any other hashable
    may not). Equal when the wrapped values are equal.
    """

    __slots__ = ("_hash", "value")

    def __init__(self, value: Hashable) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, DestinationKey) and self._hash == other._hash and self.value == other.value

    def __repr__(self) -> str:
        return f"DestinationKey({self.value!r})"


class DestinationQueue:
    """A FIFO turn per destination; at most one transaction in flight to each."""

    def __init__(self) -> None:
        # key -> waiters; the presence of the key means a transaction is pending.
        self._busy: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        """How many destinations have a transaction pending (a free one is forgotten)."""
        return len(self._busy)

    async def acquire(self, key: Hashable) -> None:
        """Wait until no other transaction towards ``key`` is pending, then hold the turn."""
        waiters = self._busy.get(key)
        if waiters is None:
            self._busy[key] = deque()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The turn was handed to us just as we were cancelled: pass it on,
                # or the destination would stay blocked forever.
                self.release(key)
            else:
                waiters.remove(future)
            raise

    def try_acquire(self, key: Hashable) -> bool:
        """Hold the turn for ``key`` if it is free (then True), without waiting: False if taken."""
        if key in self._busy:
            return False
        self._busy[key] = deque()
        return True

    def release(self, key: Hashable) -> None:
        """Give the turn for ``key`` to the next waiter, or free the destination."""
        waiters = self._busy.get(key)
        if waiters is None:
            raise RuntimeError(f"release of {key!r} which is not pending")
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        del self._busy[key]

    @asynccontextmanager
    async def turn(self, key: Hashable) -> AsyncIterator[None]:
        """``async with queue.turn(uri):`` runs one transaction towards ``uri``."""
        await self.acquire(key)
        try:
            yield
        finally:
            self.release(key)
