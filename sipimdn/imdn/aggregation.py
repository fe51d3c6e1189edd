"""Aggregated IMDNs (RFC 5438 §8.3) and deflate-encoded bodies.

An aggregated IMDN is a CPIM message whose encapsulated entity is
``multipart/mixed`` (RFC 2046 §5.1) with one ``message/imdn+xml`` document per
part. We always write the closing delimiter ``--boundary--``; on
receive a missing one is accepted, because the RFC's own §8.3 example omits
it (RFC errata EID 3850).

Some user agents send IMDNs with ``Content-Encoding: deflate`` (RFC 3261 §20.12);
:func:`inflate` undoes that with a bound on the inflated size, so a small
compressed body cannot expand into a memory bomb.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .. import _inflate
from .._tokens import token_hex
from ..cpim.message import parse_media_type, parse_mime_head
from ..errors import CpimError, ImdnError, LocalProtocolError, RemoteProtocolError
from .document import CONTENT_TYPE

__all__ = [
    "MAX_INFLATED_SIZE",
    "MAX_PARTS",
    "MimePart",
    "build_multipart",
    "inflate",
    "split_multipart",
]

MAX_PARTS = 100
"""Default cap on parts in one aggregated body (local policy)."""

MAX_INFLATED_SIZE = 256 * 1024
"""Default cap on an inflated body in bytes (local policy)."""

# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True, slots=True)
class MimePart:
    """One body part: its headers (name as written, unfolded value) and content bytes."""

    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """First header of that name, case-insensitively, or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def content_type(self) -> str:
        """Lower-cased ``type/subtype``; ``text/plain`` when absent (RFC 2045 §5.2)."""
        value = self.header("Content-Type")
        if value is None:
            return "text/plain"
        try:
            return parse_media_type(value)[0]
        except ValueError as exc:
            raise ImdnError(f"multipart body part: {exc}") from None


def build_multipart(documents: Sequence[bytes], *, boundary: str | None = None) -> tuple[str, bytes]:
    """Aggregate IMDN documents into a ``multipart/mixed`` body.

    Returns ``(content_type_value, body)``: put the first in the encapsulated
    Content-Type of the CPIM IMDN (with ``Content-Disposition: notification``)
    and the second as its content.
    """
    if not documents:
        raise LocalProtocolError("an aggregated IMDN needs at least one document")
    if boundary is None:
        boundary = "imdn-" + token_hex(12)
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise LocalProtocolError(f"not an RFC 2046 boundary: {boundary!r}")
    delimiter = b"--" + boundary.encode("ascii")
    out: list[bytes] = []
    for doc in documents:
        if delimiter in doc:
            raise LocalProtocolError("a document contains the multipart boundary")
        out.append(delimiter + b"\r\nContent-Type: " + CONTENT_TYPE.encode() + b"\r\n\r\n" + doc + b"\r\n")
    out.append(delimiter + b"--\r\n")
    return f'multipart/mixed; boundary="{boundary}"', b"".join(out)


def split_multipart(body: bytes, boundary: str, *, max_parts: int = MAX_PARTS) -> list[MimePart]:
    """Split a ``multipart/mixed`` body into its parts (preamble and epilogue dropped).

    Delimiter lines may end in CRLF or bare LF; a missing closing delimiter is
    accepted (the last part runs to the end of the body). Raises
    :class:`~sipimdn.errors.ImdnError` when no delimiter is found or past
    ``max_parts``.
    """
    if not boundary or len(boundary) > 70:
        raise ImdnError(f"bad multipart boundary: {boundary!r}")
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary.encode("utf-8")) + rb"(?P<close>--)?[ \t]*(?:\r?\n|\Z)"
    )
    matches = list(delimiter.finditer(body))
    if not matches:
        raise ImdnError("multipart body has no boundary delimiter")
    parts: list[MimePart] = []
    for i, m in enumerate(matches):
        if m.group("close"):
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        chunk = body[m.end() : end]
        if i + 1 == len(matches):
            # No closing delimiter: the part ends with the body; a final CRLF
            # belongs to the (missing) delimiter line, not to the content.
            if not chunk.strip():
                break
            chunk = chunk.removesuffix(b"\r\n").removesuffix(b"\n")
        if len(parts) >= max_parts:
            raise ImdnError(f"more than {max_parts} parts in an aggregated IMDN", 413)
        parts.append(_parse_part(chunk))
    return parts


def _parse_part(chunk: bytes) -> MimePart:
    try:
        headers, pos = parse_mime_head(chunk, max_count=50, max_bytes=16 * 1024, what="body part")
    except CpimError as exc:
        raise ImdnError(f"multipart body part: {exc.reason}", exc.status_code) from None
    return MimePart(headers=tuple((h.name, h.value) for h in headers), body=chunk[pos:])


def inflate(data: bytes, *, max_size: int = MAX_INFLATED_SIZE) -> bytes:
    """Undo ``Content-Encoding: deflate``: zlib-wrapped (RFC 1950) or raw (RFC 1951) data.

    Never produces more than ``max_size`` bytes: decompression stops at the
    bound and raises :class:`~sipimdn.errors.ImdnError` with status 413
    (400 for data that is not deflate).
    """
    try:
        return _inflate.inflate(data, "deflate", max_size)
    except RemoteProtocolError as exc:
        raise ImdnError(exc.reason, exc.status_code) from None
