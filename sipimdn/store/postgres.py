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

Schema. ``sipimdn_schema_version`` holds the version; :data:`_MIGRATIONS`
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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StoreError
from ._worker import default_worker_id
from .base import (
    TABLES,
    AnyRecord,
    Delete,
    Put,
    ReceivedRecord,
    SeenRecord,
    SentRecord,
    SharedValues,
    Snapshot,
    StoreOp,
    check_op,
    received_key,
    record_from_json,
    record_to_json,
    snapshot_from_records,
)

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SCHEMA_VERSION", "PostgresStore", "default_worker_id", "is_postgres_url"]

_log = logging.getLogger("sipimdn.store.postgres")

_T = TypeVar("_T")

#: The schema version this code writes.
SCHEMA_VERSION = 3

#: Tables whose rows have an owning worker and a lease.
LEASED_TABLES = ("sent", "owed")

#: Advisory lock key serialising schema migrations ("SIPIMDN" in ASCII).
_MIGRATION_LOCK = 0x53_49_50_49_4D_44_4E

#: Longest NOTIFY payload PostgreSQL accepts is 8000 bytes; longer keys are not announced.
_MAX_NOTIFY_BYTES = 7999

_NOW = "extract(epoch from clock_timestamp())"

#: Longest wait between two attempts to reconnect the listening connection (seconds).
_RELISTEN_MAX_DELAY = 5.0


def _table(name: str) -> str:
    return f"sipimdn_{name}"


#: The primary key column: a digest of ``key``. A B-tree entry holds at most about 2.7 kB, and a
#: key holds a peer's Message-ID, which may be longer (CPIM headers go up to 16 kB here).
_ID = "key_sha256"


def _id_of(text: str) -> str:
    return f"sipimdn_key_id({text})"


def _create_v1() -> list[str]:
    statements = [
        # convert_to is only STABLE (it depends on the database encoding, which never changes
        # once the database exists): wrapped so a generated column may use it.
        "CREATE OR REPLACE FUNCTION sipimdn_key_id(text) RETURNS bytea LANGUAGE sql IMMUTABLE "
        "PARALLEL SAFE AS $$ SELECT sha256(convert_to($1, 'UTF8')) $$"
    ]
    for table in TABLES:
        name = _table(table)
        leased = table in LEASED_TABLES
        lease = ", owner TEXT NOT NULL, lease_until DOUBLE PRECISION NOT NULL" if leased else ""
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {name} "
            f"(key TEXT NOT NULL, {_ID} BYTEA PRIMARY KEY GENERATED ALWAYS AS ({_id_of('key')}) STORED, "
            f"expires_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL{lease})"
        )
        statements.append(f"CREATE INDEX IF NOT EXISTS {name}_expires ON {name} (expires_at)")
        if leased:
            statements.append(f"CREATE INDEX IF NOT EXISTS {name}_lease ON {name} (lease_until)")
            statements.append(f"CREATE INDEX IF NOT EXISTS {name}_owner ON {name} (owner)")
    return statements


#: Notifications about a ``sent`` record received by a worker that does not own it, waiting
#: for the owner to apply them (see :meth:`PostgresStore.forward_notification`).
_FORWARDED = "sipimdn_forwarded"


def _create_v2() -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {_FORWARDED} (id BIGSERIAL PRIMARY KEY, message_id TEXT NOT NULL, "
        "expires_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {_FORWARDED}_message ON {_FORWARDED} ({_id_of('message_id')})",
        f"CREATE INDEX IF NOT EXISTS {_FORWARDED}_expires ON {_FORWARDED} (expires_at)",
    ]


#: ``data`` of a leased row its owner deleted after taking it over: a tombstone, so the worker
#: it was taken from cannot write the record back (see :meth:`PostgresStore.apply_owned`).
_GONE = "''"


def _create_v3() -> list[str]:
    # taken_from: the worker a row was taken over from (NULL: never taken over).
    return [f"ALTER TABLE {_table(t)} ADD COLUMN IF NOT EXISTS taken_from TEXT" for t in LEASED_TABLES]


#: Steps in order: ``(version, statements)`` taking the schema from version-1 to version.
_MIGRATIONS: list[tuple[int, list[str]]] = [(1, _create_v1()), (2, _create_v2()), (3, _create_v3())]


@functools.lru_cache(maxsize=256)
def _apply_sql(puts: tuple[str, ...], deletes: tuple[str, ...], notify: bool) -> str:
    """The one statement of :meth:`PostgresStore.apply_owned` for a batch that upserts into
    the tables ``puts`` and deletes from the tables ``deletes`` (only those: a clause for an
    untouched table would still be planned and run).

    Parameters: $1 worker id, $2 lease seconds, $3 notify channel, then for each table of
    ``puts`` its keys, expiries and JSON texts, then for each table of ``deletes`` its keys.
    The one row it returns: the count of notifications, then for each leased table of
    ``puts`` and then of ``deletes`` (in that order) the array of keys fenced off (NULL: none).

    The fence (leased tables): a row another worker owns is neither updated nor deleted.
    The owner is tested in the statement that writes, on the row as it is when written (an
    ``ON CONFLICT ... DO UPDATE ... WHERE`` and a ``DELETE ... WHERE`` re-check a row a
    concurrent take-over changed), so no write slips in between a check and the write.
    """
    clauses = []
    fenced = []
    n = 4
    for table in puts:
        name = _table(table)
        keys, expiries, datas = (f"${n}", f"${n + 1}", f"${n + 2}")
        n += 3
        rows = f"FROM unnest({keys}::text[], {expiries}::float8[], {datas}::text[]) AS u(k, e, d)"
        update = f"ON CONFLICT ({_ID}) DO UPDATE SET expires_at = EXCLUDED.expires_at, data = EXCLUDED.data"
        if table in LEASED_TABLES:
            # Ownership changes only through take_over: an update keeps the owner and its lease,
            # and only the owner updates (the fence); a key not returned was fenced off.
            insert = (
                f"INSERT INTO {name} (key, expires_at, data, owner, lease_until) "
                f"SELECT k, e, d, $1, {_NOW} + $2 {rows}"
            )
            clauses.append(f"put_{table} AS ({insert} {update} WHERE {name}.owner = $1 RETURNING key)")
            clauses.append(
                f"fenced_put_{table} AS (SELECT array_agg(k) AS keys FROM unnest({keys}::text[]) AS u(k) "
                f"WHERE NOT EXISTS (SELECT 1 FROM put_{table} p WHERE p.key = u.k))"
            )
            fenced.append(f"(SELECT keys FROM fenced_put_{table})")
        else:
            insert = f"INSERT INTO {name} (key, expires_at, data) SELECT k, e, d {rows}"
            clauses.append(f"put_{table} AS ({insert} {update})")
        if table == "sent" and notify:
            # A SELECT in WITH runs only when referenced: the final SELECT counts it. Only
            # records written are announced (a fenced-off Put changed nothing).
            clauses.append(
                f"notified AS (SELECT pg_notify($3, key) FROM put_{table} "
                f"WHERE octet_length(key) <= {_MAX_NOTIFY_BYTES})"
            )
    for table in deletes:
        name = _table(table)
        wanted = f"SELECT {_id_of('k')} FROM unnest(${n}::text[]) AS u(k)"
        if table in LEASED_TABLES:
            # A row taken over is not deleted but left as a tombstone (until it expires), so
            # the worker it was taken from cannot write it back. A row still there after the
            # owner's delete (seen in the statement's snapshot, neither deleted nor made a
            # tombstone, nor one of ours already) is another worker's: fenced off. A row
            # already gone is nobody's.
            clauses.append(
                f"del_{table} AS (DELETE FROM {name} WHERE {_ID} IN ({wanted}) AND owner = $1 "
                f"AND taken_from IS NULL RETURNING {_ID})"
            )
            clauses.append(
                f"gone_{table} AS (UPDATE {name} SET data = {_GONE} WHERE {_ID} IN ({wanted}) "
                f"AND owner = $1 AND taken_from IS NOT NULL AND data <> {_GONE} RETURNING {_ID})"
            )
            clauses.append(
                f"fenced_del_{table} AS (SELECT array_agg(t.key) AS keys FROM {name} t "
                f"WHERE t.{_ID} IN ({wanted}) AND NOT (t.owner = $1 AND t.data = {_GONE}) "
                f"AND NOT EXISTS (SELECT 1 FROM del_{table} d WHERE d.{_ID} = t.{_ID}) "
                f"AND NOT EXISTS (SELECT 1 FROM gone_{table} g WHERE g.{_ID} = t.{_ID}))"
            )
            fenced.append(f"(SELECT keys FROM fenced_del_{table})")
        else:
            clauses.append(f"del_{table} AS (DELETE FROM {name} WHERE {_ID} IN ({wanted}))")
        n += 1
    counted = "(SELECT count(*) FROM notified)" if "sent" in puts and notify else "0"
    # $1-$3 appear in every statement so the parameter list has one shape.
    columns = ", ".join([counted, *fenced, "$1::text", "$2::float8", "$3::text"])
    return "WITH " + ",\n".join(clauses) + f"\nSELECT {columns}"


_PURGED = (*(_table(t) for t in TABLES), _FORWARDED)
_PURGE_SQL = (
    "WITH "
    + ", ".join(
        f"p_{i} AS (DELETE FROM {t} WHERE expires_at <= $1 RETURNING 1)" for i, t in enumerate(_PURGED)
    )
    + " SELECT "
    + " + ".join(f"(SELECT count(*) FROM p_{i})" for i in range(len(_PURGED)))
)

_LOAD_SENT_SQL = (
    f"SELECT data FROM {_table('sent')} WHERE {_ID} = {_id_of('$1')} AND expires_at > $2 AND data <> {_GONE}"
)
#: A received record by its key, and by its Message-ID alone (the part of the key after the sender
#: key, which holds no space): the second scans the table, for ``mark_displayed`` without a sender.
_LOAD_RECEIVED_SQL = (
    f"SELECT data FROM {_table('received')} WHERE {_ID} = {_id_of('$1')} AND expires_at > $2"
)
_FIND_RECEIVED_SQL = (
    f"SELECT data FROM {_table('received')} "
    "WHERE substr(key, strpos(key, ' ') + 1) = $1 AND expires_at > $2"
)

# The notification is kept only for a message some worker tracks (a peer's IMDN for an unknown
# Message-ID must not fill the table), until that message's record expires; the NOTIFY wakes
# its owner ("i:" + Message-ID), the row is the truth.
_FORWARD_SQL = (
    f"WITH f AS (INSERT INTO {_FORWARDED} (message_id, expires_at, data) "
    f"SELECT $1, s.expires_at, $2 FROM {_table('sent')} s WHERE s.{_ID} = {_id_of('$1')} "
    f"AND s.expires_at > $3 AND s.data <> {_GONE} RETURNING 1), "
    "n AS (SELECT pg_notify($4, 'i:' || $1) WHERE $4::text IS NOT NULL AND EXISTS (SELECT 1 FROM f) "
    f"AND octet_length($1) <= {_MAX_NOTIFY_BYTES - 2}) "
    "SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM n)"
)

_TAKE_FORWARDED_SQL = (
    f"SELECT f.id, f.data FROM {_FORWARDED} f JOIN {_table('sent')} s ON s.{_ID} = {_id_of('f.message_id')} "
    "WHERE s.owner = $1 AND f.expires_at > $2 ORDER BY f.id LIMIT $3"
)

_CLAIM_SQL = (
    f"INSERT INTO {_table('seen')} (key, expires_at, data) VALUES ($1, $2, $3) "
    f"ON CONFLICT ({_ID}) DO UPDATE SET expires_at = EXCLUDED.expires_at, data = EXCLUDED.data "
    f"WHERE {_table('seen')}.expires_at <= $4 RETURNING key"
)

# claim_message: as _CLAIM_SQL, and an unanswered entry (status null) whose expiry is at or before
# $5 is taken too (its claimer died before answering); then the entry that kept the key, if any.
_SEEN = _table("seen")
_CLAIM_MESSAGE_SQL = (
    f"WITH c AS (INSERT INTO {_SEEN} (key, expires_at, data) VALUES ($1, $2, $3) "
    f"ON CONFLICT ({_ID}) DO UPDATE SET expires_at = EXCLUDED.expires_at, data = EXCLUDED.data "
    f"WHERE {_SEEN}.expires_at <= $4 OR ($5::float8 IS NOT NULL "
    f"AND ({_SEEN}.data::json ->> 'status') IS NULL AND {_SEEN}.expires_at <= $5) RETURNING key) "
    f"SELECT (SELECT count(*) FROM c), (SELECT data FROM {_SEEN} WHERE {_ID} = {_id_of('$1')})"
)

# claim_messages: _CLAIM_MESSAGE_SQL for a batch of distinct keys in one statement; per input row
# (in order) whether it was written, and the entry that kept its key otherwise.
_CLAIM_MESSAGES_SQL = (
    "WITH input AS (SELECT k, e, d, i FROM unnest($1::text[], $2::float8[], $3::text[]) "
    "WITH ORDINALITY AS u(k, e, d, i)), "
    f"c AS (INSERT INTO {_SEEN} (key, expires_at, data) SELECT k, e, d FROM input ORDER BY i "
    f"ON CONFLICT ({_ID}) DO UPDATE SET expires_at = EXCLUDED.expires_at, data = EXCLUDED.data "
    f"WHERE {_SEEN}.expires_at <= $4 OR ($5::float8 IS NOT NULL "
    f"AND ({_SEEN}.data::json ->> 'status') IS NULL AND {_SEEN}.expires_at <= $5) RETURNING key) "
    "SELECT input.k IN (SELECT key FROM c), s.data FROM input "
    f"LEFT JOIN {_SEEN} s ON s.{_ID} = {_id_of('input.k')} ORDER BY input.i"
)

_RENEW_SQL = (
    "WITH "
    + ", ".join(
        f"r_{t} AS (UPDATE {_table(t)} SET lease_until = {_NOW} + $2 WHERE owner = $1 "
        f"AND data <> {_GONE} RETURNING 1)"
        for t in LEASED_TABLES
    )
    + " SELECT "
    + " + ".join(f"(SELECT count(*) FROM r_{t})" for t in LEASED_TABLES)
)

# SKIP LOCKED: two survivors taking over at once split the rows instead of queueing on them;
# the lease test is re-checked on the locked row, so a row is taken by exactly one of them.
_TAKE_OVER_SQL = (
    "WITH "
    + ", ".join(
        f"t_{t} AS (UPDATE {_table(t)} SET owner = $1, taken_from = owner, lease_until = {_NOW} + $2 "
        f"WHERE {_ID} IN (SELECT {_ID} FROM {_table(t)} WHERE lease_until < {_NOW} AND owner <> $1 "
        f"AND expires_at > $3 AND data <> {_GONE} ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED) "
        "RETURNING data)"
        for t in LEASED_TABLES
    )
    + " "
    + " UNION ALL ".join(f"SELECT '{t}' AS tbl, data FROM t_{t}" for t in LEASED_TABLES)
)


def is_postgres_url(target: str) -> bool:
    """True when ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return target.lower().startswith(("postgresql://", "postgres://"))


def _asyncpg() -> Any:
    try:
        import asyncpg  # noqa: PLC0415  (optional extra: imported only when used)
    except ImportError as exc:
        raise StoreError("the PostgreSQL store needs asyncpg: pip install 'sipimdn[postgres]'") from exc
    return asyncpg


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


class PostgresStore:
    """A :class:`~sipimdn.store.base.SharedStore` on one PostgreSQL database.

    ``url``: a libpq-style URL, e.g. ``postgresql://user:secret@db.example/sipimdn`` or
    ``postgresql://postgres@/postgres?host=/run/postgresql`` (Unix socket directory).
    ``worker_id``: this process's name among the workers (default :func:`default_worker_id`).
    ``lease``: seconds a worker's ownership of its ``sent``/``owed`` rows lasts without
    :meth:`renew_leases`. ``channel``: the LISTEN/NOTIFY channel (``None``: apply notifies nobody).

    Connects, creates or migrates the schema before returning; raises
    :class:`~sipimdn.errors.StoreError` when the database cannot be reached, the
    schema is newer than this code, or asyncpg is not installed.
    """

    #: Several processes may share the database (see :class:`~sipimdn.store.base.SharedStore`).
    multi_worker = True

    def __init__(
        self,
        url: str,
        *,
        worker_id: str | None = None,
        lease: float = 30.0,
        channel: str | None = "sipimdn_disposition",
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self._pg = _asyncpg()
        self.url = url
        self.worker_id = worker_id or default_worker_id()
        self.lease = lease
        self.channel = channel
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._conn: asyncpg.Connection[Any] | None = None
        self._listen_conn: asyncpg.Connection[Any] | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._resume_callbacks: list[Callable[[], None]] = []
        self._relisten: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="sipimdn-postgres", daemon=True)
        self._thread.start()
        try:
            with self._lock:
                self._call(self._migrate(), "cannot open store")
        except BaseException:
            self._stop_loop()
            raise

    # -- the private loop ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, _T], what: str) -> _T:
        """Run ``coro`` on the store's loop and wait; database faults become StoreError."""
        if self._closed:
            coro.close()
            raise StoreError("store is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop stopped: closed meanwhile by another thread
            coro.close()
            raise StoreError("store is closed") from exc
        try:
            # The loop enforces connect and command timeouts; this bound only guards a stuck loop.
            return future.result(timeout=self._connect_timeout + 2 * self._command_timeout + 5)
        except StoreError:
            raise
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            self._drop_connection()
            raise StoreError(f"{what}: {_redacted(self.url)}: no answer in time") from exc
        except (self._pg.PostgresError, self._pg.InterfaceError, OSError, TimeoutError, UnicodeError) as exc:
            self._drop_connection()
            raise StoreError(f"{what}: {_redacted(self.url)}: {exc or type(exc).__name__}") from exc

    def _drop_connection(self) -> None:
        """Forget the data connection after a fault: the next call connects again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(conn.terminate)

    async def _connect(self) -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await self._pg.connect(
            self.url, timeout=self._connect_timeout, command_timeout=self._command_timeout
        )
        return conn

    async def _connection(self) -> asyncpg.Connection[Any]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    async def _migrate(self) -> None:
        conn = await self._connection()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS sipimdn_schema_version (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM sipimdn_schema_version")
            current = int(version or 0)
            if current > SCHEMA_VERSION:
                raise StoreError(f"store schema version {current} is newer than supported {SCHEMA_VERSION}")
            for step, statements in _MIGRATIONS:
                if step > current:
                    for statement in statements:
                        await conn.execute(statement)
            if current < SCHEMA_VERSION:
                await conn.execute("DELETE FROM sipimdn_schema_version")
                await conn.execute("INSERT INTO sipimdn_schema_version (version) VALUES ($1)", SCHEMA_VERSION)

    # -- the Store contract -------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The version recorded in the database."""

        async def read() -> int:
            conn = await self._connection()
            return int(await conn.fetchval("SELECT max(version) FROM sipimdn_schema_version") or 0)

        with self._lock:
            return self._call(read(), "store read failed")

    def apply(self, ops: Sequence[StoreOp]) -> None:
        """Apply operations in one transaction (one statement): all or none, durable on return.

        The fence of :meth:`apply_owned` holds here too: a write of a ``sent`` or ``owed``
        record another worker owns changes nothing (logged as a warning).
        """
        fenced = self.apply_owned(ops)
        if fenced:
            _log.warning(
                "store: %d write(s) of records another worker owns fenced off (worker %s)",
                len(fenced),
                self.worker_id,
            )

    def apply_owned(self, ops: Sequence[StoreOp]) -> tuple[StoreOp, ...]:
        """:meth:`apply`, returning the operations fenced off: Puts and Deletes of ``sent``
        and ``owed`` records whose row another worker owns (it took them over when this
        worker's lease ran out: see :meth:`take_over`). Those change nothing; the rest of the
        batch is applied, in one transaction, durable on return.

        The owner is tested in the statement that writes, on the row as it stands then, so a
        take-over racing with the batch either comes first (the write is fenced off) or
        waits for it (and then takes the row as written). A Put of a row that does not
        exist creates it, owned by this worker; a Delete of a row already gone is not
        reported (nobody owns it). Only the last operation on each record counts.
        """
        if not ops:
            return ()
        for op in ops:
            check_op(op)
        last: dict[tuple[str, str], StoreOp] = {}
        for op in ops:  # the last operation on each record decides its final state
            ident = (op.record.TABLE, op.record.key) if isinstance(op, Put) else (op.table, op.key)
            last[ident] = op
        puts: dict[str, tuple[list[str], list[float], list[str]]] = {}
        deletes: dict[str, list[str]] = {}
        for op in last.values():
            if isinstance(op, Put):
                record = op.record
                if record.TABLE not in puts:
                    puts[record.TABLE] = ([], [], [])
                keys, expiries, datas = puts[record.TABLE]
                keys.append(record.key)
                expiries.append(float(record.expires_at))
                datas.append(record_to_json(record))
            elif isinstance(op, Delete):
                deletes.setdefault(op.table, []).append(op.key)
        put_tables = tuple(sorted(puts))
        delete_tables = tuple(sorted(deletes))
        sql = _apply_sql(put_tables, delete_tables, self.channel is not None)
        params: list[object] = [self.worker_id, self.lease, self.channel]
        for table in put_tables:
            params.extend(puts[table])
        params.extend(deletes[table] for table in delete_tables)
        # The fenced-key columns of the statement's row, in order (see _apply_sql).
        fenced_of = [(True, t) for t in put_tables if t in LEASED_TABLES]
        fenced_of += [(False, t) for t in delete_tables if t in LEASED_TABLES]

        async def write() -> list[list[str] | None]:
            conn = await self._connection()
            row = await conn.fetchrow(sql, *params)
            assert row is not None
            return [row[1 + i] for i in range(len(fenced_of))]

        with self._lock:
            columns = self._call(write(), "store write failed")
        fenced: list[StoreOp] = []
        for (is_put, table), column in zip(fenced_of, columns, strict=True):
            for key in column or ():
                op = last[(table, key)]
                if isinstance(op, Put) is is_put:
                    fenced.append(op)
        return tuple(fenced)

    def load(self, now: float) -> Snapshot:
        """Every record that has not expired at ``now``."""

        async def read() -> list[tuple[str, list[str]]]:
            conn = await self._connection()
            rows = []
            for table in TABLES:
                sql = f"SELECT data FROM {_table(table)} WHERE expires_at > $1 AND data <> {_GONE}"
                fetched = await conn.fetch(sql, now)
                rows.append((table, [row[0] for row in fetched]))
            return rows

        with self._lock:
            tables = self._call(read(), "store read failed")
        shared = SharedValues()
        records: list[AnyRecord] = [
            record_from_json(table, text, shared) for table, texts in tables for text in texts
        ]
        return snapshot_from_records(records)

    def purge(self, now: float) -> int:
        """Delete expired records; return how many."""

        async def delete() -> int:
            conn = await self._connection()
            return int(await conn.fetchval(_PURGE_SQL, now))

        with self._lock:
            return self._call(delete(), "store purge failed")

    def close(self) -> None:
        """Close the connections and stop the store's loop (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def shut() -> None:
            if self._relisten is not None:
                self._relisten.cancel()
            for conn in (self._conn, self._listen_conn):
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), timeout=2.0)
                    except (OSError, TimeoutError, self._pg.PostgresError, self._pg.InterfaceError):
                        conn.terminate()
            self._conn = self._listen_conn = None

        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared-state primitives (SharedStore) ------------------------------------------------

    def claim_seen(self, record: SeenRecord, now: float) -> bool:
        """Record ``record`` as seen; True when no live entry had the same key (the caller is first).

        Atomic across processes: of several workers claiming the same (sender, Message-ID) at
        once, exactly one gets True. An entry expired at ``now`` counts as absent and is replaced.
        """
        if not isinstance(record, SeenRecord):
            raise StoreError(f"not a seen record: {record!r}")
        args = (record.key, float(record.expires_at), record_to_json(record), now)

        async def claim() -> bool:
            conn = await self._connection()
            return await conn.fetchval(_CLAIM_SQL, *args) is not None

        with self._lock:
            return self._call(claim(), "store claim failed")

    def claim_message(
        self, record: SeenRecord, now: float, stale_expiry: float | None = None
    ) -> SeenRecord | None:
        """:meth:`claim_seen` that also says who kept the key: None when ``record`` was written
        (the caller is first), else the live entry (None too when it is not visible yet).

        ``stale_expiry``: an entry still unanswered (``status`` None) whose ``expires_at`` is at
        or before it counts as abandoned and is taken over (its claimer died before answering).
        """
        if not isinstance(record, SeenRecord):
            raise StoreError(f"not a seen record: {record!r}")
        args = (record.key, float(record.expires_at), record_to_json(record), now, stale_expiry)

        async def claim() -> tuple[int, str | None]:
            conn = await self._connection()
            row = await conn.fetchrow(_CLAIM_MESSAGE_SQL, *args)
            assert row is not None
            return int(row[0]), row[1]

        with self._lock:
            written, kept = self._call(claim(), "store claim failed")
        if written or kept is None:
            return (
                None if written else SeenRecord(record.sender_key, record.message_id, None, record.expires_at)
            )
        found = record_from_json("seen", kept)
        assert isinstance(found, SeenRecord)
        return found

    def claim_messages(
        self, records: Sequence[SeenRecord], now: float, stale_expiry: float | None = None
    ) -> list[SeenRecord | None]:
        """:meth:`claim_message` for several records in one statement (one round trip); the
        answers in order. A key given twice is claimed by its first record only."""
        first: dict[str, int] = {}
        for index, record in enumerate(records):
            if not isinstance(record, SeenRecord):
                raise StoreError(f"not a seen record: {record!r}")
            first.setdefault(record.key, index)
        unique = [records[i] for i in sorted(first.values())]
        if not unique:
            return []
        keys = [r.key for r in unique]
        expiries = [float(r.expires_at) for r in unique]
        datas = [record_to_json(r) for r in unique]

        async def claim() -> list[tuple[bool, str | None]]:
            conn = await self._connection()
            rows = await conn.fetch(_CLAIM_MESSAGES_SQL, keys, expiries, datas, now, stale_expiry)
            return [(bool(row[0]), row[1]) for row in rows]

        with self._lock:
            outcomes = self._call(claim(), "store claim failed")
        by_key: dict[str, SeenRecord | None] = {}
        for record, (written, kept) in zip(unique, outcomes, strict=True):
            if written:
                by_key[record.key] = None
            elif kept is None:  # kept by a claim not visible to this statement yet
                by_key[record.key] = SeenRecord(record.sender_key, record.message_id, None, record.expires_at)
            else:
                found = record_from_json("seen", kept)
                assert isinstance(found, SeenRecord)
                by_key[record.key] = found
        answers: list[SeenRecord | None] = []
        for index, record in enumerate(records):
            if first[record.key] == index:
                answers.append(by_key[record.key])
            else:  # a second copy in the same batch: kept by the first one's claim (or its keeper)
                answers.append(by_key[record.key] or records[first[record.key]])
        return answers

    def renew_leases(self) -> int:
        """Extend the lease on every ``sent``/``owed`` row this worker owns; return how many.

        Call well within :attr:`lease` (a third of it, say): rows whose lease ran out may
        have been taken over by another worker, and are no longer counted here.
        """

        async def renew() -> int:
            conn = await self._connection()
            return int(await conn.fetchval(_RENEW_SQL, self.worker_id, self.lease))

        with self._lock:
            return self._call(renew(), "store lease renewal failed")

    def owned_elsewhere(self, table: str, keys: Sequence[str]) -> list[str]:
        """The keys among ``keys`` whose ``table`` row (``sent`` or ``owed``) another worker owns
        now: what this worker lost to a take-over while its lease had run out. A key with no
        row is not listed (nobody owns it)."""
        if table not in LEASED_TABLES:
            raise StoreError(f"no owners in store table {table!r}")
        wanted = list(keys)
        if not wanted:
            return []
        sql = (
            f"SELECT key FROM {_table(table)} WHERE {_ID} IN "
            f"(SELECT {_id_of('k')} FROM unnest($2::text[]) AS u(k)) AND owner <> $1"
        )

        async def read() -> list[str]:
            conn = await self._connection()
            return [str(row[0]) for row in await conn.fetch(sql, self.worker_id, wanted)]

        with self._lock:
            return self._call(read(), "store read failed")

    def take_over(self, now: float, limit: int = 1000) -> Snapshot:
        """Become the owner of up to ``limit`` rows per leased table whose owner's lease ran out.

        Returns the records taken (``sent`` and ``owed`` only), not expired at ``now``; each
        row goes to exactly one of several workers taking over at once.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")

        async def take() -> list[tuple[str, str]]:
            conn = await self._connection()
            async with conn.transaction():
                rows = await conn.fetch(_TAKE_OVER_SQL, self.worker_id, self.lease, now, limit)
            return [(row[0], row[1]) for row in rows]

        with self._lock:
            taken = self._call(take(), "store take-over failed")
        shared = SharedValues()
        return snapshot_from_records([record_from_json(table, text, shared) for table, text in taken])

    def notify(self, payload: str) -> None:
        """Send ``payload`` to every listener on :attr:`channel` (this process's included)."""
        if self.channel is None:
            raise StoreError("store has no notification channel")
        if len(payload.encode()) > _MAX_NOTIFY_BYTES:
            raise StoreError(f"notification payload longer than {_MAX_NOTIFY_BYTES} bytes")
        channel = self.channel

        async def send() -> None:
            conn = await self._connection()
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

        with self._lock:
            self._call(send(), "store notify failed")

    def load_sent(self, message_id: str, now: float) -> SentRecord | None:
        """The ``sent`` record of ``message_id`` (whichever worker owns it), unless expired at ``now``."""

        async def read() -> str | None:
            conn = await self._connection()
            data: str | None = await conn.fetchval(_LOAD_SENT_SQL, message_id, now)
            return data

        with self._lock:
            text = self._call(read(), "store read failed")
        if text is None:
            return None
        record = record_from_json("sent", text)
        assert isinstance(record, SentRecord)
        return record

    def load_received(
        self, message_id: str, sender_key: str | None, now: float
    ) -> tuple[ReceivedRecord, ...]:
        """The ``received`` records of ``message_id`` not expired at ``now`` (from ``sender_key``
        only, when given), whichever worker received them (every worker resumes with all of
        them too, :meth:`load_own`)."""

        async def read() -> list[str]:
            conn = await self._connection()
            if sender_key is not None:
                rows = await conn.fetch(_LOAD_RECEIVED_SQL, received_key(sender_key, message_id), now)
            else:
                rows = await conn.fetch(_FIND_RECEIVED_SQL, message_id, now)
            return [row[0] for row in rows]

        with self._lock:
            texts = self._call(read(), "store read failed")
        found = [record_from_json(ReceivedRecord.TABLE, text) for text in texts]
        return tuple(r for r in found if isinstance(r, ReceivedRecord))

    def load_own(self, now: float) -> Snapshot:
        """What this worker resumes with: its own ``sent`` and ``owed`` records (another worker's
        are that worker's, or :meth:`take_over`'s once its lease ran out) and every other record
        not expired at ``now``."""

        async def read() -> list[tuple[str, list[str]]]:
            conn = await self._connection()
            rows = []
            for table in TABLES:
                sql = f"SELECT data FROM {_table(table)} WHERE expires_at > $1 AND data <> {_GONE}"
                if table in LEASED_TABLES:
                    fetched = await conn.fetch(sql + " AND owner = $2", now, self.worker_id)
                else:
                    fetched = await conn.fetch(sql, now)
                rows.append((table, [row[0] for row in fetched]))
            return rows

        with self._lock:
            tables = self._call(read(), "store read failed")
        shared = SharedValues()
        return snapshot_from_records(
            [record_from_json(table, text, shared) for table, texts in tables for text in texts]
        )

    def forward_notification(self, message_id: str, data: str, now: float) -> bool:
        """Keep ``data`` (a received notification, as text) for the owner of the ``sent`` record
        of ``message_id`` and wake it (NOTIFY ``"i:" + message_id``); False when no worker tracks
        that message (nothing is kept). The owner reads it with :meth:`take_forwarded`."""

        async def forward() -> bool:
            conn = await self._connection()
            row = await conn.fetchrow(_FORWARD_SQL, message_id, data, now, self.channel)
            return bool(row is not None and row[0])

        with self._lock:
            return self._call(forward(), "store write failed")

    def take_forwarded(self, now: float, limit: int = 1000) -> list[tuple[int, str]]:
        """Up to ``limit`` notifications forwarded for ``sent`` records this worker owns, oldest
        first, as ``(id, data)``; they stay until :meth:`drop_forwarded` (apply, store the
        result, then drop: a crash in between applies them again, which the replay guard absorbs)."""

        async def read() -> list[tuple[int, str]]:
            conn = await self._connection()
            rows = await conn.fetch(_TAKE_FORWARDED_SQL, self.worker_id, now, limit)
            return [(int(row[0]), str(row[1])) for row in rows]

        with self._lock:
            return self._call(read(), "store read failed")

    def drop_forwarded(self, ids: Sequence[int]) -> None:
        """Delete forwarded notifications by id (applied by their owner)."""
        if not ids:
            return
        wanted = [int(i) for i in ids]

        async def delete() -> None:
            conn = await self._connection()
            await conn.execute(f"DELETE FROM {_FORWARDED} WHERE id = ANY($1::bigint[])", wanted)

        with self._lock:
            self._call(delete(), "store write failed")

    def listen(
        self, callback: Callable[[str], None], *, on_resume: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(payload)`` for every notification on :attr:`channel`; return an unsubscriber.

        Payloads are the Message-IDs of ``sent`` records written by any worker (and whatever
        :meth:`notify` sends). Callbacks run on the store's own thread: keep them short and
        hand over to your loop (``loop.call_soon_threadsafe``). Listening starts before this
        returns, so a notification committed afterwards is delivered. When the listening
        connection is lost (database restart), the store connects again (every few seconds
        until it succeeds) and then calls ``on_resume()``: notifications sent in between are
        lost, so re-read what you wait for from the tables.
        """
        if self.channel is None:
            raise StoreError("store has no notification channel")

        async def subscribe() -> None:
            if self._listen_conn is None or self._listen_conn.is_closed():
                self._listen_conn = await self._listening_connection()
            self._listeners.append(callback)
            if on_resume is not None:
                self._resume_callbacks.append(on_resume)

        self._call(subscribe(), "store listen failed")

        def unsubscribe() -> None:
            def drop() -> None:
                if callback in self._listeners:
                    self._listeners.remove(callback)
                if on_resume is not None and on_resume in self._resume_callbacks:
                    self._resume_callbacks.remove(on_resume)

            if not self._closed:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(drop)

        return unsubscribe

    async def _listening_connection(self) -> asyncpg.Connection[Any]:
        assert self.channel is not None
        conn = await self._connect()
        try:
            await conn.add_listener(self.channel, self._deliver)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._listen_lost)
        return conn

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(str(payload))
            except Exception:  # one failing listener must not silence the others
                _log.exception("store notification listener failed")

    def _listen_lost(self, conn: object) -> None:
        if self._closed or conn is not self._listen_conn or self._relisten is not None:
            return
        _log.warning("store notification connection lost: %s; reconnecting", _redacted(self.url))
        self._listen_conn = None
        self._relisten = self._loop.create_task(self._reconnect_listener())

    async def _reconnect_listener(self) -> None:
        delay = 0.25
        try:
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    self._listen_conn = await self._listening_connection()
                except (self._pg.PostgresError, self._pg.InterfaceError, OSError, TimeoutError) as exc:
                    _log.debug("store notification connection: still down: %s", exc)
                    delay = min(delay * 2, _RELISTEN_MAX_DELAY)
                    continue
                _log.warning("store notification connection back: %s", _redacted(self.url))
                for resume in list(self._resume_callbacks):
                    try:
                        resume()
                    except Exception:
                        _log.exception("store notification resume callback failed")
                return
        finally:
            self._relisten = None
