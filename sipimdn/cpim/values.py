"""Typed values of the standard CPIM headers (RFC 3862 §4): addresses, DateTime, Subject.

Parsers here take the header value exactly as written (escapes not yet
decoded) and raise ``ValueError`` with a reason; the message layer turns that
into ``CpimError``. Formatters produce the strict form of the ABNF.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from dataclasses import dataclass

from .._cache import remember_text
from .._fastinit import maker
from ..errors import LocalProtocolError
from . import grammar

__all__ = [
    "CpimAddress",
    "CpimDateTime",
    "Subject",
    "format_datetime",
    "parse_address",
    "parse_datetime",
]


@dataclass(frozen=True, slots=True)
class CpimAddress:
    """A From/To/cc (or IMDN Original-To / IMDN-Route) value: ``[Formal-name] "<" URI ">"``."""

    uri: str
    """The URI between the angle brackets, as written."""
    display_name: str | None = None
    """The Formal-name, unquoted and unescaped; None when absent."""

    def __str__(self) -> str:
        """Render the strict RFC 3862 form (quoted String for any display name)."""
        if self.display_name is None:
            return f"<{self.uri}>"
        if _is_token_words(self.display_name):
            return f"{self.display_name} <{self.uri}>"
        return f'"{grammar.escape(self.display_name, quote=chr(34))}" <{self.uri}>'


#: ``CpimAddress(uri, display_name)`` without the frozen dataclass ``__init__``: one per address
#: parsed (see sipimdn._fastinit).
_make_address: Callable[[str, str | None], CpimAddress] = maker(CpimAddress)


def _is_token_words(text: str) -> bool:
    # Formal-name = 1*( Token SP ): words of Token characters separated by one SP.
    words = text.split(" ")
    return all(grammar.TOKEN_RE.fullmatch(w) for w in words)


def parse_address(value: str) -> CpimAddress:
    """Parse ``[Formal-name] "<" URI ">"`` (RFC 3862 §4.1-§4.3, RFC 5438 §10)."""
    # Addresses repeat (every message of a conversation, every IMDN back): the
    # result is immutable, so short values are memoised.
    cached = _ADDRESSES.get(value)
    return cached if cached is not None else remember_text(_ADDRESSES, value, _parse_address(value), 1024)


_ADDRESSES: dict[str, CpimAddress] = {}


def _parse_address(value: str) -> CpimAddress:
    m = grammar.ADDRESS_VALUE_RE.fullmatch(value.rstrip(" "))
    if m is None:
        raise ValueError(f"not a CPIM address ([Formal-name] <URI>): {value!r}")
    display = m.group("display")
    name: str | None = None
    if display is not None:
        display = display.rstrip(" ")
        name = grammar.unescape(display[1:-1]) if display.startswith('"') else display
    return _make_address(m.group("uri"), name)


@dataclass(frozen=True, slots=True)
class CpimDateTime:
    """A DateTime header value: the raw string (echoed in IMDN ``<datetime>``) and its parse."""

    raw: str
    """The value exactly as received or generated."""
    value: _dt.datetime
    """Timezone-aware; a missing offset is read as UTC."""
    strict: bool
    """True when ``raw`` is a valid RFC 3339 date-time, False when only the lenient form matched."""


def parse_datetime(raw: str) -> CpimDateTime:
    """Parse an RFC 3339 date-time, tolerating the field quirks listed in the grammar module."""
    # A received IM's DateTime is parsed when the message is checked and again
    # when its IMDN echoes it: memoise short values (the result is immutable).
    cached = _DATETIMES.get(raw)
    if cached is None:
        cached = remember_text(_DATETIMES, raw, _parse_datetime(raw), 256, max_key=64)
    return cached


_DATETIMES: dict[str, CpimDateTime] = {}


def _parse_datetime(raw: str) -> CpimDateTime:
    text = raw.rstrip(" ")
    strict = True
    m = grammar.DATE_TIME_RE.fullmatch(text)
    if m is None:
        strict = False
        m = grammar.DATE_TIME_LENIENT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"DateTime is not an RFC 3339 date-time: {raw!r}")
    frac = m.group("frac")
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    off = m.group("off")
    tz = _parse_offset(off) if off else _dt.UTC
    second = int(m.group("s") or 0)
    # RFC 3339 allows a leap second (:60); datetime does not, so clamp it.
    second = min(second, 59)
    try:
        value = _dt.datetime(
            int(m.group("y")),
            int(m.group("mo")),
            int(m.group("d")),
            int(m.group("h")),
            int(m.group("mi")),
            second,
            micro,
            tzinfo=tz,
        )
    except ValueError as exc:
        raise ValueError(f"DateTime out of range: {raw!r} ({exc})") from None
    return CpimDateTime(raw=raw, value=value, strict=strict)


def _parse_offset(off: str) -> _dt.tzinfo:
    if off in ("Z", "z"):
        return _dt.UTC
    sign = -1 if off[0] == "-" else 1
    body = off[1:]
    if ":" in body:
        hours_text, minutes_text = body.split(":")
    elif len(body) > 2:
        hours_text, minutes_text = body[:-2], body[-2:]
    else:
        hours_text, minutes_text = body, "0"
    hours, minutes = int(hours_text), int(minutes_text)
    if hours > 23 or minutes > 59:
        raise ValueError(f"UTC offset out of range: {off!r}")
    return _dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes))


def format_datetime(now: float) -> str:
    """Format a POSIX timestamp as RFC 3339 UTC with milliseconds, e.g. ``2026-11-24T01:17:57.123Z``."""
    # Every notification and message carries one, and consecutive ones mostly fall in the same
    # second: the text up to the seconds is kept for the last second written. The fraction is
    # rounded as datetime.fromtimestamp rounds it (half-even to the microsecond, the seconds
    # carried at 1,000,000), so the text is the one _format_datetime writes;
    # tests/test_cpim_properties.py holds the two equal.
    if type(now) is float:
        fraction, whole = math.modf(now)
        second, head = _LAST_SECOND[0]
        if whole == second and fraction >= 0.0:
            micro = round(fraction * 1e6)
            if micro < 1_000_000:
                return f"{head}{micro // 1000:03d}Z"
    return _format_datetime(now)


#: The last whole second :func:`format_datetime` wrote, and its text up to the decimal point.
_LAST_SECOND: list[tuple[float, str]] = [(math.nan, "")]


def _format_datetime(now: float) -> str:
    try:
        moment = _dt.datetime.fromtimestamp(now, tz=_dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise LocalProtocolError(f"cannot format {now!r} as a DateTime: {exc}") from None
    head = moment.strftime("%Y-%m-%dT%H:%M:%S.")
    if type(now) is float:
        fraction, whole = math.modf(now)
        if fraction >= 0.0 and round(fraction * 1e6) < 1_000_000:  # no carry: moment is in ``whole``
            _LAST_SECOND[0] = (whole, head)
    return head + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Subject:
    """A Subject header: unescaped text and its ``;lang=`` tag (None means ``i-default``, §3.3)."""

    text: str
    lang: str | None = None
