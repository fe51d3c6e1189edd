"""Reading SIP messages off the wire (RFC 3261 §7, §18.3; RFC 5626 §4.4.1).

``parse_message`` takes one datagram; ``StreamFramer`` cuts a TCP/TLS byte
stream into messages using Content-Length and reports CRLF keep-alives.
Both raise ``SipParseError`` carrying the status to answer: 400 for bad
syntax, 505 for a SIP version other than 2.0, 513 when the message or its
header section is over a limit and 413 when the body alone is.

What is checked here, eagerly: the start line (method, Request-URI, version,
status code), that every header line is ``token ":" value`` with no control
characters, and Content-Length. Typed header values are checked when first
read (see ``Message.validate``). For the usual header section (CRLF line
ends, no folding, no control characters) all of that is one regular
expression match and a Content-Length search, and the header rows are only
built when a header is first read (``_LazyHeaders``); any other section goes
through the general line-by-line path, which decides alone and is what the
regular path is tested against. Accepted although the ABNF does not allow
it, because real senders do it: bare LF line ends, whitespace before the
colon, space-padded Content-Length (SIPp), a final empty line missing from a
datagram that has no body, folded lines (obsolete but still legal in SIP).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from . import _abnf
from ._cache import remember_text
from .errors import SipParseError
from .headers import header_key
from .message import DeferredHeaders, HeaderRow, Headers, Request, Response
from .uri import Uri

__all__ = [
    "DEFAULT_LIMITS",
    "KeepAliveReceived",
    "Limits",
    "StreamFramer",
    "parse_message",
    "salvage_reply_headers",
    "written_headers",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits for one message; exceeding them raises ``SipParseError``.

    The defaults fit any UDP datagram (65,535 bytes, RFC 3261 §18.1.1) and a
    generous stream message. ``max_body`` gives 413, the others 513.
    """

    #: Bytes in the request or status line, line end excluded.
    max_start_line: int = 8192
    #: Bytes in the header section (start line and header lines).
    max_header_bytes: int = 65536
    #: Header rows (a folded field counts once).
    max_headers: int = 256
    #: Body bytes (413 beyond it).
    max_body: int = 1 << 20
    #: Whole message, header section plus body.
    max_message: int = (1 << 20) + 65536


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class KeepAliveReceived:
    """A CRLF (or bare LF) between messages on a stream (RFC 5626 §4.4.1, RFC 3261 §7.5).

    One event per line end, so the result does not depend on how the bytes
    were chunked.
    """

    #: How many line ends in a row, this one included, since the last message.
    run: int

    @property
    def is_ping(self) -> bool:
        """True when this completes a double-CRLF ping; answer it with one CRLF."""
        return self.run % 2 == 0


# The empty line that ends the header section: an LF, an optional CR, an LF
# (so CRLF and bare-LF line ends both work). The literal LF prefix lets the
# regex engine skip ahead quickly.
_HEAD_END_RE = re.compile(rb"\n\r?\n")


def _find_head_end(buf: bytes | bytearray, start: int, floor: int) -> tuple[int, int] | None:
    """(end of header section, start of body) for the first empty line, or None.

    Searched from ``start``; ``floor`` is where the message begins (a CR just
    before the first LF belongs to the head only if it is inside the message).
    """
    m = _HEAD_END_RE.search(buf, start)
    if m is None:
        return None
    first = m.start()
    head_end = first - 1 if first > floor and buf[first - 1] == 0x0D else first
    return head_end, m.end()


# Control characters never allowed in a header section (HTAB, CR and LF are
# handled separately). NUL in particular is a classic smuggling vector. The
# one exception is a quoted-pair (``"\" %x00-09 / %x0B-0C / %x0E-7F``), which
# RFC 3261 allows inside quoted strings and RFC 4475 §3.1.1.2 exercises.
_CTL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CTL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_CTL_CR_LF = _CTL_BYTES + b"\r\n"


def _irregular_lines(text: str, crlf_lines: list[str]) -> list[str]:
    """Lines of a head that has bare LFs, control characters or a stray CR.

    Bare LF line ends are accepted although RFC 3261 asks for CRLF; control
    characters only as quoted-pairs; a CR anywhere but before an LF is an
    error.
    """
    if _CTL_RE.search(text) is not None and _has_bad_control(text):
        raise _error("control character in header section")
    if text.count("\r") != len(crlf_lines) - 1:
        raise _error("bare CR in header section")
    return text.replace("\r\n", "\n").split("\n")


def _has_bad_control(text: str) -> bool:
    """True if a control character appears other than right after a backslash."""
    # The plain character-class search is fast; the escaped case is rare.
    for m in _CTL_RE.finditer(text):
        at = m.start()
        if at == 0 or text[at - 1] != "\\":
            return True
    return False


# Header names seen before (as spelled, with any space before the colon) and
# already validated, to (lookup key, name without trailing space); most
# traffic uses a few dozen spellings, so the token check runs once for each.
_NAME_KEYS: dict[str, tuple[str, str]] = {}
_NAME_KEYS_MAX = 2048
_METHODS: dict[str, bool] = {}
# Whole header lines seen before, to their row. Only lines that took the
# cached-name path above enter it, so a hit is exactly what that path would
# have built. Lines of fields that change with every message or transaction
# stay out (they would only churn the cache). Bounded: cleared when full.
# A To without a tag (every request outside a dialog: a UAS hears its own
# address in it, message after message) and a CSeq (page-mode requests are
# "1 MESSAGE") repeat, so they go in.
_LINE_ROWS: dict[str, tuple[str, str, str, str]] = {}
_LINE_ROWS_MAX = 4096
_PER_MESSAGE_KEYS = frozenset(
    {
        "via",
        "from",
        "call-id",
        "date",
        "timestamp",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
    }
)
_WSP = " \t"


def _error(reason: str, status: int = 400) -> SipParseError:
    return SipParseError(reason, status)


#: (method, Request-URI, Request-URI as received) or (status code, reason).
_StartLine = tuple[str, Uri, str] | tuple[int, str]


# Start lines seen before: a UAS receives nearly all its requests on one or
# two Request-URIs and a UAC mostly sees "SIP/2.0 200 OK", so the checks below
# run once per distinct line. Bounded: cleared when full.
_START_LINES: dict[str, _StartLine] = {}
_START_LINES_MAX = 1024


def _parse_start_line(line: str, limits: Limits) -> _StartLine:
    """(method, uri, uri_text) for a request, (status, reason) for a response."""
    cached = _START_LINES.get(line)
    if cached is not None and len(line) <= limits.max_start_line:
        return cached
    return remember_text(_START_LINES, line, _check_start_line(line, limits), _START_LINES_MAX, max_key=512)


def _check_start_line(line: str, limits: Limits) -> _StartLine:
    if len(line) > limits.max_start_line:
        raise _error(f"start line longer than {limits.max_start_line} bytes", 513)
    if line[:1] in "Ss" and line[:4].upper() == "SIP/":
        m = _abnf.STATUS_LINE_RE.fullmatch(line)
        if m is None:
            raise _error(f"bad status line {line[:200]!r}")
        version = m.group("version")
        if version != "SIP/2.0" and version.upper() != "SIP/2.0":
            if _abnf.SIP_VERSION_RE.fullmatch(version):
                raise _error(f"unsupported SIP version {version[:20]!r}", 505)
            raise _error(f"bad status line {line[:200]!r}")
        code = int(m.group("code"))
        if code < 100:
            raise _error(f"status code {code} below 100")
        return code, m.group("reason") or ""
    parts = line.split(" ")
    if len(parts) != 3:
        # Request-Line = Method SP Request-URI SP SIP-Version: exactly one SP
        # each, and no whitespace inside the Request-URI (§7.1, §25.1).
        raise _error(f"bad request line {line[:200]!r}")
    method, uri_text, version = parts
    if method not in _METHODS:
        if _abnf.METHOD_RE.fullmatch(method) is None:
            raise _error(f"bad method {method[:50]!r}")
        remember_text(_METHODS, method, True, 256)
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if _abnf.SIP_VERSION_RE.fullmatch(version):
            raise _error(f"unsupported SIP version {version[:20]!r}", 505)
        raise _error(f"bad request line {line[:200]!r}")
    uri = Uri.parse(uri_text)
    if uri.headers:
        # RFC 3261 §19.1.1 (table): a headers component is not allowed in a
        # Request-URI (RFC 4475 §3.1.2.11).
        raise _error(f"Request-URI with a headers component: {uri_text[:200]!r}")
    return method, uri, uri_text


# The header section of nearly every message, recognised in one match: the
# start line, then header lines ``token *WSP ":" value``, every line end a
# CRLF, no control character but HTAB anywhere and no folded line. Every
# check the general path makes on the lines holds for a section this
# matches (the general path would accept each of its lines and build their
# rows without error), so only the start line, the row count and
# Content-Length need looking at before the message is accepted; the rows
# themselves are built when first used (``_LazyHeaders``).
_TEXT = rb"[\t\x20-\x7e\x80-\xff]*"
_REGULAR_HEAD_RE = re.compile(
    _TEXT + rb"(?:\r\n[" + _abnf.token_char.encode("ascii") + rb"]+[ \t]*:" + _TEXT + rb")*+"
)
# The Content-Length lines of such a section (``l`` too, any case), value as
# it follows the colon.
_CONTENT_LENGTH_LINE_RE = re.compile(
    rb"\r\n(?:[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Ll])[ \t]*:([^\r]*)"
)


class _LazyHeaders(DeferredHeaders):
    """Headers of a regular header section (``_REGULAR_HEAD_RE`` matched it), rows built on
    first use; building gives exactly the rows the general path builds."""

    __slots__ = ()

    @staticmethod
    def build_rows(source: bytes) -> list[HeaderRow]:
        return _header_rows(source.decode("utf-8", "surrogateescape").split("\r\n"))


def written_headers(head: bytes) -> Headers:
    """The headers of a header section ``Message.to_bytes`` wrote (start line first, CRLF line
    ends, no final empty line), rows built on first use.

    Holding a message sent already in this form keeps one bytes object instead of a row tuple
    and two strings per header; the rows built from it write back the same bytes (every row
    ``to_bytes`` writes is a checked name, a colon and a value, folded only as received).
    """
    return _LazyHeaders(head)


def _parse_regular_head(head: bytes, limits: Limits) -> tuple[_StartLine, Headers, int | None] | None:
    """What ``_parse_head_general`` returns for a regular header section, rows left unbuilt.

    None when the section is not regular or is anywhere near an error other
    than in its start line (a limit, an odd or repeated Content-Length): the
    general path then decides, with its own error. An error in the start
    line is raised here, as the general path would raise it first.
    """
    size = len(head)
    if size > limits.max_header_bytes or _REGULAR_HEAD_RE.fullmatch(head) is None:
        return None
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = size
    if line_end > limits.max_start_line:
        return None
    # Each header line takes at least 4 bytes (CRLF, a name character, the
    # colon), so short sections cannot hold too many; no folding here, so
    # the CRLFs count the rows.
    if size > 4 * limits.max_headers and head.count(b"\r\n") > limits.max_headers:
        return None
    length: int | None = None
    values = _CONTENT_LENGTH_LINE_RE.findall(head)
    if values:
        value = values[0].strip(b" \t")
        if len(values) > 1 or not value.isdigit() or len(value) > 18:
            return None
        length = int(value)
    start = _parse_start_line(head[:line_end].decode("utf-8", "surrogateescape"), limits)
    return start, _LazyHeaders(head), length


def _parse_head(head: bytes, limits: Limits) -> tuple[_StartLine, Headers, int | None]:
    """Start line, header rows and Content-Length of a complete header section."""
    parsed = _parse_regular_head(head, limits)
    if parsed is not None:
        return parsed
    return _parse_head_general(head, limits)


def _parse_head_general(head: bytes, limits: Limits) -> tuple[_StartLine, Headers, int | None]:
    """``_parse_head`` for any header section: every check, rows built now.

    The authority on what is accepted: ``_parse_regular_head`` only answers
    for sections this accepts, with the same result.
    """
    # Size limits first, in the order StreamFramer checks an incomplete head.
    size = len(head)
    if size > limits.max_start_line and head.find(b"\n", 0, limits.max_start_line + 2) < 0:
        raise _error(f"start line longer than {limits.max_start_line} bytes", 513)
    if size > limits.max_header_bytes:
        raise _error(f"header section longer than {limits.max_header_bytes} bytes", 513)
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    # One C-speed test for the common case: if deleting every control byte,
    # CR and LF removes exactly two bytes per CRLF, the head holds nothing but
    # CRLF line ends and printable text (each CRLF accounts for one CR and one
    # LF, so any extra CR, LF or control byte makes the count larger).
    if size - len(head.translate(None, _CTL_CR_LF)) != 2 * (len(lines) - 1):
        lines = _irregular_lines(text, lines)
    start = _parse_start_line(lines[0], limits)
    rows = _header_rows(lines)
    if len(rows) > limits.max_headers:
        raise _error(f"more than {limits.max_headers} header fields", 513)

    # Content-Length (``l`` too): digits only; repeated rows must agree.
    lengths = [row[2] for row in rows if row[0] == "content-length"]
    length: int | None = None
    if lengths:
        for value in lengths:
            if not value.isdigit() or not value.isascii():
                raise _error(f"bad Content-Length {value[:50]!r}")
        length = _abnf.digits_value(lengths[0], 18)
        if length is None:
            # (more than any size limit; int() would even refuse past 4,300 digits)
            raise _error(f"Content-Length of more than 18 digits: {lengths[0][:30]!r}...", 413)
        if len(lengths) > 1 and any(_abnf.digits_value(value, 18) != length for value in lengths):
            raise _error("conflicting Content-Length headers")
    return start, Headers.from_rows(rows), length


def _header_rows(lines: list[str]) -> list[HeaderRow]:
    """The rows of the header lines ``lines[1:]`` (``lines[0]`` is the start line).

    Checks each line ("name HCOLON value", folded continuations joined) and
    raises ``SipParseError`` on the first bad one.
    """
    rows: list[HeaderRow] = []
    append = rows.append
    name_keys = _NAME_KEYS
    line_rows = _LINE_ROWS
    lines_iter = iter(lines)
    next(lines_iter, None)
    for line in lines_iter:
        row = line_rows.get(line)
        if row is not None:
            # The very same line was read before (Max-Forwards: 70, the
            # Content-Type, User-Agent, ...): its row is immutable, reuse it.
            append(row)
            continue
        name, colon, value = line.partition(":")
        known = name_keys.get(name)
        if known is not None and colon:
            # A header name seen (and validated) before; it cannot start
            # with whitespace, so this is not a continuation line.
            row = (known[0], known[1], value.strip(" \t"), line)
            append(row)
            if known[0] not in _PER_MESSAGE_KEYS and (known[0] != "to" or ";tag=" not in value):
                remember_text(line_rows, line, row, _LINE_ROWS_MAX)
        else:
            _slow_header_line(rows, line, name, colon, value)
    return rows


def _slow_header_line(rows: list[HeaderRow], line: str, name: str, colon: str, value: str) -> None:
    """A header line whose name is not in the cache: fold, new name or error."""
    if not line:
        raise _error("empty line inside the header section")
    if line[0] == " " or line[0] == "\t":
        # Folded continuation (LWS = [*WSP CRLF] 1*WSP): one space in the
        # value, original text kept for writing back.
        if not rows:
            raise _error("header section starts with a continuation line")
        prev_key, prev_name, prev_value, prev_raw = rows[-1]
        continued = line.strip(_WSP)
        rows[-1] = (prev_key, prev_name, f"{prev_value} {continued}".strip(" "), f"{prev_raw}\r\n{line}")
        return
    if not colon or not name:
        raise _error(f"header line without a name and colon: {line[:100]!r}")
    # HCOLON = *( SP / HTAB ) ":" SWS
    stripped = name.rstrip(" \t")
    if _abnf.TOKEN_RE.fullmatch(stripped) is None:
        raise _error(f"bad header name {name[:100]!r}")
    known = remember_text(_NAME_KEYS, name, (header_key(stripped), stripped), _NAME_KEYS_MAX, max_key=64)
    rows.append((known[0], known[1], value.strip(" \t"), line))


def _build(start: _StartLine, headers: Headers, body: bytes) -> Request | Response:
    if len(start) == 3:
        return Request._parsed(start[0], start[1], start[2], headers, body)
    return Response._parsed(start[0], start[1], headers, body)


def parse_message(data: bytes, limits: Limits | None = None, *, lazy_rows: bool = True) -> Request | Response:
    """Parse one datagram into a ``Request`` or ``Response`` (RFC 3261 §18.3).

    With Content-Length, bytes beyond it are discarded and fewer is an error
    (400); without it, the body runs to the end of the datagram. CRLFs before
    the start line are skipped (§7.5). Raises ``SipParseError``.

    ``lazy_rows=False`` builds the header rows now, through the general path
    alone: the same message or the same error (the regular path only answers
    for what the general path accepts, with the same result), for about 2 µs
    less when the headers are read anyway, as they are for every message the
    stack receives (matching needs the top Via). The regular path's match and
    Content-Length search are what the general path gets while building the rows.
    """
    if limits is None:
        limits = DEFAULT_LIMITS
    size = len(data)
    if size > limits.max_message:
        raise _error(f"message longer than {limits.max_message} bytes", 513)
    start = 0
    if data[:1] in b"\r\n":
        start = size - len(data.lstrip(b"\r\n"))
        if start >= size:
            raise _error("empty message")
    # The first CRLF CRLF ends a regular header section (one with CRLF line
    # ends only: there, no earlier LF can start an empty line).
    end = data.find(b"\r\n\r\n", start) if lazy_rows else -1
    parsed = _parse_regular_head(data[start:end], limits) if end >= 0 else None
    if parsed is not None:
        body_start = end + 4
    else:
        m = _HEAD_END_RE.search(data, start)
        if m is not None:
            first = m.start()
            head = data[start : first - 1 if first > start and data[first - 1] == 0x0D else first]
            body_start = m.end()
        elif data[-1:] == b"\n":
            # No empty line, but the last header line is complete: a bodiless
            # datagram whose sender dropped the final CRLF.
            head = data[start:].rstrip(b"\r\n")
            body_start = len(data)
        else:
            raise _error("header section does not end with an empty line")
        parsed = _parse_head(head, limits) if lazy_rows else _parse_head_general(head, limits)
    start_line, headers, length = parsed
    if length is None:
        body = data[body_start:]
    else:
        if length > limits.max_body:
            raise _error(f"body of {length} bytes exceeds {limits.max_body}", 413)
        if size - body_start < length:
            raise _error(f"body shorter than Content-Length ({size - body_start} < {length})")
        body = data[body_start : body_start + length]
    if len(body) > limits.max_body:
        raise _error(f"body of {len(body)} bytes exceeds {limits.max_body}", 413)
    if len(start_line) == 3:
        return Request._parsed(start_line[0], start_line[1], start_line[2], headers, body)
    return Response._parsed(start_line[0], start_line[1], headers, body)


class StreamFramer:
    """Cut a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626).

    ``feed`` bytes as they arrive, then call ``next_event`` until it returns
    None. Content-Length is required. Line ends between messages are
    reported as ``KeepAliveReceived``. Any error is final: the framing is
    lost, so every later call raises the same error and the connection
    should be closed (after answering, if ``failed_data`` can be salvaged).
    The result does not depend on how the stream was chunked.
    """

    __slots__ = ("_buf", "_error", "_limits", "_pending", "_pos", "_run", "_scan", "failed_data")

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or DEFAULT_LIMITS
        self._buf = bytearray()
        self._pos = 0  # start of unconsumed bytes
        self._scan = 0  # where the search for the end of headers resumes
        self._run = 0  # consecutive line ends since the last message
        self._pending: tuple[tuple[str, Uri, str] | tuple[int, str], Headers, int, int] | None = None
        self._error: SipParseError | None = None
        #: The start of the message that failed to parse (for ``salvage_reply_headers``).
        self.failed_data: bytes | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._error is not None:
            raise self._error
        self._buf += data

    def __iter__(self) -> Iterator[Request | Response | KeepAliveReceived]:
        """Every event available now."""
        while (event := self.next_event()) is not None:
            yield event

    def next_event(self) -> Request | Response | KeepAliveReceived | None:
        """The next message or keep-alive, or None when more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except SipParseError as exc:
            self._error = exc
            self.failed_data = bytes(self._buf[self._pos : self._pos + self._limits.max_header_bytes])
            raise

    def _compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = self._scan = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._pos = 0

    def _next(self) -> Request | Response | KeepAliveReceived | None:
        buf = self._buf
        limits = self._limits
        if self._pending is None:
            self._compact()
            pos = self._pos
            end = len(buf)
            if pos >= end:
                return None
            first = buf[pos]
            if first in (0x0A, 0x0D):
                if first == 0x0D:
                    if pos + 1 >= end:
                        return None  # wait: CR alone could start a CRLF
                    if buf[pos + 1] != 0x0A:
                        raise _error("bare CR between messages")
                    pos += 1
                self._pos = self._scan = pos + 1
                self._run += 1
                return KeepAliveReceived(self._run)
            found = _find_head_end(buf, max(self._scan, pos), pos)
            if found is None:
                self._check_incomplete_head(pos, end)
                # Resume a little before the end: the terminator may straddle chunks.
                self._scan = max(pos, end - 3)
                return None
            head_end, body_start = found
            head = bytes(buf[pos:head_end])
            start_line, headers, length = _parse_head(head, limits)
            if length is None:
                raise _error("Content-Length is required on a stream transport")
            if length > limits.max_body:
                raise _error(f"body of {length} bytes exceeds {limits.max_body}", 413)
            if body_start - pos + length > limits.max_message:
                raise _error(f"message longer than {limits.max_message} bytes", 513)
            self._pending = (start_line, headers, body_start, length)
        start_line, headers, body_start, length = self._pending
        if len(buf) - body_start < length:
            return None
        body = bytes(buf[body_start : body_start + length])
        self._pending = None
        self._pos = self._scan = body_start + length
        self._run = 0
        return _build(start_line, headers, body)

    def _check_incomplete_head(self, pos: int, end: int) -> None:
        limits = self._limits
        # The same checks as for a complete head; the terminator (at most 4
        # bytes) may still be missing from what is buffered.
        line_end = self._buf.find(b"\n", pos, pos + limits.max_start_line + 2)
        if end - pos >= limits.max_start_line + 2 and line_end < 0:
            raise _error(f"start line longer than {limits.max_start_line} bytes", 513)
        if end - pos > limits.max_header_bytes + 4:
            raise _error(f"header section longer than {limits.max_header_bytes} bytes", 513)


# Headers a stateless error response must copy (RFC 3261 §8.2.6.2).
_SALVAGE_KEYS = frozenset({"via", "from", "to", "call-id", "cseq"})


def salvage_reply_headers(data: bytes) -> list[tuple[str, str]] | None:
    """The Via/From/To/Call-ID/CSeq rows of a request that failed to parse.

    Lets a server answer a malformed request with a stateless 400 instead of
    dropping it. Returns None when ``data`` does not look like a request (a
    response, garbage, or no readable Via), since nothing can be answered.
    Header values are returned as received, unchecked.
    """
    data = data[:65536].lstrip(b"\r\n")
    found = _find_head_end(data, 0, 0)
    head = data[: found[0]] if found is not None else data
    text = head.decode("utf-8", "replace")
    lines = text.replace("\r\n", "\n").split("\n")
    request_line = lines[0].split(" ")
    if len(request_line) < 3 or _abnf.METHOD_RE.fullmatch(request_line[0]) is None:
        return None
    if request_line[-1][:4].upper() != "SIP/":
        return None
    fields: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if fields:
                continued = line.strip(_WSP)
                fields[-1][1] = f"{fields[-1][1]} {continued}"
            continue
        name, colon, value = line.partition(":")
        fields.append([name.strip(" \t") if colon else "", value.strip(" \t")])
    rows = [
        (name, value)
        for name, value in fields
        if name
        and _abnf.TOKEN_RE.fullmatch(name) is not None
        and header_key(name) in _SALVAGE_KEYS
        and _CTL_RE.search(value) is None
        and "\r" not in value
    ]
    if not any(header_key(name) == "via" for name, _ in rows):
        return None
    return rows
