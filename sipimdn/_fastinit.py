"""Constructors that skip the generated ``__init__`` of a frozen slotted dataclass (or the class
call of a NamedTuple): the one place that builds such objects that way; no I/O.

Why they exist. A frozen dataclass refuses ``setattr``, so the ``__init__`` it generates stores
every field with ``object.__setattr__(self, "name", value)``: a global lookup and a generic
attribute call per field, several times the cost of storing a slot. Objects built for every
message (the transaction layer's events and outgoing messages, parsed URIs and headers, CPIM
header lines, the tracker's records) pay that once per field on the hot path. A slotted class
has a member descriptor per field whose ``__set__`` stores the slot directly, so a function that
makes the object with ``object.__new__`` and calls those setters builds the same object for
about half the cost. A NamedTuple's class call goes through ``type.__call__`` and its generated
``__new__``; ``tuple.__new__(cls, values)`` makes the same tuple directly.

What they do not do. No checking or conversion of the values (types, ranges, the class's own
rules), no ``__post_init__``, no ``default_factory`` call: the caller passes values that are
already what the class would hold (the parsers' checked text, read-only mappings). So a class is
served only if its generated ``__init__`` does nothing more than store its arguments and plain
defaults. That is checked once, when the function is made (at import), and a class that cannot
be served raises ``TypeError`` then, never per object. A class with ``__post_init__`` is served
only when the caller says ``skip_post_init=True``: it vouches that every value it passes is one
``__post_init__`` would keep unchanged (URIs and headers freeze caller-supplied parameter dicts;
their parsers pass read-only mappings already).

The forms, each made once per class (generated source, like the dataclass's own ``__init__``):

* :func:`maker` -- positional, ``cls(a, b, ...)``: every ``__init__`` field in order, trailing
  plain defaults optional;
* :func:`keyword_maker` -- keyword-only ``cls(a=..., b=...)`` with the class's defaults;
* :func:`evolver` -- ``dataclasses.replace(obj, **changes)``;
* :func:`from_fields` -- a NamedTuple from a tuple holding exactly its fields;
* :func:`setter` -- one slot's setter, for a value a frozen object works out later and keeps
  (a URI's text, comparison key and hash);
* :func:`source_fields` -- a dataclass's fields, their names checked safe to write into
  generated source (the store's per-class JSON writer uses it too).

tests/test_fastinit.py holds every function made here equal to the class's own constructor.
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
import types
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["evolver", "from_fields", "keyword_maker", "made_so_far", "maker", "setter", "source_fields"]

_T = TypeVar("_T")

#: What was made, by (form, class, skip_post_init): the same function for the same request, and
#: the list the differential test walks.
_MADE: dict[tuple[str, type[Any], bool], Callable[..., Any]] = {}
#: An evolver's default for every parameter: "keep the object's value".
_KEEP: Any = object()


def maker(cls: type[_T], *, skip_post_init: bool = False) -> Callable[..., _T]:
    """``cls(a, b, ...)`` without ``__init__``: a function taking the fields ``__init__`` takes,
    positionally and in order (the trailing ones with a plain default may be left out), that
    sets every slot through its descriptor (fields outside ``__init__`` get their default).

    For a NamedTuple: ``tuple.__new__(cls, (a, b, ...))``, its defaults included.
    Raises TypeError, once, for a class it cannot serve (see the module docstring).
    """
    made_key = ("maker", cls, skip_post_init)
    found = _MADE.get(made_key)
    if found is not None:
        return found
    if _is_namedtuple(cls):
        names: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
        defaults: dict[str, Any] = cls._field_defaults  # type: ignore[attr-defined]
        params = ", ".join(f"{name}=_default_{name}" if name in defaults else name for name in names)
        packed = "".join(f"{name}, " for name in names)
        source = f"def make({params}):\n    return _tuple_new(_cls, ({packed}))\n"
        scope: dict[str, Any] = {"_tuple_new": tuple.__new__, "_cls": cls}
        scope.update({f"_default_{name}": value for name, value in defaults.items()})
        return _remember(made_key, _run(cls, "make", source, scope))
    fields = _servable(cls, skip_post_init=skip_post_init)
    for f in fields:
        if f.init and f.kw_only is True:
            raise TypeError(f"{cls.__qualname__}.{f.name}: keyword-only in __init__ (use keyword_maker)")
    in_init = [f for f in fields if f.init]
    optional = 0  # how many trailing __init__ fields have a plain default
    for f in reversed(in_init):
        if f.default is dataclasses.MISSING:
            break
        optional += 1
    params = ", ".join(
        f"{f.name}=_default_{f.name}" if index >= len(in_init) - optional else f.name
        for index, f in enumerate(in_init)
    )
    values, scope = _slots_from_arguments(fields)
    return _remember(made_key, _compile(cls, "make", params, values, scope))


def _slots_from_arguments(
    fields: tuple[dataclasses.Field[Any], ...],
) -> tuple[dict[str, str], dict[str, Any]]:
    """What a generated constructor sets each slot to (the argument of that name, or the field's
    default for a field outside ``__init__``) and the defaults its code refers to."""
    values = {f.name: f.name if f.init else f"_default_{f.name}" for f in fields}
    scope = {f"_default_{f.name}": f.default for f in fields if f.default is not dataclasses.MISSING}
    return values, scope


def keyword_maker(cls: type[_T]) -> Callable[..., _T]:
    """``cls(a=..., b=...)`` without ``__init__``: keyword-only arguments with the class's
    defaults, each slot set through its descriptor. Raises TypeError, once, for a class it cannot
    serve, or one with a ``default_factory`` (the factory would have to run per object)."""
    made_key = ("keyword_maker", cls, False)
    found = _MADE.get(made_key)
    if found is not None:
        return found
    fields = _servable(cls, skip_post_init=False)
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__qualname__}.{f.name}: a default_factory is not a plain default")
    params = ", ".join(f.name if f.default is dataclasses.MISSING else f"{f.name}=_default_{f.name}"
                       for f in fields if f.init)
    values, scope = _slots_from_arguments(fields)
    return _remember(made_key, _compile(cls, "make", f"*, {params}" if params else "", values, scope))


def evolver(cls: type[_T]) -> Callable[..., _T]:
    """``dataclasses.replace(obj, **changes)`` for objects of exactly ``cls``: a function taking
    the object, then keyword arguments named as the fields, each slot set to the change if one
    was given, else to the object's value. One call with keyword defaults, where ``replace``
    builds and merges a dict of every field. An unknown field name is the same TypeError (an
    unexpected keyword argument). Every field must be in ``__init__`` (``replace`` refuses to
    change the others and resets them, a difference not worth serving)."""
    made_key = ("evolver", cls, False)
    found = _MADE.get(made_key)
    if found is not None:
        return found
    fields = _servable(cls, skip_post_init=False)
    for f in fields:
        if not f.init:
            raise TypeError(f"{cls.__qualname__}.{f.name}: not in __init__")
    params = "_record, /, *, " + ", ".join(f"{f.name}=_KEEP" for f in fields)
    values = {f.name: f"_record.{f.name} if {f.name} is _KEEP else {f.name}" for f in fields}
    return _remember(made_key, _compile(cls, "evolve", params, values, {"_KEEP": _KEEP}))


def from_fields(cls: type[_T]) -> Callable[[tuple[Any, ...]], _T]:
    """``cls(*values)`` for a NamedTuple, from a tuple holding exactly its fields in order:
    ``tuple.__new__`` bound to the class as a method (a call costs what ``tuple.__new__(cls,
    values)`` written out does; a ``functools.partial`` costs about 20 ns more). No count check
    (``cls._make`` has one): the caller's tuple is one it made with that many fields (a slice of
    a fixed-layout record)."""
    if not _is_namedtuple(cls):
        raise TypeError(f"{cls.__qualname__}: not a NamedTuple")
    made_key = ("from_fields", cls, False)
    found = _MADE.get(made_key)
    if found is not None:
        return found
    return _remember(made_key, types.MethodType(tuple.__new__, cls))


def setter(cls: type[Any], name: str) -> Callable[[Any, Any], None]:
    """The setter of the slot of field ``name`` of a frozen slotted dataclass: for a value the
    object works out on first use and keeps (it changes no field that takes part in equality:
    the field must be ``compare=False`` and outside ``__init__``)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r}: not a dataclass")
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.init or f.compare:
                raise TypeError(f"{cls.__qualname__}.{name}: an __init__ or compared field, not a cache")
            set_slot: Callable[[Any, Any], None] = _slot(cls, name).__set__
            return set_slot
    raise TypeError(f"{cls.__qualname__}.{name}: no such field")


def source_fields(cls: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of dataclass ``cls``, in declaration order, each name checked to be a plain
    identifier (not a keyword), so that generated source may spell it."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r}: not a dataclass")
    fields = dataclasses.fields(cls)
    for f in fields:
        if not f.name.isidentifier() or keyword.iskeyword(f.name):
            raise TypeError(f"{cls.__qualname__}.{f.name}: not a plain field name")
    return fields


def made_so_far() -> tuple[tuple[str, type[Any], bool], ...]:
    """(form, class, skip_post_init) of every function made so far (for the differential test)."""
    return tuple(_MADE)


# -- checks and generation -----------------------------------------------------------------------


def _is_namedtuple(cls: object) -> bool:
    """A NamedTuple class whose construction is its generated ``__new__`` alone."""
    if not (isinstance(cls, type) and issubclass(cls, tuple)):
        return False
    owner = next((base for base in cls.__mro__ if "_fields" in base.__dict__), None)
    new: object = cls.__new__
    init: object = cls.__init__
    return (
        owner is not None
        and isinstance(owner.__dict__["_fields"], tuple)
        and "__new__" in owner.__dict__
        and new is owner.__new__
        and init is object.__init__
    )


def _servable(cls: type[Any], *, skip_post_init: bool) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of ``cls`` if it is a frozen, slotted dataclass whose generated ``__init__``
    stores its arguments and plain defaults and nothing else; else TypeError."""
    fields = source_fields(cls)
    name = cls.__qualname__
    params = cls.__dataclass_params__
    if not params.frozen:
        raise TypeError(f"{name}: not frozen (its __init__ already stores plain attributes)")
    if not params.init:
        raise TypeError(f"{name}: no generated __init__")
    if hasattr(cls, "__post_init__") and not skip_post_init:
        raise TypeError(f"{name}: has __post_init__ (pass skip_post_init=True only with values it keeps)")
    in_init = [f.name for f in fields if f.init]
    if list(inspect.signature(cls.__init__).parameters)[1:] != in_init:
        raise TypeError(f"{name}: __init__ takes more than its fields (InitVar?) or is not generated")
    for f in fields:
        _slot(cls, f.name)
        if f.init and f.name.startswith("_"):
            # (the generated functions' own names start with "_": no field argument may shadow one)
            raise TypeError(f"{name}.{f.name}: an __init__ field with a leading underscore")
        if not f.init and f.default is dataclasses.MISSING:
            raise TypeError(f"{name}.{f.name}: outside __init__ without a plain default")
    return fields


def _slot(cls: type[Any], name: str) -> Any:
    """The member descriptor of slot ``name`` (found along the MRO), else TypeError."""
    for base in cls.__mro__:
        if name in base.__dict__:
            descriptor = base.__dict__[name]
            if type(descriptor) is types.MemberDescriptorType:
                return descriptor
            break
    raise TypeError(f"{cls.__qualname__}.{name}: not a slot (is the dataclass slots=True?)")


def _compile(cls: type[Any], function: str, params: str, values: dict[str, str],
             scope: dict[str, Any]) -> Callable[..., Any]:
    """``def function(params)`` returning a new ``cls`` object whose slots get ``values`` (field
    name -> expression), set through the slot descriptors in field order: what the generated
    ``__init__`` stores, without its ``object.__setattr__`` per field."""
    body = "".join(f"    _set_{name}(_r, {expression})\n" for name, expression in values.items())
    source = f"def {function}({params}):\n    _r = _new(_cls)\n{body}    return _r\n"
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **scope}
    namespace.update({f"_set_{name}": _slot(cls, name).__set__ for name in values})
    return _run(cls, function, source, namespace)


def _run(cls: type[Any], function: str, source: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    # The source is made from the class's own field names, checked above (source_fields);
    # tracebacks and profiles name the class the function builds.
    namespace["__builtins__"] = {}
    namespace["__name__"] = __name__
    exec(compile(source, f"<{function} {cls.__module__}.{cls.__qualname__}>", "exec"), namespace)
    built: Callable[..., Any] = namespace[function]
    built.__qualname__ = f"{cls.__qualname__}.<fast {function}>"
    built.__doc__ = f"{cls.__qualname__} built without its __init__: see sipimdn._fastinit."
    return built


def _remember(key: tuple[str, type[Any], bool], function: Callable[..., Any]) -> Callable[..., Any]:
    _MADE[key] = function
    return function
