"""An in-memory :class:`~sipimdn.store.base.Store`: for tests and for UAs that need no persistence."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import StoreError
from .base import (
    TABLES,
    AnyRecord,
    Delete,
    Put,
    ReceivedRecord,
    SentRecord,
    Snapshot,
    StoreOp,
    check_op,
    received_key,
    snapshot_from_records,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps records in dictionaries, one per table, behind a lock.

    Records are immutable, so :meth:`load` can hand them out without copying.
    Reads single records back (:class:`~sipimdn.store.base.WorkingSetStore`) by
    scanning: it is meant for tests and small amounts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, AnyRecord]] = {table: {} for table in TABLES}
        self._closed = False

    def apply(self, ops: Sequence[StoreOp]) -> None:
        """Apply operations in order; a bad operation leaves the store untouched."""
        for op in ops:
            check_op(op)
        with self._lock:
            self._apply_locked(ops)

    def _apply_locked(self, ops: Sequence[StoreOp]) -> None:
        self._check_open()
        for op in ops:
            if isinstance(op, Put):
                self._tables[op.record.TABLE][op.record.key] = op.record
            elif isinstance(op, Delete):
                self._tables[op.table].pop(op.key, None)

    # -- InlineStore: a write is a few dictionary updates ---------------------------------------

    @property
    def inline_writes(self) -> bool:
        """True unless a subclass changed :meth:`apply` (what it does there may wait: this
        class cannot vouch for it, so its writes keep to the writer's worker thread)."""
        return type(self).apply is MemoryStore.apply

    def try_apply(self, ops: Sequence[StoreOp]) -> bool:
        """:meth:`apply` unless another thread holds the store (then False, nothing done)."""
        for op in ops:
            check_op(op)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._apply_locked(ops)
        finally:
            self._lock.release()
        return True

    @property
    def upkeep_due(self) -> bool:
        """Never: nothing is put off."""
        return False

    def upkeep(self) -> None:
        """Nothing to do."""

    def load(self, now: float) -> Snapshot:
        """Every record that has not expired at ``now``."""
        with self._lock:
            self._check_open()
            live = [r for table in self._tables.values() for r in table.values() if r.expires_at > now]
        return snapshot_from_records(live)

    def load_working_set(self, now: float, limit: int) -> Snapshot:
        """:meth:`load` with at most ``limit`` received and ``limit`` sent records (expiring last)."""
        with self._lock:
            self._check_open()
            live: list[AnyRecord] = []
            for name, table in self._tables.items():
                rows = [r for r in table.values() if r.expires_at > now]
                if name in (ReceivedRecord.TABLE, SentRecord.TABLE) and len(rows) > limit:
                    rows = sorted(rows, key=lambda r: r.expires_at)[-limit:]
                live.extend(rows)
        return snapshot_from_records(live)

    def load_received(
        self, message_id: str, sender_key: str | None, now: float
    ) -> tuple[ReceivedRecord, ...]:
        """The received records of ``message_id`` (from ``sender_key``, if given) not expired."""
        with self._lock:
            self._check_open()
            table = self._tables[ReceivedRecord.TABLE]
            if sender_key is not None:
                found = table.get(received_key(sender_key, message_id))
                rows = [] if found is None else [found]
            else:
                rows = [
                    r for r in table.values() if isinstance(r, ReceivedRecord) and r.message_id == message_id
                ]
        return tuple(r for r in rows if isinstance(r, ReceivedRecord) and r.expires_at > now)

    def load_sent(self, message_id: str, now: float) -> SentRecord | None:
        """The sent record of ``message_id``, unless expired."""
        with self._lock:
            self._check_open()
            found = self._tables[SentRecord.TABLE].get(message_id)
        return found if isinstance(found, SentRecord) and found.expires_at > now else None

    def load_sent_due(
        self, before: float, now: float, limit: int
    ) -> tuple[tuple[SentRecord, ...], float | None]:
        """Sent records with ``now < expires_at <= before`` (at most ``limit``, soonest first)
        and the earliest ``expires_at`` after ``before``."""
        with self._lock:
            self._check_open()
            rows = [r for r in self._tables[SentRecord.TABLE].values() if isinstance(r, SentRecord)]
        due = sorted((r for r in rows if now < r.expires_at <= before), key=lambda r: r.expires_at)
        later = [r.expires_at for r in rows if r.expires_at > before]
        return tuple(due[:limit]), min(later, default=None)

    def purge(self, now: float) -> int:
        """Drop expired records; return how many were dropped."""
        removed = 0
        with self._lock:
            self._check_open()
            for table in self._tables.values():
                dead = [key for key, record in table.items() if record.expires_at <= now]
                for key in dead:
                    del table[key]
                removed += len(dead)
        return removed

    def close(self) -> None:
        """Forget everything."""
        with self._lock:
            self._closed = True
            self._tables = {table: {} for table in TABLES}

    def __len__(self) -> int:
        with self._lock:
            return sum(len(table) for table in self._tables.values())

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")
