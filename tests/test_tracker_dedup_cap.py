"""Bounded dedup: a peer sending fresh Message-IDs cannot grow memory or the store without bound.

At most ``dedup_max`` (sender, Message-ID) pairs are remembered, the oldest forgotten first and
counted; the stored ones are deleted from the store too. The trade-off, shown here: a copy of a
message older than the window reaches the application again.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

from tracker_helpers import make_tracker

from sipimdn.imdn.tracker import DispositionTracker, TrackerConfig
from sipimdn.store import Delete, MemoryStore

ME = "sip:bob@example.org"
PAGE = os.sysconf("SC_PAGE_SIZE")


def make(**config: Any) -> DispositionTracker:
    # No rate limit in the way: these tests are about dedup, not about notification budgets.
    config.setdefault("rate_limit", 10**9)
    return make_tracker(**config)


def rss() -> int:
    """Resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


def receive(tracker: DispositionTracker, index: int, now: float, *, notify: bool) -> bool:
    """One message with a fresh Message-ID from a fresh sender; True if it was a duplicate."""
    sender = f"sip:user{index % 5000}@host{index % 7}.example.com"
    reception = tracker.record_received(
        message_id=f"id-{index}",
        sender=sender,
        sip_from=sender,
        now=now,
        requested=("positive-delivery",) if notify else (),
        recipient=ME,
    )
    if notify and not reception.duplicate:
        tracker.message_answered(f"id-{index}", sender, 200, now)
        while (event := tracker.next_event()) is not None:
            notification = getattr(event, "notification", None)
            if notification is not None:  # the delivery notification, acknowledged at once
                tracker.notification_outcome(notification.notification_id, 200, now)
    return reception.duplicate


def test_cap_holds_oldest_evicted_first_and_the_store_follows() -> None:
    tracker = make(dedup_max=100)
    store = MemoryStore()
    for index in range(250):
        receive(tracker, index, float(index), notify=index % 2 == 0)
        store.apply(tracker.writes_to_apply())
        assert tracker.dedup_size == min(index + 1, 100)
    assert tracker.dedup_evictions == 150
    # The store holds only the stored (notified) entries still in the window.
    assert len(store.load(250.0).seen) <= 50
    # The newest are still duplicates; the oldest are not any more (the documented trade-off).
    assert receive(tracker, 249, 300.0, notify=False)
    assert receive(tracker, 150, 300.0, notify=True)
    assert not receive(tracker, 0, 300.0, notify=True)
    assert not receive(tracker, 1, 300.0, notify=False)


def test_evicted_stored_entries_are_deleted_from_the_store() -> None:
    tracker = make(dedup_max=3)
    for index in range(5):
        receive(tracker, index, float(index), notify=True)
    deletes = [op for op in tracker.writes_to_apply() if isinstance(op, Delete) and op.table == "seen"]
    assert len(deletes) == 2


def test_a_message_awaiting_display_stays_a_duplicate_after_eviction() -> None:
    """Its dedup entry may go; its received record (still owed a display) keeps it a duplicate."""
    tracker = make(dedup_max=2)
    first = tracker.record_received(
        message_id="keep", sender="sip:alice@a.example", now=0.0, requested=("display",), recipient=ME
    )
    assert not first.duplicate
    tracker.message_answered("keep", "sip:alice@a.example", 200, 0.0)
    for index in range(5):
        receive(tracker, index, 1.0 + index, notify=False)
    assert tracker.dedup_size == 2
    again = tracker.record_received(
        message_id="keep", sender="sip:alice@a.example", now=10.0, requested=("display",), recipient=ME
    )
    assert again.duplicate and again.previous_status == 200
    assert tracker.mark_displayed("keep", 11.0, sender="sip:alice@a.example") is not None


def test_a_store_written_with_more_is_trimmed_on_restore() -> None:
    big = make(dedup_max=1000)
    store = MemoryStore()
    for index in range(50):
        receive(big, index, float(index), notify=True)
    store.apply(big.writes_to_apply())
    small = DispositionTracker(TrackerConfig(dedup_max=10), snapshot=store.load(60.0), now=60.0)
    assert small.dedup_size == 10
    store.apply(small.writes_to_apply())
    assert len(store.load(60.0).seen) == 10


def test_sixty_thousand_fresh_ids_keep_memory_flat() -> None:
    """60,000 unique Message-IDs (half asking for a notification) with dedup_max=2,000: once the
    cap is reached the entry count stays at the cap and the process's RSS stops growing."""
    tracker = make(dedup_max=2000)
    store = MemoryStore()
    samples: list[int] = []
    for index in range(60_000):
        receive(tracker, index, index * 0.01, notify=index % 2 == 0)
        if index % 1000 == 999:
            store.apply(tracker.writes_to_apply())
            tracker.handle_timer(index * 0.01)
            assert tracker.dedup_size == min(index + 1, 2000)
            if index >= 10_000:
                gc.collect()
                samples.append(rss())
    assert tracker.dedup_evictions == 58_000
    assert len(store.load(600.0).seen) <= 2000
    # Flat: from 10,000 messages on (cap long reached), RSS grows by less than 2 MiB over 50,000
    # more messages; unbounded, about 200 bytes each would have added some 10 MiB.
    assert max(samples) - samples[0] < 2 * 1024 * 1024, [s // 1024 for s in samples]


def test_bytes_per_entry() -> None:
    """What one dedup entry costs (the default cap's RAM cost is documented from it), and what a
    message awaiting display costs in all (dedup entry, received record, index, timer)."""
    per_entry = _bytes_per_message(notify=False)
    per_awaiting = _bytes_per_message(notify=True)
    print(f"\ndedup entry: {per_entry:.0f} B; message awaiting display: {per_awaiting:.0f} B")
    assert 50 < per_entry < 400
    assert per_entry < per_awaiting < 2000


def _bytes_per_message(*, notify: bool, count: int = 5000) -> float:
    tracker = make(dedup_max=10**6)
    senders = [f"sip:user{i}@example.com" for i in range(count)]  # the peer's strings, not ours
    ids = [f"{i:032x}" for i in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sender, message_id in zip(senders, ids, strict=True):
            tracker.record_received(
                message_id=message_id,
                sender=sender,
                sip_from=sender,
                now=1.0,
                requested=("display",) if notify else (),
                recipient=ME,
            )
            if notify:
                tracker.message_answered(message_id, sender, 200, 1.0)
        while tracker.next_event() is not None:
            pass
        tracker.writes_to_apply()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count
