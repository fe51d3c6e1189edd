"""The per-class record encoders against the general JSON encoder, on any field values.

:func:`sipimdn.store.record_to_json` spells each field as the encoder would for the type the
field declares and leaves every other value to the encoder; the text must be the same as
``json.dumps`` of the record's fields, whatever the fields hold (what stores keep and other
workers read does not depend on which path wrote it).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.imdn.tracker.records import CLASSES
from sipimdn.store import RecipientRecord, record_to_json
from sipimdn.store.base import AnyRecord


class _Text(str):
    """A str subclass: the encoder writes it as a string."""


_texts = st.text() | st.text().map(_Text) | st.sampled_from(["", '"\\\u2028é\x00\ud800', "sip:a@b"])
_floats = st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e16, 1.5e-7])
_ints = st.integers() | st.sampled_from([0, -1, 1 << 70])
#: Values of the wrong kind for any field: ints in float fields, booleans in int fields, ...
_odd = st.none() | st.booleans() | _ints | _floats | _texts | st.lists(_texts, max_size=2).map(tuple)
_recipients = st.lists(
    st.builds(RecipientRecord, uri=_texts, key=_texts, state=_texts, updated_at=_floats), max_size=2
).map(tuple)


def _value(declared: str) -> st.SearchStrategy[Any]:
    usual: st.SearchStrategy[Any]
    if declared == "str":
        usual = _texts
    elif declared == "str | None":
        usual = st.none() | _texts
    elif declared == "float":
        usual = _floats
    elif declared in ("int", "int | None"):
        usual = _ints | st.none() if declared.endswith("None") else _ints
    elif declared == "bool":
        usual = st.booleans()
    elif declared == "tuple[str, ...]":
        usual = st.lists(_texts, max_size=3).map(tuple)
    elif declared == "tuple[RecipientRecord, ...]":
        return _recipients
    else:
        usual = st.lists(st.tuples(_texts, _texts), max_size=2).map(tuple)
    return usual | _odd


def _records() -> st.SearchStrategy[AnyRecord]:
    return st.one_of(
        *(st.builds(cls, **{f.name: _value(str(f.type)) for f in fields(cls)}) for cls in CLASSES.values())
    )


def _reference(value: Any) -> Any:
    if isinstance(value, RecipientRecord) or hasattr(value, "TABLE"):
        return {f.name: _reference(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_reference(item) for item in value]
    return value


@settings(max_examples=400)
@given(_records())
def test_record_json_is_the_general_encoders_text(record: AnyRecord) -> None:
    expected = json.dumps(_reference(record), separators=(",", ":"), ensure_ascii=False)
    assert record_to_json(record) == expected
