"""Bounded undoing of ``Content-Encoding`` (RFC 3261 §20.12) for received bodies; no I/O.

A body may be content-coded; ``deflate`` and ``gzip`` are the codings seen in
the field (some user agents deflate their IMDNs). The user agent undoes the
SIP body's coding here, and the IMDN codec a CPIM part's (RFC 5438 §8.3).
Inflation is bounded: a few kilobytes of deflate can expand to gigabytes, so
output is capped at ``limit`` bytes and anything larger is refused with 413
rather than inflated. Unknown codings get 415 (RFC 3261 §8.2.3); the caller adds ``Accept-Encoding``.
"""

from __future__ import annotations

import zlib

from .errors import RemoteProtocolError

__all__ = ["ACCEPT_ENCODING", "inflate"]

#: What we can undo, for the Accept-Encoding header of a 415.
ACCEPT_ENCODING = "gzip, deflate, identity"

# zlib window-bits: 15 = zlib wrapper (RFC 1950, what "deflate" means in HTTP
# and SIP), -15 = raw deflate (RFC 1951, what some senders put there
# instead), 31 = gzip wrapper (RFC 1952).
_ZLIB, _RAW, _GZIP = 15, -15, 31


def _decompress(data: bytes, wbits: int, limit: int) -> bytes:
    engine = zlib.decompressobj(wbits)
    out = engine.decompress(data, limit + 1)
    if len(out) > limit or engine.unconsumed_tail:
        raise RemoteProtocolError(f"inflated body larger than {limit} bytes", 413)
    out += engine.flush()
    if len(out) > limit:
        raise RemoteProtocolError(f"inflated body larger than {limit} bytes", 413)
    if not engine.eof:
        raise zlib.error("truncated stream")  # reported by inflate() as a corrupt body
    return out


def inflate(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo every coding listed in ``content_encoding`` (applied in order, undone in reverse).

    Raises :class:`~sipimdn.errors.RemoteProtocolError` with 415 for an
    unknown coding, 413 when the result would exceed ``limit`` bytes and 400
    for corrupt data.
    """
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        try:
            if coding == "identity":
                continue
            if coding in ("gzip", "x-gzip"):
                body = _decompress(body, _GZIP, limit)
            elif coding == "deflate":
                try:
                    body = _decompress(body, _ZLIB, limit)
                except zlib.error:
                    body = _decompress(body, _RAW, limit)
            else:
                raise RemoteProtocolError(f"unsupported Content-Encoding {coding!r}", 415)
        except zlib.error as exc:
            raise RemoteProtocolError(f"corrupt {coding} body: {exc}", 400) from None
    return body
