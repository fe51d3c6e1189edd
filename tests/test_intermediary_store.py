"""Parked-message stores: memory and SQLite behave alike; SQLite survives reopening."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.errors import StoreError
from sipimdn.intermediary import (
    DropParked,
    ImdnOrigin,
    MemoryParkedStore,
    ParkedMessage,
    ParkedStore,
    PutParked,
    SqliteParkedStore,
)


def record(key: str, *, body: bytes = b"\x00\xffbinary\r\n", with_origin: bool = True) -> ParkedMessage:
    return ParkedMessage(
        key=key,
        target="sip:bob@sipimdn.test",
        sip_from="sip:alice@example.com",
        sip_from_name="Alice \u00e9",
        sip_to="sip:bob@sipimdn.test",
        content_type="message/cpim",
        body=body,
        received_at=1.5,
        expires_at=99.25,
        next_attempt_at=3.0,
        max_forwards=69,
        attempts=2,
        owed=("negative-delivery", "processing"),
        origin=ImdnOrigin(
            message_id="m1",
            datetime="2026-11-24T01:00:00Z",
            reply_to="im:alice@example.com",
            reply_sip="sip:alice@example.com",
            routes=("sip:up@r.test", "sip:far@r.test"),
            recipient="sip:bob@sipimdn.test",
            original_recipient="sip:list@l.test",
            requested=("processing",),
        )
        if with_origin
        else None,
        group="fan",
        is_notification=False,
        processing_sent=True,
        extra=(("k", "v"),),
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ParkedStore:
    if request.param == "memory":
        return MemoryParkedStore()
    return SqliteParkedStore(str(tmp_path / "p.sqlite"))


def test_put_replace_drop_round_trip(store: ParkedStore) -> None:
    first, second = record("a"), record("b", with_origin=False)
    store.apply([PutParked(first), PutParked(second)])
    assert sorted(store.load(), key=lambda r: r.key) == [first, second]
    changed = record("a", body=b"new")
    store.apply([PutParked(changed), DropParked("b"), DropParked("missing")])
    assert store.load() == [changed]
    store.apply([])
    store.close()


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "p.sqlite")
    first = SqliteParkedStore(path)
    first.apply([PutParked(record("a"))])
    first.close()
    second = SqliteParkedStore(path)
    assert second.load() == [record("a")]
    second.close()


def test_sqlite_synchronous_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteParkedStore(str(tmp_path / "p.sqlite"), synchronous="sometimes")
    full = SqliteParkedStore(str(tmp_path / "p.sqlite"), synchronous="full")
    full.apply([PutParked(record("a"))])
    assert full.load() == [record("a")]
    full.close()


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteParkedStore(str(tmp_path / "missing-dir" / "p.sqlite"))
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        SqliteParkedStore(str(path))
    broken = SqliteParkedStore(str(tmp_path / "b.sqlite"))
    broken.apply([PutParked(record("a"))])
    broken._db.execute("UPDATE parked SET record = '{\"nonsense\": 1}'")
    with pytest.raises(StoreError):
        broken.load()
    broken.close()


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.sampled_from("abcd"), st.binary(max_size=40)),
        max_size=20,
    )
)
def test_memory_and_sqlite_agree(ops: list[tuple[bool, str, bytes]]) -> None:
    memory = MemoryParkedStore()
    sqlite = SqliteParkedStore(":memory:")
    batch = [PutParked(record(key, body=body)) if put else DropParked(key) for put, key, body in ops]
    memory.apply(batch)
    sqlite.apply(batch)
    assert sorted(memory.load(), key=lambda r: r.key) == sorted(sqlite.load(), key=lambda r: r.key)
    sqlite.close()
