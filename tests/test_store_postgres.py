"""PostgresStore specifics: schema, faults, and the primitives several workers share.

Runs against a real PostgreSQL (tests/_postgres.py): skipped where it is not installed,
failed with CI=true. The Store contract itself is in test_store.py.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from _postgres import PostgresServer, require_postgres
from test_store import every_kind, owed, received, sent

from sipimdn.errors import StoreError
from sipimdn.store import (
    Delete,
    Put,
    SeenRecord,
    SharedStore,
    SqliteStore,
    Store,
    StoreOp,
    open_store,
)
from sipimdn.store.base import ENDED_METADATA
from sipimdn.store.postgres import SCHEMA_VERSION, PostgresStore, is_postgres_url
from sipimdn.store.postgres._sql import _LIVE_SENT


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def as_set(store: Store, now: float = 0.0) -> set[object]:
    snap = store.load(now)
    return {*snap.sent, *snap.owed, *snap.received, *snap.seen, *snap.peers}


@pytest.fixture
def opened(postgres_url: str) -> Iterator[list[PostgresStore]]:
    """Stores opened by a test, closed after it."""
    stores: list[PostgresStore] = []
    yield stores
    for store in stores:
        store.close()


def open_pg(opened: list[PostgresStore], url: str, **kwargs: object) -> PostgresStore:
    store = PostgresStore(url, **kwargs)  # type: ignore[arg-type]
    opened.append(store)
    return store


# --- opening -------------------------------------------------------------------------------------------


def test_open_store_picks_the_backend(postgres_url: str, tmp_path: Path) -> None:
    pg = open_store(postgres_url, worker_id="w1")
    try:
        assert isinstance(pg, PostgresStore) and isinstance(pg, SharedStore)
        assert pg.worker_id == "w1"
    finally:
        pg.close()
    for target in (":memory:", str(tmp_path / "x.db")):
        lite = open_store(target)
        assert isinstance(lite, SqliteStore)
        lite.close()
    assert is_postgres_url("postgres://u@h/db") and is_postgres_url("POSTGRESQL://u@/db?host=/run")
    assert not is_postgres_url("postgresql.db") and not is_postgres_url("/var/lib/x.db")


def test_default_worker_id_names_host_and_pid(opened: list[PostgresStore], postgres_url: str) -> None:
    store = open_pg(opened, postgres_url)
    assert store.worker_id.endswith(f":{os.getpid()}")


def test_schema_is_created_once_and_reopening_is_idempotent(
    postgres_server: PostgresServer, opened: list[PostgresStore], postgres_url: str
) -> None:
    first = open_pg(opened, postgres_url)
    assert first.schema_version == SCHEMA_VERSION == 4
    first.apply([Put(r) for r in every_kind()])
    again = open_pg(opened, postgres_url)
    assert again.schema_version == SCHEMA_VERSION
    assert as_set(again) == set(every_kind())
    database = database_of(postgres_url)
    assert postgres_server.psql("SELECT count(*) FROM sipimdn_schema_version", database) == "1"


def test_workers_starting_together_migrate_once(postgres_server: PostgresServer, postgres_url: str) -> None:
    """Eight stores opening a fresh database at once: the advisory lock serialises the migration."""
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait(timeout=30)
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == [] and len(stores) == 8
        assert {store.schema_version for store in stores} == {SCHEMA_VERSION}
    finally:
        for store in stores:
            store.close()
    database = database_of(postgres_url)
    assert postgres_server.psql("SELECT version FROM sipimdn_schema_version", database) == str(SCHEMA_VERSION)


def test_newer_schema_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    database = database_of(postgres_url)
    postgres_server.psql("UPDATE sipimdn_schema_version SET version = 99", database)
    with pytest.raises(StoreError, match="newer"):
        PostgresStore(postgres_url)


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    require_postgres()
    url = f"postgresql://postgres:s3cret@/postgres?host={tmp_path}"  # no server on that socket
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open store") as caught:
        open_store(url)
    assert time.monotonic() - started < 10
    assert "s3cret" not in str(caught.value) and "postgres:***@" in str(caught.value)


def test_missing_database_is_a_store_error(postgres_server: PostgresServer) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        PostgresStore(postgres_server.url("no_such_database"))


def test_without_asyncpg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ImportError
    with pytest.raises(StoreError, match=r"sipimdn\[postgres\]"):
        open_store("postgresql://postgres@/postgres?host=/nonexistent")


# --- writes --------------------------------------------------------------------------------------------


def test_a_batch_that_cannot_be_written_changes_nothing(
    opened: list[PostgresStore], postgres_url: str
) -> None:
    store = open_pg(opened, postgres_url)
    store.apply([Put(sent("m0"))])
    bad = replace(owed("n1"), subject="lone \ud800 surrogate")  # not encodable as UTF-8
    with pytest.raises(StoreError, match="write failed"):
        store.apply([Put(sent("m1")), Put(bad)])
    assert [s.message_id for s in store.load(0.0).sent] == ["m0"]
    store.apply([Put(sent("m2"))])  # and the store goes on
    assert sorted(s.message_id for s in store.load(0.0).sent) == ["m0", "m2"]


def test_message_ids_longer_than_an_index_entry(opened: list[PostgresStore], postgres_url: str) -> None:
    """A peer's Message-ID may be many kB; a B-tree entry holds about 2.7 kB (keys are digested)."""
    store = open_pg(opened, postgres_url)
    long_id = os.urandom(6000).hex()  # incompressible
    record = SeenRecord("sip:a@x", long_id, None, 100.0)
    store.apply([Put(record), Put(sent(long_id))])
    assert store.claim_seen(record, now=0.0) is False
    assert store.load(0.0).seen == (record,) and store.load(0.0).sent == (sent(long_id),)
    store.apply([Delete("seen", record.key), Delete("sent", long_id)])
    assert as_set(store) == set()


def test_database_gone_mid_run_then_back(tmp_path: Path) -> None:
    server = PostgresServer(require_postgres())
    try:
        server.start()
        store = PostgresStore(server.create_database(), command_timeout=5.0)
        heard: queue.Queue[str] = queue.Queue()
        resumed = threading.Event()
        try:
            store.listen(heard.put, on_resume=resumed.set)
            store.apply([Put(sent("before"))])
            assert heard.get(timeout=5) == "before"
            server.stop()
            with pytest.raises(StoreError):
                store.apply([Put(sent("while-down"))])
            with pytest.raises(StoreError):
                store.load(0.0)
            server.start()
            store.apply([Put(sent("after"))])
            assert sorted(s.message_id for s in store.load(0.0).sent) == ["after", "before"]
            # The listening connection comes back by itself, says so, and hears again.
            assert resumed.wait(timeout=15)
            store.notify("again")
            # ("after" is heard too when the listener was back before it was written.)
            assert heard.get(timeout=5) == "again" or heard.get(timeout=5) == "again"
        finally:
            store.close()
    finally:
        server.destroy()


# --- leases and take-over ------------------------------------------------------------------------------


def test_lease_renewal_and_take_over(opened: list[PostgresStore], postgres_url: str) -> None:
    alice = open_pg(opened, postgres_url, worker_id="alice", lease=0.5)
    bob = open_pg(opened, postgres_url, worker_id="bob", lease=0.5)
    alice.apply([Put(r) for r in every_kind()])
    assert alice.renew_leases() == 2  # the sent and the owed record; the others have no owner
    assert bob.take_over(now=0.0) == bob.take_over(now=0.0).__class__()  # alice's lease holds
    assert bob.renew_leases() == 0
    # Alice renews for a while: nothing can be taken.
    for _ in range(3):
        time.sleep(0.2)
        assert alice.renew_leases() == 2
        assert bob.take_over(now=0.0).sent == ()
    # Alice stops (dies): after her lease, bob owns both records.
    time.sleep(0.6)
    taken = bob.take_over(now=0.0)
    assert taken.sent == (sent(),) and taken.owed == (owed(),)
    assert taken.received == taken.seen == taken.peers == ()
    assert alice.renew_leases() == 0 and bob.renew_leases() == 2
    # Ownership moves only through take_over; an update by the owner keeps it.
    bob.apply([Put(sent(expires_at=300.0))])
    assert bob.renew_leases() == 2 and alice.renew_leases() == 0
    assert bob.load(0.0).sent == (sent(expires_at=300.0),)


def test_a_worker_whose_records_were_taken_over_is_fenced_off(
    opened: list[PostgresStore], postgres_url: str
) -> None:
    """One writer per record: once bob took alice's rows over (her lease ran out while she
    was cut off or paused), her late Puts and Deletes of them change nothing in the database
    and come back to her as fenced off, in the same transaction as the rest of her batch,
    which is applied; bob's writes go through."""
    alice = open_pg(opened, postgres_url, worker_id="alice", lease=0.3)
    bob = open_pg(opened, postgres_url, worker_id="bob", lease=30)
    assert alice.apply_owned([Put(sent("m1")), Put(owed("n1")), Put(owed("n2"))]) == ()
    time.sleep(0.5)  # alice stalls past her lease
    taken = bob.take_over(now=0.0)
    assert {r.key for r in (*taken.sent, *taken.owed)} == {"m1", "n1", "n2"}
    # Bob, the owner now, sends n1 (deletes it) and updates m1.
    assert bob.apply_owned([Delete("owed", "n1"), Put(sent("m1", expires_at=200.0))]) == ()
    # Alice comes back and writes what she still believes hers, plus a record of her own.
    late = [
        Put(sent("m1", expires_at=900.0)),
        Delete("owed", "n2"),
        Put(owed("n2", expires_at=900.0)),  # the last operation on n2 is the one that counts
        Delete("sent", "m1"),
        Put(owed("n3")),  # new: hers
        Put(SeenRecord("sip:a@x", "mid", 200, 50.0)),  # not leased: applied
    ]
    fenced = alice.apply_owned(late)
    assert set(fenced) == {Delete("sent", "m1"), Put(owed("n2", expires_at=900.0))}
    snap = bob.load(0.0)
    assert snap.sent == (sent("m1", expires_at=200.0),)  # bob's write stands
    assert {o.key: o.expires_at for o in snap.owed} == {"n2": 100.0, "n3": 100.0}
    assert [s.key for s in snap.seen] == [SeenRecord("sip:a@x", "mid", 200, 50.0).key]
    # A record bob took over and then finished (n1, deleted) stays his until it expires, as a
    # tombstone nobody loads: alice cannot write it back (she would send its IMDN again).
    assert alice.apply_owned([Put(owed("n1")), Delete("owed", "n1")]) == (Delete("owed", "n1"),)
    assert alice.apply_owned([Put(owed("n1"))]) == (Put(owed("n1")),)
    assert "n1" not in {o.key for o in bob.load(0.0).owed} and bob.take_over(now=0.0).owed == ()
    # Bob's writes go through, alice owns only what she created since; she can ask what she lost.
    assert bob.apply_owned([Put(owed("n2", expires_at=150.0)), Delete("sent", "m1")]) == ()
    assert bob.apply_owned([Delete("sent", "m1")]) == ()  # deleting a tombstone again: no news
    assert bob.load_sent("m1", 0.0) is None and bob.load_own(0.0).sent == ()
    assert alice.renew_leases() == 1 and bob.renew_leases() == 1  # tombstones are not counted
    assert sorted(alice.owned_elsewhere("owed", ["n1", "n2", "n3", "n9"])) == ["n1", "n2"]
    assert alice.owned_elsewhere("sent", ["m1"]) == ["m1"] and bob.owned_elsewhere("owed", ["n3"]) == ["n3"]
    # A record never taken over is deleted outright by its owner.
    assert alice.apply_owned([Delete("owed", "n3")]) == () and bob.owned_elsewhere("owed", ["n3"]) == []
    with pytest.raises(StoreError):
        alice.owned_elsewhere("seen", ["x"])
    # The plain Store contract's apply is fenced the same way (and says so in the log).
    alice.apply([Put(owed("n2", expires_at=999.0))])
    assert {o.key: o.expires_at for o in bob.load(0.0).owed} == {"n2": 150.0}


def test_the_fence_holds_against_a_concurrent_take_over(
    opened: list[PostgresStore], postgres_url: str
) -> None:
    """A take-over and the old owner's batch racing on the same rows: every row ends up
    either written by the old owner before it was taken, or taken and the write reported
    fenced off; never written by the old owner after the take-over."""
    old = open_pg(opened, postgres_url, worker_id="old", lease=0.2)
    heir = open_pg(opened, postgres_url, worker_id="heir", lease=30)
    keys = [f"n{i}" for i in range(300)]
    old.apply([Put(owed(k)) for k in keys])
    time.sleep(0.4)
    taken: list[str] = []
    fenced: list[StoreOp] = []
    barrier = threading.Barrier(2)

    def take() -> None:
        barrier.wait(timeout=30)
        # SKIP LOCKED passes over rows the old owner's batch holds at that moment, so one
        # take-over may return fewer than its limit: keep going until every row is taken
        # (bounded: the writer's 30 batches end, and then nothing is locked).
        deadline = time.monotonic() + 30
        while len(taken) < len(keys) and time.monotonic() < deadline:
            taken.extend(r.key for r in heir.take_over(now=0.0, limit=10).owed)

    def write() -> None:
        barrier.wait(timeout=30)
        for chunk in range(0, 300, 10):
            fenced.extend(old.apply_owned([Put(owed(k, expires_at=500.0)) for k in keys[chunk : chunk + 10]]))

    threads = [threading.Thread(target=take), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    rows = {o.key: o.expires_at for o in heir.load(0.0).owed}
    fenced_keys = {op.record.key for op in fenced if isinstance(op, Put)}
    assert sorted(taken) == sorted(keys)  # the heir took every row, once
    for key in keys:
        # Written by the old owner (500) only if that came before the take-over, in which
        # case it is not fenced; otherwise the row keeps its value and the write is reported.
        assert (rows[key] == 500.0) != (key in fenced_keys)


def test_take_over_skips_expired_records_and_respects_limit(
    opened: list[PostgresStore], postgres_url: str
) -> None:
    dead = open_pg(opened, postgres_url, worker_id="dead", lease=0.1)
    dead.apply([Put(owed(f"n{i}", expires_at=100.0 + i)) for i in range(10)])
    time.sleep(0.3)
    heir = open_pg(opened, postgres_url, worker_id="heir", lease=30)
    # Records expired at `now` are nobody's business any more.
    first = heir.take_over(now=104.5, limit=3)
    assert len(first.owed) == 3 and all(o.expires_at > 104.5 for o in first.owed)
    rest = heir.take_over(now=104.5)
    assert len(rest.owed) == 2
    assert heir.take_over(now=104.5).owed == ()
    with pytest.raises(ValueError):
        heir.take_over(now=0.0, limit=0)


def test_survivors_taking_over_at_once_split_the_records(
    opened: list[PostgresStore], postgres_url: str
) -> None:
    dead = open_pg(opened, postgres_url, worker_id="dead", lease=0.1)
    dead.apply([Put(owed(f"n{i}")) for i in range(200)] + [Put(sent(f"m{i}")) for i in range(200)])
    time.sleep(0.3)
    survivors = [open_pg(opened, postgres_url, worker_id=f"s{i}") for i in range(3)]
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(3)

    def take(store: PostgresStore) -> None:
        barrier.wait(timeout=30)
        keys: list[str] = []
        while True:
            snap = store.take_over(now=0.0, limit=7)
            if not snap.sent and not snap.owed:
                break
            keys += [r.key for r in (*snap.sent, *snap.owed)]
        results[store.worker_id] = keys

    threads = [threading.Thread(target=take, args=(s,)) for s in survivors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    taken = [key for keys in results.values() for key in keys]
    assert len(results) == 3
    assert sorted(taken) == sorted([f"n{i}" for i in range(200)] + [f"m{i}" for i in range(200)])
    assert sum(s.renew_leases() for s in survivors) == 400


# --- notifications -------------------------------------------------------------------------------------


def test_sent_changes_are_notified_to_listeners(opened: list[PostgresStore], postgres_url: str) -> None:
    writer = open_pg(opened, postgres_url, worker_id="a")
    reader = open_pg(opened, postgres_url, worker_id="b")
    got: queue.Queue[str] = queue.Queue()
    unsubscribe = reader.listen(got.put)
    writer.apply([Put(sent("m1")), Put(owed("n1"))])  # only the sent record is announced
    assert got.get(timeout=5) == "m1"
    writer.notify("hello")
    assert got.get(timeout=5) == "hello"
    # The notification arrives after the commit: the table already holds the change.
    writer.apply([Put(sent("m2"))])
    assert got.get(timeout=5) == "m2"
    assert {s.message_id for s in reader.load(0.0).sent} == {"m1", "m2"}
    unsubscribe()
    writer.notify("after")
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    with pytest.raises(StoreError, match="longer"):
        writer.notify("x" * 9000)


def test_a_failing_listener_does_not_silence_the_others(
    opened: list[PostgresStore], postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_pg(opened, postgres_url)
    got: queue.Queue[str] = queue.Queue()

    def broken(payload: str) -> None:
        raise RuntimeError("listener bug")

    store.listen(broken)
    store.listen(got.put)
    store.notify("ping")
    assert got.get(timeout=5) == "ping"


def test_no_channel_means_no_notifications(opened: list[PostgresStore], postgres_url: str) -> None:
    quiet = open_pg(opened, postgres_url, channel=None)
    quiet.apply([Put(sent())])
    with pytest.raises(StoreError, match="no notification channel"):
        quiet.listen(lambda payload: None)


# --- what several workers' user agents use ------------------------------------------------------------


def test_load_own_and_load_sent(opened: list[PostgresStore], postgres_url: str) -> None:
    alice = open_pg(opened, postgres_url, worker_id="alice")
    bob = open_pg(opened, postgres_url, worker_id="bob")
    alice.apply([Put(r) for r in every_kind()])
    bob.apply([Put(sent("bobs"))])
    mine = alice.load_own(0.0)
    # Her own sent and owed records, not bob's; the unowned tables whole.
    assert [s.message_id for s in mine.sent] == ["m1"] and len(mine.owed) == 1
    assert mine.received == alice.load(0.0).received and mine.seen == alice.load(0.0).seen
    assert [s.message_id for s in bob.load_own(0.0).sent] == ["bobs"] and bob.load_own(0.0).owed == ()
    # Any worker reads any sent record by Message-ID; an expired or unknown one is None.
    assert bob.load_sent("m1", 0.0) == sent("m1") and alice.load_sent("bobs", 0.0) == sent("bobs")
    assert alice.load_sent("m1", 100.0) is None and alice.load_sent("nobody", 0.0) is None


def test_forwarded_notifications_reach_the_owner_only(opened: list[PostgresStore], postgres_url: str) -> None:
    alice = open_pg(opened, postgres_url, worker_id="alice")
    bob = open_pg(opened, postgres_url, worker_id="bob")
    heard: queue.Queue[str] = queue.Queue()
    alice.listen(heard.put)
    alice.apply([Put(sent("m1"))])
    assert heard.get(timeout=5) == "m1"
    # Bob got a notification about alice's message: kept for her, and she is woken.
    assert bob.forward_notification("m1", '{"n": 1}', 0.0) is True
    assert heard.get(timeout=5) == "i:m1"
    # About a message nobody tracks (or expired): nothing kept.
    assert bob.forward_notification("unknown", "{}", 0.0) is False
    assert bob.forward_notification("m1", "{}", 100.0) is False
    assert bob.take_forwarded(0.0) == []
    taken = alice.take_forwarded(0.0)
    assert [data for _, data in taken] == ['{"n": 1}']
    assert alice.take_forwarded(0.0) == taken  # kept until dropped
    alice.drop_forwarded([row_id for row_id, _ in taken])
    assert alice.take_forwarded(0.0) == []
    # Expired with the message they are about.
    assert bob.forward_notification("m1", "{}", 0.0) is True
    assert alice.purge(100.0) >= 2
    assert alice.take_forwarded(0.0) == []


def test_schema_version_1_is_migrated_to_2(postgres_server: PostgresServer, postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    first.apply([Put(sent("kept"))])
    first.close()
    database = database_of(postgres_url)
    # As version 1 left it: no forwarded-notification table.
    postgres_server.psql(
        "DROP TABLE sipimdn_forwarded; UPDATE sipimdn_schema_version SET version = 1", database
    )
    again = PostgresStore(postgres_url)
    try:
        assert again.schema_version == SCHEMA_VERSION == 4
        assert [s.message_id for s in again.load(0.0).sent] == ["kept"]
        assert again.forward_notification("kept", "{}", 0.0) is True
    finally:
        again.close()


# --- the bounded working set (schema version 4) -----------------------------------------------------


def test_working_set_is_this_workers_most_recent_rows(opened: list[PostgresStore], postgres_url: str) -> None:
    """At most ``limit`` received rows (whoever received them) and ``limit`` of this worker's
    sent rows, the last to expire, oldest first; its owed rows; never a tombstone."""
    alice = open_pg(opened, postgres_url, worker_id="alice", lease=0.3)
    bob = open_pg(opened, postgres_url, worker_id="bob", lease=30)
    alice.apply([Put(sent(f"a{i}", expires_at=100.0 + i)) for i in range(10)])
    bob.apply([Put(sent(f"b{i}", expires_at=150.0 + i)) for i in range(5)])  # later, but bob's
    alice.apply([Put(received(f"r{i}", expires_at=100.0 + 2 * i)) for i in range(5)])
    bob.apply([Put(received(f"q{i}", expires_at=101.0 + 2 * i)) for i in range(5)])
    alice.apply([Put(owed("n1")), Put(SeenRecord("sip:a@x", "mid", 200, 50.0))])
    loaded = alice.load_working_set(0.0, 3)
    assert [s.message_id for s in loaded.sent] == ["a7", "a8", "a9"]
    assert [r.message_id for r in loaded.received] == ["q3", "r4", "q4"]
    assert [o.key for o in loaded.owed] == ["n1"] and len(loaded.seen) == 1
    assert [s.message_id for s in bob.load_working_set(0.0, 2).sent] == ["b3", "b4"]
    assert bob.load_working_set(0.0, 3).owed == ()
    assert [s.message_id for s in alice.load_working_set(105.5, 50).sent] == ["a6", "a7", "a8", "a9"]
    # Bob takes alice's rows over (her lease ran out) and ends a9: a tombstone, nobody's working set.
    time.sleep(0.5)
    assert len(bob.take_over(now=0.0).sent) == 10
    assert bob.apply_owned([Delete("sent", "a9")]) == ()
    assert alice.load_working_set(0.0, 3).sent == ()
    assert [s.message_id for s in bob.load_working_set(0.0, 3).sent] == ["b2", "b3", "b4"]
    assert "a9" not in {s.message_id for s in bob.load_working_set(0.0, 20).sent}
    with pytest.raises(ValueError):
        bob.load_working_set(0.0, 0)


def test_ended_records_are_neither_in_the_working_set_nor_due(
    opened: list[PostgresStore], postgres_url: str
) -> None:
    """The final record of a message whose tracking ended stays for readers (``load_sent``) but is
    never tracked again: not loaded, not due, not the next deadline."""
    store = open_pg(opened, postgres_url, worker_id="w")
    ended = replace(sent("e1", expires_at=101.0), metadata=(("a", "b"), (ENDED_METADATA, "1")))
    # Only a pair *named* so marks it (not one whose value is the name).
    odd = replace(sent("o1", expires_at=102.0), metadata=((ENDED_METADATA + "x", ENDED_METADATA),))
    store.apply([Put(ended), Put(odd), Put(sent("live", expires_at=103.0))])
    assert [s.message_id for s in store.load_working_set(0.0, 5).sent] == ["o1", "live"]
    assert [s.message_id for s in store.load_sent_due(102.5, 0.0, 10)[0]] == ["o1"]
    assert store.load_sent_due(101.5, 0.0, 10) == ((), 102.0)
    assert store.load_sent("e1", 0.0) == ended


def test_sent_due_are_this_workers_rows(opened: list[PostgresStore], postgres_url: str) -> None:
    alice = open_pg(opened, postgres_url, worker_id="alice", lease=0.3)
    bob = open_pg(opened, postgres_url, worker_id="bob", lease=30)
    alice.apply([Put(sent(f"a{i}", expires_at=100.0 + i)) for i in range(10)])
    bob.apply([Put(sent(f"b{i}", expires_at=100.5 + i)) for i in range(3)])
    due, later = alice.load_sent_due(104.0, 101.0, 2)
    assert [r.message_id for r in due] == ["a2", "a3"] and later == 105.0
    due, later = alice.load_sent_due(200.0, 0.0, 100)
    assert len(due) == 10 and later is None
    due, later = bob.load_sent_due(101.0, 0.0, 100)
    assert [r.message_id for r in due] == ["b0"] and later == 101.5
    # Taken over: bob's to end now; a tombstone is never due.
    time.sleep(0.5)
    bob.take_over(now=0.0)
    assert bob.apply_owned([Delete("sent", "a0")]) == ()
    assert alice.load_sent_due(200.0, 0.0, 100) == ((), None)
    due, later = bob.load_sent_due(101.0, 0.0, 100)
    assert [r.message_id for r in due] == ["b0", "a1"] and later == 101.5


def test_received_by_message_id_uses_the_index(
    opened: list[PostgresStore], postgres_server: PostgresServer, postgres_url: str
) -> None:
    """``load_received`` without a sender finds a Message-ID through the version 4 index, even
    one longer than an index entry holds; a digest match alone is not enough (the text is compared)."""
    store = open_pg(opened, postgres_url, worker_id="w")
    long_id = "x" * 5000
    store.apply([Put(received(f"m{i}")) for i in range(200)] + [Put(received(long_id))])
    assert store.load_received(long_id, None, 0.0) == (received(long_id),)
    assert [r.message_id for r in store.load_received("m7", None, 0.0)] == ["m7"]
    database = database_of(postgres_url)
    postgres_server.psql("ANALYZE sipimdn_received", database)
    plan = postgres_server.psql(
        "SET enable_seqscan = off; EXPLAIN SELECT data FROM sipimdn_received WHERE "
        "sipimdn_key_id(substr(key, strpos(key, ' ') + 1)) = sipimdn_key_id('m7') "
        "AND substr(key, strpos(key, ' ') + 1) = 'm7' AND expires_at > 0",
        database,
    )
    assert "sipimdn_received_message_id" in plan
    plan = postgres_server.psql(
        "SET enable_seqscan = off; EXPLAIN SELECT data FROM sipimdn_sent WHERE owner = 'w' "
        f"AND expires_at > 0 AND {_LIVE_SENT} ORDER BY expires_at LIMIT 5",
        database,
    )
    assert "sipimdn_sent_live" in plan


def _indexes(postgres_server: PostgresServer, database: str) -> set[str]:
    sql = "SELECT indexname FROM pg_indexes WHERE tablename LIKE 'sipimdn_%'"
    names = postgres_server.psql(sql, database)
    return set(names.split())


def test_schema_version_3_is_migrated_to_4(postgres_server: PostgresServer, postgres_url: str) -> None:
    first = PostgresStore(postgres_url, worker_id="w")
    first.apply([Put(sent("kept")), Put(received("r1"))])
    first.close()
    database = database_of(postgres_url)
    fresh = _indexes(postgres_server, database)
    assert {"sipimdn_received_message_id", "sipimdn_sent_live", "sipimdn_sent_owner"} <= fresh
    # As version 3 left it: neither index.
    postgres_server.psql(
        "DROP INDEX sipimdn_received_message_id; DROP INDEX sipimdn_sent_live; "
        "UPDATE sipimdn_schema_version SET version = 3",
        database,
    )
    assert not {"sipimdn_received_message_id", "sipimdn_sent_live"} & _indexes(postgres_server, database)
    again = PostgresStore(postgres_url, worker_id="w")
    try:
        assert again.schema_version == SCHEMA_VERSION == 4
        assert _indexes(postgres_server, database) == fresh
        assert [s.message_id for s in again.load_working_set(0.0, 5).sent] == ["kept"]
        assert [r.message_id for r in again.load_received("r1", None, 0.0)] == ["r1"]
    finally:
        again.close()
