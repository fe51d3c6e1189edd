"""Store I/O off the event loop, in order, in one worker thread.

The tracker is sans-IO: every change it makes is queued as a store
operation (write-behind log, ARCHITECTURE §4). The user agent drains those
operations after every tracker call and hands them here. One dedicated
thread applies them, so the event loop never waits on SQLite and the
operations reach the store in exactly the order the tracker produced them
(a single worker consumes its queue FIFO). Writes are batched: operations
submitted within ``batch_delay`` seconds reach the store as one ``apply``
(one SQLite transaction), because waking a Python worker thread for every
tiny write costs more in GIL hand-offs than the write itself. A failing
write is logged with its cause; it cannot be handed back to the code that
caused it, which has long moved on, and must not kill the loop.
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

    def __init__(self, batch_delay: float = 0.01) -> None:
        self._store: Store | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipimdn-store")
        self._pending: set[asyncio.Future[None]] = set()
        self._batch_delay = batch_delay
        # Submissions waiting for the next batch, each kept whole (see _apply).
        self._buffer: list[list[StoreOp]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
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
        """Load everything not expired at ``now`` (off the loop, after queued writes)."""
        self._send_now()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._require().load, now)

    def _apply(self, batch: Sequence[Sequence[StoreOp]]) -> None:
        store = self._require()
        try:
            store.apply([op for ops in batch for op in ops])
        except Exception:
            if len(batch) == 1:
                self._failures += 1
                _log.exception("store write of %d operation(s) failed", len(batch[0]))
                return
            # One bad submission must not take the others down: apply them one by one.
            for ops in batch:
                self._apply([ops])

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
        """Queue ``ops`` to be applied after everything queued before (batched, in order)."""
        if not ops:
            return
        if self._closed:
            raise RuntimeError("store writer is closed")
        self._buffer.append(list(ops))
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self._batch_delay, self._send_buffer)

    def _send_buffer(self) -> None:
        self._flush_handle = None
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        loop = asyncio.get_running_loop()
        self._track(loop.run_in_executor(self._executor, self._apply, batch))

    def _send_now(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._send_buffer()

    def purge(self, now: float) -> None:
        """Queue removal of entries expired at ``now`` (after the writes queued before it)."""
        if self._closed:
            return
        self._send_now()
        loop = asyncio.get_running_loop()
        self._track(loop.run_in_executor(self._executor, self._purge, now))

    async def flush(self) -> None:
        """Wait until everything submitted so far has reached the store."""
        self._send_now()
        if self._pending:
            await asyncio.gather(*self._pending)

    async def close(self, *, close_store: bool = True) -> None:
        """Flush, close the store (unless told not to) and stop the worker thread."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            if self._store is not None and close_store:
                await loop.run_in_executor(self._executor, self._store.close)
        finally:
            self._executor.shutdown(wait=True)
