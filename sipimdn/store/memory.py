"""An in-memory :class:`~sipimdn.store.base.Store`: for tests and for UAs that need no persistence."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import StoreError
from .base import TABLES, AnyRecord, Delete, Put, Snapshot, StoreOp, check_op, snapshot_from_records

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps records in dictionaries, one per table, behind a lock.

    Records are immutable, so :meth:`load` can hand them out without copying.
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
            self._check_open()
            for op in ops:
                if isinstance(op, Put):
                    self._tables[op.record.TABLE][op.record.key] = op.record
                elif isinstance(op, Delete):
                    self._tables[op.table].pop(op.key, None)

    def load(self, now: float) -> Snapshot:
        """Every record that has not expired at ``now``."""
        with self._lock:
            self._check_open()
            live = [r for table in self._tables.values() for r in table.values() if r.expires_at > now]
        return snapshot_from_records(live)

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
