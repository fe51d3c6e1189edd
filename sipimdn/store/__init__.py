"""Persistence for notification state: the ``Store`` protocol and its implementations.

See :mod:`sipimdn.store.base` for the records and the contract,
:class:`MemoryStore` for tests, :class:`SqliteStore` for the embedded
default and :class:`PostgresStore` (``pip install 'sipimdn[postgres]'``) for
several workers sharing one database; :func:`open_store` picks one from a
path or URL. The tracker (:mod:`sipimdn.imdn.tracker`) produces the operations;
the asyncio user agent applies them off the event loop.

:class:`SqliteStore` (and ``SCHEMA_VERSION``) and :class:`PostgresStore` are imported on first
use (PEP 562): the records and the contract import without sqlite3 or asyncio, so the sans-IO
tracker can use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .base import (
    TABLES,
    AnyRecord,
    Delete,
    InlineStore,
    OwedRecord,
    PeerRecord,
    Put,
    ReadBackStore,
    ReceivedRecord,
    RecipientRecord,
    SeenRecord,
    SentRecord,
    SharedStore,
    SharedValues,
    Snapshot,
    Store,
    StoreOp,
    WorkingSetStore,
    received_key,
    record_from_json,
    record_to_json,
)
from .memory import MemoryStore

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .sqlite import SCHEMA_VERSION, SqliteStore

_LAZY = {"SCHEMA_VERSION": ".sqlite", "SqliteStore": ".sqlite", "PostgresStore": ".postgres"}

if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "AnyRecord",
    "Delete",
    "InlineStore",
    "MemoryStore",
    "OwedRecord",
    "PeerRecord",
    "PostgresStore",
    "Put",
    "ReadBackStore",
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
    "WorkingSetStore",
    "open_store",
    "received_key",
    "record_from_json",
    "record_to_json",
]


def open_store(target: str, *, worker_id: str | None = None, lease: float | None = None) -> Store:
    """Open the store ``target`` names: a ``postgresql://`` (or ``postgres://``) URL gives a
    :class:`PostgresStore` (``worker_id``: this process's name among the workers sharing it;
    ``lease``: seconds its ownership of records lasts unless renewed, default 30);
    anything else is a SQLite file name, ``":memory:"`` a private in-memory database.

    Raises :class:`~sipimdn.errors.StoreError` when the store cannot be opened (an
    unreachable database, an unwritable path, asyncpg not installed).
    """
    from .postgres import PostgresStore, is_postgres_url  # noqa: PLC0415  (loads asyncio lazily)
    from .sqlite import SqliteStore  # noqa: PLC0415  (loads sqlite3 lazily)

    if is_postgres_url(target):
        if lease is not None:
            return PostgresStore(target, worker_id=worker_id, lease=lease)
        return PostgresStore(target, worker_id=worker_id)
    return SqliteStore(target, worker_id=worker_id)
