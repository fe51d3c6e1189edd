"""The header section of a SIP message (RFC 3261 §7.3): ``Headers``, ``DeferredHeaders``, ``HeaderRow``.

Headers are kept as received: ordered rows of (lookup key, name as spelled, unfolded value,
original text). Names match case-insensitively and compact forms equal long forms
(RFC 3261 §7.3.3); a comma list is split on reading (§7.3.1). Untouched rows are written back
byte for byte. Every row added through the API is checked (a token name, no line break or NUL
in the value), rows from a parser are taken as they are. ``DeferredHeaders`` builds the rows of
an already checked header section on first use. The typed cache (``_typed``) lives here and is
cleared by every write; the typed accessors that fill it are :class:`~sipimdn.message.Message`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .. import _abnf
from ..errors import LocalProtocolError
from ..headers import header_key, is_list_header, split_comma_list

__all__ = ["INDEX_KEY", "DeferredHeaders", "HeaderRow", "Headers"]


#: Typed-cache key of the per-message index of first values and repeated names, built by the
#: single-valued accessors (``Message._single``) and, like everything in the typed cache, dropped
#: by every write: while it is there, a read by name is one dict lookup instead of a scan.
INDEX_KEY = "\x00index"

#: One header row: (lookup key, name as spelled, unfolded value, original text of the whole
#: field "Name: value" with any folding, written back verbatim). What a parser hands to
#: :meth:`Headers.from_rows`.
HeaderRow = tuple[str, str, str, str]


def _check_name_value(name: str, value: str) -> None:
    if _abnf.TOKEN_RE.fullmatch(name) is None:
        raise LocalProtocolError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value:
        # A line break in a value would let the caller inject header rows.
        raise LocalProtocolError(f"line break or NUL in the value of {name}")


class Headers:
    """Ordered, case-insensitive header rows that keep the received spelling.

    Names match case-insensitively and compact forms equal long forms
    (``i`` is ``Call-ID``). ``get`` returns the first row's whole value;
    ``get_all`` returns every value with comma lists split (outside quotes and
    angle brackets; never for the authentication headers or single-valued
    headers such as Date).
    """

    # ``_source`` is only set on a DeferredHeaders (the raw header section of a message whose
    # every line a parser has already checked); its rows are made from it on first use.
    __slots__ = ("_rows", "_source", "_typed")

    _source: bytes

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._rows: list[HeaderRow] = []
        # Any: each key holds what its typed accessor returns (Message annotates its reads),
        # so the accessors need no typing.cast call (a Python call each, several per message).
        self._typed: dict[str, Any] = {}
        for name, value in items:
            self.add(name, value)

    @classmethod
    def from_rows(cls, rows: list[HeaderRow]) -> Headers:
        """Wrap rows a parser has already checked: no copy, no check (``add`` checks each row).

        The list becomes the object's own; the caller must not use it afterwards.
        """
        self = cls.__new__(cls)
        self._rows = rows
        self._typed = {}
        return self

    # -- reading ---------------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The value of the first row with this name, or None."""
        key = header_key(name)
        index: tuple[dict[str, str], set[str]] | None = self._typed.get(INDEX_KEY)
        if index is not None:
            return index[0].get(key)
        for row in self._rows:
            if row[0] == key:
                return row[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of this header, in order, comma lists split."""
        key = header_key(name)
        index: tuple[dict[str, str], set[str]] | None = self._typed.get(INDEX_KEY)
        if index is not None and key not in index[0]:
            return []  # (the usual answer for optional headers: Require, Content-Encoding...)
        if is_list_header(key):
            out: list[str] = []
            for row in self._rows:
                if row[0] == key:
                    out.extend(split_comma_list(row[2]))
            return out
        return [row[2] for row in self._rows if row[0] == key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = header_key(name)
        return any(row[0] == key for row in self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return (row[1] for row in self._rows)

    def items(self) -> Iterator[tuple[str, str]]:
        """(name as spelled, value) for every row, in order."""
        return ((row[1], row[2]) for row in self._rows)

    def raw_lines(self) -> Iterator[str]:
        """The rows exactly as they will be written (folding kept)."""
        return (row[3] for row in self._rows)

    def copy(self) -> Headers:
        """An independent copy (typed values are re-parsed on demand)."""
        return Headers.from_rows(list(self._rows))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(r[0], r[2]) for r in self._rows] == [(r[0], r[2]) for r in other._rows]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"

    # -- writing ---------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append a row."""
        _check_name_value(name, value)
        key = header_key(name)
        self._rows.append((key, name, value, f"{name}: {value}"))
        self._typed.clear()

    def prepend(self, name: str, value: str) -> None:
        """Insert a row before the first row of the same name (or first of all).

        This is how a Via or Record-Route is pushed on top.
        """
        _check_name_value(name, value)
        key = header_key(name)
        index = next((i for i, row in enumerate(self._rows) if row[0] == key), 0)
        self._rows.insert(index, (key, name, value, f"{name}: {value}"))
        self._typed.clear()

    def set(self, name: str, value: str) -> None:
        """Replace every row of this name with one row, where the first one was."""
        _check_name_value(name, value)
        key = header_key(name)
        new_row = (key, name, value, f"{name}: {value}")
        rows: list[HeaderRow] = []
        placed = False
        for row in self._rows:
            if row[0] == key:
                if not placed:
                    rows.append(new_row)
                    placed = True
            else:
                rows.append(row)
        if not placed:
            rows.append(new_row)
        self._rows = rows
        self._typed.clear()

    def remove(self, name: str) -> int:
        """Remove every row of this name; return how many were removed."""
        key = header_key(name)
        before = len(self._rows)
        self._rows = [row for row in self._rows if row[0] != key]
        self._typed.clear()
        return before - len(self._rows)

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first comma-list element of this header (e.g. the top Via).

        The row keeps its name spelling; the rest of the row's list and every
        other row are untouched.
        """
        _check_name_value(name, value)
        key = header_key(name)
        for i, row in enumerate(self._rows):
            if row[0] == key:
                rest = split_comma_list(row[2])[1:]
                new_value = ", ".join([value, *rest])
                self._rows[i] = (key, row[1], new_value, f"{row[1]}: {new_value}")
                self._typed.clear()
                return
        self.add(name, value)


class DeferredHeaders(Headers):
    """Headers of a header section a parser has already checked, rows built on first use.

    Most received messages are routed on a few headers, or on none before they are dropped as
    retransmissions, so building every row at once is wasted work. A parser subclasses this
    with its :meth:`build_rows` and makes one per message from the section's bytes. The first
    read or write of the rows or of the typed cache (every ``Headers`` method and typed accessor
    starts with one) builds them and turns the object into a plain ``Headers``, so later reads
    cost what they always do. (Properties rather than ``__getattr__``: an unset slot would raise
    and format an AttributeError first.)
    """

    __slots__ = ()

    def __init__(self, source: bytes) -> None:
        self._source = source

    @staticmethod
    def build_rows(source: bytes) -> list[HeaderRow]:
        """The rows of ``source``; it was checked when parsed, so this cannot fail."""
        raise NotImplementedError("a DeferredHeaders subclass provides build_rows")

    def _build(self) -> None:
        rows = self.build_rows(self._source)
        # A plain Headers from here on: the slots below are its own.
        self.__class__ = Headers  # type: ignore[assignment]
        self._rows = rows
        self._typed = {}
        del self._source

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        # copy/pickle: another unbuilt object of the same class on the same (immutable) bytes.
        return type(self), (self._source,)

    @property
    def _rows(self) -> list[HeaderRow]:
        self._build()
        return self._rows

    @_rows.setter
    def _rows(self, rows: list[HeaderRow]) -> None:
        self._build()
        self._rows = rows

    @property
    def _typed(self) -> dict[str, Any]:
        self._build()
        return self._typed

    @_typed.setter
    def _typed(self, typed: dict[str, Any]) -> None:
        self._build()
        self._typed = typed
