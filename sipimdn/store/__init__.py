"""Persistence for notification state: the ``Store`` protocol and its implementations.

See :mod:`sipimdn.store.base` for the records and the contract,
:class:`MemoryStore` for tests, :class:`SqliteStore` for the embedded
default and :class:`PostgresStore` (``pip install 'sipimdn[postgres]'``) for
several workers sharing one database; :func:`open_store` picks one from a
path or URL. The tracker (:mod:`sipimdn.imdn.tracker`) produces the operations;
the asyncio user agent applies them off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    SharedStore,
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

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "AnyRecord",
    "Delete",
    "MemoryStore",
    "OwedRecord",
    "PeerRecord",
    "PostgresStore",
    "Put",
    "ReceivedRecord",
    "RecipientRecord",
    "SeenRecord",
    "SentRecord",
    "SharedStore",
    "SharedValues",
    "Snapshot",
    "SqliteStore",
    "Store",
    "StoreOp",
    "open_store",
    "received_key",
    "record_from_json",
    "record_to_json",
]


def open_store(target: str, *, worker_id: str | None = None) -> Store:
    """Open the store ``target`` names: a ``postgresql://`` (or ``postgres://``) URL gives a
    :class:`PostgresStore` (``worker_id``: this process's name among the workers sharing it);
    anything else is a SQLite file name, ``":memory:"`` a private in-memory database.

    Raises :class:`~sipimdn.errors.StoreError` when the store cannot be opened (an
    unreachable database, an unwritable path, asyncpg not installed).
    """
    from .postgres import PostgresStore, is_postgres_url  # noqa: PLC0415  (loads asyncio lazily)

    if is_postgres_url(target):
        return PostgresStore(target, worker_id=worker_id)
    return SqliteStore(target, worker_id=worker_id)


def __getattr__(name: str) -> Any:
    # PostgresStore on first use: importing sipimdn.store must not load asyncio (the
    # sans-IO tracker imports sipimdn.store.base, which imports this package).
    if name == "PostgresStore":
        from .postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
