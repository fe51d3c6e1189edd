"""The SIP message model (RFC 3261 §7, §8.2.6): ``Headers``, ``Request``, ``Response``.

Headers are kept as received: ordered rows of (name as spelled, value,
original line). Untouched rows are written back byte for byte, so a proxy-like
use (add ``received`` to the top Via, forward) changes only what it changed.
Typed values (Via, From, CSeq, ...) are parsed on first access and cached
until the header is modified: most messages are routed on four or five
headers and nobody reads the rest.

A typed accessor raises ``SipParseError`` (status 400) when the header it
reads is missing or malformed; ``validate()`` runs all of them at once.

The parts, each sans-IO: ``_rows`` (the header section, RFC 3261 §7.3),
``_base`` (``Message``: typed accessors and the wire form), ``_request``
(``Request``, §7.1) and ``_response`` (``Response``, ``make_response`` and
reason phrases, §7.2, §8.2.6, §21).
"""

from __future__ import annotations

from ._base import Message
from ._request import Request
from ._response import REASON_PHRASES, Response, make_response, safe_reason_phrase
from ._rows import DeferredHeaders, HeaderRow, Headers

__all__ = [
    "REASON_PHRASES",
    "DeferredHeaders",
    "HeaderRow",
    "Headers",
    "Message",
    "Request",
    "Response",
    "make_response",
    "safe_reason_phrase",
]
