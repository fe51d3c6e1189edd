"""message/cpim (RFC 3862): the parsed message, its headers, parsing and serialisation.

A CPIM message is a block of strict one-line *message headers*, a blank line,
then an ordinary MIME entity (MIME headers, blank line, content). Message
headers are kept exactly as received (RFC 3862 §2.2, §6: never reformatted
or reordered) and each is resolved to ``(namespace URI, name)`` by replaying the
``NS`` declarations in order (RFC 3862 §3.4, §4.6), so ``z.Message-ID`` with
``NS: z <urn:ietf:params:imdn>`` is the IMDN Message-ID while an undeclared
``imdn.Message-ID`` is not. The MIME part follows RFC 2045 rules instead
(case-insensitive names, folding allowed; RFC 3862 §2.4). The content stays bytes.

Local policy (RFC 3862 sets no bounds): at most ``Limits.max_headers`` message headers,
``Limits.max_header_bytes`` of message headers, the same bounds for the MIME
headers. Errors about the input raise :class:`~sipimdn.errors.CpimError`
(SIP status 400, or 413 past a size bound).
"""

from __future__ import annotations

import binascii
import datetime as _dt
import quopri
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .._cache import remember_text
from .._fastinit import maker
from ..errors import CpimError
from . import grammar
from .values import CpimAddress, CpimDateTime, Subject, parse_address, parse_datetime

__all__ = [
    "CONTENT_TYPE",
    "CPIM_NS",
    "DEFAULT_LIMITS",
    "CpimHeader",
    "CpimMessage",
    "Limits",
    "MimeHeader",
    "parse",
    "parse_media_type",
    "parse_mime_head",
]

CPIM_NS = "urn:ietf:params:cpim-headers:"
"""Default namespace of unprefixed CPIM headers (RFC 3862 §7.1; §6 misspells it)."""

CONTENT_TYPE = "message/cpim"
"""The media type (RFC 3862 §7.1)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Local DoS bounds (RFC 3862 sets none)."""

    max_headers: int = 100
    max_header_bytes: int = 16 * 1024
    max_mime_headers: int = 50
    max_mime_header_bytes: int = 16 * 1024
    max_size: int = 1024 * 1024
    """Whole message/cpim body; the SIP layer normally bounds it first."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class CpimHeader:
    """One CPIM message header, kept as written.

    ``namespace`` is the URI the header's prefix (or the default namespace)
    was bound to *at that line*; it is None when the prefix was never declared
    before use (RFC 3862 §3.4), which makes the header unknown.
    """

    raw: str
    """The whole line as received, without its line ending."""
    prefix: str | None
    """Name-prefix as written (``imdn`` in ``imdn.Message-ID``), or None."""
    name: str
    """The Name part, case preserved (names are case-sensitive, RFC 3862 §3)."""
    namespace: str | None
    """Resolved namespace URI, or None for an undeclared prefix."""
    params: tuple[tuple[str, str], ...]
    """Parameters between ``:`` and the SP, values as written (String values keep their quotes)."""
    value: str
    """The Header-value as written: escapes not decoded, trailing spaces kept."""

    @property
    def full_name(self) -> str:
        """``prefix.Name`` or ``Name`` as written."""
        return self.name if self.prefix is None else f"{self.prefix}.{self.name}"

    @property
    def text(self) -> str:
        """The value with CPIM escapes decoded (for free text such as Subject)."""
        try:
            return grammar.unescape(self.value)
        except ValueError as exc:
            raise CpimError(f"bad escape in {self.full_name}: {exc}") from None

    @property
    def lang(self) -> str | None:
        """The ``;lang=`` parameter, if any (RFC 3862 §3.3)."""
        for key, val in self.params:
            if key == "lang":
                return val
        return None


@dataclass(frozen=True, slots=True)
class MimeHeader:
    """One header of the encapsulated MIME entity (RFC 2045 rules: case-insensitive name)."""

    name: str
    """As written (``Content-type`` stays ``Content-type``)."""
    value: str
    """Unfolded and stripped of surrounding whitespace."""
    raw: str
    """The header as received, continuation lines included, joined with CRLF."""


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; p=v; q="w"`` into the lower-cased type and a parameter dict.

    Parameter names are lower-cased; quoted values lose their quotes. Raises
    ``ValueError`` when there is no ``type/subtype``.
    """
    cached = _MEDIA_TYPES.get(value)
    if cached is None:
        mime, params_dict = _parse_media_type(value)
        cached = remember_text(_MEDIA_TYPES, value, (mime, tuple(params_dict.items())), 256)
    return cached[0], dict(cached[1])


# Content-Type values repeat from message to message (kept as tuples: the caller gets a fresh dict).
_MEDIA_TYPES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}


def _parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    head, _, rest = value.partition(";")
    mime = head.strip().lower()
    kind, slash, sub = mime.partition("/")
    if not slash or not kind or not sub or any(c in mime for c in ' \t"'):
        raise ValueError(f"not a media type: {value!r}")
    params: dict[str, str] = {}
    for part in _split_params(rest):
        key, eq, val = part.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[key] = val
    return mime, params


def _split_params(text: str) -> Iterator[str]:
    # Split on ";" outside double quotes.
    buf: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            yield "".join(buf)
            buf = []
            continue
        buf.append(ch)
    if buf:
        yield "".join(buf)


@dataclass(frozen=True)
class CpimMessage:
    """A parsed or built message/cpim document. Immutable (RFC 3862 §6).

    Header access is by namespace URI and name, never by literal prefix:
    ``msg.get(IMDN_NS, "Message-ID")``. ``to_bytes()`` writes the headers
    exactly as held, in order, with CRLF line endings.
    """

    headers: tuple[CpimHeader, ...]
    """Message headers in received order."""
    mime_headers: tuple[MimeHeader, ...]
    """Headers of the encapsulated MIME entity, in order."""
    body: bytes
    """The content of the encapsulated entity, untouched."""
    lenient: tuple[str, ...] = field(default=(), compare=False)
    """What was tolerated while parsing (for logs); empty for a clean message."""

    # -- access by namespace -------------------------------------------------------

    def get_all(self, namespace: str, name: str) -> list[CpimHeader]:
        """Every header whose resolved namespace and name match exactly (RFC 3862 §3)."""
        return [h for h in self.headers if h.name == name and h.namespace == namespace]

    def get(self, namespace: str, name: str) -> CpimHeader | None:
        """The first matching header, or None."""
        for h in self.headers:
            if h.name == name and h.namespace == namespace:
                return h
        return None

    def value(self, namespace: str, name: str) -> str | None:
        """The first matching header's value as written, stripped of trailing spaces, or None."""
        h = self.get(namespace, name)
        return None if h is None else h.value.rstrip(" ")

    def namespaces(self) -> dict[str, str]:
        """Prefix -> URI bindings declared by NS headers (last binding wins; "" is the default)."""
        out: dict[str, str] = {}
        for h in self.headers:
            if h.namespace == CPIM_NS and h.name == "NS":
                m = grammar.NS_VALUE_RE.fullmatch(h.value.rstrip(" "))
                if m is not None:
                    out[m.group("prefix") or ""] = m.group("uri")
        return out

    # -- standard headers (RFC 3862 §4) ----------------------------------------------

    @property
    def from_(self) -> CpimAddress | None:
        """The From header (first one), or None."""
        h = self.get(CPIM_NS, "From")
        return None if h is None else _address(h)

    @property
    def to(self) -> list[CpimAddress]:
        """All To headers, in order."""
        return [_address(h) for h in self.get_all(CPIM_NS, "To")]

    @property
    def cc(self) -> list[CpimAddress]:
        """All cc headers, in order."""
        return [_address(h) for h in self.get_all(CPIM_NS, "cc")]

    @property
    def date_time(self) -> CpimDateTime | None:
        """The DateTime header, raw string kept (see :class:`CpimDateTime`), or None."""
        h = self.get(CPIM_NS, "DateTime")
        if h is None:
            return None
        try:
            return parse_datetime(h.value)
        except ValueError as exc:
            raise CpimError(str(exc)) from None

    @property
    def datetime(self) -> _dt.datetime | None:
        """The parsed DateTime (timezone-aware), or None."""
        dt = self.date_time
        return None if dt is None else dt.value

    @property
    def subjects(self) -> list[Subject]:
        """Every Subject header, unescaped, with its language tag."""
        return [Subject(text=h.text, lang=h.lang) for h in self.get_all(CPIM_NS, "Subject")]

    @property
    def subject(self) -> str | None:
        """The first Subject's text, or None."""
        subjects = self.subjects
        return subjects[0].text if subjects else None

    @property
    def require(self) -> list[str]:
        """Header names and feature tokens listed in Require headers (RFC 3862 §3.5, §4.7)."""
        out: list[str] = []
        for h in self.get_all(CPIM_NS, "Require"):
            out.extend(item.strip() for item in h.value.split(","))
        return out

    def requirements(self) -> list[tuple[str | None, str]]:
        """Require entries resolved to ``(namespace URI, name)`` with the NS bindings in force
        at each Require line (RFC 3862 §4.7); the namespace is None for an undeclared prefix.

        RFC 3862 §3.5 leaves what to do with a requirement one does not understand to the
        application: compare these with the headers you support.
        """
        prefixes: dict[str, str] = {}
        default_ns = CPIM_NS
        out: list[tuple[str | None, str]] = []
        for h in self.headers:
            if h.namespace == CPIM_NS and h.name == "NS":
                m = grammar.NS_VALUE_RE.fullmatch(h.value.rstrip(" "))
                if m is not None:
                    if m.group("prefix") is None:
                        default_ns = m.group("uri")
                    else:
                        prefixes[m.group("prefix")] = m.group("uri")
            elif h.namespace == CPIM_NS and h.name == "Require":
                for item in h.value.split(","):
                    m = grammar.HEADER_NAME_RE.fullmatch(item.strip(" "))
                    if m is None:
                        continue
                    prefix = m.group("prefix")
                    ns = default_ns if prefix is None else prefixes.get(prefix)
                    out.append((ns, m.group("local")))
        return out

    # -- encapsulated MIME entity --------------------------------------------------

    def mime_header(self, name: str) -> str | None:
        """The first MIME header of that name, case-insensitively (RFC 2045), or None."""
        lname = name.lower()
        for h in self.mime_headers:
            if h.name.lower() == lname:
                return h.value
        return None

    @property
    def content_type(self) -> str | None:
        """Lower-cased ``type/subtype`` of the encapsulated entity, without parameters."""
        value = self.mime_header("Content-Type")
        if value is None:
            return None
        try:
            return parse_media_type(value)[0]
        except ValueError as exc:
            raise CpimError(str(exc)) from None

    @property
    def content_type_params(self) -> dict[str, str]:
        """Parameters of the encapsulated Content-Type (names lower-cased)."""
        value = self.mime_header("Content-Type")
        if value is None:
            return {}
        try:
            return parse_media_type(value)[1]
        except ValueError as exc:
            raise CpimError(str(exc)) from None

    @property
    def content_disposition(self) -> str | None:
        """Lower-cased disposition type of the encapsulated entity (e.g. ``notification``)."""
        value = self.mime_header("Content-Disposition")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower() or None

    def decoded_body(self) -> bytes:
        """The content with its Content-Transfer-Encoding undone (RFC 2045 §6; RFC 3862 §7.1).

        ``7bit``, ``8bit``, ``binary`` or no header give :attr:`body` as is;
        ``base64`` and ``quoted-printable`` are decoded. Raises
        :class:`~sipimdn.errors.CpimError` for another encoding (415) or bad base64.
        """
        cte = (self.mime_header("Content-Transfer-Encoding") or "").strip().lower()
        if cte in ("", "7bit", "8bit", "binary"):
            return self.body
        if cte == "base64":
            try:
                # RFC 2045 §6.8: line breaks and other non-alphabet characters are ignored.
                return binascii.a2b_base64(self.body)
            except binascii.Error as exc:
                raise CpimError(f"bad base64 content: {exc}") from None
        if cte == "quoted-printable":
            return quopri.decodestring(self.body)
        raise CpimError(f"unsupported Content-Transfer-Encoding {cte!r}", 415)

    # -- output --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialise: message headers, CRLF, MIME headers, CRLF, content."""
        head = "".join(h.raw + "\r\n" for h in self.headers) + "\r\n"
        mime = "".join(h.raw + "\r\n" for h in self.mime_headers) + "\r\n"
        return head.encode("utf-8") + mime.encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _address(h: CpimHeader) -> CpimAddress:
    try:
        return parse_address(h.value)
    except ValueError as exc:
        raise CpimError(f"{h.full_name}: {exc}") from None


# -- parsing -------------------------------------------------------------------------

# Headers in the default namespace whose value syntax is checked at parse time, so
# a malformed one is refused up front rather than on first access.
_CHECKED_ADDRESS = frozenset({"From", "To", "cc"})


def parse(
    data: bytes, *, limits: Limits = DEFAULT_LIMITS, outer_mime: bool = False, strict: bool = False
) -> CpimMessage:
    """Parse a message/cpim body (the SIP body of a MESSAGE with that Content-Type).

    ``outer_mime=True`` also accepts a leading ``Content-Type: Message/CPIM``
    header block, as printed in the RFC 3862/5438 examples.
    By default field quirks are tolerated and listed in
    :attr:`CpimMessage.lenient` (bare LF, no SP after the colon, a lenient
    DateTime, an unterminated MIME header block); ``strict=True`` refuses them.
    Raises :class:`~sipimdn.errors.CpimError` for anything malformed.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("cpim.parse takes bytes")
    data = bytes(data)
    if len(data) > limits.max_size:
        raise CpimError(f"message/cpim body larger than {limits.max_size} bytes", 413)
    lenient: list[str] = []
    pos = 0
    if outer_mime:
        pos = _skip_outer_mime(data, lenient)
    # The common case (CRLF lines, within the limits, UTF-8) in one pass, else line by line.
    split = _header_lines_crlf(data, pos, limits.max_headers, limits.max_header_bytes)
    if split is None:
        split = _header_lines(
            data,
            pos,
            max_count=limits.max_headers,
            max_bytes=limits.max_header_bytes,
            what="CPIM",
            lenient=lenient,
        )
    lines, pos = split
    # No minimum header set (RFC 3862 §6): an empty header block is legal; the
    # application profile (RFC 5438) decides what it needs.
    headers = _parse_cpim_headers(lines, lenient)
    split = _header_lines_crlf(data, pos, limits.max_mime_headers, limits.max_mime_header_bytes)
    if split is None:
        split = _header_lines(
            data,
            pos,
            max_count=limits.max_mime_headers,
            max_bytes=limits.max_mime_header_bytes,
            what="MIME",
            lenient=lenient,
            allow_eof=True,
        )
    mime_lines, pos = split
    mime_headers = _parse_mime_headers(mime_lines)
    msg = _message(headers, mime_headers, data[pos:], tuple(lenient) if lenient else ())
    _check_entity(msg)
    if strict and lenient:
        raise CpimError(f"not strict RFC 3862: {'; '.join(lenient)}")
    return msg


#: ``CpimHeader(raw, prefix, name, namespace, params, value)`` for the parser, without the frozen
#: dataclass ``__init__``: a header per line of every message (see sipimdn._fastinit).
_header: Callable[[str, str | None, str, str | None, tuple[tuple[str, str], ...], str], CpimHeader] = maker(
    CpimHeader)
# (CpimMessage is not slotted: _fastinit does not serve it, and _message fills its __dict__.)
_new_object = object.__new__


def _message(
    headers: tuple[CpimHeader, ...],
    mime_headers: tuple[MimeHeader, ...],
    body: bytes,
    lenient: tuple[str, ...],
) -> CpimMessage:
    """``CpimMessage(headers, mime_headers, body, lenient)`` for the parser, which has checked
    every field: the frozen dataclass's ``__init__`` sets each attribute through
    ``object.__setattr__``; one update of the instance dict gives the same object for less."""
    msg: CpimMessage = _new_object(CpimMessage)
    msg.__dict__.update(headers=headers, mime_headers=mime_headers, body=body, lenient=lenient)
    return msg


def parse_mime_head(
    data: bytes, *, max_count: int, max_bytes: int, what: str = "MIME"
) -> tuple[tuple[MimeHeader, ...], int]:
    """The MIME header block at the start of ``data`` and the offset of the content after it.

    The header block of a MIME entity as this module reads the one inside message/cpim: lines
    end in CRLF (bare LF tolerated), folded lines joined (RFC 5322 §2.2.3), and a block the data
    ends in without an empty line is accepted. At most ``max_count`` lines and ``max_bytes``
    bytes; ``what`` names the block in errors. Raises :class:`CpimError` (413 over a limit).
    """
    lines, pos = _header_lines(
        data, 0, max_count=max_count, max_bytes=max_bytes, what=what, lenient=[], allow_eof=True
    )
    return _parse_mime_headers(lines), pos


def _skip_outer_mime(data: bytes, lenient: list[str]) -> int:
    lines, pos = _header_lines(data, 0, max_count=10, max_bytes=4096, what="outer MIME", lenient=lenient)
    for raw in lines:
        name, _, value = raw.partition(":")
        if name.strip().lower() == "content-type" and value.strip().lower().startswith(CONTENT_TYPE):
            return pos
    raise CpimError("outer MIME header block has no Content-Type: message/cpim")


def _header_lines(
    data: bytes,
    pos: int,
    *,
    max_count: int,
    max_bytes: int,
    what: str,
    lenient: list[str],
    allow_eof: bool = False,
) -> tuple[list[str], int]:
    """Split header lines up to the first empty line; return them decoded and the body offset.

    Lines end in CRLF (RFC 3862 §2.2); bare LF is tolerated and noted.
    """
    fast = _header_lines_crlf(data, pos, max_count, max_bytes)
    if fast is not None:
        return fast
    lines: list[str] = []
    start = pos
    bare_lf = False
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if allow_eof:
                rest = data[pos:]
                if rest.strip(b"\r"):
                    lines.append(_decode(rest.rstrip(b"\r"), what))
                    lenient.append(f"{what} header block not terminated by an empty line")
                return lines, len(data)
            raise CpimError(f"{what} header block not terminated by an empty line")
        if nl - start > max_bytes:
            raise CpimError(f"{what} header block longer than {max_bytes} bytes", 413)
        line = data[pos:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            bare_lf = True
        pos = nl + 1
        if not line:
            break
        if len(lines) >= max_count:
            raise CpimError(f"more than {max_count} {what} headers", 413)
        lines.append(_decode(line, what))
    if bare_lf:
        lenient.append(f"{what} lines end in bare LF")
    return lines, pos


def _header_lines_crlf(data: bytes, pos: int, max_count: int, max_bytes: int) -> tuple[list[str], int] | None:
    """The common case of :func:`_header_lines` in a few C-level calls, or None to take the slow path.

    It only answers when the block is all CRLF lines ending in an empty line,
    within both limits, and valid UTF-8: then the loop would return exactly
    these lines and offset. Anything else (bare LF, no terminator, a limit
    crossed, bad UTF-8) goes to the line-by-line loop, which notes or raises
    exactly as before.
    """
    if max_bytes >= 1 and data.startswith(b"\r\n", pos):
        return [], pos + 2
    end = data.find(b"\r\n\r\n", pos)
    if end < 0 or end + 3 - pos > max_bytes:
        return None
    block = data[pos:end]
    breaks = block.count(b"\r\n")
    if breaks + 1 > max_count or block.count(b"\n") != breaks:
        return None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.split("\r\n"), end + 4


def _decode(line: bytes, what: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise CpimError(f"{what} header is not valid UTF-8 (RFC 3862 §2.2)") from None


_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5322 field-name: printable US-ASCII except ":".
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")


class _Line:
    """What one CPIM header line parses to, independently of the NS bindings in force.

    Cached by the raw line (see ``_LINE_CACHE``): From, To, NS, Content-Type
    and the like repeat from message to message, so their grammar match,
    value checks and header object are computed once.
    """

    __slots__ = ("checked", "header", "name", "notes", "ns", "params", "prefix", "value")

    def __init__(
        self, prefix: str | None, name: str, params: tuple[tuple[str, str], ...], value: str, notes: list[str]
    ) -> None:
        self.prefix = prefix
        self.name = name
        self.params = params
        self.value = value
        self.notes = notes
        """Lenient notes of the grammar match, then of the core check once it has run."""
        self.checked = False
        """True once ``_check_core_header`` passed (it depends on the name and value only)."""
        self.header: CpimHeader | None = None
        """The last header built from this line (reused while the namespace is the same)."""
        self.ns: tuple[str | None, str] | None = None
        """For an NS line of the core namespace: its checked (prefix, URI) binding."""


# Bounded, and keyed by short lines only, so peers cannot pin memory with it;
# per-message lines (Message-ID, DateTime) are never stored, they would only churn it.
_LINE_CACHE: dict[str, _Line] = {}
_LINE_CACHE_MAX = 1024
_LINE_CACHE_MAX_KEY = 256
_UNCACHED_NAMES = frozenset({"Message-ID", "DateTime"})


# Header names (the text before ": ") of lines the strict grammar matched with no parameters,
# to their (prefix, name): "<such a name>: <value>" is then exactly what that match gives again
# (a name holds no ":", so the first ": " ends it; the value only needs to have no control
# character). Per-message lines (Message-ID, DateTime) are not in the line cache, so their
# name is what repeats. Bounded like the line cache.
_PLAIN_NAMES: dict[str, tuple[str | None, str]] = {}
_PLAIN_NAMES_MAX = 256


def _parse_line(raw: str) -> _Line:
    """What ``raw`` parses to: the usual "Name: value" line of a name seen before without the
    grammar's match; any other line through :func:`_parse_line_general`."""
    name, sep, value = raw.partition(": ")
    known = _PLAIN_NAMES.get(name)
    if known is not None and sep and _CTL_RE.search(value) is None:
        return _Line(known[0], known[1], (), value, [])
    return _parse_line_general(raw)


def _parse_line_general(raw: str) -> _Line:
    """The grammar's reading of a header line (RFC 3862 §3), strict first, then lenient."""
    m = grammar.HEADER_LINE_RE.fullmatch(raw)
    if m is None:
        # Neither form admits leading white space or a control character: when the strict
        # form matched, there is none, and the reasons below are only needed on a mismatch.
        if raw[:1] in (" ", "\t"):
            raise CpimError("CPIM header folding/leading whitespace is not allowed (RFC 3862 §2.2)")
        if _CTL_RE.search(raw) is not None:
            raise CpimError("control character in a CPIM header; use an escape (RFC 3862 §2.2)")
        m = grammar.HEADER_LINE_LENIENT_RE.fullmatch(raw)
        if m is None:
            raise CpimError(f"malformed CPIM header line: {raw[:80]!r}")
        notes = [f"no SP after the colon in {raw.split(':', 1)[0]!r}"]
    else:
        notes = []
    # Both forms capture exactly (prefix, local, params, value), in that order.
    prefix, local, params_text, value = m.groups()
    if not notes and not params_text:
        # Strict and without parameters: the name (up to the colon) takes the short route next time.
        name = raw[: m.start("params") - 1]
        remember_text(_PLAIN_NAMES, name, (prefix, local), _PLAIN_NAMES_MAX, max_key=64)
    params = (
        tuple((pm.group("pname"), pm.group("pvalue")) for pm in grammar.PARAMETER_RE.finditer(params_text))
        if params_text
        else ()
    )
    return _Line(prefix, local, params, value, notes)


def _parse_cpim_headers(lines: list[str], lenient: list[str]) -> tuple[CpimHeader, ...]:
    prefixes: dict[str, str] = {}
    default_ns = CPIM_NS
    out: list[CpimHeader] = []
    cache = _LINE_CACHE
    for raw in lines:
        line = cache.get(raw)
        if line is None:
            line = _parse_line(raw)
            if line.name not in _UNCACHED_NAMES:
                remember_text(cache, raw, line, _LINE_CACHE_MAX, max_key=_LINE_CACHE_MAX_KEY)
        prefix = line.prefix
        namespace: str | None = default_ns if prefix is None else prefixes.get(prefix)
        header = line.header
        if header is None or header.namespace != namespace:
            header = line.header = _header(raw, prefix, line.name, namespace, line.params, line.value)
        if namespace == CPIM_NS:
            if line.name == "NS":
                binding = line.ns
                if binding is None:
                    binding = line.ns = _ns_binding(header)
                if binding[0] is None:
                    default_ns = binding[1]
                else:
                    prefixes[binding[0]] = binding[1]
            elif not line.checked:
                _check_core_header(header, line.notes)
                line.checked = True
        if line.notes:
            lenient.extend(line.notes)
        out.append(header)
    return tuple(out)


def _ns_binding(h: CpimHeader) -> tuple[str | None, str]:
    """Check an NS header; return its binding ``(prefix or None for the default, URI)``."""
    value = h.value.rstrip(" ")
    m = grammar.NS_VALUE_RE.fullmatch(value)
    if m is None:
        raise CpimError(f"malformed NS header: {value!r}")
    uri = m.group("uri")
    if "#" in uri:
        raise CpimError(f"namespace URI must not have a fragment (RFC 3862 §3.4): {uri!r}")
    prefix: str | None = m.group("prefix")
    return prefix, uri


def _check_core_header(h: CpimHeader, lenient: list[str]) -> None:
    """Validate a header of the cpim-headers namespace other than NS (a pure function of its line)."""
    value = h.value.rstrip(" ")
    if h.name in _CHECKED_ADDRESS:
        _address(h)
    elif h.name == "DateTime":
        try:
            if not parse_datetime(value).strict:
                lenient.append(f"DateTime is not strict RFC 3339: {value!r}")
        except ValueError as exc:
            raise CpimError(str(exc)) from None
    elif h.name == "Subject":
        lang = h.lang
        if lang is not None and grammar.LANGUAGE_TAG_RE.fullmatch(lang) is None:
            raise CpimError(f"bad Subject language tag: {lang!r}")
        _ = h.text  # decodes escapes; raises CpimError on a lone surrogate
    elif h.name == "Require":
        for item in value.split(","):
            if grammar.HEADER_NAME_RE.fullmatch(item.strip()) is None:
                raise CpimError(f"malformed Require entry: {item!r}")


def _parse_mime_headers(lines: list[str]) -> tuple[MimeHeader, ...]:
    out: list[MimeHeader] = []
    for raw in lines:
        if raw[:1] in (" ", "\t"):
            # RFC 5322 folding: continuation of the previous header (RFC 3862 §2.4).
            if not out:
                raise CpimError("MIME header block starts with a continuation line")
            prev = out[-1]
            out[-1] = MimeHeader(
                name=prev.name,
                value=(prev.value + " " + raw.strip()).strip(),
                raw=prev.raw + "\r\n" + raw,
            )
            continue
        header = _MIME_CACHE.get(raw)
        if header is None:
            name, colon, value = raw.partition(":")
            if not colon or _FIELD_NAME_RE.fullmatch(name) is None:
                raise CpimError(f"malformed MIME header line: {raw[:80]!r}")
            header = MimeHeader(name=name, value=value.strip(), raw=raw)
            remember_text(_MIME_CACHE, raw, header, _MIME_CACHE_MAX, max_key=_LINE_CACHE_MAX_KEY)
        out.append(header)
    return tuple(out)


# MIME header lines (Content-Type: text/plain; charset=utf-8, ...) repeat even
# more than CPIM ones; same bounds as _LINE_CACHE.
_MIME_CACHE: dict[str, MimeHeader] = {}
_MIME_CACHE_MAX = 256


def _check_entity(msg: CpimMessage) -> None:
    ctype = msg.mime_header("Content-Type")
    if ctype is None:
        raise CpimError("encapsulated MIME entity has no Content-Type (RFC 3862 §2.4)")
    try:
        parse_media_type(ctype)
    except ValueError as exc:
        raise CpimError(str(exc)) from None
