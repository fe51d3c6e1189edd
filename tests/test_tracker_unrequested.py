"""Messages that ask for no notification: the tracker's short route (a dedup entry in memory
only, never written) against a model of what it must do (RFC 5438 §7.2: nothing owed; dedup of
resends in new transactions still applies)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_helpers import drain, make_tracker

from sipimdn.imdn.tracker import Reception

TTL = 50.0
SENDERS = ("sip:alice@example.com", "<sip:alice@example.com>", "sip:carol@[::1]:5070", "not a uri")
# Requests a recipient never answers, or none at all: nothing is owed either way.
NOTHING_OWED: tuple[Any, ...] = ((), frozenset(), ("processing",), ["bogus"])


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("receive"),
                st.sampled_from(["m1", "m2", "m3"]),
                st.sampled_from(SENDERS),
                st.sampled_from(NOTHING_OWED),
            ),
            st.tuples(st.just("unrequested"), st.sampled_from(["m1", "m2", "m3"]), st.sampled_from(SENDERS)),
            st.tuples(
                st.just("answer"),
                st.sampled_from(["m1", "m2", "m3"]),
                st.sampled_from(SENDERS),
                st.sampled_from([200, 202, 486, 603]),
            ),
            st.tuples(st.just("tick"), st.sampled_from([1.0, 30.0])),
        ),
        max_size=40,
    )
)
def test_unrequested_messages_follow_the_dedup_model(steps: list[tuple[Any, ...]]) -> None:
    tracker = make_tracker(dedup_ttl=TTL, received_ttl=TTL)
    # The model: (identity, Message-ID) -> [expiry, status answered first or None].
    model: dict[tuple[str, str], list[Any]] = {}
    now = 0.0

    def ident(sender: str) -> str:
        # The two spellings of alice are one identity; the others are their own.
        return "alice" if "alice@example.com" in sender else sender

    for step in steps:
        if step[0] in ("receive", "unrequested"):
            message_id, sender = step[1], step[2]
            if step[0] == "receive":
                got = tracker.record_received(
                    message_id=message_id, sender=sender, now=now, requested=step[3]
                )
            else:
                got = tracker.record_unrequested(message_id, sender, now)
            entry = model.get((ident(sender), message_id))
            if entry is None:
                model[(ident(sender), message_id)] = [now + TTL, None]
                assert got == Reception(duplicate=False, previous_status=None, requested=())
            else:
                assert got == Reception(duplicate=True, previous_status=entry[1], requested=())
        elif step[0] == "answer":
            _, message_id, sender, status = step
            assert tracker.message_answered(message_id, sender, status, now, sent=False) is False
            entry = model.get((ident(sender), message_id))
            if entry is not None and entry[1] is None:
                entry[1] = status
        else:
            now += step[1]
            tracker.handle_timer(now)
            model = {key: entry for key, entry in model.items() if entry[0] > now}
        # Nothing owed, nothing declined, nothing written: the entry lives in memory only.
        assert drain(tracker) == []
        assert tracker.writes_to_apply() == []
        assert tracker.dedup_size == len(model)
        assert tracker.get_timer() == min((entry[0] for entry in model.values()), default=None)
        for (who, message_id), _entry in model.items():
            sender = next(s for s in SENDERS if ident(s) == who)
            assert tracker.is_duplicate(message_id, sender)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["receive", "receive-owed"]),
                st.sampled_from(["m1", "m2", "m3"]),
                st.sampled_from(SENDERS),
            ),
            st.tuples(
                st.just("answer"),
                st.sampled_from(["m1", "m2", "m3"]),
                st.sampled_from(SENDERS),
                st.sampled_from([200, 486]),
            ),
            st.tuples(st.just("tick"), st.sampled_from([1.0, 30.0])),
        ),
        max_size=30,
    ),
    cap=st.sampled_from([2, 1000]),
)
def test_record_unrequested_is_record_received_without_requests(
    steps: list[tuple[Any, ...]], cap: int
) -> None:
    """Two trackers, one told of each message owed nothing with record_received (every argument the
    user agent has), the other with record_unrequested; messages that ask for delivery notifications
    in between, a dedup cap that evicts: every answer, event, write and timer the same."""
    general = make_tracker(dedup_ttl=TTL, received_ttl=TTL, dedup_max=cap)
    short = make_tracker(dedup_ttl=TTL, received_ttl=TTL, dedup_max=cap)
    now = 0.0
    for step in steps:
        outcomes = []
        for tracker in (general, short):
            if step[0] == "receive" and tracker is general:
                outcomes.append(
                    tracker.record_received(
                        message_id=step[1], sender=step[2], now=now, requested=frozenset(),
                        sip_from="sip:alice@example.com", recipient="sip:bob@example.com",
                        datetime="2026-06-15T10:00:00Z", imdn_route=("sip:relay@example.net",),
                        route_trusted=True,
                    )
                )
            elif step[0] == "receive":
                outcomes.append(tracker.record_unrequested(step[1], step[2], now))
            elif step[0] == "receive-owed":
                outcomes.append(
                    tracker.record_received(
                        message_id=step[1], sender=step[2], now=now, requested=("positive-delivery",)
                    )
                )
            elif step[0] == "answer":
                outcomes.append(tracker.message_answered(step[1], step[2], step[3], now))
            else:
                tracker.handle_timer(now + step[1])
            outcomes += [drain(tracker), tracker.writes_to_apply(), tracker.get_timer(), tracker.dedup_size]
        if step[0] == "tick":
            now += step[1]
        half = len(outcomes) // 2
        assert outcomes[:half] == outcomes[half:]
