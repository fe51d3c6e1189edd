"""Reading single records back (the working set's miss path) on every store.

``load_received``, ``load_sent``, ``load_working_set`` and ``load_sent_due`` on memory, SQLite
and PostgreSQL; the SQLite schema step that indexes received records by Message-ID.
PostgreSQL's owners and tombstones, and its schema step, are in test_store_postgres.py.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from test_store import received, sent, store  # noqa: F401 - the store fixture, over every backend

from sipimdn.store import (
    SCHEMA_VERSION,
    Put,
    ReadBackStore,
    SqliteStore,
    Store,
    WorkingSetStore,
)


def test_received_by_key_and_by_message_id(store: Store) -> None:  # noqa: F811 - the fixture
    assert isinstance(store, ReadBackStore)
    mine = received("m1")
    other_sender = dataclasses.replace(mine, sender_key="sip:carol@c", sender="sip:carol@c")
    spaced = dataclasses.replace(received("two words"), expires_at=100.0)
    store.apply([Put(mine), Put(other_sender), Put(received("m2")), Put(spaced)])
    assert store.load_received("m1", "sip:alice@a", 0.0) == (mine,)
    assert set(store.load_received("m1", None, 0.0)) == {mine, other_sender}
    assert store.load_received("words", None, 0.0) == ()  # the whole Message-ID after the key
    assert store.load_received("two words", None, 0.0) == (spaced,)
    assert store.load_received("m1", "sip:nobody@x", 0.0) == ()
    assert store.load_received("m1", "sip:alice@a", 100.0) == ()  # expired
    store.apply([Put(sent("s1"))])
    assert store.load_sent("s1", 0.0) == sent("s1")
    assert store.load_sent("s1", 100.0) is None
    assert store.load_sent("s2", 0.0) is None


def test_working_set_and_sent_due(store: Store) -> None:  # noqa: F811 - the fixture
    assert isinstance(store, WorkingSetStore)
    store.apply([Put(received(f"r{i}", expires_at=100.0 + i)) for i in range(10)])
    store.apply([Put(sent(f"s{i}", expires_at=100.0 + i)) for i in range(10)])
    loaded = store.load_working_set(0.0, 3)
    # The last to expire, oldest first: the tracker keeps them in that (recency) order.
    assert [r.message_id for r in loaded.received] == ["r7", "r8", "r9"]
    assert [r.message_id for r in loaded.sent] == ["s7", "s8", "s9"]
    assert len(store.load_working_set(0.0, 50).received) == 10
    due, later = store.load_sent_due(104.0, 101.0, 2)
    assert [r.message_id for r in due] == ["s2", "s3"] and later == 105.0
    due, later = store.load_sent_due(200.0, 0.0, 100)
    assert len(due) == 10 and later is None


def test_sqlite_v1_file_gains_the_message_id_index(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE received (key TEXT PRIMARY KEY NOT NULL, expires_at REAL NOT NULL, data TEXT NOT NULL)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with SqliteStore(path) as opened:
        assert opened.schema_version == SCHEMA_VERSION == 2
        opened.apply([Put(received("m1"))])
        assert opened.load_received("m1", None, 0.0) == (received("m1"),)
    conn = sqlite3.connect(path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT data FROM received WHERE substr(key, instr(key, ' ') + 1) = ?", ("m1",)
    ).fetchall()
    conn.close()
    assert "received_message_id" in str(plan)
