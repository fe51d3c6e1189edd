"""Store I/O off the event loop, in order, in one worker thread.

The tracker is sans-IO: every change it makes is queued as a store
operation (write-behind log, ARCHITECTURE §4). The user agent drains those
operations after every tracker call and hands them here. One dedicated
thread applies them, so the event loop never waits on SQLite and the
operations reach the store in exactly the order the tracker produced them
(a single worker consumes its queue FIFO). A failing write is logged with
its cause; it cannot be handed back to the code that caused it, which has
long moved on, and must not kill the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..store import Snapshot, Store, StoreOp

__all__ = ["StoreWriter"]

_log = logging.getLogger("sipimdn.ua.store")


class StoreWriter:
    """Runs every call on ``store`` in one worker thread, in submission order."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipimdn-store")
        self._pending: set[asyncio.Future[None]] = set()
        self._failures = 0
        self._closed = False

    @property
    def failures(self) -> int:
        """How many write batches failed (each was logged)."""
        return self._failures

    async def open(self, factory: Callable[[], Store]) -> None:
        """Create the store in the worker thread (SQLite connections like their own thread)."""
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, factory)

    def _require(self) -> Store:
        if self._store is None:
            raise RuntimeError("store writer not opened")
        return self._store

    async def load(self, now: float) -> Snapshot:
        """Load everything not expired at ``now`` (off the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._require().load, now)

    def _apply(self, ops: Sequence[StoreOp]) -> None:
        try:
            self._require().apply(ops)
        except Exception:
            self._failures += 1
            _log.exception("store write of %d operation(s) failed", len(ops))

    def _purge(self, now: float) -> None:
        try:
            removed = self._require().purge(now)
        except Exception:
            self._failures += 1
            _log.exception("store purge failed")
        else:
            if removed:
                _log.debug("store purge removed %d expired entries", removed)

    def _track(self, future: asyncio.Future[None]) -> None:
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def submit(self, ops: Sequence[StoreOp]) -> None:
        """Queue ``ops`` to be applied atomically after everything queued before."""
        if not ops:
            return
        if self._closed:
            raise RuntimeError("store writer is closed")
        loop = asyncio.get_running_loop()
        self._track(loop.run_in_executor(self._executor, self._apply, list(ops)))

    def purge(self, now: float) -> None:
        """Queue removal of entries expired at ``now``."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._track(loop.run_in_executor(self._executor, self._purge, now))

    async def flush(self) -> None:
        """Wait until everything submitted so far has reached the store."""
        if self._pending:
            await asyncio.gather(*self._pending)

    async def close(self) -> None:
        """Flush, close the store and stop the worker thread."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            if self._store is not None:
                await loop.run_in_executor(self._executor, self._store.close)
        finally:
            self._executor.shutdown(wait=True)
