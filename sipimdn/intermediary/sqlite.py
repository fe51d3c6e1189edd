"""Parked messages in SQLite: the durable :class:`~sipimdn.intermediary.store.ParkedStore`.

One table (WAL), one row per record as JSON. Apart from :mod:`.store` so that the sans-IO
store-and-forward core imports its records without sqlite3.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ..errors import StoreError
from .store import ImdnOrigin, ParkedMessage, ParkedOp, PutParked

__all__ = ["SqliteParkedStore"]


def _encode(record: ParkedMessage) -> str:
    data: dict[str, Any] = asdict(record)
    data["body"] = base64.b64encode(record.body).decode("ascii")
    return json.dumps(data, separators=(",", ":"))


def _decode(text: str) -> ParkedMessage:
    data = json.loads(text)
    data["body"] = base64.b64decode(data["body"])
    origin = data.get("origin")
    if origin is not None:
        origin["routes"] = tuple(origin["routes"])
        origin["requested"] = tuple(origin["requested"])
        data["origin"] = ImdnOrigin(**origin)
    data["owed"] = tuple(data["owed"])
    data["extra"] = tuple(tuple(pair) for pair in data["extra"])
    return ParkedMessage(**data)



class SqliteParkedStore:
    """Parked messages in one SQLite table (WAL), one row per record as JSON."""

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS parked (key TEXT PRIMARY KEY, expires_at REAL, record TEXT NOT NULL)"
    )

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        # NORMAL (with WAL): a commit survives a crash of the process, not a power cut;
        # FULL syncs every commit to disk (several ms per accepted message on most disks).
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown synchronous mode {synchronous!r}")
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path!r}: {exc}") from exc
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute(self._SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot initialise {path!r}: {exc}") from exc

    def apply(self, ops: Sequence[ParkedOp]) -> None:
        """Apply the operations in one transaction."""
        if not ops:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for op in ops:
                    if isinstance(op, PutParked):
                        self._db.execute(
                            "INSERT OR REPLACE INTO parked (key, expires_at, record) VALUES (?, ?, ?)",
                            (op.record.key, op.record.expires_at, _encode(op.record)),
                        )
                    else:
                        self._db.execute("DELETE FROM parked WHERE key = ?", (op.key,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"parked store write failed: {exc}") from exc

    def load(self) -> list[ParkedMessage]:
        """Every record held."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT record FROM parked").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"parked store read failed: {exc}") from exc
        try:
            return [_decode(row[0]) for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable parked record: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
