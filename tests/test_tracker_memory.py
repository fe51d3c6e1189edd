"""Memory-saving mechanisms of the disposition tracker (bench target: <= 1 KiB per tracked message).

Each mechanism shares or drops per-message objects; these tests pin both the
saving (white-box, the point of the mechanism) and that nothing observable
changed: same decisions, same timers, same store writes.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import deque
from typing import Any

import pytest
from tracker_helpers import drain, make_tracker

import sipimdn.imdn.tracker._base as tracker_base
import sipimdn.imdn.tracker.receiver as tracker_receiver
from sipimdn.errors import LocalProtocolError
from sipimdn.imdn.tracker import (
    DispositionTracker,
    NotificationOwed,
    TrackerConfig,
    identity_key,
)
from sipimdn.imdn.tracker.dispatch import LongWindow
from sipimdn.store import Delete, MemoryStore, Put, SeenRecord

ME = "sip:bob@127.0.0.1"


def receive(tracker: DispositionTracker, message_id: str, sender: str, now: float = 0.0) -> None:
    tracker.record_received(
        message_id=message_id,
        sender=sender,
        now=now,
        requested=("positive-delivery", "display"),
        recipient=ME,
    )
    tracker.message_answered(message_id, sender, 200, now)
    # The delivered IMDN goes out and is acknowledged: only the display stays owed.
    for event in drain(tracker):
        if isinstance(event, NotificationOwed):
            tracker.notification_outcome(event.notification.notification_id, 200, now)


def timers(tracker: DispositionTracker) -> list[tuple[float, int, str, Any]]:
    """The timer heap's entries as (deadline, sequence, table, key): white-box, what the heap
    holds is the point."""
    bits, mask, tables = tracker_base._TABLE_BITS, tracker_base._TABLE_MASK, tracker_base._TIMED_TABLES
    return [(when, tag >> bits, tables[tag & mask], key) for when, tag, key in tracker._heap]


def test_identity_key_of_a_normalised_uri_is_that_string() -> None:
    # A URI no other test uses, built at run time: the cache cannot hold an equal string already.
    uri = "".join(["sip:", "memory-", str(random.getrandbits(64)), "@example.com"])
    assert identity_key(uri) is uri
    assert identity_key(f"<{uri}>") == uri
    assert identity_key(uri.replace("example", "EXAMPLE")) == uri


def test_a_received_message_shares_its_key_kinds_and_timer() -> None:
    tracker = make_tracker()
    receive(tracker, "m1", "sip:alice@example.com")
    receive(tracker, "m2", "sip:carol@example.com")
    [seen_key, _] = list(tracker._seen)
    [received_key, _] = list(tracker._received)
    assert seen_key is received_key
    first, second = (tracker.received(m) for m in ("m1", "m2"))
    assert first is not None and second is not None
    assert first.requested is second.requested == ("display", "positive-delivery")
    assert first.expires_at is tracker_base.dedup_expiry(tracker._seen[seen_key])
    # One timer entry per message serves its dedup entry and its received record.
    assert sorted(entry[3] for entry in timers(tracker) if entry[2] in ("seen", "received")) == [
        ("sip:alice@example.com", "m1"),
        ("sip:carol@example.com", "m2"),
    ]
    # The key is a pair of the strings the records hold, not a string of its own.
    assert seen_key[0] is first.sender_key and seen_key[1] is first.message_id
    tracker.writes_to_apply()
    tracker.handle_timer(7 * 86400.0)
    assert tracker.received("m1") is None and not tracker.is_duplicate("m1", "sip:alice@example.com")
    # Expired dedup entries need no Delete: the store skips them on load and purges them.
    assert tracker.writes_to_apply() == [
        Delete("received", "sip:alice@example.com m1"),
        Delete("received", "sip:carol@example.com m2"),
    ]
    assert tracker.get_timer() is None


def test_dedup_outlives_the_received_record_it_shares_a_timer_with() -> None:
    tracker = make_tracker()
    receive(tracker, "m1", "sip:alice@example.com")
    assert tracker.mark_displayed("m1", 1.0) is not None
    assert tracker.received("m1") is None  # nothing more owed: record dropped, dedup entry kept
    assert tracker.get_timer() == 1.0 + 64.0  # the displayed IMDN in flight
    [owed] = tracker.owed()
    tracker.notification_outcome(owed.notification_id, 200, 2.0)
    assert tracker.get_timer() == 7 * 86400.0
    tracker.handle_timer(7 * 86400.0 - 1)
    assert tracker.is_duplicate("m1", "sip:alice@example.com")
    tracker.handle_timer(7 * 86400.0)
    assert not tracker.is_duplicate("m1", "sip:alice@example.com")


def test_different_ttls_keep_their_own_timers() -> None:
    tracker = make_tracker(dedup_ttl=100.0, received_ttl=50.0)
    receive(tracker, "m1", "sip:alice@example.com")
    assert tracker.get_timer() == 50.0
    tracker.handle_timer(50.0)
    assert tracker.received("m1") is None and tracker.is_duplicate("m1", "sip:alice@example.com")
    assert tracker.get_timer() == 100.0
    tracker.handle_timer(100.0)
    assert not tracker.is_duplicate("m1", "sip:alice@example.com")
    assert tracker.get_timer() is None


def test_restored_records_share_their_key() -> None:
    tracker = make_tracker()
    receive(tracker, "m1", "sip:alice@example.com")
    store = MemoryStore()
    store.apply(tracker.writes_to_apply())
    again = DispositionTracker(TrackerConfig(), snapshot=store.load(1.0), now=1.0)
    [seen_key] = list(again._seen)
    [received_key] = list(again._received)
    assert seen_key is received_key
    assert len([e for e in timers(again) if e[2] in ("seen", "received")]) == 1
    again.handle_timer(7 * 86400.0)
    assert again.received("m1") is None and not again.is_duplicate("m1", "sip:alice@example.com")


def test_message_id_index_follows_senders_coming_and_going() -> None:
    tracker = make_tracker()
    receive(tracker, "m1", "sip:alice@example.com")
    # Lookups naming the sender need no Message-ID index: none is kept.
    assert tracker.received("m1", "sip:alice@example.com") is not None
    assert tracker._received_by_id is None
    # The first lookup without the sender builds it from the records held.
    assert tracker.received("m1") is not None
    assert tracker._received_by_id == {"m1": ("sip:alice@example.com", "m1")}  # a bare key
    receive(tracker, "m1", "sip:carol@example.com")
    assert tracker.received("m1") is None  # ambiguous without the sender
    assert tracker.mark_displayed("m1", 1.0, sender="sip:carol@example.com") is not None
    # Carol is owed nothing more: Alice's is the only record under m1 again.
    record = tracker.received("m1")
    assert record is not None and record.sender == "sip:alice@example.com"
    assert tracker._received_by_id["m1"] == ("sip:alice@example.com", "m1")
    assert tracker.mark_displayed("m1", 1.0) is not None
    assert "m1" not in tracker._received_by_id


def test_stale_timers_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledged IMDNs leave stale timer entries; they go in bulk even if get_timer is not called."""
    monkeypatch.setattr(tracker_base, "_HEAP_SWEEP_MIN", 8)
    tracker = make_tracker(rate_limit=10**6)
    receive(tracker, "slow", "sip:slow@example.com")
    slow = tracker.mark_displayed("slow", 0.0)
    assert slow is not None and len(drain(tracker)) == 1  # handed out, never acknowledged
    for i in range(200):
        receive(tracker, f"m{i}", f"sip:user{i}@example.com")
        displayed = tracker.mark_displayed(f"m{i}", 0.0)
        assert displayed is not None
        tracker.notification_outcome(displayed.notification_id, 200, 0.0)
    # Each message left one live timer (its dedup entry) and two stale ones (its IMDNs):
    # without sweeping the heap would hold three entries per live one.
    live = len(tracker._seen) + len(tracker._owed)
    assert len(timers(tracker)) <= 2 * live
    # The one never acknowledged is still timed: its in-flight timeout leads to a retry.
    assert tracker.get_timer() == 64.0
    tracker.handle_timer(64.0)
    [retry] = tracker.owed()
    assert retry.notification_id == slow.notification_id and not retry.in_flight


def _reference_limiter(limit: int, window: float) -> Any:
    """The rate limiter (RFC 5438 §14) as first written (a deque of times per key), to compare against."""
    times: dict[str, deque[float]] = {}

    def allows(key: str, now: float) -> bool:
        queue = times.setdefault(key, deque())
        while queue and queue[0] <= now - window:
            queue.popleft()
        if len(queue) >= limit:
            return False
        queue.append(now)
        return True

    return allows


_LONG_STEPS = (0.0,) * 400 + (0.005,) * 597 + (11.0, -0.3, 0.5)


@pytest.mark.parametrize(
    ("limit", "steps"),
    [
        (1, (0.0, 0.5, 1.0, 3.0, 11.0, -2.0)),
        (2, (0.0, 0.5, 1.0, 3.0, 11.0, -2.0)),
        (3, (0.0, 0.5, 1.0, 3.0, 11.0, -2.0)),
        (5, (0.0, 0.5, 1.0, 3.0, 11.0, -2.0)),
        # Long windows (past a list's length, kept in a LongWindow): filling for a few hundred
        # calls, then, rarely, draining at once (a step past the window) or a step back.
        (100, _LONG_STEPS),
        (10**6, _LONG_STEPS),
    ],
)
def test_rate_windows_decide_as_a_deque_of_times_would(limit: int, steps: tuple[float, ...]) -> None:
    rng = random.Random(limit)
    tracker = make_tracker(rate_limit=limit, rate_window=10.0)
    reference = _reference_limiter(limit, 10.0)
    now = 0.0
    for _ in range(3000):
        # Mostly forward, sometimes a step back (clocks are the caller's), a few originators.
        now += rng.choice(steps)
        key = f"sip:o{rng.randrange(4)}@example.com"
        assert tracker._rate_allows(key, now) == reference(key, now)
    if limit >= 100:  # white-box: the long windows did become arrays, nothing the collector walks
        long = [w for w in tracker._rate.values() if isinstance(w, LongWindow)]
        assert long and all(len(gc.get_referents(w.times)) <= 1 for w in long)  # its type, at most
    # One notification in the window is a bare time; more make a list.
    tracker = make_tracker(rate_limit=limit, rate_window=10.0)
    assert tracker._rate_allows("sip:a@example.com", 1.0)
    assert tracker._rate["sip:a@example.com"] == 1.0
    if limit > 1:
        assert tracker._rate_allows("sip:a@example.com", 2.0)
        assert tracker._rate["sip:a@example.com"] == [1.0, 2.0]


def test_dedup_write_keeps_its_key() -> None:
    tracker = make_tracker()
    receive(tracker, "m1", "sip:alice@example.com")
    writes = tracker.writes_to_apply()
    seen = [op.record for op in writes if isinstance(op, Put) and isinstance(op.record, SeenRecord)]
    assert [r.status for r in seen] == [None, 200]
    assert {r.key for r in seen} == {"sip:alice@example.com m1"}


def test_ua_shaped_inputs_share_what_is_equal() -> None:
    """CPIM From as a name-addr, SIP From URI, CPIM To: equal texts end up as one object."""
    tracker = make_tracker()
    for i in range(2):
        sip_from = "".join(["sip:carol", "@example.com"])  # a string of its own, as parsed
        tracker.record_received(
            message_id=f"m{i}",
            sender="<sip:carol@example.com>",
            now=0.0,
            requested=("display",),
            sip_from=sip_from,
            recipient="".join(["<sip:bob", "@example.org>"]),
            original_recipient="".join(["<sip:bob", "@example.org>"]),
        )
    first, second = tracker.received("m0"), tracker.received("m1")
    assert first is not None and second is not None
    assert first.sip_from is first.sender_key == "sip:carol@example.com"
    assert first.recipient is second.recipient is first.original_recipient == "<sip:bob@example.org>"
    tracker.message_answered("m0", "<sip:carol@example.com>", 200, 0.0)
    assert tracker.mark_displayed("m0", 0.0) is not None
    # The rate window is kept per destination address (RFC 5438 §14), never per user part.
    assert list(tracker._rate) == ["sip:example.com:5060"]


def test_common_texts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_receiver, "_COMMON_TEXTS_MAX", 4)
    tracker = make_tracker()
    for i in range(10):
        tracker.record_received(
            message_id=f"m{i}",
            sender="sip:carol@example.com",
            now=0.0,
            requested=("display",),
            recipient=f"sip:me{i}@example.org",  # a peer may put anything there
        )
        assert len(tracker._common) <= 4
    assert [r.recipient for r in tracker.snapshot().received] == [f"sip:me{i}@example.org" for i in range(10)]


def _ops(writes: list[Any]) -> list[tuple[str, str, str]]:
    return [
        ("put", op.record.TABLE, op.record.key) if isinstance(op, Put) else ("delete", op.table, op.key)
        for op in writes
    ]


def test_a_received_record_created_and_settled_before_the_hand_out_costs_the_store_nothing() -> None:
    """Positive delivery owed at once settles the received record with its answer: when both
    happen between two hand-outs, the store never hears of it (no Put, no Delete)."""
    tracker = make_tracker()
    sender = "sip:alice@example.com"
    tracker.record_received(message_id="m1", sender=sender, now=0.0, requested=("positive-delivery",))
    tracker.message_answered("m1", sender, 200, 0.0, sent=False)
    assert _ops(tracker.writes_to_apply()) == [
        ("put", "seen", f"{sender} m1"),
        ("put", "seen", f"{sender} m1"),  # with its answer
        ("put", "owed", "n1"),
    ]
    # Drained in between: the store has the record, so it gets its Delete.
    tracker.record_received(message_id="m2", sender=sender, now=0.0, requested=("positive-delivery",))
    assert ("put", "received", f"{sender} m2") in _ops(tracker.writes_to_apply())
    tracker.message_answered("m2", sender, 200, 0.0, sent=False)
    assert ("delete", "received", f"{sender} m2") in _ops(tracker.writes_to_apply())
    # Still open (display asked too): one Put, with its last state.
    both = ("positive-delivery", "display")
    tracker.record_received(message_id="m3", sender=sender, now=0.0, requested=both)
    tracker.message_answered("m3", sender, 200, 0.0, sent=False)
    writes = tracker.writes_to_apply()
    [received] = [op.record for op in writes if isinstance(op, Put) and op.record.TABLE == "received"]
    assert received.answered_status == 200 and received.delivery_owed == "delivered"
    store = MemoryStore()
    store.apply(writes)
    assert {r.key for r in store.load(0.0).received} == {f"{sender} m3"}


def test_a_received_record_that_may_be_in_the_store_is_always_deleted() -> None:
    """Once records have left memory for the store (working set), a record absent from memory
    may still be stored: its Delete is kept."""
    tracker = make_tracker(working_set_max=1)
    sender = "sip:alice@example.com"
    for message_id in ("a", "b"):
        tracker.record_received(message_id=message_id, sender=sender, now=0.0, requested=("display",))
        tracker.message_answered(message_id, sender, 200, 0.0)
    assert tracker.reads_back
    tracker.writes_to_apply()
    tracker.record_received(message_id="c", sender=sender, now=0.0, requested=("positive-delivery",))
    tracker.message_answered("c", sender, 200, 0.0, sent=False)
    assert ("delete", "received", f"{sender} c") in _ops(tracker.writes_to_apply())


def test_a_steady_flow_at_the_dedup_cap_needs_no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledged notifications and dedup entries evicted oldest first leave the heap from the
    top as the user agent asks for its timer: counted out there, they bring no sweep of the
    whole heap (a pause of about a microsecond per entry), and the heap stays the live size."""
    monkeypatch.setattr(tracker_base, "_HEAP_SWEEP_MIN", 8)
    sweeps = []
    heapify = tracker_base.heapq.heapify
    monkeypatch.setattr(tracker_base.heapq, "heapify", lambda heap: (sweeps.append(len(heap)), heapify(heap)))
    tracker = make_tracker(rate_limit=10**6, dedup_max=50)
    for i in range(2000):
        now = i * 0.01
        sender = f"sip:user{i}@example.com"
        tracker.record_received(message_id=f"m{i}", sender=sender, now=now, requested=("positive-delivery",))
        tracker.message_answered(f"m{i}", sender, 200, now)
        [owed] = [e for e in drain(tracker) if isinstance(e, NotificationOwed)]
        tracker.notification_outcome(owed.notification.notification_id, 200, now)
        tracker.writes_to_apply()
        assert tracker.get_timer() is not None
    assert sweeps == []
    assert len(timers(tracker)) <= 51 and tracker.dedup_size == 50


def _index_ops(seed: int) -> list[tuple[str, int, int | None]]:
    rng = random.Random(seed)
    ops: list[tuple[str, int, int | None]] = []
    for _ in range(300):
        sender = rng.choice((None, 0, 1, 2)) if rng.random() < 0.5 else rng.randrange(3)
        op = rng.choice(("receive", "receive", "display", "deliver", "lookup", "expire"))
        ops.append((op, rng.randrange(12), sender))
    return ops


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("build_at", [None, 0, 50, 150])
def test_a_lazily_built_message_id_index_answers_as_one_kept_from_the_start(
    seed: int, build_at: int | None
) -> None:
    """Differential: the Message-ID index built on the first lookup without the sender (or never)
    gives the same answers, errors, events and store writes as one kept from the start."""
    trackers = [make_tracker(rate_limit=10**6), make_tracker(rate_limit=10**6)]
    trackers[0]._received_keys("")  # the reference: index kept from the start
    now = 0.0
    for step, (op, number, who) in enumerate(_index_ops(seed)):
        if step == build_at:
            trackers[1]._received_keys("")
        now += 1.0
        message_id = f"m{number}"
        sender = None if who is None else f"sip:user{who}@example.com"
        outcomes = []
        for tracker in trackers:
            try:
                if op == "receive":
                    receive(tracker, message_id, sender or "sip:user0@example.com", now)
                    result: object = None
                elif op == "display":
                    owed = tracker.mark_displayed(message_id, now, sender=sender)
                    result = None if owed is None else (owed.message_id, owed.sender_key, owed.status)
                elif op == "deliver":
                    owed = tracker.report_disposition(message_id, "delivery", "failed", now, sender=sender)
                    result = None if owed is None else (owed.message_id, owed.sender_key, owed.status)
                elif op == "lookup":
                    record = tracker.received(message_id, sender)
                    result = None if record is None else (record.sender_key, record.message_id)
                else:
                    tracker.handle_timer(now + 3 * 86400.0 * (number % 4))
                    result = None
            except LocalProtocolError as error:  # the same error on both sides is the point
                result = (type(error).__name__, str(error))
            events = [type(e).__name__ for e in drain(tracker)]
            outcomes.append((result, _ops(tracker.writes_to_apply()), events))
        assert outcomes[0] == outcomes[1], (step, op, message_id, sender)
    for tracker in trackers:
        if tracker._received_by_id is not None:  # when built, it names exactly the records held
            index = tracker._received_by_id.values()
            assert sorted(k for ks in index for k in ([ks] if isinstance(ks, tuple) else ks)) == sorted(
                tracker._received
            )


#: Messages tracked by the budget test: enough that the tracker's fixed costs (caches, rate
#: windows) weigh little, the tables' hash arrays about as full as in a long run.
_BUDGET_MESSAGES = 30_000


def test_a_received_message_owed_its_display_notification_costs_at_most_1_kib() -> None:
    """The memory budget (1 KiB per tracked message), for received messages shaped as the user
    agent records them: CPIM From as a name-addr, SIP From URI, CPIM To, a DateTime and a
    clock reading each, the delivered IMDN sent and acknowledged, the display one still owed.
    Every byte Python allocated for it counts, the inputs the tracker keeps included
    (``bench/micro_memory.py tracker`` measures the same shape by RSS). Held under the budget
    with room to spare: 881 B measured (a dedup entry answered 200 costs only its table slot),
    so a change that gives back more than about 40 B per message fails here first."""
    rng = random.Random(5438)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracker = make_tracker(rate_limit=10**9, working_set_max=None)
        for i in range(_BUDGET_MESSAGES):
            # Each input a string of its own, as the parser makes them.
            message_id = f"r{i:08d}x{rng.getrandbits(64):016x}"
            sender = f"<sip:user{i}@example.com>"
            arrived_at = 1_800_000_000.0 + i / 100
            tracker.record_received(
                message_id=message_id,
                sender=sender,
                now=arrived_at,
                requested=("positive-delivery", "display"),
                sip_from=f"sip:user{i}@example.com",
                recipient="".join(("<sip:me", "@example.org>")),
                datetime=f"2026-06-15T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
            )
            tracker.message_answered(message_id, sender, 200, arrived_at + 0.001)
            for event in drain(tracker):
                if isinstance(event, NotificationOwed):
                    tracker.notification_outcome(event.notification.notification_id, 200, arrived_at + 0.002)
            if i % 1000 == 999:  # the store takes the writes, the timer is asked for (as the UA does)
                tracker.writes_to_apply()
                tracker.get_timer()
        tracker.writes_to_apply()
        tracker.get_timer()
        del event, message_id, sender
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert tracker.tracked_received == _BUDGET_MESSAGES
    assert len(tracker.owed()) == 0
    assert used / _BUDGET_MESSAGES <= 920, used / _BUDGET_MESSAGES


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


_GC_MESSAGES = 5000


def _receive_settled(tracker: DispositionTracker, count: int, first: int = 0) -> list[Any]:
    """``count`` messages each from its own sender, answered 200: every other one owed
    nothing, the others positive delivery, its IMDN owed with the answer and acknowledged
    (its received record gone, its dedup entry kept). Returns the store writes."""
    writes: list[Any] = []
    for i in range(first, first + count):
        # Each input a string of its own, as the parser makes them.
        message_id, sender, now = f"m{i}", f"sip:user{i}@example.com", i / 1000
        requested = ("positive-delivery",) if i % 2 else ()
        tracker.record_received(message_id=message_id, sender=sender, now=now, requested=requested)
        tracker.message_answered(message_id, sender, 200, now)
        for event in drain(tracker):
            if isinstance(event, NotificationOwed):
                tracker.notification_outcome(event.notification.notification_id, 200, now)
        writes += tracker.writes_to_apply()
        tracker.get_timer()
    return writes


def test_dedup_entries_are_not_tracked_by_the_cyclic_collector() -> None:
    """A dedup entry is kept for days, one per received message: as a tuple of untracked
    items (and its key a tuple of strings) the collector stops tracking it, and its timer
    entry, at the first collection, so collections do not walk them (white-box: what the
    collector tracks is the point). After ``_GC_MESSAGES`` messages that leave only their
    dedup entry, far fewer new tracked objects than messages, also in a tracker restored from
    the store's records; the records written are those of the dedup entries, and dedup
    answers as before."""
    tracker = make_tracker(rate_limit=10**9, byte_budget=10**12)
    _receive_settled(tracker, 1)  # the tracker's own containers (rate window, destinations)
    before = _tracked()
    writes = _receive_settled(tracker, _GC_MESSAGES, first=1)
    seen = [op.record for op in writes if isinstance(op, Put) and isinstance(op.record, SeenRecord)]
    # Those owed nothing keep their dedup entry in memory only; the others write it twice
    # (received, then answered).
    assert len(seen) == _GC_MESSAGES and {r.status for r in seen} == {None, 200}
    del writes, seen
    assert tracker.dedup_size == _GC_MESSAGES + 1 and tracker.tracked_received == 0
    grown = _tracked() - before
    assert grown <= _GC_MESSAGES // 10, grown
    snapshot = tracker.snapshot()
    assert len(snapshot.seen) == _GC_MESSAGES // 2
    assert {(r.sender_key, r.message_id, r.status, r.expires_at) for r in snapshot.seen} == {
        (f"sip:user{i}@example.com", f"m{i}", 200, i / 1000 + 7 * 86400.0)
        for i in range(1, _GC_MESSAGES + 1, 2)
    }
    again = DispositionTracker(TrackerConfig(), snapshot=snapshot, now=10.0)
    del snapshot
    assert again.dedup_size == _GC_MESSAGES // 2
    assert _tracked() - before <= 2 * (_GC_MESSAGES // 10), _tracked() - before
    for i in (1, 2, _GC_MESSAGES):
        reception = tracker.record_received(message_id=f"m{i}", sender=f"sip:user{i}@example.com", now=10.0)
        assert reception.duplicate and reception.previous_status == 200
    reception = again.record_received(message_id="m1", sender="sip:user1@example.com", now=10.0)
    assert reception.duplicate and reception.previous_status == 200
    assert not again.record_received(message_id="m2", sender="sip:user2@example.com", now=10.0).duplicate


@pytest.mark.parametrize("status", [None, 200, 202, 486, 603])
@pytest.mark.parametrize("requested", [(), ("positive-delivery",)])
@pytest.mark.parametrize("now", [0.0, -7 * 86400.0])  # the second: an expiry of 0.0 (falsy)
def test_dedup_entries_answer_every_status_as_their_record_would(
    status: int | None, requested: tuple[str, ...], now: float
) -> None:
    """Table: whatever the answer (none yet, 200 kept as a bare expiry time, any other as a
    tuple), a copy is a duplicate with that status, before and after a restart from the store,
    the stored record says the same, a report after a non-2xx raises, and the entry is nothing
    the collector tracks."""
    tracker = make_tracker()
    sender = "sip:alice@example.com"
    tracker.record_received(message_id="m1", sender=sender, now=now, requested=requested)
    if status is not None:
        tracker.message_answered("m1", sender, status, now)
    drain(tracker)
    store = MemoryStore()
    store.apply(tracker.writes_to_apply())
    gc.collect()
    entries = [*tracker._seen.values(), *tracker._volatile.values()]
    assert len(entries) == 1 and not gc.is_tracked(entries[0])
    restored = DispositionTracker(TrackerConfig(), snapshot=store.load(now), now=now)
    stored = [r for r in restored.snapshot().seen]
    if requested:  # owed something: the entry is stored, and restored
        assert [(r.status, r.expires_at) for r in stored] == [(status, now + 7 * 86400.0)]
        assert [(r.status, r.expires_at) for r in tracker.snapshot().seen] == [(status, now + 7 * 86400.0)]
    else:
        assert stored == [] and tracker.snapshot().seen == ()
    for again in (tracker, restored) if requested else (tracker,):
        if status is not None and status >= 300:
            with pytest.raises(LocalProtocolError):
                again.report_disposition("m1", "delivery", "failed", now, sender=sender)
            with pytest.raises(LocalProtocolError):
                again.report_disposition("m1", "delivery", "failed", now)
        assert again.is_duplicate("m1", sender)
        copy = again.record_received(message_id="m1", sender=sender, now=now + 1, requested=requested)
        assert copy.duplicate and copy.previous_status == status
    # Until its expiry, and no later.
    tracker.handle_timer(now + 7 * 86400.0 - 1)
    assert tracker.is_duplicate("m1", sender)
    tracker.handle_timer(now + 7 * 86400.0)
    assert not tracker.is_duplicate("m1", sender)
