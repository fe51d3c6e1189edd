"""Building message/cpim documents (RFC 3862), strict on send.

The builder renders header lines in the strict ABNF form and then runs the
parser's strict checks on those lines, so anything it returns parses back to
an equal message (``SELF_CHECK`` re-parses the bytes to prove it, for tests
and debugging); a value the grammar refuses raises
:class:`~sipimdn.errors.LocalProtocolError` (our own misuse, not a peer's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import CpimError, LocalProtocolError
from . import grammar
from .message import (
    DEFAULT_LIMITS,
    CpimHeader,
    CpimMessage,
    Limits,
    MimeHeader,
    _check_entity,
    _parse_cpim_headers,
    _parse_mime_headers,
    parse,
)

__all__ = [
    "SELF_CHECK",
    "build_from_lines",
    "build_message",
    "build_with_known",
    "check_header_lines",
    "format_header",
    "format_text",
]


def format_text(text: str) -> str:
    """Escape free text (e.g. a Subject) for a header value (RFC 3862 §2.3.1)."""
    return grammar.escape(text)


def format_header(name: str, value: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """One header line (no CRLF): ``Name:;p=v SP value``, checking the name and parameters."""
    if grammar.HEADER_NAME_RE.fullmatch(name) is None:
        raise LocalProtocolError(f"not a CPIM header name: {name!r}")
    rendered = []
    for key, val in params:
        if grammar.PARAMETER_RE.fullmatch(f"{key}={val}") is None:
            raise LocalProtocolError(f"not a CPIM header parameter: {key}={val!r}")
        rendered.append(f";{key}={val}")
    # A CR or LF here would start a header of the caller's peer's choosing (injection);
    # build_from_lines refuses it too, but this helper is public and may be used alone.
    if "\r" in value or "\n" in value:
        raise LocalProtocolError(f"line break in the value of CPIM header {name!r}")
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


SELF_CHECK = False
"""Debug/strict mode: also serialise each built message and re-parse the bytes
with ``parse(strict=True)``, and fail loudly (AssertionError) if that does not
give back an equal message. Off by default: the checks below already run the
parser's own line checks on the lines themselves; tests turn it on."""


def build_from_lines(
    lines: Iterable[str],
    *,
    content_type: str,
    body: bytes,
    mime_headers: Iterable[tuple[str, str]] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> CpimMessage:
    """Build a CPIM message from complete header lines (as made by :func:`format_header`).

    Every line goes through the same checks :func:`~sipimdn.cpim.parse` runs
    in strict mode (grammar, NS bindings, addresses, DateTime, Subject,
    Require, MIME field names, Content-Type, the size and count limits), on
    the strings rather than on re-encoded bytes, so what is returned is what
    parsing its ``to_bytes()`` gives back. A line holding CR or LF is refused
    (it would split into other header lines on the wire).
    """
    if not isinstance(body, bytes):
        raise LocalProtocolError("CPIM content must be bytes")
    cpim_lines = list(lines)
    mime_lines = [f"Content-Type: {content_type}"]
    for name, value in mime_headers:
        mime_lines.append(f"{name}: {value}")
    for line in mime_lines:
        if "\r" in line or "\n" in line:
            raise LocalProtocolError(f"line break in MIME header {line[:40]!r}")
    try:
        msg = _checked(cpim_lines, mime_lines, body, limits)
    except CpimError as exc:
        raise LocalProtocolError(f"cannot build CPIM message: {exc.reason}") from None
    if SELF_CHECK:
        _self_check(msg)
    return msg


def build_with_known(
    lines: Sequence[str],
    known: dict[int, CpimHeader],
    *,
    mime: tuple[MimeHeader, ...],
    body: bytes,
    limits: Limits = DEFAULT_LIMITS,
) -> CpimMessage:
    """:func:`build_from_lines` for a sender that already holds some headers parsed.

    ``known`` maps positions in ``lines`` to the header parsing that line gives at that
    position (the caller's proof, e.g. a Message-ID Token or a DateTime it formatted);
    those lines are not parsed again, every other line is checked as
    :func:`build_from_lines` checks it. ``mime`` is a MIME header block already checked
    (parsed once, e.g. at import). Raises what :func:`build_from_lines` raises for the
    same lines; the result is equal to its result.
    """
    if not isinstance(body, bytes):
        raise LocalProtocolError("CPIM content must be bytes")
    if any(h.name == "NS" for h in known.values()):
        # An NS line binds the prefixes of the lines after it: it is always parsed.
        raise LocalProtocolError("an NS header cannot be given as known")
    mime_lines = [h.raw for h in mime]
    try:
        _check_sizes(lines, mime_lines, body, limits)
        lenient: list[str] = []
        parsed = iter(_parse_cpim_headers([line for i, line in enumerate(lines) if i not in known], lenient))
        headers = tuple(known[i] if i in known else next(parsed) for i in range(len(lines)))
        if lenient:
            raise CpimError(f"not strict RFC 3862: {'; '.join(lenient)}")
    except CpimError as exc:
        raise LocalProtocolError(f"cannot build CPIM message: {exc.reason}") from None
    msg = CpimMessage(headers=headers, mime_headers=mime, body=body)
    if SELF_CHECK:
        _self_check(msg)
    return msg


def check_header_lines(lines: Sequence[str]) -> None:
    """Check message header lines as :func:`build_from_lines` checks them, without the size
    limits: raise the :class:`~sipimdn.errors.LocalProtocolError` it would raise for them.

    For a sender that keeps lines it has checked once (a peer's address) to write them again.
    """
    lenient: list[str] = []
    try:
        _parse_cpim_headers(list(lines), lenient)
        if lenient:
            raise CpimError(f"not strict RFC 3862: {'; '.join(lenient)}")
    except CpimError as exc:
        raise LocalProtocolError(f"cannot build CPIM message: {exc.reason}") from None


def _check_sizes(lines: Sequence[str], mime_lines: list[str], body: bytes, limits: Limits) -> None:
    for line in lines:
        if not line:
            raise CpimError("empty CPIM header line")
        # Caught by the control-character check too; said plainly here.
        if "\r" in line or "\n" in line:
            raise CpimError(f"line break in CPIM header {line[:40]!r}")
    # The byte limits as the parser counts them: each line and its CRLF, the
    # empty line's CR (the parser measures up to the last LF).
    head_size = sum(len(line.encode("utf-8")) for line in lines) + 2 * len(lines) + 1
    mime_size = sum(len(line.encode("utf-8")) for line in mime_lines) + 2 * len(mime_lines) + 1
    if len(lines) > limits.max_headers:
        raise CpimError(f"more than {limits.max_headers} CPIM headers", 413)
    if head_size > limits.max_header_bytes:
        raise CpimError(f"CPIM header block longer than {limits.max_header_bytes} bytes", 413)
    if len(mime_lines) > limits.max_mime_headers:
        raise CpimError(f"more than {limits.max_mime_headers} MIME headers", 413)
    if mime_size > limits.max_mime_header_bytes:
        raise CpimError(f"MIME header block longer than {limits.max_mime_header_bytes} bytes", 413)
    if head_size + 1 + mime_size + 1 + len(body) > limits.max_size:
        raise CpimError(f"message/cpim body larger than {limits.max_size} bytes", 413)


def _checked(lines: list[str], mime_lines: list[str], body: bytes, limits: Limits) -> CpimMessage:
    _check_sizes(lines, mime_lines, body, limits)
    lenient: list[str] = []
    headers = _parse_cpim_headers(lines, lenient)
    mime = _parse_mime_headers(mime_lines)
    msg = CpimMessage(headers=headers, mime_headers=mime, body=body)
    _check_entity(msg)
    if lenient:
        raise CpimError(f"not strict RFC 3862: {'; '.join(lenient)}")
    return msg


def _self_check(msg: CpimMessage) -> None:
    data = msg.to_bytes()
    try:
        again = parse(data, strict=True)
    except CpimError as exc:
        raise AssertionError(f"built CPIM message does not parse back: {exc.reason}") from None
    if again != msg or again.to_bytes() != data:
        raise AssertionError("built CPIM message parses back different")
