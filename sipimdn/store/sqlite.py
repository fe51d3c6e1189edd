"""The embedded persistent :class:`~sipimdn.store.base.Store`: SQLite from the standard library.

Layout: one table per record kind, each ``(key TEXT PRIMARY KEY, expires_at
REAL, data TEXT)`` with ``data`` the record as JSON
(:func:`~sipimdn.store.base.record_to_json`) and an index on ``expires_at``
for :meth:`SqliteStore.purge`. Keeping the record as one JSON value means a
new optional field needs no migration; the schema version lives in
``PRAGMA user_version`` and :data:`_MIGRATIONS` says how to reach each one.

Concurrency: one connection per store, opened with ``check_same_thread=False``
and used only under ``self._lock``, so the asyncio adapter may call it from
any worker thread. A file database runs in WAL mode with ``synchronous=NORMAL``:
a crash may lose the last committed batches but never corrupts the file, and
readers never block the writer.

Writes on the event loop (:class:`~sipimdn.store.base.InlineStore`): a
``:memory:`` database, and a file opened with ``inline_writes=True`` (WAL mode,
no fsync per commit; see :attr:`SqliteStore.inline_writes` for why not every
file), take :meth:`SqliteStore.try_apply` on the asyncio adapter's loop thread
when its worker is idle. That call never waits: it only try-acquires
``self._lock`` and runs with SQLite's busy timeout at zero (another process
holding the file makes it return False, not block for the timeout). For such a
file SQLite's automatic WAL checkpoint, which runs inside whichever commit
crosses its threshold, copying pages and fsyncing, is off on this connection
(``wal_autocheckpoint=0``) and the store checkpoints itself: in the calls that
may wait (:meth:`SqliteStore.apply` and the other writes) and in
:meth:`SqliteStore.upkeep`, which the adapter runs on its worker once
:attr:`SqliteStore.upkeep_due` says the WAL has grown by about SQLite's own
threshold (:data:`_CHECKPOINT_FRAMES`) since the last checkpoint.

Shared-state primitives (:class:`~sipimdn.store.base.SharedStore`): implemented
in their one-worker form, so code written for several workers runs on SQLite
too: dedup claims are atomic, every record is this worker's, nothing is ever
taken over, and notifications reach this store object's listeners only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence

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

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

_log = logging.getLogger("sipimdn.store.sqlite")

#: The schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: The Message-ID part of a ``received`` key (``"{sender key} {Message-ID}"``; a sender key holds
#: no space): indexed, so a received message is found by its Message-ID alone.
_RECEIVED_ID = "substr(key, instr(key, ' ') + 1)"


def _create_v1(conn: sqlite3.Connection) -> None:
    for table in TABLES:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(key TEXT PRIMARY KEY NOT NULL, expires_at REAL NOT NULL, data TEXT NOT NULL)"
        )
        conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_expires ON {table}(expires_at)")


def _create_v2(conn: sqlite3.Connection) -> None:
    # The working set's miss path: mark_displayed(message_id) without the sender.
    conn.execute(f"CREATE INDEX IF NOT EXISTS received_message_id ON received({_RECEIVED_ID})")


#: WAL frames (pages written) after which a checkpoint is due: SQLite's default ``wal_autocheckpoint``.
_CHECKPOINT_FRAMES = 1000
#: Rows changed and commits between checkpoints: the first guesses (a row and its index entries
#: make two to three frames in small commits, a commit of a few rows about five), then measured
#: at each checkpoint and kept within these bounds. A checkpoint is due when either count is
#: reached: a commit's frames grow with its rows but less than in proportion (rows of one commit
#: share pages), so whichever way the commits' size changes, one of the two fires early.
_CHECKPOINT_ROWS = (400, 50, 100_000)
_CHECKPOINT_COMMITS = (200, 16, 10_000)

#: The statements :meth:`SqliteStore.apply` runs, per table.
_PUT_SQL = {t: f"INSERT OR REPLACE INTO {t} (key, expires_at, data) VALUES (?, ?, ?)" for t in TABLES}
_DELETE_SQL = {t: f"DELETE FROM {t} WHERE key = ?" for t in TABLES}

#: Steps from version N-1 to N, applied in order inside one transaction.
_MIGRATIONS = {1: _create_v1, 2: _create_v2}


class SqliteStore:
    """A :class:`~sipimdn.store.base.Store` on one SQLite database file.

    ``path`` is a file name or ``":memory:"`` (a private database, for tests).
    Raises :class:`~sipimdn.errors.StoreError` if the file cannot be opened or
    was written by a newer schema. ``inline_writes`` (see :attr:`inline_writes`):
    None (default) for ``:memory:`` only; True also for a file, e.g. on tmpfs.
    """

    #: One worker only (see :class:`~sipimdn.store.base.SharedStore`).
    multi_worker = False

    def __init__(
        self,
        path: str,
        *,
        timeout: float = 5.0,
        worker_id: str | None = None,
        inline_writes: bool | None = None,
    ) -> None:
        if "://" in path:
            # A database URL given where a file is expected would become a strange file name.
            raise StoreError(
                f"cannot open store {path!r}: a URL, not a SQLite file (sipimdn.store.open_store opens URLs)"
            )
        self.path = path
        #: The one worker using this store (see the shared-state section below).
        self.worker_id = worker_id or default_worker_id()
        #: Leases never run out: no other worker could take records over.
        self.lease = math.inf
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # The busy timeout in ms, and whether the connection waits it out now (see _waiting).
        self._timeout_ms = round(timeout * 1000)
        self._waits = True
        # Inline writes (InlineStore): possible at all; a WAL file we checkpoint ourselves
        # (a file with inline writes); the connection's total_changes at the last checkpoint,
        # the rows changed since (as of the last commit) and how many make a checkpoint due.
        self._inline = path == ":memory:" and inline_writes is not False
        self._wal = False
        self._changes_mark = 0
        self._changed = 0
        self._checkpoint_rows = _CHECKPOINT_ROWS[0]
        self._commits = 0
        self._checkpoint_commits = _CHECKPOINT_COMMITS[0]
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a batch is one transaction.
            conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path!r}: {exc}") from exc
        try:
            if path != ":memory:":
                _switch_to_wal(conn, timeout)
                conn.execute("PRAGMA synchronous=NORMAL")
                if inline_writes:
                    # As set, not as asked: a file system without shared memory keeps another
                    # journal. NORMAL (1) in WAL mode: a commit appends to the WAL, no fsync.
                    wal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"
                    synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])
                    self._inline = self._wal = wal and synchronous == 1
                if self._wal:
                    conn.execute("PRAGMA wal_autocheckpoint=0")  # ours instead (module docstring)
            self._migrate(conn)
        except (sqlite3.Error, StoreError) as exc:
            conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open store {path!r}: {exc}") from exc
        self._conn = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"store schema version {version} is newer than supported {SCHEMA_VERSION}")
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process opening the same file at the same
            # moment may have migrated it while we waited for the lock.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for step in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """The version recorded in the database file."""
        with self._lock:
            return int(self._connection().execute("PRAGMA user_version").fetchone()[0])

    def _connection(self) -> sqlite3.Connection:
        """The connection, waiting out the busy timeout (for the calls that may wait); under
        ``self._lock``."""
        conn = self._conn
        if conn is None:
            raise StoreError("store is closed")
        if not self._waits:
            self._waiting(conn, True)
        return conn

    def _waiting(self, conn: sqlite3.Connection, waits: bool) -> None:
        # The busy timeout is set only when it changes: no statement more per write while the
        # writes keep to one kind (inline ones on the loop, or the worker's).
        conn.execute(f"PRAGMA busy_timeout = {self._timeout_ms if waits else 0}")
        self._waits = waits

    def _counted(self, conn: sqlite3.Connection) -> None:
        """After a commit: count it and the rows changed since the last checkpoint."""
        self._changed = conn.total_changes - self._changes_mark
        self._commits += 1

    def _committed(self, conn: sqlite3.Connection) -> None:
        """After a commit: count it, and checkpoint the WAL when due (only from the calls that
        may wait)."""
        self._counted(conn)
        if self.upkeep_due:
            try:
                self._checkpoint(conn)
            except StoreError:  # what was committed stands; the next commit tries again
                _log.warning("WAL checkpoint failed", exc_info=True)

    def apply(self, ops: Sequence[StoreOp]) -> None:
        """Apply operations in order in one transaction.

        Operations on different records commute (one row each), so when no record comes
        twice (what the store writer hands over: it keeps the last operation of each) the
        rows of each statement go in one ``executemany``; otherwise one by one, in order.
        A batch of a single statement is one implicit transaction (as atomic, and two
        statements fewer).
        """
        if not ops:
            return
        plan = _plan(ops)
        with self._lock:
            conn = self._connection()
            try:
                _execute(conn, plan)
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}") from exc
            self._committed(conn)
        if self._listeners:
            self._announce([op.record.key for op in ops if isinstance(op, Put) and op.record.TABLE == "sent"])

    # -- InlineStore: writes on the event loop's thread (module docstring) ------------------------

    @property
    def inline_writes(self) -> bool:
        """True for ``:memory:``, and for a file opened with ``inline_writes=True`` (in WAL mode
        with ``synchronous=NORMAL``: a commit appends to the WAL, no fsync), unless a subclass
        changed :meth:`apply`.

        Not for a file by default: without an fsync a commit is short on average (about
        0.2 ms for a positive-delivery message's records), but it goes through the kernel's
        page cache to a disk, and under writeback one took 10-30 ms. Measured on the
        2-core machine where this was built (profile_stack.py rate, 700 messages/s, 10 s),
        on the event loop those became 93 stalls over 20 ms against 3, and the 200's p50
        22 ms against 9; at 1,000/s the inline file store lost messages where the worker did
        not. A file on tmpfs has no such disk: there ``inline_writes=True`` is the choice.
        """
        return self._inline and type(self).apply is SqliteStore.apply

    def try_apply(self, ops: Sequence[StoreOp]) -> bool:
        """:meth:`apply` without waiting: False (nothing written) when another thread holds the
        connection, another process holds the database's write lock, a listener is registered
        (it runs in the writing thread: not on the caller's) or writes are not :attr:`inline_writes`;
        never checkpoints (:meth:`upkeep` does)."""
        if not self._inline or self._listeners:
            return False
        if not ops:
            return True
        plan = _plan(ops)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if conn is None:
                raise StoreError("store is closed")
            if self._waits and self._wal:  # (a private database has nobody to wait for)
                self._waiting(conn, False)
            try:
                _execute(conn, plan)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return False  # rolled back (_execute): nothing written
                raise StoreError(f"store write failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}") from exc
            self._counted(conn)
        finally:
            self._lock.release()
        return True

    @property
    def upkeep_due(self) -> bool:
        """True once the WAL has grown by about :data:`_CHECKPOINT_FRAMES` since the last checkpoint."""
        return self._wal and (
            self._changed >= self._checkpoint_rows or self._commits >= self._checkpoint_commits
        )

    def upkeep(self) -> None:
        """Checkpoint the WAL now if due (it may wait: the worker's call)."""
        with self._lock:
            conn = self._connection()
            if self.upkeep_due:
                self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """A passive checkpoint (what SQLite's automatic one runs), under ``self._lock``; the
        rows changed and the commits between checkpoints are re-estimated from the frames this
        one found (see :data:`_CHECKPOINT_ROWS`)."""
        try:
            _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"store checkpoint failed: {exc}") from exc
        total = conn.total_changes
        rows, self._changes_mark, self._changed = total - self._changes_mark, total, 0
        commits, self._commits = self._commits, 0
        if frames > 0:
            _first, low, high = _CHECKPOINT_ROWS
            self._checkpoint_rows = max(low, min(high, rows * _CHECKPOINT_FRAMES // frames))
            _first, low, high = _CHECKPOINT_COMMITS
            self._checkpoint_commits = max(low, min(high, commits * _CHECKPOINT_FRAMES // frames))

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: it waits for other writers, also in other
        processes, up to the timeout), rolled back if the body raises; a database error becomes
        ``StoreError("store {action} failed: ...")``."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"store {action} failed: {exc}") from exc
            self._committed(conn)

    def load(self, now: float) -> Snapshot:
        """Every record that has not expired at ``now``."""
        records: list[AnyRecord] = []
        # Equal values across rows become one object: what is loaded stays in memory for as
        # long as it is tracked (see SharedValues).
        shared = SharedValues()
        with self._lock:
            conn = self._connection()
            try:
                for table in TABLES:
                    cursor = conn.execute(f"SELECT data FROM {table} WHERE expires_at > ?", (now,))
                    records.extend(record_from_json(table, row[0], shared) for row in cursor)
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        return snapshot_from_records(records)

    def load_working_set(self, now: float, limit: int) -> Snapshot:
        """:meth:`load`, but at most ``limit`` received and ``limit`` sent records (those
        expiring last); the others stay here, read back on a miss."""
        records: list[AnyRecord] = []
        shared = SharedValues()
        with self._lock:
            conn = self._connection()
            try:
                for table in TABLES:
                    sql = f"SELECT data FROM {table} WHERE expires_at > ?"
                    if table in (ReceivedRecord.TABLE, SentRecord.TABLE):
                        # The last ``limit`` to expire, oldest first (the tracker's recency order).
                        recent = (
                            f"SELECT data, expires_at FROM {table} WHERE expires_at > ? "
                            "ORDER BY expires_at DESC LIMIT ?"
                        )
                        cursor = conn.execute(
                            f"SELECT data FROM ({recent}) ORDER BY expires_at", (now, limit)
                        )
                    else:
                        cursor = conn.execute(sql, (now,))
                    records.extend(record_from_json(table, row[0], shared) for row in cursor)
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        return snapshot_from_records(records)

    def load_received(
        self, message_id: str, sender_key: str | None, now: float
    ) -> tuple[ReceivedRecord, ...]:
        """The received records of ``message_id`` not expired at ``now`` (from ``sender_key``
        only, when given); both lookups use an index."""
        if sender_key is not None:
            sql, params = (
                "SELECT data FROM received WHERE key = ? AND expires_at > ?",
                (
                    received_key(sender_key, message_id),
                    now,
                ),
            )
        else:
            sql, params = (
                f"SELECT data FROM received WHERE {_RECEIVED_ID} = ? AND expires_at > ?",
                (message_id, now),
            )
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        found = [record_from_json(ReceivedRecord.TABLE, row[0]) for row in rows]
        return tuple(r for r in found if isinstance(r, ReceivedRecord))

    def load_sent_due(
        self, before: float, now: float, limit: int
    ) -> tuple[tuple[SentRecord, ...], float | None]:
        """Up to ``limit`` sent records with ``now < expires_at <= before``, soonest first, and the
        earliest ``expires_at`` after ``before`` (both on the ``expires_at`` index)."""
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(
                    "SELECT data FROM sent WHERE expires_at > ? AND expires_at <= ? "
                    "ORDER BY expires_at LIMIT ?",
                    (now, before, limit),
                ).fetchall()
                later = conn.execute(
                    "SELECT min(expires_at) FROM sent WHERE expires_at > ?", (before,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        found = [record_from_json(SentRecord.TABLE, row[0]) for row in rows]
        return tuple(r for r in found if isinstance(r, SentRecord)), (
            None if later[0] is None else float(later[0])
        )

    def purge(self, now: float) -> int:
        """Delete expired records; return how many."""
        removed = 0
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                for table in TABLES:
                    removed += conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,)).rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"store purge failed: {exc}") from exc
            self._committed(conn)
        return removed

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- shared-state primitives (SharedStore), in their single-worker form -----------------------
    #
    # A SQLite store is one worker's: claim_seen is atomic (also between processes opening the
    # same file), every leased record is this worker's and none can be taken over, and
    # notifications reach the listeners of this store object only.

    def claim_seen(self, record: SeenRecord, now: float) -> bool:
        """Write ``record`` unless a live entry (not expired at ``now``) has its key; True if written."""
        if not isinstance(record, SeenRecord):
            raise StoreError(f"not a seen record: {record!r}")
        with self._write("claim") as conn:
            cursor = conn.execute(
                "INSERT INTO seen (key, expires_at, data) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET expires_at = excluded.expires_at, data = excluded.data "
                "WHERE seen.expires_at <= ?",
                (record.key, record.expires_at, record_to_json(record), now),
            )
            claimed = cursor.rowcount == 1
        return claimed

    def load_sent(self, message_id: str, now: float) -> SentRecord | None:
        """The ``sent`` record of ``message_id``, unless expired at ``now``."""
        with self._lock:
            conn = self._connection()
            try:
                row = conn.execute(
                    "SELECT data FROM sent WHERE key = ? AND expires_at > ?", (message_id, now)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc
        if row is None:
            return None
        record = record_from_json("sent", row[0])
        assert isinstance(record, SentRecord)
        return record

    def load_own(self, now: float) -> Snapshot:
        """Everything (every record is this worker's): :meth:`load`."""
        return self.load(now)

    def forward_notification(self, message_id: str, data: str, now: float) -> bool:
        """False: the one worker owns every record, so a message it does not track is unknown."""
        self._connection()
        return False

    def take_forwarded(self, now: float, limit: int = 1000) -> list[tuple[int, str]]:
        """Nothing: nothing is ever forwarded here."""
        self._connection()
        return []

    def drop_forwarded(self, ids: Sequence[int]) -> None:
        """Nothing to drop."""
        self._connection()

    def claim_message(
        self, record: SeenRecord, now: float, stale_expiry: float | None = None
    ) -> SeenRecord | None:
        """:meth:`claim_seen` that also says who kept the key (None: ``record`` was written);
        an unanswered entry expiring at or before ``stale_expiry`` is taken over."""
        if not isinstance(record, SeenRecord):
            raise StoreError(f"not a seen record: {record!r}")
        with self._write("claim") as conn:
            cursor = conn.execute(
                "INSERT INTO seen (key, expires_at, data) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET expires_at = excluded.expires_at, data = excluded.data "
                "WHERE seen.expires_at <= ? OR (? IS NOT NULL "
                "AND json_extract(seen.data, '$.status') IS NULL AND seen.expires_at <= ?)",
                (
                    record.key,
                    record.expires_at,
                    record_to_json(record),
                    now,
                    stale_expiry,
                    stale_expiry,
                ),
            )
            written = cursor.rowcount == 1
            row = (
                None
                if written
                else conn.execute("SELECT data FROM seen WHERE key = ?", (record.key,)).fetchone()
            )
        if row is None:
            return None
        found = record_from_json("seen", row[0])
        assert isinstance(found, SeenRecord)
        return found

    def claim_messages(
        self, records: Sequence[SeenRecord], now: float, stale_expiry: float | None = None
    ) -> list[SeenRecord | None]:
        """:meth:`claim_message` for each record, in order."""
        return [self.claim_message(record, now, stale_expiry) for record in records]

    def renew_leases(self) -> int:
        """How many ``sent`` and ``owed`` records there are: all of them are this worker's."""
        with self._lock:
            conn = self._connection()
            try:
                return sum(
                    int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ("sent", "owed")
                )
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc

    def apply_owned(self, ops: Sequence[StoreOp]) -> tuple[StoreOp, ...]:
        """:meth:`apply`; nothing is ever fenced off (every record is this worker's)."""
        self.apply(ops)
        return ()

    def owned_elsewhere(self, table: str, keys: Sequence[str]) -> list[str]:
        """Nothing: no other worker owns records here."""
        if table not in ("sent", "owed"):
            raise StoreError(f"no owners in store table {table!r}")
        self._connection()
        return []

    def take_over(self, now: float, limit: int = 1000) -> Snapshot:
        """Nothing: no other worker owns records here."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        self._connection()
        return Snapshot()

    def notify(self, payload: str) -> None:
        """Call this store's listeners with ``payload`` (in the calling thread)."""
        self._connection()
        self._announce([payload])

    def listen(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(payload)`` for :meth:`notify` and for each ``sent`` record written
        (its Message-ID, after the commit, in the writing thread); return an unsubscriber."""
        self._connection()
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _announce(self, payloads: Sequence[str]) -> None:
        for payload in payloads:
            for listener in list(self._listeners):
                try:
                    listener(payload)
                except Exception:  # one failing listener must not silence the others
                    _log.exception("store notification listener failed")

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: One SQL statement and its rows: ``executemany`` for several, ``execute`` for one.
_Plan = list[tuple[str, list[tuple[object, ...]]]]


def _plan(ops: Sequence[StoreOp]) -> _Plan:
    """The statements applying ``ops`` (checked), in an order with the same outcome.

    Operations on different records commute (one row each), so when no record comes twice
    the rows of each statement are grouped; otherwise they stay one by one, in order.
    """
    rows: list[tuple[str, tuple[object, ...]]] = []
    idents: set[tuple[str, str]] = set()
    for op in ops:
        check_op(op)
        if isinstance(op, Put):
            record = op.record
            table, key = record.TABLE, record.key
            rows.append((_PUT_SQL[table], (key, record.expires_at, record_to_json(record))))
        else:
            assert isinstance(op, Delete)
            table, key = op.table, op.key
            rows.append((_DELETE_SQL[table], (key,)))
        idents.add((table, key))
    if len(idents) < len(rows):
        return [(sql, [params]) for sql, params in rows]
    grouped: dict[str, list[tuple[object, ...]]] = {}
    for sql, params in rows:
        grouped.setdefault(sql, []).append(params)
    return list(grouped.items())


def _execute(conn: sqlite3.Connection, plan: _Plan) -> None:
    """Run ``plan`` as one transaction (rolled back if it fails); a plan of one statement on
    one row is one implicit transaction (as atomic, and two statements fewer)."""
    if len(plan) == 1 and len(plan[0][1]) == 1:
        conn.execute(plan[0][0], plan[0][1][0])
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in plan:
            if len(params) == 1:
                conn.execute(sql, params[0])
            else:
                conn.executemany(sql, params)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _switch_to_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the file.

    Changing the journal mode needs the database to itself, and SQLite reports "database is
    locked" at once there instead of waiting out the busy timeout: two workers opening one new
    file together would otherwise fail. Bounded by ``timeout``, as every other wait on the file.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
