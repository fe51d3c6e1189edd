"""Hypothesis over random input sequences: states never move back, nothing unverified is applied,
and the store always mirrors the tracker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_helpers import drain

import sipimdn.imdn.tracker._base as tracker_base
from sipimdn.imdn.tracker import (
    ALLOWED_STATUSES,
    STATE_RANK,
    TERMINAL_STATES,
    DispositionChanged,
    DispositionState,
    DispositionTracker,
    NotificationAccepted,
    NotificationOwed,
    TrackerConfig,
    identity_key,
)
from sipimdn.store import MemoryStore, OwedRecord, SentRecord

RECIPIENTS = ("sip:bob@127.0.0.1:5070", "sip:carol@example.org")
STRANGERS = ("sip:mallory@evil.example", "<sip:anonymous@anonymous.invalid>", None)
KINDS = ("delivery", "display", "processing", "read")
STATUSES = sorted({s for v in ALLOWED_STATUSES.values() for s in v} | {"bogus"})
REQUESTS = ("positive-delivery", "negative-delivery", "display", "processing")


@dataclass(frozen=True)
class Notify:
    message_id: str
    kind: str
    status: str
    sender: str | None
    recipient_uri: str | None
    notification_id: str | None


@dataclass(frozen=True)
class Respond:
    message_id: str
    status_code: int


@dataclass(frozen=True)
class Tick:
    seconds: float


@dataclass(frozen=True)
class Restart:
    """Throw the tracker away and rebuild it from the store."""


notify_st = st.builds(
    Notify,
    message_id=st.sampled_from(["m1", "m2", "unknown"]),
    kind=st.sampled_from(KINDS),
    status=st.sampled_from(STATUSES),
    sender=st.sampled_from(RECIPIENTS + STRANGERS),
    recipient_uri=st.sampled_from((*RECIPIENTS, "sip:dave@example.org", None)),
    notification_id=st.sampled_from(["a", "b", "c", None]),
)
respond_st = st.builds(
    Respond,
    message_id=st.sampled_from(["m1", "m2"]),
    status_code=st.sampled_from([100, 200, 202, 404, 408, 486, 503, 603]),
)
tick_st = st.builds(Tick, seconds=st.sampled_from([0.5, 10.0, 60.0]))
steps_st = st.lists(st.one_of(notify_st, respond_st, tick_st, st.just(Restart())), max_size=40)


def earliest_deadline(tracker: DispositionTracker) -> float | None:
    """The earliest deadline of every record the tracker holds, computed afresh (white-box:
    the dedup entries kept in memory only are in no snapshot)."""

    def deadline(record: Any) -> float:
        if isinstance(record, (tuple, float, int)):  # a dedup entry
            return float(tracker_base.dedup_expiry(record))
        if isinstance(record, OwedRecord):
            return min(record.next_attempt_at, record.expires_at)
        return record.deadline if isinstance(record, SentRecord) else float(record.expires_at)

    return min((deadline(r) for table in tracker._tables.values() for r in table.values()), default=None)


def is_intended(value: str | None) -> bool:
    return value is not None and identity_key(value) in {identity_key(r) for r in RECIPIENTS}


@settings(max_examples=300, deadline=None)
@given(
    requested=st.sets(st.sampled_from(REQUESTS)),
    steps=steps_st,
)
def test_states_never_move_back_and_unverified_never_applies(
    requested: set[str], steps: list[object]
) -> None:
    config = TrackerConfig(tracking_ttl=120.0)
    store = MemoryStore()
    tracker = DispositionTracker(config, now=0.0)
    for message_id in ("m1", "m2"):
        tracker.register_sent(message_id=message_id, recipients=RECIPIENTS, requested=requested, now=0.0)
    drain(tracker)
    now = 0.0
    last: dict[tuple[str, str], DispositionState] = {}
    for step in steps:
        store.apply(tracker.writes_to_apply())
        if isinstance(step, Restart):
            before_restart = {m: tracker.sent(m) for m in ("m1", "m2")}
            tracker = DispositionTracker(config, snapshot=store.load(now), now=now)
            assert {m: tracker.sent(m) for m in ("m1", "m2")} == before_restart
            events = drain(tracker)
        elif isinstance(step, Tick):
            now += step.seconds
            tracker.handle_timer(now)
            events = drain(tracker)
        elif isinstance(step, Respond):
            tracker.response_received(step.message_id, step.status_code, now)
            events = drain(tracker)
        else:
            assert isinstance(step, Notify)
            before = {m: tracker.sent(m) for m in ("m1", "m2")}
            applied = tracker.notification_received(
                message_id=step.message_id,
                kind=step.kind,
                status=step.status,
                now=now,
                sender=step.sender,
                recipient_uri=step.recipient_uri,
                notification_id=step.notification_id,
            )
            events = drain(tracker)
            verified = is_intended(step.sender) or is_intended(step.recipient_uri)
            if not applied:
                # Rejected: nothing at all changed.
                assert {m: tracker.sent(m) for m in ("m1", "m2")} == before
                assert not any(isinstance(e, (DispositionChanged, NotificationAccepted)) for e in events)
            else:
                # Applied only if the Message-ID is one we sent (RFC 5438 §7.1.2), the sender is a
                # recipient (§14.1) and the type was requested (§7.1.1).
                assert step.message_id in ("m1", "m2") and verified
                assert step.status in ALLOWED_STATUSES[step.kind]
                token = {"display": "display", "processing": "processing"}.get(step.kind)
                if token:
                    assert token in requested
                elif step.status == "delivered":
                    assert "positive-delivery" in requested
                elif step.status == "failed":
                    assert "negative-delivery" in requested
        for event in events:
            if isinstance(event, DispositionChanged):
                key = (event.message_id, event.recipient)
                assert last.get(key, DispositionState.PENDING) == event.previous
                assert event.previous not in TERMINAL_STATES
                assert STATE_RANK[event.state] > STATE_RANK[event.previous]
                last[key] = event.state
        for message_id in ("m1", "m2"):
            record = tracker.sent(message_id)
            if record is None:
                continue
            for entry in record.recipients:
                # Per type at most one notification is ever recorded (RFC 5438 §7.2): fields are set once.
                recorded = last.get((message_id, entry.uri), DispositionState.PENDING)
                assert DispositionState(entry.state) == recorded


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("receive"), st.sampled_from(["r1", "r2", "r3"]), st.sets(st.sampled_from(REQUESTS))
            ),
            st.tuples(
                st.just("answer"), st.sampled_from(["r1", "r2", "r3"]), st.sampled_from([200, 202, 486])
            ),
            st.tuples(st.just("display"), st.sampled_from(["r1", "r2", "r3"])),
            st.tuples(st.just("outcome"), st.sampled_from([None, 200, 408, 415, 503, 404])),
            st.tuples(st.just("tick"), st.sampled_from([0.5, 5.0, 100.0])),
            st.tuples(st.just("restart")),
        ),
        max_size=40,
    )
)
def test_receiver_store_mirror_and_at_most_one_per_type(steps: list[tuple[Any, ...]]) -> None:
    store = MemoryStore()
    config = TrackerConfig(max_attempts=3, retry_base=1.0, received_ttl=300.0, owed_ttl=200.0)
    tracker = DispositionTracker(config, now=0.0)
    now = 0.0
    in_flight: list[str] = []
    handed_out: dict[tuple[str, str], str] = {}
    for step in steps:
        action = step[0]
        if action == "receive":
            tracker.record_received(message_id=str(step[1]), sender="sip:alice@x", now=now, requested=step[2])
        elif action == "answer":
            tracker.message_answered(str(step[1]), "sip:alice@x", int(step[2]), now)
        elif action == "display":
            # Never an error, answered or not: before the answer the display notification is
            # only deferred until a 2xx (RFC 5438 §7.2.1.2).
            tracker.mark_displayed(str(step[1]), now)
        elif action == "outcome" and in_flight:
            tracker.notification_outcome(in_flight.pop(0), step[1], now)
        elif action == "restart":
            # Owed notifications in flight are handed out again, under the same ids.
            tracker = DispositionTracker(config, snapshot=store.load(now), now=now)
            in_flight.clear()
        elif action == "tick":
            now += float(step[1])
            tracker.handle_timer(now)
        store.apply(tracker.writes_to_apply())
        for event in drain(tracker):
            if isinstance(event, NotificationOwed):
                n = event.notification
                # One notification per type per message: retries reuse the same id (RFC 5438 §7.2).
                assert handed_out.setdefault((n.message_id, n.kind), n.notification_id) == n.notification_id
                in_flight.append(n.notification_id)
        snapshot, live = store.load(now), tracker.snapshot()
        for name in ("sent", "owed", "received", "seen", "peers"):
            assert set(getattr(snapshot, name)) == set(getattr(live, name)), name
        # The timer (its top entry remembered between calls) is the earliest deadline of all.
        assert tracker.get_timer() == tracker.get_timer() == earliest_deadline(tracker)
        # The sweep's count bounds the stale timer entries (white-box: the heap's memory bound).
        assert sum(not tracker._live(*entry) for entry in tracker._heap) <= tracker._unswept
    # A restart from the store rebuilds the same state.
    rebuilt = DispositionTracker(tracker.config, snapshot=store.load(now), now=now)
    assert {r.key for r in rebuilt.snapshot().received} == {r.key for r in tracker.snapshot().received}
    assert {o.notification_id for o in rebuilt.owed()} == {o.notification_id for o in tracker.owed()}
