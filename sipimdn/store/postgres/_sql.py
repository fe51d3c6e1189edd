"""The PostgreSQL store's schema, its migrations and the statements it sends (text only)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ...errors import StoreError
from ..base import ENDED_METADATA, TABLES

if TYPE_CHECKING:
    import asyncpg

#: The schema version this code writes.
SCHEMA_VERSION = 4

#: Tables whose rows have an owning worker and a lease.
LEASED_TABLES = ("sent", "owed")

#: Advisory lock key serialising schema migrations ("SIPIMDN" in ASCII).
_MIGRATION_LOCK = 0x53_49_50_49_4D_44_4E

#: Longest NOTIFY payload PostgreSQL accepts is 8000 bytes; longer keys are not announced.
_MAX_NOTIFY_BYTES = 7999

_NOW = "extract(epoch from clock_timestamp())"


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


#: The Message-ID of a ``received`` row: its key after the sender key (which holds no space).
_RECEIVED_ID = "substr(key, strpos(key, ' ') + 1)"


#: A ``sent`` row still tracked: neither a tombstone nor the final record of a message whose
#: tracking ended (kept for readers until it expires: many, under load, all expiring within the
#: hour, which the working set and the due reads must not wade through). The text of the
#: version 4 partial index's predicate: a query repeats it word for word to use the index.
_LIVE_SENT = (
    f"CASE WHEN data = {_GONE} THEN false "
    # strict: a lax path would unwrap each (name, value) pair and match a value too.
    f"ELSE NOT coalesce(data::jsonb @? 'strict $.metadata[*] ? (@[0] == \"{ENDED_METADATA}\")', false) END"
)


def _create_v4() -> list[str]:
    # The bounded working set: received rows by Message-ID alone (``mark_displayed`` without
    # a sender reads one back; a digest, as the primary key, since a Message-ID may outgrow a
    # B-tree entry), and a worker's own live sent rows by expiry (its most recent at start,
    # those whose deadline passed later), which the plain owner index served only by a scan.
    received, sent = _table("received"), _table("sent")
    return [
        f"CREATE INDEX IF NOT EXISTS {received}_message_id ON {received} ({_id_of(_RECEIVED_ID)})",
        f"CREATE INDEX IF NOT EXISTS {sent}_live ON {sent} (owner, expires_at) WHERE {_LIVE_SENT}",
    ]


#: Steps in order: ``(version, statements)`` taking the schema from version-1 to version.
_MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, _create_v1()),
    (2, _create_v2()),
    (3, _create_v3()),
    (4, _create_v4()),
]


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
#: A received record by its key, and by its Message-ID alone (for ``mark_displayed`` without a
#: sender: on the version 4 index, the Message-ID compared too, a digest being only a digest).
_LOAD_RECEIVED_SQL = f"SELECT data FROM {_table('received')} WHERE {_ID} = {_id_of('$1')} AND expires_at > $2"
_FIND_RECEIVED_SQL = (
    f"SELECT data FROM {_table('received')} WHERE {_id_of(_RECEIVED_ID)} = {_id_of('$1')} "
    f"AND {_RECEIVED_ID} = $1 AND expires_at > $2"
)

#: The working set's recent rows of ``received`` (every worker's) and live ``sent`` (this
#: worker's, $3): the last $2 to expire after $1, oldest first (the tracker's recency order).
_RECENT_RECEIVED_SQL = (
    f"SELECT data FROM (SELECT data, expires_at FROM {_table('received')} WHERE expires_at > $1 "
    "ORDER BY expires_at DESC LIMIT $2) r ORDER BY expires_at"
)
_RECENT_SENT_SQL = (
    f"SELECT data FROM (SELECT data, expires_at FROM {_table('sent')} WHERE owner = $3 "
    f"AND expires_at > $1 AND {_LIVE_SENT} ORDER BY expires_at DESC LIMIT $2) s ORDER BY expires_at"
)
#: This worker's ($1) live sent rows whose expiry is in ($2, $3], soonest first, at most $4.
_SENT_DUE_SQL = (
    f"SELECT data FROM {_table('sent')} WHERE owner = $1 AND expires_at > $2 AND expires_at <= $3 "
    f"AND {_LIVE_SENT} ORDER BY expires_at LIMIT $4"
)
#: The earliest expiry after $2 among this worker's ($1) live sent rows.
_SENT_LATER_SQL = (
    f"SELECT min(expires_at) FROM {_table('sent')} WHERE owner = $1 AND expires_at > $2 AND {_LIVE_SENT}"
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


async def migrate(conn: asyncpg.Connection[Any]) -> None:
    """Create or migrate the schema on ``conn`` to :data:`SCHEMA_VERSION` (one transaction, under
    an advisory lock so workers starting together migrate once, one after the other)."""
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
