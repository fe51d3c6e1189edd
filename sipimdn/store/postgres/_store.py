"""The :class:`PostgresStore`: the store contract and the shared-state primitives on PostgreSQL.

See :mod:`sipimdn.store.postgres` for the layout, the writes and the fencing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ...errors import StoreError
from .._worker import default_worker_id
from ..base import (
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
from ._conn import LoopClient
from ._sql import (
    _CLAIM_MESSAGE_SQL,
    _CLAIM_MESSAGES_SQL,
    _CLAIM_SQL,
    _FIND_RECEIVED_SQL,
    _FORWARD_SQL,
    _FORWARDED,
    _GONE,
    _ID,
    _LOAD_RECEIVED_SQL,
    _LOAD_SENT_SQL,
    _PURGE_SQL,
    _RECENT_RECEIVED_SQL,
    _RECENT_SENT_SQL,
    _RENEW_SQL,
    _SENT_DUE_SQL,
    _SENT_LATER_SQL,
    _TAKE_FORWARDED_SQL,
    _TAKE_OVER_SQL,
    LEASED_TABLES,
    _apply_sql,
    _id_of,
    _table,
    migrate,
)

__all__ = ["PostgresStore"]

_log = logging.getLogger("sipimdn.store.postgres")


class PostgresStore(LoopClient):
    """A :class:`~sipimdn.store.base.SharedStore` and
    :class:`~sipimdn.store.base.WorkingSetStore` on one PostgreSQL database.

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
        super().__init__(
            url, channel=channel, connect_timeout=connect_timeout, command_timeout=command_timeout
        )
        self.worker_id = worker_id or default_worker_id()
        self.lease = lease
        try:
            with self._lock:
                self._call(self._migrate(), "cannot open store")
        except BaseException:
            self._stop_loop()
            raise

    async def _migrate(self) -> None:
        await migrate(await self._connection())

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
        return self._load_own(now, None)

    def load_working_set(self, now: float, limit: int) -> Snapshot:
        """:meth:`load_own`, but at most ``limit`` ``received`` (any worker's) and ``limit`` of
        this worker's ``sent`` records: those expiring last, oldest first (the tracker's recency
        order); the others stay here, read back on a miss (:meth:`load_received`,
        :meth:`load_sent`, :meth:`load_sent_due`). Tombstones are skipped, as everywhere."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        return self._load_own(now, limit)

    def _load_own(self, now: float, limit: int | None) -> Snapshot:
        async def read() -> list[tuple[str, list[str]]]:
            conn = await self._connection()
            rows = []
            for table in TABLES:
                sql = f"SELECT data FROM {_table(table)} WHERE expires_at > $1 AND data <> {_GONE}"
                if limit is not None and table == ReceivedRecord.TABLE:
                    fetched = await conn.fetch(_RECENT_RECEIVED_SQL, now, limit)
                elif limit is not None and table == SentRecord.TABLE:
                    fetched = await conn.fetch(_RECENT_SENT_SQL, now, limit, self.worker_id)
                elif table in LEASED_TABLES:
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

    def load_sent_due(
        self, before: float, now: float, limit: int
    ) -> tuple[tuple[SentRecord, ...], float | None]:
        """Up to ``limit`` of this worker's ``sent`` records with ``now < expires_at <= before``,
        expiring first first, and the earliest ``expires_at`` after ``before`` among its others
        (None if none); both on the version 4 ``(owner, expires_at)`` index. Another worker's
        records are that worker's to end (or a survivor's, once taken over)."""

        async def read() -> tuple[list[str], float | None]:
            conn = await self._connection()
            rows = await conn.fetch(_SENT_DUE_SQL, self.worker_id, now, before, limit)
            later = await conn.fetchval(_SENT_LATER_SQL, self.worker_id, before)
            return [row[0] for row in rows], None if later is None else float(later)

        with self._lock:
            texts, later = self._call(read(), "store read failed")
        shared = SharedValues()
        found = [record_from_json(SentRecord.TABLE, text, shared) for text in texts]
        return tuple(r for r in found if isinstance(r, SentRecord)), later

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
