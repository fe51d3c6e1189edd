"""The shared-state primitives (SharedStore) on SQLite (one worker) and PostgreSQL (several)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_store import every_kind, owed, sent

from sipimdn.errors import StoreError
from sipimdn.store import Delete, Put, SeenRecord, SharedStore, Snapshot, open_store

SRC = str(Path(__file__).resolve().parents[1])


@pytest.fixture(params=["sqlite-file", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store to open: a SQLite file, or a fresh PostgreSQL database (tests/_postgres.py)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(tmp_path / "shared.db")


@pytest.fixture
def shared(target: str) -> Iterator[SharedStore]:
    store = open_store(target, worker_id="w1")
    assert isinstance(store, SharedStore)
    yield store
    store.close()


def test_is_a_shared_store(shared: SharedStore) -> None:
    assert shared.worker_id == "w1" and shared.lease > 0


# --- dedup across processes ----------------------------------------------------------------------------

_CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from sipimdn.store import SeenRecord, open_store
    url, name, go, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = open_store(url, worker_id=name)
    Path(str(go) + "." + name).touch()  # connected: ready
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    won = [i for i in range(count) if store.claim_seen(SeenRecord("sip:a@x", f"m{i}", None, 1e12), 0.0)]
    store.close()
    print(json.dumps(won))
    """
)


def test_two_processes_claiming_the_same_message_ids(target: str, tmp_path: Path) -> None:
    """Two workers race to claim the same 300 (sender, Message-ID) keys: each key is new exactly once."""
    postgres_url = target
    go = tmp_path / "go"
    count = 300
    env = {**os.environ, "PYTHONPATH": SRC}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, postgres_url, name, str(go), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("w1", "w2")
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{go}.{n}").exists() for n in ("w1", "w2")) and time.monotonic() < deadline:
            if any(w.poll() is not None for w in workers):
                break
            time.sleep(0.01)
        go.touch()
        outputs = [w.communicate(timeout=60) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    won = [set(json.loads(out)) for out, _ in outputs]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(range(count))


def test_claim_seen_replaces_an_expired_entry(shared: SharedStore) -> None:
    store = shared
    first = SeenRecord("sip:a@x", "m1", None, 50.0)
    assert store.claim_seen(first, now=10.0) is True
    assert store.claim_seen(SeenRecord("sip:a@x", "m1", 200, 90.0), now=49.0) is False
    assert store.load(0.0).seen == (first,)  # the live entry is kept as it was
    later = SeenRecord("sip:a@x", "m1", None, 150.0)
    assert store.claim_seen(later, now=50.0) is True  # expired at 50: a new message
    assert store.load(0.0).seen == (later,)
    with pytest.raises(StoreError):
        store.claim_seen(object(), now=0.0)  # type: ignore[arg-type]


def test_listeners_hear_sent_changes_and_notify(shared: SharedStore) -> None:
    got: queue.Queue[str] = queue.Queue()
    unsubscribe = shared.listen(got.put)
    shared.apply([Put(owed("n1")), Put(sent("m1"))])  # only the sent record is announced
    assert got.get(timeout=5) == "m1"
    shared.notify("hello")
    assert got.get(timeout=5) == "hello"
    unsubscribe()
    shared.notify("after")
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)


def test_a_lone_worker_keeps_its_records(shared: SharedStore) -> None:
    shared.apply([Put(r) for r in every_kind()])
    assert shared.renew_leases() == 2  # the sent and the owed record
    assert shared.take_over(now=0.0) == Snapshot()
    with pytest.raises(ValueError):
        shared.take_over(now=0.0, limit=0)


def test_a_lone_worker_is_never_fenced_off(shared: SharedStore) -> None:
    records = every_kind()
    assert shared.apply_owned([Put(r) for r in records]) == ()
    assert shared.apply_owned([Delete(r.TABLE, r.key) for r in records]) == ()
    assert shared.load(0.0) == Snapshot()
    assert shared.owned_elsewhere("owed", ["n1"]) == [] and shared.owned_elsewhere("sent", []) == []
    with pytest.raises(StoreError):
        shared.owned_elsewhere("peer", ["x"])


def test_closed_shared_store_raises(shared: SharedStore) -> None:
    shared.close()
    with pytest.raises(StoreError):
        shared.claim_seen(SeenRecord("sip:a@x", "m1", None, 10.0), now=0.0)
    with pytest.raises(StoreError):
        shared.renew_leases()
    with pytest.raises(StoreError):
        shared.notify("x")


def test_lookups_and_forwarding_in_both_forms(shared: SharedStore) -> None:
    """Any worker reads a sent record by Message-ID; a notification forwarded about it is kept
    for its owner where several workers may share the store (on SQLite the one worker owns
    every record, so there is nobody to forward to)."""
    shared.apply([Put(sent("m1"))])
    assert shared.load_sent("m1", 0.0) == sent("m1") and shared.load_sent("m2", 0.0) is None
    assert shared.load_own(0.0).sent == (sent("m1"),)
    assert shared.forward_notification("m1", "{}", 0.0) is shared.multi_worker
    assert shared.forward_notification("m2", "{}", 0.0) is False
    taken = shared.take_forwarded(0.0)
    assert [data for _, data in taken] == (["{}"] if shared.multi_worker else [])
    shared.drop_forwarded([row_id for row_id, _ in taken])
    assert shared.take_forwarded(0.0) == []


def test_claim_message_says_who_kept_the_key_and_takes_abandoned_claims(shared: SharedStore) -> None:
    first = SeenRecord("sip:a@x", "m1", None, 100.0)
    assert shared.claim_message(first, now=0.0) is None  # written: first
    # A second claim sees the first, unanswered; once answered, with its status.
    assert shared.claim_message(SeenRecord("sip:a@x", "m1", None, 110.0), now=10.0) == first
    shared.apply([Put(SeenRecord("sip:a@x", "m1", 200, 100.0))])
    kept = shared.claim_message(SeenRecord("sip:a@x", "m1", None, 110.0), now=10.0, stale_expiry=105.0)
    assert kept is not None and kept.status == 200  # answered: never taken, however old
    # Unanswered and old enough (expiry at or before stale_expiry): abandoned, taken over.
    shared.apply([Put(SeenRecord("sip:a@x", "m2", None, 100.0))])
    young = SeenRecord("sip:a@x", "m2", None, 120.0)
    assert shared.claim_message(young, now=20.0, stale_expiry=99.0) is not None
    assert shared.claim_message(young, now=20.0, stale_expiry=100.0) is None
    assert shared.claim_message(young, now=20.0, stale_expiry=100.0) == young


def test_claim_messages_in_one_batch(shared: SharedStore) -> None:
    """As claim_message for each record, in order; a key given twice is the first record's."""
    shared.apply([Put(SeenRecord("sip:a@x", "answered", 200, 100.0))])
    batch = [
        SeenRecord("sip:a@x", "new", None, 100.0),
        SeenRecord("sip:a@x", "answered", None, 100.0),
        SeenRecord("sip:a@x", "new", None, 101.0),  # the same key again in this batch
        SeenRecord("sip:b@x", "new", None, 100.0),  # another sender: another key
    ]
    answers = shared.claim_messages(batch, now=0.0)
    assert answers[0] is None and answers[3] is None
    assert answers[1] is not None and answers[1].status == 200
    assert answers[2] == batch[0]
    assert shared.claim_messages([SeenRecord("sip:a@x", "new", None, 100.0)], now=0.0) == [batch[0]]
    assert shared.claim_messages([], now=0.0) == []
