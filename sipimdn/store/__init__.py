"""Persistence for notification state: the ``Store`` protocol and its two implementations.

See :mod:`sipimdn.store.base` for the records and the contract,
:class:`MemoryStore` for tests and :class:`SqliteStore` for the embedded
default. The tracker (:mod:`sipimdn.imdn.tracker`) produces the operations;
the asyncio user agent applies them off the event loop.
"""

from __future__ import annotations

from .base import (
    TABLES,
    AnyRecord,
    Delete,
    OwedRecord,
    PeerRecord,
    Put,
    ReceivedRecord,
    RecipientRecord,
    SeenRecord,
    SentRecord,
    SharedValues,
    Snapshot,
    Store,
    StoreOp,
    received_key,
    record_from_json,
    record_to_json,
)
from .memory import MemoryStore
from .sqlite import SCHEMA_VERSION, SqliteStore

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "AnyRecord",
    "Delete",
    "MemoryStore",
    "OwedRecord",
    "PeerRecord",
    "Put",
    "ReceivedRecord",
    "RecipientRecord",
    "SeenRecord",
    "SentRecord",
    "SharedValues",
    "Snapshot",
    "SqliteStore",
    "Store",
    "StoreOp",
    "received_key",
    "record_from_json",
    "record_to_json",
]
