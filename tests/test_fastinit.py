"""sipimdn._fastinit: every constructor the package makes with it builds what the class's own
``__init__`` (or ``dataclasses.replace``, or the NamedTuple's class call) builds, and a class it
cannot serve is refused when the constructor is made."""

from __future__ import annotations

import dataclasses
import importlib
import keyword
import re
from collections.abc import Callable
from dataclasses import FrozenInstanceError, InitVar, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sipimdn
from sipimdn import _fastinit
from sipimdn.uri import Uri

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every module of the package that makes a constructor here, imported so that its constructors
# are made (at import): found by reading the sources, so a new user is covered without a list.
_PACKAGE_ROOT = Path(sipimdn.__file__).parent
_USERS = sorted(
    ".".join(("sipimdn", *path.relative_to(_PACKAGE_ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for path in _PACKAGE_ROOT.rglob("*.py")
    if path.name != "_fastinit.py" and re.search(r"\b_fastinit import\b", path.read_text(encoding="utf-8"))
)
for _module in _USERS:
    importlib.import_module(_module)
#: (form, class, skip_post_init) of every constructor the package made.
MADE = [entry for entry in _fastinit.made_so_far() if entry[1].__module__.startswith("sipimdn.")]


def test_the_package_uses_the_one_mechanism() -> None:
    # The sites this module owns, each through it (a new site adds itself to MADE).
    assert {"sipimdn.dialog.layer", "sipimdn.dialog.transaction", "sipimdn.uri", "sipimdn.headers",
            "sipimdn.cpim.message", "sipimdn.imdn.tracker.records", "sipimdn.imdn.tracker.dispatch",
            "sipimdn.store.base"} <= set(_USERS)
    names = {(form, cls.__name__) for form, cls, _ in MADE}
    for expected in [("maker", "Outgoing"), ("maker", "RequestReceived"), ("maker", "ResponseReceived"),
                     ("maker", "Send"), ("maker", "Deliver"), ("maker", "Uri"), ("maker", "NameAddr"),
                     ("maker", "Via"), ("maker", "CSeq"), ("maker", "CpimHeader"),
                     ("from_fields", "TransactionKey"), ("keyword_maker", "OwedRecord"),
                     ("evolver", "SentRecord"), ("evolver", "OwedRecord"), ("evolver", "RecipientRecord"),
                     ("maker", "CpimAddress"), ("maker", "ImdnHeaders"), ("maker", "Notification"),
                     ("maker", "Flow"), ("maker", "Target")]:
        assert expected in names


# -- values for a field, from its declared type --------------------------------------------------

_TEXT = st.text(alphabet="abcXYZ019.-_:;@ ", max_size=8)
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False), _TEXT,
                 st.tuples(_TEXT, _TEXT))
_NAMES = st.text(alphabet="abc", min_size=1, max_size=3)
_MAPPING = st.dictionaries(_NAMES, st.one_of(st.none(), _TEXT), max_size=3).map(MappingProxyType)
_TEXT_MAPPING = st.dictionaries(_NAMES, _TEXT, max_size=3).map(MappingProxyType)
_BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": _TEXT,
    "str | None": st.one_of(st.none(), _TEXT),
    "int": st.integers(-5, 70000),
    "int | None": st.one_of(st.none(), st.integers(1, 65535)),
    "float": st.floats(allow_nan=False),
    "float | None": st.one_of(st.none(), st.floats(allow_nan=False)),
    "bool": st.booleans(),
    "tuple[str, ...]": st.lists(_TEXT, max_size=3).map(tuple),
    "tuple[tuple[str, str], ...]": st.lists(st.tuples(_TEXT, _TEXT), max_size=2).map(tuple),
    "Uri": st.sampled_from(["sip:alice@example.com", "sips:b@[2001:db8::1]:5061;transport=tcp",
                            "tel:+1-555-0100", "im:bob@example.net", "urn:x"]).map(Uri.parse),
}


def _value(f: Any) -> st.SearchStrategy[Any]:
    annotation = str(f.type)
    if annotation.startswith("Mapping["):
        # Read-only already: what __post_init__ of the URI and header classes keeps as it is.
        return _TEXT_MAPPING if annotation == "Mapping[str, str]" else _MAPPING
    return _BY_TYPE.get(annotation, _ANY)


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("value", call())
    except Exception as exc:  # both sides must fail alike (a URI without host has no text)
        return ("raised", type(exc), str(exc))


def _same_object(made: Any, reference: Any) -> None:
    """``made`` is ``reference``'s twin: same class, the very same value in every slot, and
    equal, hashed and written alike; still frozen."""
    assert type(made) is type(reference)
    if isinstance(reference, tuple):
        assert tuple(made) == tuple(reference) and made._asdict() == reference._asdict()  # type: ignore[attr-defined]
        assert hash(made) == hash(reference) and repr(made) == repr(reference)
        return
    fields = dataclasses.fields(reference)
    for f in fields:  # (first: hashing and writing may fill the cached slots)
        assert getattr(made, f.name) is getattr(reference, f.name), f.name
    assert made == reference and reference == made
    assert _outcome(lambda: hash(made)) == _outcome(lambda: hash(reference))
    assert _outcome(lambda: repr(made)) == _outcome(lambda: repr(reference))
    with pytest.raises(FrozenInstanceError):
        setattr(made, fields[0].name, None)


@pytest.mark.parametrize(("form", "cls", "skip_post_init"), MADE,
                         ids=[f"{form}-{cls.__name__}" for form, cls, _ in MADE])
@SETTINGS
@given(data=st.data())
def test_what_it_makes_is_what_the_class_makes(form: str, cls: type[Any], skip_post_init: bool,
                                               data: st.DataObject) -> None:
    if form == "from_fields":
        row = tuple(data.draw(_ANY) for _ in cls._fields)
        _same_object(_fastinit.from_fields(cls)(row), cls(*row))
        return
    fields = [f for f in dataclasses.fields(cls) if f.init]
    values = {f.name: data.draw(_value(f), label=f.name) for f in fields}
    if form == "maker":
        make = _fastinit.maker(cls, skip_post_init=skip_post_init)
        _same_object(make(*values.values()), cls(*values.values()))
        # Leaving out trailing fields with a plain default gives the class's defaults.
        head = list(values.values())
        while head and fields[len(head) - 1].default is not dataclasses.MISSING:
            head.pop()
            _same_object(make(*head), cls(*head))
    elif form == "keyword_maker":
        make = _fastinit.keyword_maker(cls)
        _same_object(make(**values), cls(**values))
        required = {f.name: values[f.name] for f in fields if f.default is dataclasses.MISSING}
        _same_object(make(**required), cls(**required))
        with pytest.raises(TypeError):
            make(*values.values())
    else:
        assert form == "evolver"
        evolve = _fastinit.evolver(cls)
        record = cls(**values)
        changed = data.draw(st.sets(st.sampled_from([f.name for f in fields])), label="changed")
        changes = {name: data.draw(_value(next(f for f in fields if f.name == name)), label=name)
                   for name in changed}
        _same_object(evolve(record, **changes), dataclasses.replace(record, **changes))
        with pytest.raises(TypeError):
            evolve(record, no_such_field=1)


# -- what it refuses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"


@dataclass(frozen=True, slots=True)
class _PostInit:
    a: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", abs(self.a))


@dataclass(frozen=True, slots=True)
class _LateFactory:
    a: int
    cache: list[int] = field(default_factory=list, init=False)


@dataclass(frozen=True, slots=True)
class _InitFactory:
    a: int
    items: tuple[int, ...] = field(default_factory=tuple)


@dataclass(slots=True)
class _Mutable:
    a: int


@dataclass(frozen=True)
class _NotSlotted:
    a: int


@dataclass(frozen=True, slots=True)
class _WithInitVar:
    a: int
    scale: InitVar[int] = 1


@dataclass(frozen=True, slots=True)
class _Underscored:
    _r: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _KeywordOnly:
    a: int


@dataclass(frozen=True, slots=True)
class _Cached:
    a: int
    _text: str | None = field(default=None, init=False, compare=False)


class _Key(NamedTuple):
    x: int
    y: str = ""


class _OwnNew(_Key):
    __slots__ = ()

    def __new__(cls, x: int, y: str = "") -> _OwnNew:
        return super().__new__(cls, x * 2, y)


@pytest.mark.parametrize(("cls", "why"), [
    (_PostInit, "__post_init__"),
    (_LateFactory, "outside __init__ without a plain default"),
    (_Mutable, "not frozen"),
    (_NotSlotted, "not a slot"),
    (_WithInitVar, "InitVar"),
    (_Underscored, "leading underscore"),
    (_KeywordOnly, "keyword-only"),
    (_OwnNew, "not a dataclass"),
    (tuple, "not a dataclass"),
    (int, "not a dataclass"),
])
def test_maker_refuses_a_class_it_cannot_serve(cls: type[Any], why: str) -> None:
    with pytest.raises(TypeError, match=re.escape(why)):
        _fastinit.maker(cls)


def test_a_post_init_is_skipped_only_when_asked_and_the_values_are_what_it_keeps() -> None:
    make = _fastinit.maker(_PostInit, skip_post_init=True)
    assert make(3) == _PostInit(3)
    assert make(-3) != _PostInit(-3)  # what "no __post_init__" means: the caller's to uphold


def test_the_other_forms_refuse_what_they_cannot_serve() -> None:
    with pytest.raises(TypeError, match="default_factory"):
        _fastinit.keyword_maker(_InitFactory)
    with pytest.raises(TypeError, match="__post_init__"):
        _fastinit.keyword_maker(_PostInit)
    with pytest.raises(TypeError, match="not in __init__"):
        _fastinit.evolver(_Cached)
    with pytest.raises(TypeError, match="not a slot"):
        _fastinit.evolver(_NotSlotted)
    with pytest.raises(TypeError, match="not a NamedTuple"):
        _fastinit.from_fields(_Plain)
    with pytest.raises(TypeError, match="not a NamedTuple"):
        _fastinit.from_fields(_OwnNew)
    with pytest.raises(TypeError, match="not a cache"):
        _fastinit.setter(_Cached, "a")
    with pytest.raises(TypeError, match="no such field"):
        _fastinit.setter(_Cached, "b")
    with pytest.raises(TypeError, match="not a dataclass"):
        _fastinit.source_fields(_Key)


def test_what_it_serves_beside_the_package_classes() -> None:
    # A factory on a field __init__ takes is no obstacle to the positional form: it is passed.
    assert _fastinit.maker(_InitFactory)(1, (2,)) == _InitFactory(1, (2,))
    assert _fastinit.maker(_Plain)(1) == _Plain(1) and _fastinit.maker(_Plain)(1, "c") == _Plain(1, "c")
    assert _fastinit.maker(_Plain) is _fastinit.maker(_Plain)  # made once per class
    key = _fastinit.maker(_Key)(1)
    assert type(key) is _Key and key == _Key(1) and key._asdict() == _Key(1)._asdict()
    cached = _fastinit.maker(_Cached)(1)
    assert cached == _Cached(1) and cached._text is None
    _fastinit.setter(_Cached, "_text")(cached, "one")
    assert cached._text == "one" and cached == _Cached(1)
    assert [f.name for f in _fastinit.source_fields(_Plain)] == ["a", "b"]
    with pytest.raises(TypeError):
        _fastinit.maker(_Plain)()  # a field without default is required, as in __init__
    assert not any(keyword.iskeyword(f.name) for f in _fastinit.source_fields(_Cached))
