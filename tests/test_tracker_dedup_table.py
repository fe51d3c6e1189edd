"""The in-memory dedup table (entries of messages owed nothing) in dicts the collector never tracks.

Differential: over random runs of writes (new keys and rewrites), removals, evictions of the
oldest and lookups, ``DedupTable`` holds and orders the same entries as the ``OrderedDict`` it
replaced. Then, through the tracker: a full collection follows next to nothing per message
remembered, however many there are (an ``OrderedDict`` of them cost three references each),
and the oldest entry still goes first at ``dedup_max``.
"""

from __future__ import annotations

import gc
from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st
from tracker_helpers import drain, make_tracker

from sipimdn.imdn.tracker._base import DedupEntry, DedupTable

_KEYS = st.tuples(st.sampled_from(["sip:a@example.com", "sip:b@example.com", "tel:+1"]),
                  st.sampled_from(["m1", "m2", "m3", "id-4", "x"]))
_ENTRIES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.tuples(st.sampled_from([None, 200, 202, 486, 603]), st.floats(allow_nan=False, allow_infinity=False)),
)
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _KEYS, _ENTRIES),
        st.tuples(st.just("pop"), _KEYS, st.none()),
        st.tuples(st.just("evict"), st.none(), st.none()),
    ),
    max_size=80,
)


@given(_OPERATIONS)
def test_the_table_holds_and_orders_what_an_ordered_dict_would(
    operations: list[tuple[str, tuple[str, str] | None, DedupEntry | None]],
) -> None:
    table = DedupTable()
    reference: OrderedDict[tuple[str, str], DedupEntry] = OrderedDict()
    for kind, key, entry in operations:
        if kind == "set":
            assert key is not None and entry is not None
            table[key] = entry
            reference[key] = entry
        elif kind == "pop":
            assert key is not None
            assert table.pop(key) == reference.pop(key, None)
        else:
            first = next(iter(reference.items()), None)
            assert table.first() == first
            if first is not None:
                del table[first[0]]
                del reference[first[0]]
        assert len(table) == len(reference)
        assert list(table.items()) == list(reference.items())
        for probe in reference:
            assert probe in table and table.get(probe) == reference[probe]
    assert table.values() == list(reference.values())


def _visits(besides: object) -> int:
    """The references a full collection follows now (see tests/test_layer_parked.py), those of
    ``besides`` aside."""
    return sum(len(gc.get_referents(obj)) for obj in gc.get_objects() if obj is not besides)


def test_a_full_collection_visits_next_to_nothing_per_message_remembered() -> None:
    tracker = make_tracker(dedup_max=1000)
    sender = "sip:alice@example.com"

    def receive(index: int) -> None:
        tracker.record_received(message_id=f"id{index}", sender=sender, now=float(index))
        tracker.message_answered(f"id{index}", sender, 200 if index % 3 else 486, float(index))
        drain(tracker)
        tracker.writes_to_apply()

    for index in range(200):
        receive(index)
    count = 2000
    gc.collect()
    # The timer heap aside: a list of one (deadline, tag, key) per entry, each a tuple of
    # strings and numbers the collector stops tracking at its first collection; its stale
    # entries are swept in bulk.
    before = _visits(tracker._heap)
    for index in range(200, 200 + count):
        receive(index)
    gc.collect()
    assert tracker.dedup_size == 1000 and tracker.dedup_evictions == 200 + count - 1000
    # As an OrderedDict the table cost three references per entry (its key twice, its value).
    grown = _visits(tracker._heap) - before
    assert grown <= count / 10, grown
    # The oldest went first: the last 1,000 are duplicates, the one before is not.
    assert tracker.is_duplicate(f"id{200 + count - 1000}", sender)
    assert not tracker.is_duplicate(f"id{200 + count - 1001}", sender)
