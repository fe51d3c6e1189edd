"""The working set: at most ``working_set_max`` idle sent and received records in memory.

Sans-IO, with a fake clock: the tracker lets the least recently used idle records go (the
store has them: nothing is written for it), counts them, keeps what it must act on by itself,
and a record read back (the adapter's miss path, done here by hand with a MemoryStore) gives
exactly the decisions, events and store contents it would have given had it never left.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from tracker_helpers import make_tracker

from sipimdn.errors import LocalProtocolError
from sipimdn.imdn.tracker import DispositionTracker, NotificationOwed, TrackerConfig
from sipimdn.store import MemoryStore, Snapshot

ME = "sip:bob@example.org"
PEER = "sip:alice@example.net"


def make(**config: Any) -> DispositionTracker:
    """A tracker with numbered notification ids and no notification budget in the way."""
    config.setdefault("rate_limit", 10**9)
    config.setdefault("byte_budget", 10**12)
    return make_tracker(**config)


def sender_of(index: int) -> str:
    return f"sip:user{index % 7}@example.com"


def acknowledge(tracker: DispositionTracker, now: float) -> list[object]:
    """Drain events; every notification handed out is answered 200 at once."""
    events = []
    while (event := tracker.next_event()) is not None:
        events.append(event)
        if isinstance(event, NotificationOwed):
            tracker.notification_outcome(event.notification.notification_id, 200, now)
    return events


def receive(tracker: DispositionTracker, index: int, now: float) -> None:
    """A message asking for delivery and display, answered 200; its delivery IMDN acknowledged."""
    sender = sender_of(index)
    tracker.record_received(
        message_id=f"m{index}",
        sender=sender,
        sip_from=sender,
        recipient=ME,
        now=now,
        requested=("positive-delivery", "display"),
    )
    tracker.message_answered(f"m{index}", sender, 200, now)
    acknowledge(tracker, now)


def test_received_records_stay_at_the_cap_and_the_store_holds_them_all() -> None:
    tracker = make(working_set_max=100)
    store = MemoryStore()
    for index in range(3000):
        receive(tracker, index, float(index) / 10)
        store.apply(tracker.writes_to_apply())
        assert tracker.tracked_received <= 100
    assert tracker.tracked_received == 100
    assert tracker.working_set_evictions == 2900
    assert tracker.reads_back
    assert len(store.load(300.0).received) == 3000
    # The evicted ones are gone from memory only; the most recent stay.
    assert tracker.received("m0", sender_of(0)) is None
    assert tracker.received("m2999", sender_of(2999)) is not None
    # Eviction wrote nothing: the store has every record's last state already.
    assert tracker.writes_to_apply() == []


def test_records_the_tracker_acts_on_never_leave_memory() -> None:
    tracker = make(working_set_max=10)
    now = 1.0
    # Deciding (no answer yet), answering (2xx not sent), owing a notification not acknowledged.
    for index in range(5):
        tracker.record_received(
            message_id=f"d{index}", sender=PEER, now=now, requested=("positive-delivery", "display")
        )
    for index in range(5):
        tracker.record_received(
            message_id=f"a{index}", sender=PEER, now=now, requested=("positive-delivery", "display")
        )
        tracker.message_answered(f"a{index}", PEER, 200, now, sent=False)
    for index in range(5):
        tracker.record_received(
            message_id=f"o{index}", sender=PEER, now=now, requested=("positive-delivery", "display")
        )
        tracker.message_answered(f"o{index}", PEER, 200, now)
    assert tracker.owed_count == 10  # the held ones and those handed out, none acknowledged
    while tracker.next_event() is not None:  # handed out, never answered
        pass
    for index in range(40):
        receive(tracker, index, now)
    assert tracker.working_set_evictions > 0
    for prefix in "dao":
        for index in range(5):
            assert tracker.received(f"{prefix}{index}", PEER) is not None, (prefix, index)
    # Over the cap only by what is not idle (15 here): idle ones go first.
    assert tracker.tracked_received <= 10 + 15


def test_sent_records_leave_memory_only_once_answered() -> None:
    tracker = make(working_set_max=5, tracking_ttl=100.0)
    for index in range(20):
        tracker.register_sent(message_id=f"s{index}", recipients=[PEER], requested=["display"], now=1.0)
    assert tracker.tracked_sent == 20  # no final response yet: all in flight
    for index in range(20):
        tracker.response_received(f"s{index}", 200, 2.0)
    tracker.register_sent(message_id="last", recipients=[PEER], requested=["display"], now=3.0)
    assert tracker.tracked_sent == 5
    assert tracker.working_set_evictions == 16
    assert tracker.evicted_sent_due == 101.0  # the earliest deadline among those evicted


def test_a_whole_store_resumed_into_a_small_working_set_is_trimmed_at_once() -> None:
    # What a store that loads everything (PostgreSQL's load_own) gives a tracker with a cap.
    full = make()
    for index in range(500):
        receive(full, index, 1.0)
    resumed = DispositionTracker(TrackerConfig(working_set_max=10), snapshot=full.snapshot(), now=2.0)
    assert resumed.tracked_received == 10 and resumed.reads_back
    assert resumed.received("m499", sender_of(499)) is not None  # the most recent stay
    assert resumed.writes_to_apply() == []
    # A snapshot that is only part of the store (load_working_set) says so: misses read back,
    # and the evicted deadlines are looked for at once.
    config = TrackerConfig(working_set_max=10)
    partial = DispositionTracker(config, snapshot=Snapshot(), now=2.0, partial=True)
    assert partial.reads_back and partial.evicted_sent_due == 2.0


def test_a_notification_released_to_another_worker_no_longer_holds_its_message() -> None:
    tracker = make(working_set_max=1)
    tracker.record_received(message_id="m", sender=PEER, now=1.0, requested=("positive-delivery", "display"))
    tracker.message_answered("m", PEER, 200, 1.0)
    (owed,) = tracker.owed()
    while tracker.next_event() is not None:  # handed out, never answered
        pass
    receive(tracker, 1, 2.0)
    assert tracker.received("m", PEER) is not None  # its delivery notification is in flight
    assert tracker.release("owed", [owed.notification_id], 3.0) == [owed.notification_id]
    receive(tracker, 2, 4.0)
    assert tracker.received("m", PEER) is None  # nothing owed here any more: idle, evicted


def test_an_evicted_message_is_still_a_duplicate_while_its_dedup_entry_lives() -> None:
    tracker = make(working_set_max=10)
    for index in range(100):
        receive(tracker, index, 1.0)
    assert tracker.received("m0", sender_of(0)) is None
    again = tracker.record_received(
        message_id="m0", sender=sender_of(0), now=2.0, requested=("positive-delivery", "display")
    )
    assert again.duplicate and again.previous_status == 200
    assert tracker.next_event() is None  # nothing owed a second time


def test_a_record_read_back_owes_the_display_notification() -> None:
    tracker = make(working_set_max=10)
    store = MemoryStore()
    for index in range(100):
        receive(tracker, index, 1.0)
        store.apply(tracker.writes_to_apply())
    assert tracker.mark_displayed("m3", 5.0) is None  # not in memory: as if unknown
    found = store.load_received("m3", None, 5.0)
    assert tracker.readmit(found, 5.0) == 1
    assert tracker.readmit(found, 5.0) == 0  # held now: memory wins
    owed = tracker.mark_displayed("m3", 5.0)
    assert owed is not None and owed.kind == "display" and owed.sender_key == found[0].sender_key
    # Settled: its record ends, in memory and (through the Delete) in the store.
    store.apply(tracker.writes_to_apply())
    assert store.load_received("m3", None, 6.0) == ()


# --- the same decisions as a tracker that never evicts ----------------------------------------------


class Run:
    """A tracker with its store, and the adapter's miss path done by hand."""

    def __init__(self, cap: int | None) -> None:
        self.tracker = make(
            working_set_max=cap,
            tracking_ttl=60.0,
            expiry_report_grace=20.0,
            received_ttl=90.0,
            dedup_ttl=90.0,
            owed_ttl=30.0,
        )
        self.store = MemoryStore()
        self.events: list[str] = []
        self.read_back = 0

    def settle(self, now: float) -> None:
        tracker = self.tracker
        # The adapter reads again at once while a read stops at its limit (3 here).
        while (due := tracker.evicted_sent_due) is not None and due <= now:
            tracker.sweep_started()
            self.store.apply(tracker.writes_to_apply())
            grace = tracker.config.expiry_report_grace
            records, later = self.store.load_sent_due(now + grace, now, 3)
            tracker.readmit_due(
                records, now, next_deadline=None if later is None else later - grace, more=len(records) >= 3
            )
        tracker.handle_timer(now)
        step = []
        while (event := tracker.next_event()) is not None:
            step.append(repr(event))
        self.events.extend(sorted(step))
        self.store.apply(tracker.writes_to_apply())

    def read_back_received(self, message_id: str, sender: str | None, now: float) -> None:
        tracker = self.tracker
        if tracker.reads_back and tracker.received(message_id, sender) is None:
            key = None if sender is None else tracker.sender_key(sender)
            self.read_back += tracker.readmit(self.store.load_received(message_id, key, now), now)

    def read_back_sent(self, message_id: str, now: float) -> None:
        tracker = self.tracker
        if tracker.reads_back and tracker.sent(message_id) is None:
            found = self.store.load_sent(message_id, now)
            self.read_back += tracker.readmit([found] if found is not None else [], now)


def step(run: Run, op: tuple[Any, ...], now: float) -> object:
    tracker = run.tracker
    kind = op[0]
    if kind == "receive":
        _, index, requested = op
        sender = sender_of(index)
        return tracker.record_received(
            message_id=f"m{index}", sender=sender, sip_from=sender, recipient=ME, now=now, requested=requested
        )
    if kind == "answer":
        _, index, status = op
        return tracker.message_answered(f"m{index}", sender_of(index), status, now)
    if kind == "outcome":
        owed = sorted(tracker.owed(), key=lambda o: o.notification_id)
        if not owed:
            return None
        chosen = owed[op[1] % len(owed)]
        tracker.notification_outcome(chosen.notification_id, op[2], now)
        return chosen.notification_id
    if kind == "display":
        _, index, named = op
        sender = sender_of(index) if named else None
        run.read_back_received(f"m{index}", sender, now)
        try:
            return tracker.mark_displayed(f"m{index}", now, sender=sender)
        except LocalProtocolError as exc:
            return f"error {exc}"
    if kind == "report":
        _, index, report_kind, status = op
        run.read_back_received(f"m{index}", sender_of(index), now)
        try:
            return tracker.report_disposition(f"m{index}", report_kind, status, now, sender=sender_of(index))
        except LocalProtocolError as exc:
            return f"error {exc}"
    if kind == "send":
        _, index, requested = op
        return tracker.register_sent(message_id=f"s{index}", recipients=[PEER], requested=requested, now=now)
    if kind == "response":
        return tracker.response_received(f"s{op[1]}", op[2], now)
    assert kind == "notification"
    _, index, note_kind, status, note_id = op
    run.read_back_sent(f"s{index}", now)
    return tracker.notification_received(
        message_id=f"s{index}", kind=note_kind, status=status, now=now, sender=PEER, notification_id=note_id
    )


def random_ops(rng: random.Random, count: int) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    received = sent = 0
    requests = [("positive-delivery", "display"), ("display",), ("positive-delivery",), ()]
    for serial in range(count):
        roll = rng.random()
        if roll < 0.2 or not received:
            ops.append(("receive", received, rng.choice(requests)))
            ops.append(("answer", received, rng.choice([200, 200, 200, 202, 480])))
            received += 1
        elif roll < 0.25:
            ops.append(("receive", rng.randrange(received), rng.choice(requests)))  # a resend
        elif roll < 0.4:
            ops.append(("outcome", rng.randrange(1000), rng.choice([200, 200, 408, 500, 404])))
        elif roll < 0.55:
            ops.append(("display", rng.randrange(received), rng.random() < 0.7))
        elif roll < 0.6:
            ops.append(
                ("report", rng.randrange(received), "delivery", rng.choice(["failed", "error", "forbidden"]))
            )
        elif roll < 0.75 or not sent:
            ops.append(("send", sent, rng.choice(requests)))
            ops.append(("response", sent, rng.choice([200, 200, 200, 404])))
            sent += 1
        else:
            note = rng.choice([("delivery", "delivered"), ("display", "displayed"), ("delivery", "failed")])
            ops.append(("notification", rng.randrange(sent), *note, f"imdn-{serial}"))
    return ops


@pytest.mark.parametrize("seed", range(6))
def test_read_back_gives_the_decisions_of_a_tracker_that_never_evicts(seed: int) -> None:
    rng = random.Random(seed)
    ops = random_ops(rng, 1500)
    reference, cached = Run(cap=None), Run(cap=rng.choice([1, 3, 8]))
    now = 1.0
    for op in ops:
        now += rng.choice([0.0, 0.0, 0.5, 2.0])
        for run in (reference, cached):
            run.settle(now)
        expected = step(reference, op, now)
        got = step(cached, op, now)
        assert repr(got) == repr(expected), (op, now)
    for _ in range(100):  # everything expires, the clock moving as a running adapter's does
        now += 5.0
        for run in (reference, cached):
            run.settle(now)
    assert cached.events == reference.events
    assert cached.tracker.working_set_evictions > 50 and cached.read_back >= 5
    assert cached.tracker.tracked_received <= 8 + 20 and reference.tracker.tracked_received == 0
    # The stores end the same once expired rows are purged (an evicted record's expiry is purge's).
    for run in (reference, cached):
        run.store.purge(now)
    assert cached.store.load(now) == reference.store.load(now)
