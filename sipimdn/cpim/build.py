"""Building message/cpim documents (RFC 3862), strict on send.

The builder renders header lines in the strict ABNF form and then runs the
result through the parser, so anything it returns parses back to an equal
message; a value the grammar refuses raises
:class:`~sipimdn.errors.LocalProtocolError` (our own misuse, not a peer's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import CpimError, LocalProtocolError
from . import _grammar
from .message import CpimMessage, parse

__all__ = ["build_from_lines", "build_message", "format_header", "format_text"]


def format_text(text: str) -> str:
    """Escape free text (e.g. a Subject) for a header value (CPIM-40..44)."""
    return _grammar.escape(text)


def format_header(name: str, value: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """One header line (no CRLF): ``Name:;p=v SP value``, checking the name and parameters."""
    if _grammar.HEADER_NAME_RE.fullmatch(name) is None:
        raise LocalProtocolError(f"not a CPIM header name: {name!r}")
    rendered = []
    for key, val in params:
        if _grammar.PARAMETER_RE.fullmatch(f"{key}={val}") is None:
            raise LocalProtocolError(f"not a CPIM header parameter: {key}={val!r}")
        rendered.append(f";{key}={val}")
    return f"{name}:{''.join(rendered)} {value}"


def build_message(
    headers: Iterable[tuple[str, str]],
    *,
    content_type: str,
    body: bytes,
    mime_headers: Iterable[tuple[str, str]] = (),
) -> CpimMessage:
    """Build a CPIM message from ``(name, value)`` message headers (values already formatted).

    ``name`` is a plain header name such as ``imdn.Message-ID``; for header
    parameters (``Subject:;lang=fr``) use :func:`format_header` lines with
    :func:`build_from_lines`.
    ``content_type`` becomes the first MIME header; ``mime_headers`` follow it.
    """
    lines = [format_header(name, value) for name, value in headers]
    return build_from_lines(lines, content_type=content_type, body=body, mime_headers=mime_headers)


def build_from_lines(
    lines: Iterable[str],
    *,
    content_type: str,
    body: bytes,
    mime_headers: Iterable[tuple[str, str]] = (),
) -> CpimMessage:
    """Build a CPIM message from complete header lines (as made by :func:`format_header`)."""
    if not isinstance(body, bytes):
        raise LocalProtocolError("CPIM content must be bytes")
    head = "".join(line + "\r\n" for line in lines) + "\r\n"
    mime_lines = [f"Content-Type: {content_type}"]
    for name, value in mime_headers:
        mime_lines.append(f"{name}: {value}")
    for line in mime_lines:
        if "\r" in line or "\n" in line:
            raise LocalProtocolError(f"line break in MIME header {line[:40]!r}")
    mime = "".join(line + "\r\n" for line in mime_lines) + "\r\n"
    data = head.encode("utf-8") + mime.encode("utf-8") + body
    try:
        return parse(data, strict=True)
    except CpimError as exc:
        raise LocalProtocolError(f"cannot build CPIM message: {exc.reason}") from None
