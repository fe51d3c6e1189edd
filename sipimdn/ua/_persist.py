"""Store I/O in order, off the event loop unless a write is cheaper made on it.

The tracker is sans-IO: every change it makes is queued as a store
operation (write-behind log, docs/ARCHITECTURE.md, "The disposition tracker"). The user agent drains those
operations after every tracker call and hands them here. One dedicated
thread applies them, so the event loop does not wait on SQLite, and the
operations reach the store in exactly the order the tracker produced them
(a single worker consumes its queue FIFO). Writes are batched: operations
submitted within ``batch_delay`` seconds reach the store as one ``apply``
(one SQLite transaction), because waking a Python worker thread for every
tiny write costs more in GIL hand-offs than the write itself. Under load
the batches grow by themselves: while one batch is being written, new
operations wait and go as the next batch the moment it completes (on one
core, handing the worker a batch hands it the CPU, so fewer hand-offs are
what saves time; an idle user agent still writes within ``batch_delay``).
Within a batch only the last operation on each record is applied (a
received message's dedup entry is written at reception and again with its
answer; both usually fall in one batch): records are independent, so this
keeps every record's final state and order. ``load``, ``purge`` and
``flush`` send what is buffered first, so they always see every write
submitted before them. ``written`` is the group commit the user agent
waits on before a 2xx or a send that must be durable: it waits only for
what was submitted before it, starts a batch at once when the worker is
idle and otherwise rides on the next one, so neither a steady stream of
writes can starve it nor does every waiter force its own transaction.

The one exception to "off the loop": a write someone waits on (``written``,
``when_written``) while the worker is idle, to a store whose writes are local
and short (:class:`~sipimdn.store.base.InlineStore`: in memory, SQLite
``:memory:``, a SQLite file only when opened with ``inline_writes=True``, as
its commits may wait on the disk; never PostgreSQL, nor a store fencing its
writes, see ``on_fenced``). Then the batch is applied
right here, on the loop's thread, and the waiters called before returning,
so a 2xx and the IMDN it releases leave in the loop turn that answers their
MESSAGE. The round trip through the worker cost more than the write: at 1,000
positive-delivery messages a second, about one batch per message, each a
hand-off to the worker, a wake-up of the loop through its self-pipe and two
more loop turns before the 2xx could leave (about 90 us of worker CPU per
message and 3.2 loop turns; a commit of a few rows takes about 17 us on the
calling thread against about 60 us on a worker just woken). Measured with
this (bench/README.md): 634 -> 586 us of CPU per message, 2.0 loop turns. The store only
ever tries (``InlineStore.try_apply`` takes its lock only if free and does not
wait out SQLite's busy timeout) and puts off what may wait (WAL checkpoints)
for ``InlineStore.upkeep``, queued to the worker. Order holds across both
paths: a batch goes inline only when no batch is in flight and every call
handed to the worker has finished, so it is exactly the batch the worker
would apply next; whatever the store cannot take at once goes to the worker
as before. A failing write is logged with its cause, the same on either
path; it cannot be handed back to the code that caused it, which has long
moved on, and must not kill the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..store import InlineStore, Put, SharedStore, Snapshot, Store, StoreOp

__all__ = ["StoreWriter", "coalesce"]

_log = logging.getLogger("sipimdn.ua.store")
_T = TypeVar("_T")


class StoreWriter:
    """Runs every call on ``store`` in one worker thread, in submission order (a write waited
    on while that thread is idle may be applied on the loop's: see the module docstring)."""

    def __init__(self, batch_delay: float = 0.01) -> None:
        self._store: Store | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipimdn-store")
        # Purges in the worker (flush waits for them too).
        self._pending: set[asyncio.Future[None]] = set()
        self._batch_delay = batch_delay
        # Submissions waiting for the next batch, each kept whole (see _apply).
        self._buffer: list[list[StoreOp]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        # Batches handed to the worker and not yet reported done; while any, timed batches wait.
        self._in_flight = 0
        self._failures = 0
        #: Batches applied, seconds spent applying them, and the slowest one (worker thread).
        self.writes = 0
        self.write_seconds = 0.0
        self.write_max_seconds = 0.0
        self._closed = False
        # Group commit (see written): submissions so far, how many of them have been
        # through the worker, and who waits for which count.
        self._submitted = 0
        self._applied = 0
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        # With a store other workers share: who hears of the writes fenced off (see on_fenced).
        self._on_fenced: Callable[[tuple[StoreOp, ...]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The store, when it takes writes on the loop's thread (see _write_inline), else None.
        self._inline: InlineStore | None = None
        # Calls handed to the worker, and those it finished (counted by the worker thread):
        # equal when its queue is empty.
        self._jobs_queued = 0
        self._jobs_done = 0
        # An upkeep call (InlineStore.upkeep) is queued and has not finished.
        self._upkeep_queued = False
        #: Batches of those applied on the loop's thread (see _write_inline).
        self.inline_writes = 0
        # Set by an inline write until the loop's next turn (see _write_inline).
        self._inline_turn: asyncio.Handle | None = None

    @property
    def failures(self) -> int:
        """How many write batches failed (each was logged)."""
        return self._failures

    async def open(self, factory: Callable[[], Store]) -> None:
        """Create the store in the worker thread (SQLite connections like their own thread)."""
        self._store = store = await self._run(factory)
        if isinstance(store, InlineStore) and store.inline_writes:
            self._inline = store

    @property
    def store(self) -> Store:
        """The store (once :meth:`open` returned)."""
        return self._require()

    async def load_own(self, now: float) -> Snapshot:
        """:meth:`SharedStore.load_own <sipimdn.store.base.SharedStore.load_own>` (off the loop,
        after queued writes): what this worker resumes with when workers share the store."""
        self._send_now()
        store = self._require()
        if not isinstance(store, SharedStore):
            raise TypeError("not a shared store")
        return await self._run(store.load_own, now)

    def on_fenced(self, callback: Callable[[tuple[StoreOp, ...]], None]) -> None:
        """Write through :meth:`SharedStore.apply_owned <sipimdn.store.base.SharedStore.apply_owned>`
        from now on and call ``callback(ops)`` on this event loop with the operations of each
        batch that were fenced off (records another worker owns now)."""
        if not isinstance(self._require(), SharedStore):
            raise TypeError("not a shared store")
        self._loop = asyncio.get_running_loop()
        self._on_fenced = callback
        self._inline = None  # the fence is reported from the worker's writes

    def _write(self, store: Store, ops: list[StoreOp]) -> None:
        callback, loop = self._on_fenced, self._loop
        if callback is None or loop is None or not isinstance(store, SharedStore):
            store.apply(ops)
            return
        fenced = store.apply_owned(ops)
        if fenced:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to tell
                loop.call_soon_threadsafe(callback, fenced)

    def _require(self) -> Store:
        if self._store is None:
            raise RuntimeError("store writer not opened")
        return self._store

    async def load(self, now: float) -> Snapshot:
        """Load everything not expired at ``now`` (off the loop, after queued writes)."""
        self._send_now()
        return await self._run(self._require().load, now)

    async def read(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` (a store read) on the worker thread, after every write submitted
        before: it sees them all, and the event loop never waits on the store."""
        self._send_now()
        return await self._run(call, *args)

    def _run(self, call: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``call(*args)`` on the worker (queued now), after what was queued there before."""
        self._jobs_queued += 1
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(self._job, call, *args))

    def _queue(self, call: Callable[..., object], *args: Any) -> None:
        """Hand ``call(*args)`` to the worker without an asyncio future (it reports itself)."""
        self._jobs_queued += 1
        self._executor.submit(self._job, call, *args)

    def _job(self, call: Callable[..., _T], *args: Any) -> _T:
        # In the worker. Only this thread moves _jobs_done and only the loop _jobs_queued;
        # a stale read on the loop errs towards "busy" (the worker path), never the other way.
        try:
            return call(*args)
        finally:
            self._jobs_done += 1

    def _apply(self, batch: Sequence[Sequence[StoreOp]], inline: InlineStore | None = None) -> int:
        """Apply ``batch`` (submissions, in order) and return how many are through: applied, or
        failed and logged. All of them on the worker; ``inline`` (on the loop's thread, through
        :meth:`InlineStore.try_apply <sipimdn.store.base.InlineStore.try_apply>`) stops at the
        first the store could not write without waiting, which go to the worker instead."""
        store = self._require()
        started = time.perf_counter()
        try:
            merged = coalesce([op for ops in batch for op in ops])
            if inline is None:
                self._write(store, merged)
            elif not inline.try_apply(merged):
                return 0
            elapsed = time.perf_counter() - started
            # One thread at a time writes these (the loop only while the worker is idle);
            # the loop reads them for stats().
            self.writes += 1
            self.write_seconds += elapsed
            self.write_max_seconds = max(self.write_max_seconds, elapsed)
        except Exception:
            if len(batch) == 1:
                self._failures += 1
                _log.exception("store write of %d operation(s) failed", len(batch[0]))
                return 1
            # One bad submission must not take the others down: apply them one by one.
            for through, ops in enumerate(batch):
                if not self._apply([ops], inline):
                    return through
        return len(batch)

    def _purge(self, now: float) -> None:
        try:
            removed = self._require().purge(now)
        except Exception:
            self._failures += 1
            _log.exception("store purge failed")
        else:
            if removed:
                _log.debug("store purge removed %d expired entries", removed)

    def _upkeep(self, store: InlineStore) -> None:
        try:
            store.upkeep()
        except Exception:
            self._failures += 1
            _log.exception("store upkeep failed")
        finally:
            self._upkeep_queued = False

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
        self._submitted += 1
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self._batch_delay, self._send_buffer)

    def _send_buffer(self, *, force: bool = False) -> None:
        self._flush_handle = None
        if not self._buffer:
            return
        if self._in_flight and not force:
            return  # goes as one batch when the one being written completes (_batch_done)
        batch, self._buffer = self._buffer, []
        self._in_flight += 1
        # Everything submitted so far is in this batch or an earlier one (one worker, FIFO).
        self._queue(self._write_batch, asyncio.get_running_loop(), batch, self._submitted)

    def _write_inline(self) -> bool:
        """Apply the buffer here, on the loop's thread, if the store takes it without waiting
        and the worker is idle; True when everything submitted is through (waiters called).

        Order: the worker is idle when no batch is in flight and every call handed to it has
        finished, so everything submitted before the buffer is through already and the buffer
        is exactly what the worker would apply next; what it cannot take (the store would have
        to wait) stays at the head of the buffer for the worker. FIFO holds across both paths.

        One inline write per loop turn: under load a turn answers many messages at once (the
        UDP transport reads up to 32 datagrams a turn), and one commit each would lose the
        group commit that keeps the store's cost per message down (coalesced records, one
        transaction and one release of answers per batch; measured saturated: 470 against
        370 us per positive-delivery message). So the first goes inline and the others of
        that turn go to the worker, whose batches then grow while it writes, as before.
        """
        store = self._inline
        if store is None or self._in_flight or self._jobs_done != self._jobs_queued or self._closed:
            return False
        batch, self._buffer = self._buffer, []
        if batch:
            through = self._apply(batch, store)
            if through < len(batch):
                self._buffer = batch[through:]
                return False
            self.inline_writes += 1
            self._inline_turn = asyncio.get_running_loop().call_soon(self._turn_over)
        if store.upkeep_due and not self._upkeep_queued:
            self._upkeep_queued = True
            self._queue(self._upkeep, store)
        self._applied = self._submitted
        self._wake(self._submitted)
        return True

    def _write_batch(self, loop: asyncio.AbstractEventLoop, batch: list[list[StoreOp]], upto: int) -> None:
        """In the worker: apply one batch, then report to the loop (see :meth:`_batch_landed`).

        Not ``run_in_executor``: its asyncio future, the chaining of the two futures and
        their done callbacks cost the loop about 20 us per batch.
        """
        try:
            self._apply(batch)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(self._batch_landed, loop, upto)

    def _batch_landed(self, loop: asyncio.AbstractEventLoop, upto: int) -> None:
        # Runs ahead of what woke the loop with it (datagrams read in the same turn): the batch
        # counts as done one turn later, so that their writes go in the next batch instead of
        # one of their own each (one transaction and one hand-off to the worker per batch).
        loop.call_soon(self._batch_done, upto)

    def _batch_done(self, upto: int) -> None:
        self._in_flight -= 1
        if upto > self._applied:
            self._applied = upto
            self._wake(upto)
        if self._buffer and not self._closed and (self._flush_handle is None or self._waiters):
            # Waiters (written) do not wait out batch_delay: the buffer goes now.
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._send_buffer()

    def _wake(self, applied: int) -> None:
        if not self._waiters:
            return
        still = []
        due = []
        for target, callback in self._waiters:
            if target <= applied:
                due.append(callback)
            else:
                still.append((target, callback))
        self._waiters = still
        for callback in due:  # in registration order
            try:
                callback()
            except Exception:  # one failing callback must not strand the others
                _log.exception("callback after a store write failed")

    def _turn_over(self) -> None:
        self._inline_turn = None

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once every write submitted before this call has been through the store.

        Called at once (before returning) when nothing is outstanding or the
        writer is closed, else from the event loop as the batch completes;
        callbacks waiting for the same batch run in registration order. The
        callback form of :meth:`written` for code that needs no task of its
        own (the user agent's answer to a message owed notifications).
        """
        target = self._submitted
        if self._applied >= target or self._closed:
            callback()
            return
        self._waiters.append((target, callback))
        if not self._in_flight:
            # Idle worker: write now rather than after batch_delay: here if the store can
            # and no write went inline earlier in this loop turn (_write_inline), else on
            # the worker. Busy: the buffer goes as one batch the moment the current one
            # completes (_batch_done).
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            if self._inline_turn is not None or not self._write_inline():
                self._send_buffer()

    async def written(self) -> None:
        """Wait until every write submitted before this call has been through the store.

        A write that failed counts as through (it was logged and counted in
        :attr:`failures`): waiting longer would not make it succeed.
        """
        if self._applied >= self._submitted or self._closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.when_written(functools.partial(_resolve, waiter))
        await waiter

    def _send_now(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        # Forced: the single worker runs its queue in order, so what follows (a load,
        # a purge) still sees this batch, even with another one being written.
        self._send_buffer(force=True)

    def purge(self, now: float) -> None:
        """Queue removal of entries expired at ``now`` (after the writes queued before it)."""
        if self._closed:
            return
        self._send_now()
        self._track(self._run(self._purge, now))

    async def flush(self) -> None:
        """Wait until everything submitted so far has reached the store."""
        self._send_now()
        await self.written()
        if self._pending:
            await asyncio.gather(*self._pending)
        if self._buffer:  # submitted while we waited: those too
            await self.flush()

    async def close(self, *, close_store: bool = True) -> None:
        """Flush, close the store (unless told not to) and stop the worker thread."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        self._wake(self._submitted)
        try:
            if self._store is not None and close_store:
                await self._run(self._store.close)
        finally:
            self._executor.shutdown(wait=True)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def coalesce(ops: Sequence[StoreOp]) -> list[StoreOp]:
    """``ops`` with only the last operation on each record, in the order of those last ones.

    Records (one table and key each) are independent, so applying only the
    last Put or Delete of each gives the store the same final state.
    """
    if len(ops) < 2:
        return list(ops)
    last: dict[tuple[str, str], StoreOp] = {}
    for op in ops:
        ident = (op.record.TABLE, op.record.key) if isinstance(op, Put) else (op.table, op.key)
        last.pop(ident, None)  # re-inserted: the dict keeps the order of the last operations
        last[ident] = op
    return list(last.values())
