"""message/cpim codec (RFC 3862): parse and build CPIM messages; no I/O.

``parse(data)`` returns a :class:`CpimMessage`; header access is by namespace
URI and name (``msg.get(CPIM_NS, "From")``), never by literal prefix.
Malformed input raises :class:`CpimError`.
"""

from __future__ import annotations

from ..errors import CpimError
from .build import build_from_lines, build_message, format_header, format_text
from .grammar import escape, unescape
from .message import (
    CONTENT_TYPE,
    CPIM_NS,
    DEFAULT_LIMITS,
    CpimHeader,
    CpimMessage,
    Limits,
    MimeHeader,
    parse,
    parse_media_type,
    parse_mime_head,
)
from .values import CpimAddress, CpimDateTime, Subject, format_datetime, parse_address, parse_datetime

__all__ = [
    "CONTENT_TYPE",
    "CPIM_NS",
    "DEFAULT_LIMITS",
    "CpimAddress",
    "CpimDateTime",
    "CpimError",
    "CpimHeader",
    "CpimMessage",
    "Limits",
    "MimeHeader",
    "Subject",
    "build_from_lines",
    "build_message",
    "escape",
    "format_datetime",
    "format_header",
    "format_text",
    "parse",
    "parse_address",
    "parse_datetime",
    "parse_media_type",
    "parse_mime_head",
    "unescape",
]
