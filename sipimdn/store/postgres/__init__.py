"""A :class:`~sipimdn.store.base.Store` on PostgreSQL, shared by several user agent processes.

Install with ``pip install 'sipimdn[postgres]'`` (the client library is
asyncpg). Nothing here imports asyncpg until a :class:`PostgresStore` is
made, so ``sipimdn`` without the extra works, and a store asked for without
it is a :class:`~sipimdn.errors.StoreError` naming the extra.

Threads and loops. The :class:`~sipimdn.store.base.Store` contract is
synchronous (the user agent calls it from one worker thread) while asyncpg
is asyncio only. The store therefore owns a private event loop running in a
daemon thread of its own; every method submits a coroutine to that loop
and waits for its result (``run_coroutine_threadsafe``). Running asyncpg on
the caller's thread instead (``asyncio.run`` per call, or a loop kept in the
worker thread) was rejected: notifications (LISTEN) arrive when no call is
in progress, so a connection that listens needs a loop that always runs,
and the contract allows calls from any thread. One call at a time uses the
data connection (a lock, as in :class:`~sipimdn.store.sqlite.SqliteStore`);
listening uses a second connection, so a slow write never delays a wake-up.

Layout. One table per record kind, ``sipimdn_<table> (key TEXT,
key_sha256 BYTEA PRIMARY KEY, expires_at DOUBLE PRECISION, data TEXT)``,
the primary key a digest of ``key`` computed by the server (a peer's
Message-ID may exceed what a B-tree entry holds), with ``data`` the record as
JSON (:func:`~sipimdn.store.base.record_to_json`), the same shape as the
SQLite store, so a new optional record field needs no migration. ``sent``
and ``owed`` rows also carry ``owner`` (the worker id that wrote them
first, or took them over), ``lease_until`` (seconds since the epoch, on the
database's clock so workers on several machines agree) and ``taken_from``:
see :meth:`renew_leases`, :meth:`take_over` and "Fencing" below. Times in
``expires_at`` are the tracker's wall clock (``time.time()``), which all
workers share.

Schema. ``sipimdn_schema_version`` holds the version; :data:`~sipimdn.store.postgres._sql._MIGRATIONS`
lists the steps in order. Opening a store takes a transaction-scoped
advisory lock first, so workers starting together migrate once, one after
the other.

Writes. :meth:`apply` sends a whole batch as one statement (one round trip,
one implicit transaction: all or nothing, durable when it returns, the
group commit the user agent waits on before a 2xx): the batch is reduced to
the last operation on each record (records are independent, so the final
state is the same), then each table the batch touches gets its upserts as arrays through
``unnest`` and its deletes as an array of keys, all in data-modifying
``WITH`` clauses of that one statement (one text per shape of batch, which
asyncpg prepares once). A Put of a ``sent`` record also queues a
``NOTIFY`` on :attr:`PostgresStore.channel` with the Message-ID, delivered at
commit: the table is the truth, the notification the wake-up (a notification
for a message another worker sent is correlated by Message-ID, RFC 5438
§7.1.2, through the table).

Faults. A lost connection (database restarted, network) fails the call in
progress with :class:`~sipimdn.errors.StoreError`; the next call connects
again, so the store recovers when the database returns. The listening
connection reconnects by itself (see :meth:`PostgresStore.listen`).

Several workers. Version 2 adds ``sipimdn_forwarded``: a notification a
worker received about a ``sent`` record another worker owns is kept there
for that owner (:meth:`PostgresStore.forward_notification`, NOTIFY ``"i:"``
+ Message-ID as the wake-up, only for a message some worker tracks) until
the owner applied it (:meth:`PostgresStore.take_forwarded`, then
:meth:`PostgresStore.drop_forwarded`), so only the owner writes its
records. :meth:`PostgresStore.claim_message` is the dedup claim a worker
makes before handing a message up; :meth:`PostgresStore.load_own` what it
resumes with.

Fencing (version 3). Only the owner of a ``sent`` or ``owed`` row writes or
deletes it: :meth:`PostgresStore.apply_owned` tests ``owner`` in the very
statement that writes (``ON CONFLICT ... DO UPDATE ... WHERE owner = $1``,
``DELETE ... WHERE owner = $1``), which PostgreSQL re-evaluates on the row as
a concurrent :meth:`~PostgresStore.take_over` left it, and returns the
operations fenced off; the rest of the batch is applied in the same
transaction. A worker whose lease ran out while it was cut off or paused can
therefore not overwrite, nor delete, what a survivor took over. A row taken
over keeps the worker it was taken from (``taken_from``); when its new owner
deletes it, it stays as a tombstone (``data`` empty, skipped by every read
and by take-over, owned still, removed by :meth:`~PostgresStore.purge` once
expired), so the old owner cannot create it again either (it would send the
IMDN again). :meth:`PostgresStore.owned_elsewhere` tells a worker back from a
stall which of its records it lost. What a worker does with that is the user
agent's business (``sipimdn.ua._shared``).

Working set (version 4). :meth:`PostgresStore.load_working_set` is
:meth:`PostgresStore.load_own` with at most ``limit`` received rows (any
worker's) and ``limit`` sent rows (this worker's), those expiring last;
:meth:`PostgresStore.load_sent_due` reads this worker's sent rows whose
deadline passed. Version 4 indexes live ``sent`` rows (neither tombstones nor
the final records of ended messages) by ``(owner, expires_at)`` for
both, and ``received`` by the digest of its Message-ID (the key after the
sender key) for :meth:`PostgresStore.load_received` without a sender.

Modules. :mod:`._sql` holds the schema, its migrations and the statements;
:mod:`._conn` the private loop, the connections and LISTEN; :mod:`._store`
the :class:`PostgresStore` built on them. The names below are re-exported here.
"""

from __future__ import annotations

from .._worker import default_worker_id
from ._conn import is_postgres_url
from ._sql import LEASED_TABLES, SCHEMA_VERSION
from ._store import PostgresStore

__all__ = ["LEASED_TABLES", "SCHEMA_VERSION", "PostgresStore", "default_worker_id", "is_postgres_url"]
