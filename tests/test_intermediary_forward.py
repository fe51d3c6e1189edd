"""Sans-IO store-and-forward core: outcomes, back-off, expiry, persistence, invariants."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.errors import LocalProtocolError, RemoteProtocolError
from sipimdn.intermediary import (
    RETRYABLE_STATUSES,
    DropParked,
    ForwardConfig,
    ForwardDue,
    ImdnOrigin,
    MemoryParkedStore,
    MessageDeferred,
    MessageFailed,
    MessageForwarded,
    NotificationDue,
    PutParked,
    StoreAndForward,
)

BOB = "sip:bob@sipimdn.test"


def origin(
    requested: tuple[str, ...] = ("negative-delivery", "positive-delivery", "processing"),
) -> ImdnOrigin:
    return ImdnOrigin(
        message_id="m1",
        datetime="2026-11-24T01:00:00Z",
        reply_to="im:alice@example.com",
        reply_sip="sip:alice@example.com",
        routes=(),
        recipient=BOB,
        original_recipient=BOB,
        requested=requested,
    )


def park(core: StoreAndForward, now: float = 0.0, **kwargs: Any) -> str:
    params: dict[str, Any] = {
        "target": BOB,
        "sip_from": "sip:alice@example.com",
        "sip_to": BOB,
        "content_type": "message/cpim",
        "body": b"x",
        "origin": origin(),
    }
    params.update(kwargs)
    return core.park(now=now, **params).key


def drain(core: StoreAndForward) -> list[object]:
    out: list[object] = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def notes(events: list[object]) -> list[tuple[str, str]]:
    return [(e.kind, e.status) for e in events if isinstance(e, NotificationDue)]


def test_park_hands_out_the_first_attempt_at_once() -> None:
    core = StoreAndForward(ForwardConfig(retry_base=10, expiry=100))
    key = park(core)
    [due] = drain(core)
    assert isinstance(due, ForwardDue) and due.message.key == key and due.message.attempts == 1
    assert core.get_timer() is None  # nothing else is due while the attempt is in flight
    writes = core.writes_to_apply()
    assert writes and all(isinstance(w, PutParked) for w in writes)


def test_unreachable_then_registered_stored_once_then_forwarded_never_delivered() -> None:
    core = StoreAndForward(ForwardConfig(retry_base=10, retry_cap=25, expiry=1000))
    key = park(core)
    drain(core)
    core.forward_outcome(key, None, 0.0)
    events = drain(core)
    assert notes(events) == [("processing", "stored")]
    [deferred] = [e for e in events if isinstance(e, MessageDeferred)]
    assert deferred.retry_at == 10 and deferred.status_code is None
    assert core.get_timer() == 10
    # Back-off doubles and is capped.
    waits = []
    for now in (10.0, 30.0, 55.0):
        core.handle_timer(now)
        assert [type(e) for e in drain(core)] == [ForwardDue]
        core.forward_outcome(key, 480, now)
        [deferred] = [e for e in drain(core) if isinstance(e, MessageDeferred)]
        waits.append(deferred.retry_at - now)
    assert waits == [20, 25, 25]
    assert core.recipient_reachable("sip:bob@SIPIMDN.test;transport=tcp", 60.0) == 1
    [due] = drain(core)
    assert isinstance(due, ForwardDue) and due.message.attempts == 5
    assert core.recipient_reachable(BOB, 60.0) == 0  # already in flight
    core.forward_outcome(key, 200, 61.0)
    events = drain(core)
    assert notes(events) == []  # no second processing notification (RFC 5438 §8.1), never "delivered"
    assert [type(e) for e in events] == [MessageForwarded]
    assert core.held() == ()
    assert isinstance(core.writes_to_apply()[-1], DropParked)


def test_first_attempt_accepted_gives_processed() -> None:
    core = StoreAndForward()
    key = park(core)
    drain(core)
    core.forward_outcome(key, 202, 1.0)
    events = drain(core)
    assert notes(events) == [("processing", "processed")]
    assert isinstance(events[-1], MessageForwarded) and events[-1].status_code == 202


@pytest.mark.parametrize("status", [403, 404, 415, 486, 488, 501, 603])
def test_refused_gives_failed_when_negative_delivery_asked(status: int) -> None:
    core = StoreAndForward()
    key = park(core)
    drain(core)
    core.forward_outcome(key, status, 1.0)
    events = drain(core)
    assert notes(events) == [("delivery", "failed")]
    assert isinstance(events[-1], MessageFailed) and events[-1].status_code == status
    assert not events[-1].expired


def test_refused_without_negative_delivery_owes_nothing() -> None:
    core = StoreAndForward()
    key = park(core, origin=origin(("display", "positive-delivery")))
    drain(core)
    core.forward_outcome(key, 404, 1.0)
    assert notes(drain(core)) == []


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUSES))
def test_retryable_statuses_keep_the_message(status: int) -> None:
    core = StoreAndForward()
    key = park(core)
    drain(core)
    core.forward_outcome(key, status, 1.0)
    assert any(isinstance(e, MessageDeferred) for e in drain(core))
    assert core.get(key) is not None


def test_expiry_gives_failed() -> None:
    core = StoreAndForward(ForwardConfig(retry_base=10, expiry=15))
    key = park(core)
    drain(core)
    core.forward_outcome(key, None, 0.0)
    drain(core)
    core.handle_timer(10.0)
    drain(core)
    core.forward_outcome(key, None, 10.0)
    drain(core)
    assert core.get_timer() == 15  # expiry comes before the next attempt (30)
    core.handle_timer(15.0)
    events = drain(core)
    assert notes(events) == [("delivery", "failed")]
    assert isinstance(events[-1], MessageFailed) and events[-1].expired
    assert core.get_timer() is None


@pytest.mark.parametrize("kwargs", [{"is_notification": True}, {"group": "fan1"}, {"origin": None}])
def test_notifications_list_copies_and_plain_messages_owe_nothing(kwargs: dict[str, Any]) -> None:
    core = StoreAndForward(ForwardConfig(expiry=5))
    key = park(core, **kwargs)
    drain(core)
    core.forward_outcome(key, None, 0.0)
    core.handle_timer(5.0)
    events = drain(core)
    assert notes(events) == []
    assert any(isinstance(e, MessageFailed) for e in events)


def test_late_or_unknown_outcomes_are_ignored_and_1xx_refused() -> None:
    core = StoreAndForward()
    key = park(core)
    drain(core)
    with pytest.raises(LocalProtocolError):
        core.forward_outcome(key, 180, 1.0)
    core.forward_outcome("nope", 200, 1.0)
    assert drain(core) == []


def test_capacity_is_refused_with_503() -> None:
    core = StoreAndForward(ForwardConfig(max_parked=1))
    park(core)
    with pytest.raises(RemoteProtocolError) as info:
        park(core)
    assert info.value.status_code == 503


def test_restart_from_store_resumes_and_expires() -> None:
    store = MemoryParkedStore()
    core = StoreAndForward(ForwardConfig(retry_base=100, expiry=50))
    alive = park(core, now=0.0)
    drain(core)
    core.forward_outcome(alive, None, 0.0)  # stored, retry at 100 (after expiry at 50)
    in_flight = park(core, now=40.0)  # in flight when we "crash"
    drain(core)
    store.apply(core.writes_to_apply())
    resumed = StoreAndForward(ForwardConfig(retry_base=100, expiry=50), parked=store.load())
    assert {m.key for m in resumed.held()} == {alive, in_flight}
    resumed.handle_timer(60.0)
    events = drain(resumed)
    failed = [e for e in events if isinstance(e, MessageFailed)]
    due = [e for e in events if isinstance(e, ForwardDue)]
    assert [e.message.key for e in failed] == [alive] and failed[0].expired
    assert [e.message.key for e in due] == [in_flight]
    # stored was already sent before the restart: only failed now.
    assert notes(events) == [("delivery", "failed")]
    resumed.forward_outcome(in_flight, None, 60.0)
    # processing_sent survives in the record: the in-flight one was never stored before.
    assert notes(drain(resumed)) == [("processing", "stored")]


_OUTCOMES = st.one_of(st.none(), st.sampled_from([200, 202, 404, 408, 480, 486, 500, 503, 603]))


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["outcome", "timer", "reachable"]), _OUTCOMES, st.floats(0, 50)),
        max_size=30,
    )
)
def test_any_sequence_keeps_the_rfc_promises(steps: list[tuple[str, int | None, float]]) -> None:
    """At most one processing and one delivery notification, never "delivered", store mirrors memory."""
    store = MemoryParkedStore()
    core = StoreAndForward(ForwardConfig(retry_base=5, retry_cap=20, expiry=100))
    key = park(core)
    now = 0.0
    events = drain(core)
    for action, status, dt in steps:
        now += dt
        if action == "outcome":
            # Ignored unless an attempt is in flight (a late or duplicate report).
            core.forward_outcome(key, status, now)
        elif action == "timer":
            core.handle_timer(now)
        elif action == "reachable":
            core.recipient_reachable(BOB, now)
        events += drain(core)
        store.apply(core.writes_to_apply())
        assert {m.key: m for m in store.load()} == {m.key: m for m in core.held()}
    kinds = [kind for kind, _ in notes(events)]
    assert kinds.count("processing") <= 1 and kinds.count("delivery") <= 1
    assert ("delivery", "delivered") not in notes(events)
    ends = [e for e in events if isinstance(e, MessageForwarded | MessageFailed)]
    assert len(ends) <= 1
    assert (core.get(key) is None) == bool(ends)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["park", "outcome", "timer", "reachable"]),
            st.integers(0, 3),
            _OUTCOMES,
            st.floats(0, 30),
        ),
        max_size=40,
    )
)
def test_many_messages_timer_matches_a_brute_force_model(
    steps: list[tuple[str, int, int | None, float]],
) -> None:
    """The O(log n) timer and per-recipient index agree with a scan of everything held."""
    core = StoreAndForward(ForwardConfig(retry_base=3, retry_cap=10, expiry=60))
    targets = [f"sip:user{n}@sipimdn.test" for n in range(2)]
    keys: list[str] = []
    in_flight: set[str] = set()
    now = 0.0
    for action, index, status, dt in steps:
        now += dt
        if action == "park":
            keys.append(park(core, now=now, target=targets[index % 2]))
        elif action == "outcome" and keys:
            key = keys[index % len(keys)]
            core.forward_outcome(key, status, now)
            in_flight.discard(key)
        elif action == "timer":
            core.handle_timer(now)
        elif action == "reachable":
            core.recipient_reachable(targets[index % 2], now)
        for event in drain(core):
            if isinstance(event, ForwardDue):
                in_flight.add(event.message.key)
            elif isinstance(event, MessageForwarded | MessageFailed):
                in_flight.discard(event.message.key)
        expected = [min(m.next_attempt_at, m.expires_at) for m in core.held() if m.key not in in_flight]
        assert core.get_timer() == (min(expected) if expected else None)
        # Nothing that is due is left waiting after a timer call at that time.
        if action == "timer":
            assert all(at > now for at in expected)
