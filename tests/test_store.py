"""The Store contract, run against MemoryStore, SqliteStore and PostgresStore alike, plus SQLite specifics.

PostgreSQL specifics are in test_store_postgres.py."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn._fastinit import keyword_maker
from sipimdn.errors import StoreError
from sipimdn.imdn.tracker.records import evolve
from sipimdn.store import (
    SCHEMA_VERSION,
    Delete,
    MemoryStore,
    OwedRecord,
    PeerRecord,
    Put,
    ReceivedRecord,
    RecipientRecord,
    SeenRecord,
    SentRecord,
    SharedValues,
    SqliteStore,
    Store,
    StoreOp,
    open_store,
    record_from_json,
    record_to_json,
)
from sipimdn.store.base import AnyRecord


def sent(message_id: str = "m1", expires_at: float = 100.0) -> SentRecord:
    return SentRecord(
        message_id=message_id,
        recipients=(
            RecipientRecord("sip:bob@x", "sip:bob@x", "delivered", delivery="delivered", updated_at=2.0),
            RecipientRecord("sip:carol@y", "sip:carol@y", "pending", via="sip:list@z"),
        ),
        requested=("display", "positive-delivery"),
        intermediaries=("sip:list@z",),
        created_at=1.0,
        deadline=expires_at - 10,
        expires_at=expires_at,
        sip_status=202,
        notification_ids=("n1", "n2"),
        metadata=(("subject", "héllo ✓"),),
    )


def owed(notification_id: str = "n1", expires_at: float = 100.0) -> OwedRecord:
    return OwedRecord(
        notification_id=notification_id,
        message_id="m1",
        sender_key="sip:alice@a",
        kind="display",
        status="displayed",
        request_uri="sip:as@r",
        sip_to="sip:alice@a",
        cpim_to="<sip:alice@a>",
        cpim_from=None,
        recipient_uri="sip:bob@b",
        original_recipient_uri=None,
        datetime="2018-02-16T01:42:50+5:30",
        subject=None,
        imdn_route=("sip:as@r", "sip:as2@r"),
        peer_key="sip:as@r",
        attempts=2,
        next_attempt_at=9.0,
        in_flight=True,
        created_at=1.0,
        expires_at=expires_at,
    )


def received(message_id: str = "m1", expires_at: float = 100.0) -> ReceivedRecord:
    return ReceivedRecord(
        message_id=message_id,
        sender_key="sip:alice@a",
        sender="Alice <sip:alice@a>",
        sip_from="sip:alice@a",
        recipient="sip:bob@b",
        original_recipient=None,
        datetime=None,
        subject="s",
        requested=("display", "positive-delivery"),
        imdn_route=(),
        answered_status=200,
        delivery_owed="delivered",
        display_owed=None,
        display_policy="send",
        received_at=1.0,
        expires_at=expires_at,
    )


def every_kind(expires_at: float = 100.0) -> list[AnyRecord]:
    return [
        sent(expires_at=expires_at),
        owed(expires_at=expires_at),
        received(expires_at=expires_at),
        SeenRecord("sip:alice@a", "m1", None, expires_at),
        PeerRecord("sip:alice@a", ("no-cpim", "no-imdn"), 1.0, expires_at),
    ]


@pytest.fixture(params=["memory", "sqlite-memory", "sqlite-file", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite-memory":
        made = SqliteStore(":memory:")
    elif request.param == "sqlite-file":
        made = SqliteStore(str(tmp_path / "state.db"))
    else:  # a fresh database on the run's PostgreSQL server (tests/_postgres.py)
        made = open_store(request.getfixturevalue("postgres_url"))
    yield made
    made.close()


def as_set(store: Store, now: float = 0.0) -> set[AnyRecord]:
    snap = store.load(now)
    return {*snap.sent, *snap.owed, *snap.received, *snap.seen, *snap.peers}


def test_implements_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_put_and_load_every_record_kind(store: Store) -> None:
    records = every_kind()
    store.apply([Put(r) for r in records])
    assert as_set(store) == set(records)
    snap = store.load(0.0)
    assert snap.sent == (records[0],) and snap.peers == (records[4],)


def test_put_replaces_and_delete_removes(store: Store) -> None:
    store.apply([Put(sent()), Put(sent(expires_at=200.0))])
    assert store.load(0.0).sent == (sent(expires_at=200.0),)
    store.apply([Delete("sent", "m1"), Delete("sent", "missing"), Delete("owed", "nothing")])
    assert as_set(store) == set()


def test_operations_apply_in_order(store: Store) -> None:
    store.apply([Put(owed()), Delete("owed", "n1"), Put(owed("n2"))])
    assert [o.notification_id for o in store.load(0.0).owed] == ["n2"]


def test_bad_batch_changes_nothing(store: Store) -> None:
    store.apply([Put(owed())])
    with pytest.raises(StoreError):
        store.apply([Delete("owed", "n1"), Delete("nonsense", "k")])
    assert {o.notification_id for o in store.load(0.0).owed} == {"n1"}


@pytest.mark.parametrize("op", [Put(object()), Delete("nonsense", "k"), "not an op"])  # type: ignore[arg-type]
def test_not_an_operation(store: Store, op: object) -> None:
    with pytest.raises(StoreError):
        store.apply([Put(owed()), op])  # type: ignore[list-item]
    assert store.load(0.0).owed == ()


def test_load_hides_expired_and_purge_removes_them(store: Store) -> None:
    store.apply([Put(r) for r in every_kind(expires_at=50.0)])
    store.apply([Put(sent("m2", expires_at=150.0))])
    assert len(as_set(store, now=49.0)) == 6
    assert [s.message_id for s in store.load(50.0).sent] == ["m2"]
    assert store.purge(50.0) == 5
    assert store.purge(50.0) == 0
    assert len(as_set(store)) == 1


def test_closed_store_raises(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.load(0.0)
    with pytest.raises(StoreError):
        store.apply([Put(sent())])
    store.close()  # idempotent


def test_concurrent_writers(store: Store) -> None:
    """The UA calls the store from worker threads; one lock keeps batches whole."""

    def work(worker: int) -> None:
        for i in range(25):
            store.apply(
                [
                    Put(SeenRecord(f"sip:w{worker}@x", f"m{i}", 200, 100.0)),
                    Put(PeerRecord(f"sip:w{worker}@x", ("no-imdn",), float(i), 100.0)),
                ]
            )

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    snap = store.load(0.0)
    assert len(snap.seen) == 100 and len(snap.peers) == 4
    assert {p.updated_at for p in snap.peers} == {24.0}


# --- serialisation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("record", every_kind(), ids=lambda r: r.TABLE)
def test_json_round_trip(record: AnyRecord) -> None:
    assert record_from_json(record.TABLE, record_to_json(record)) == record


def _reference_json(value: Any) -> Any:
    """The serialisation spelled out field by field with ``dataclasses.fields``, as stores wrote it."""
    if isinstance(value, RecipientRecord) or hasattr(value, "TABLE"):
        return {f.name: _reference_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_reference_json(item) for item in value]
    return value


@pytest.mark.parametrize("record", [*every_kind(), replace(sent(), metadata=(("k", '"\\\u2028é'),))],
                         ids=lambda r: r.TABLE)
def test_json_text_is_the_compact_field_order_spelling(record: AnyRecord) -> None:
    # The text stores keep (and other workers read): compact separators, fields in
    # declaration order, non-ASCII kept as it is.
    expected = json.dumps(_reference_json(record), separators=(",", ":"), ensure_ascii=False)
    assert record_to_json(record) == expected


@pytest.mark.parametrize("record", every_kind(), ids=lambda r: r.TABLE)
def test_evolve_is_dataclasses_replace(record: AnyRecord) -> None:
    # The tracker's cheaper replace: same record for every field changed, same refusal.
    for f in fields(record):
        changed = evolve(record, **{f.name: getattr(sent(), f.name, None)})
        assert changed == replace(record, **{f.name: getattr(sent(), f.name, None)})
        assert type(changed) is type(record)
    assert evolve(record) == record
    with pytest.raises(TypeError):
        evolve(record, no_such_field=1)


@pytest.mark.parametrize("record", every_kind(), ids=lambda r: r.TABLE)
def test_keyword_maker_makes_what_the_class_makes(record: AnyRecord) -> None:
    # The tracker's cheaper constructor: the same record from the same keywords, the
    # class's defaults for those left out, the same refusals.
    make = keyword_maker(type(record))
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    made = make(**values)
    assert made == record and type(made) is type(record) and repr(made) == repr(record)
    required = {f.name: values[f.name] for f in fields(record) if f.default is MISSING}
    assert make(**required) == type(record)(**required)
    with pytest.raises(TypeError):
        make(**values, no_such_field=1)
    with pytest.raises(TypeError):
        make(*values.values())  # keywords only, as the tracker calls it
    if len(required) > 0:
        with pytest.raises(TypeError):
            make(**dict(list(required.items())[1:]))


@pytest.mark.parametrize("text", ["{", "[]", '{"message_id": "m1"}', '{"peer_key": 1, "unknown": 2}'])
def test_corrupt_json_is_a_store_error(text: str) -> None:
    with pytest.raises(StoreError):
        record_from_json("sent", text)
    with pytest.raises(StoreError):
        record_from_json("peer", text)
    with pytest.raises(StoreError):
        record_from_json("nonsense", "{}")


# --- SQLite specifics ------------------------------------------------------------------------------------


def test_sqlite_file_uses_wal_and_versioned_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with SqliteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        store.apply([Put(r) for r in every_kind()])
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    with SqliteStore(path) as reopened:  # survives a reopen
        assert as_set(reopened) == set(every_kind())


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)


def test_sqlite_corrupt_row_is_a_store_error(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    with SqliteStore(path) as store:
        store.apply([Put(sent())])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sent SET data = 'not json'")
    conn.commit()
    conn.close()
    with SqliteStore(path) as store, pytest.raises(StoreError, match="corrupt"):
        store.load(0.0)


def test_sqlite_unopenable_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(str(tmp_path / "missing-dir" / "x.db"))


def test_sqlite_refuses_a_database_url() -> None:
    with pytest.raises(StoreError, match="a URL"):
        SqliteStore("postgresql://postgres@/postgres?host=/run/postgresql")


# --- values shared across the records of one load --------------------------------------------------------


def test_json_round_trip_with_shared_values_keeps_values_and_types() -> None:
    shared = SharedValues()
    records = every_kind()
    # Ints, bools and floats that compare equal (1, True, 1.0) must each keep their own type.
    tricky = replace(owed(), attempts=1, in_flight=True, next_attempt_at=1.0, created_at=1.0)
    for record in (*records, tricky):
        again = record_from_json(record.TABLE, record_to_json(record), shared)
        assert again == record
        assert _types(again) == _types(record)


def test_sqlite_load_shares_equal_values(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with_seen = [*every_kind(), received("m2"), SeenRecord("sip:alice@a", "m2", 200, 100.0)]
    writer = SqliteStore(path)
    writer.apply([Put(r) for r in with_seen])
    writer.close()
    store = SqliteStore(path)
    snap = store.load(0.0)
    store.close()
    assert {*snap.sent, *snap.owed, *snap.received, *snap.seen, *snap.peers} == set(with_seen)
    [first, second] = sorted(snap.received, key=lambda r: r.message_id)
    seen = {s.message_id: s for s in snap.seen}
    # What a message's dedup entry and received record have in common is one object.
    assert seen["m2"].message_id is second.message_id and seen["m2"].sender_key is second.sender_key
    assert seen["m2"].expires_at is second.expires_at
    # And what repeats across messages.
    assert first.requested is second.requested and first.recipient is second.recipient
    assert first.sender_key is second.sender_key is snap.owed[0].sender_key
    assert first.sip_from is first.sender_key  # equal text: one string


def _fields(record: AnyRecord) -> dict[str, object]:
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _types(record: AnyRecord) -> list[tuple[str, type]]:
    return [(name, type(value)) for name, value in _fields(record).items()]



def _open_and_close(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        SqliteStore(path).close()
        results.put(None)
    except Exception as exc:  # reported to the test, which names it
        results.put(repr(exc))


def test_sqlite_store_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    """Workers opening one new file together: the journal-mode switch (which SQLite refuses with
    "database is locked" instead of waiting) and the migration wait for each other. Before the
    retry, about one open in ten failed here."""
    context = multiprocessing.get_context("fork")
    failures: list[str] = []
    for round_ in range(15):
        path = str(tmp_path / f"race{round_}.db")
        barrier, results = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_open_and_close, args=(path, barrier, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        failures += [outcome for outcome in outcomes if outcome is not None]
    assert failures == []


def test_sqlite_store_gives_up_on_a_file_held_past_its_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "held.db")
    SqliteStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError):
            SqliteStore(path, timeout=0.2).apply([Put(SeenRecord("sip:a@x", "m1", None, 50.0))])
    finally:
        holder.execute("COMMIT")
        holder.close()


# --- SQLite: a batch of distinct records goes one executemany per statement ------------------------

_KEYS = st.sampled_from(["a", "b", "c"])
_OPS = st.lists(
    st.one_of(
        st.builds(lambda k, e: Put(SeenRecord("sip:s@x", k, None, e)), _KEYS, st.sampled_from([5.0, 50.0])),
        st.builds(lambda k, s: Put(SeenRecord("sip:s@x", k, s, 60.0)), _KEYS, st.sampled_from([200, 486])),
        st.builds(lambda k: Put(owed(k)), _KEYS),
        st.builds(lambda k: Put(received(k)), _KEYS),
        st.builds(lambda k: Delete("seen", f"sip:s@x {k}"), _KEYS),
        st.builds(lambda k: Delete("owed", k), _KEYS),
        st.builds(lambda k: Delete("received", f"sip:alice@a {k}"), _KEYS),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_OPS, max_size=4))
def test_sqlite_batches_load_as_the_same_operations_one_by_one(batches: list[list[StoreOp]]) -> None:
    # Grouped (no record twice in a batch), in order (some record twice) or a single
    # statement: the same rows, loaded in the same order, as each operation on its own.
    whole, single = SqliteStore(":memory:"), SqliteStore(":memory:")
    try:
        for ops in batches:
            whole.apply(ops)
            for op in ops:
                single.apply([op])
        assert whole.load(10.0) == single.load(10.0)
        assert whole.load(0.0) == single.load(0.0)
    finally:
        whole.close()
        single.close()
