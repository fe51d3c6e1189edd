"""The SIP message model (RFC 3261 §7, §8.2.6): ``Headers``, ``Request``, ``Response``.

Headers are kept as received: ordered rows of (name as spelled, value,
original line). Untouched rows are written back byte for byte, so a proxy-like
use (add ``received`` to the top Via, forward) changes only what it changed.
Typed values (Via, From, CSeq, ...) are parsed on first access and cached
until the header is modified: most messages are routed on four or five
headers and nobody reads the rest.

A typed accessor raises ``SipParseError`` (status 400) when the header it
reads is missing or malformed; ``validate()`` runs all of them at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from types import MappingProxyType
from typing import cast

from . import _abnf
from ._cache import remember_text
from .errors import LocalProtocolError, SipParseError
from .headers import ContentType, CSeq, NameAddr, Via, header_key, is_list_header, split_comma_list
from .uri import Uri

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

#: Cache sentinel: ``None`` is a legitimate cached value (header absent).
_MISS: object = object()
#: Typed-cache key of the per-message index used by single-valued accessors.
_INDEX = "\x00index"

#: Default reason phrases (RFC 3261 §21 and the IANA response code registry).
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}


def safe_reason_phrase(text: str, default: str = "Error") -> str:
    """``text`` fit for a status line (RFC 3261 §25.1 Reason-Phrase): whitespace runs and line
    breaks become one space, at most 100 characters; ``default`` when nothing is left."""
    return " ".join(text.split())[:100] or default


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
        self._typed: dict[str, object] = {}
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
        for row in self._rows:
            if row[0] == key:
                return row[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of this header, in order, comma lists split."""
        key = header_key(name)
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
    def _typed(self) -> dict[str, object]:
        self._build()
        return self._typed

    @_typed.setter
    def _typed(self, typed: dict[str, object]) -> None:
        self._build()
        self._typed = typed


# Source addresses already checked by stamp_received (a UAS hears from a few).
_CHECKED_IPS: dict[str, bool] = {}


def _check_ip(ip: str) -> None:
    if ip in _CHECKED_IPS:
        return
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise LocalProtocolError(f"not an IP address: {ip[:60]!r}") from None
    remember_text(_CHECKED_IPS, ip, True, 1024)


def _same_ip(a: str, b: str) -> bool:
    """True when two address texts are the same IP (``::1`` and ``0::1``)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _missing(name: str) -> SipParseError:
    return SipParseError(f"missing {name} header")


class Message:
    """What requests and responses share: headers, body and typed accessors."""

    __slots__ = ("body", "headers")

    headers: Headers
    body: bytes

    # -- typed accessors -------------------------------------------------------

    def _single(self, key: str, label: str) -> str | None:
        """The value of a single-valued header; two rows of it are an error.

        RFC 4475 §3.3.8: a request with several Call-ID/CSeq/From/To values
        is malformed, and picking one would hide a possible attack. An index
        of first values and repeated names is built once per message (and
        dropped with the typed cache when a header changes).
        """
        typed = self.headers._typed
        index = typed.get(_INDEX)
        if index is None:
            rows = self.headers._rows
            # Built back to front so the first row of each name wins.
            first = {row[0]: row[2] for row in reversed(rows)}
            repeated: set[str] = set()
            if len(first) != len(rows):
                seen: set[str] = set()
                for row in rows:
                    if row[0] in seen:
                        repeated.add(row[0])
                    seen.add(row[0])
            index = typed[_INDEX] = (first, repeated)
        first, repeated = cast("tuple[dict[str, str], set[str]]", index)
        if key in repeated:
            raise SipParseError(f"more than one {label} header")
        return first.get(key)

    def _required(self, key: str, label: str) -> str:
        value = self._single(key, label)
        if value is None:
            raise _missing(label)
        return value

    # Each accessor looks in the cache first (the common case once the
    # transaction layer has routed the message) and parses on a miss.

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        cached = self.headers._typed.get("via", _MISS)
        if cached is _MISS:
            cached = [Via.parse(v) for v in self.headers.get_all("via")]
            self.headers._typed["via"] = cached
        return list(cast("list[Via]", cached))

    @property
    def top_via(self) -> Via:
        """The top Via (raises ``SipParseError`` if there is none)."""
        cached = self.headers._typed.get("via:top", _MISS)
        if cached is _MISS:
            first = self.headers.get("via")
            if first is None:
                raise _missing("Via")
            # Fast path: no comma means the row holds one via-parm.
            values = [first] if "," not in first else split_comma_list(first)
            if not values:
                raise SipParseError("empty Via header")
            cached = Via.parse(values[0])
            self.headers._typed["via:top"] = cached
        return cast(Via, cached)

    def set_top_via(self, via: Via) -> None:
        """Replace the top Via (e.g. to add received/rport, RFC 3581)."""
        self.headers.replace_first_value("Via", str(via))
        self.headers._typed["via:top"] = via

    def stamp_received(self, ip: str, port: int) -> Via:
        """Record where a received request came from in its top Via; return that Via.

        RFC 3261 §18.2.1: add ``received=ip`` when the sent-by host differs
        from the source address; RFC 3581 §4: when the top Via has ``rport``,
        set ``received`` (even if equal) and fill ``rport`` with the source
        port. Nothing changes when neither applies or the Via already says so.
        The sender's text of the via-parm is kept and only these two
        parameters are edited in place (a missing one is appended), so the
        Via copied into responses is the request's own (§18.2.1); a via-parm
        with quoted strings or extra whitespace is rewritten from the typed
        value instead, as ``set_top_via`` does. The returned Via equals
        ``top_via.with_params(received=ip[, rport=str(port)])``.
        Raises ``SipParseError`` if the top Via is missing or malformed and
        ``LocalProtocolError`` if ``ip`` is not an IP address or ``port`` is
        outside 1-65535.
        """
        via = self.top_via
        params = via.params
        if "rport" in params:
            if not 0 < port <= 65535:
                raise LocalProtocolError(f"port {port} outside 1-65535")
            port_text = str(port)
            if params["rport"] == port_text and params.get("received") == ip:
                return via
            changes = {"received": ip, "rport": port_text}
        elif via.host != ip and not _same_ip(via.host, ip):
            changes = {"received": ip}
        else:
            return via
        _check_ip(ip)
        merged = dict(params)
        merged.update(changes)
        stamped = Via._make(via.transport, via.host, via.port, MappingProxyType(merged))
        rows = self.headers._rows
        i = 0
        while rows[i][0] != "via":  # (top_via found a Via row, so there is one)
            i += 1
        row = rows[i]
        text = row[2]
        if '"' in text or "," in text or "\t" in text or text.count(" ") != 1:
            # Quoted strings, several via-parms in the row, or whitespace
            # around separators: edit through the typed value instead.
            self.set_top_via(stamped)
            return stamped
        # No quotes and no whitespace after sent-by: every ";" separates a
        # parameter, so splitting on it is exact.
        parts = text.split(";")
        for j in range(1, len(parts)):
            name = parts[j].partition("=")[0]
            lowered = name.lower()
            if lowered in changes:
                parts[j] = f"{name}={changes.pop(lowered)}"
        for name, param in changes.items():
            parts.append(f"{name}={param}")
        value = ";".join(parts)
        rows[i] = ("via", row[1], value, f"{row[1]}: {value}")
        typed = self.headers._typed
        typed.pop("via", None)
        typed.pop(_INDEX, None)
        typed["via:top"] = stamped
        return stamped

    @property
    def call_id(self) -> str:
        """Call-ID, compared byte for byte."""
        cached = self.headers._typed.get("call-id", _MISS)
        if cached is _MISS:
            value = self._required("call-id", "Call-ID")
            # callid = word [ "@" word ]: no whitespace inside.
            if " " in value or "\t" in value:
                raise SipParseError(f"bad Call-ID {value[:200]!r}")
            self.headers._typed["call-id"] = cached = value
        return cast(str, cached)

    @property
    def cseq(self) -> CSeq:
        """CSeq (number and method)."""
        return self._cseq()

    def _cseq(self) -> CSeq:
        cached = self.headers._typed.get("cseq", _MISS)
        if cached is _MISS:
            cached = CSeq.parse(self._required("cseq", "CSeq"))
            self.headers._typed["cseq"] = cached
        return cast(CSeq, cached)

    @property
    def from_(self) -> NameAddr:
        """From."""
        cached = self.headers._typed.get("from", _MISS)
        if cached is _MISS:
            cached = NameAddr.parse(self._required("from", "From"))
            self.headers._typed["from"] = cached
        return cast(NameAddr, cached)

    @property
    def to(self) -> NameAddr:
        """To."""
        cached = self.headers._typed.get("to", _MISS)
        if cached is _MISS:
            cached = NameAddr.parse(self._required("to", "To"))
            self.headers._typed["to"] = cached
        return cast(NameAddr, cached)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or None if absent."""
        cached = self.headers._typed.get("max-forwards", _MISS)
        if cached is _MISS:
            value = self._single("max-forwards", "Max-Forwards")
            if value is not None:
                # Max-Forwards = 1*DIGIT; RFC 3261 §8.1.1.6 and §16.6 treat
                # it as a hop count that is never above 255 in practice.
                hops = _abnf.digits_value(value, 3) if value.isdigit() and value.isascii() else None
                if hops is None or hops > 255:
                    raise SipParseError(f"bad Max-Forwards {value[:50]!r}")
                cached = hops
            else:
                cached = None
            self.headers._typed["max-forwards"] = cached
        return cast("int | None", cached)

    @property
    def content_type(self) -> ContentType | None:
        """Content-Type, or None if absent."""
        cached = self.headers._typed.get("content-type", _MISS)
        if cached is _MISS:
            value = self._single("content-type", "Content-Type")
            cached = None if value is None else ContentType.parse(value)
            self.headers._typed["content-type"] = cached
        return cast("ContentType | None", cached)

    def _name_addr_list(self, key: str) -> list[NameAddr]:
        cached = self.headers._typed.get(key, _MISS)
        if cached is _MISS:
            cached = [NameAddr.parse(v) for v in self.headers.get_all(key)]
            self.headers._typed[key] = cached
        return list(cast("list[NameAddr]", cached))

    @property
    def contact(self) -> list[NameAddr]:
        """Contact values (empty for none or for the ``*`` wildcard)."""
        if self.contact_is_wildcard:
            return []
        return self._name_addr_list("contact")

    @property
    def contact_is_wildcard(self) -> bool:
        """True for ``Contact: *`` (REGISTER only)."""
        return self.headers.get_all("contact") == ["*"]

    @property
    def route(self) -> list[NameAddr]:
        """Route values, top first."""
        return self._name_addr_list("route")

    @property
    def record_route(self) -> list[NameAddr]:
        """Record-Route values, top first."""
        return self._name_addr_list("record-route")

    @property
    def expires(self) -> int | None:
        """Expires in seconds, or None if absent."""

        cached = self.headers._typed.get("expires", _MISS)
        if cached is _MISS:
            value = self._single("expires", "Expires")
            if value is not None:
                # §20.19: "an integral number of seconds (in decimal) between
                # 0 and (2**32)-1". RFC 4475 §3.1.2.4 allows a 400 for a value
                # beyond that; guessing a default would hide the error.
                if not value.isdigit() or not value.isascii() or len(value) > 10 or int(value) >= 2**32:
                    raise SipParseError(f"bad Expires {value[:50]!r}")
                cached = int(value)
            else:
                cached = None
            self.headers._typed["expires"] = cached
        return cast("int | None", cached)

    @property
    def content_length(self) -> int | None:
        """The Content-Length as received (the body length decides on writing)."""
        value = self.headers.get("content-length")
        if value is None or not value.isdigit() or not value.isascii():
            return None
        return _abnf.digits_value(value, 18)

    def validate(self) -> None:
        """Parse every header sipimdn interprets; raise ``SipParseError`` on the first bad one.

        Checks that Via, From, To, Call-ID and CSeq are present and
        well-formed, and the optional Max-Forwards, Content-Type, Contact,
        Route, Record-Route and Expires when present. Results are cached, so
        later accesses cost nothing.
        """
        if not self.vias:
            raise _missing("Via")
        self.from_  # noqa: B018 - each access parses and caches
        self.to  # noqa: B018
        self.call_id  # noqa: B018
        self.cseq  # noqa: B018
        self.max_forwards  # noqa: B018
        self.expires  # noqa: B018
        self.content_type  # noqa: B018
        self.contact  # noqa: B018
        self.route  # noqa: B018
        self.record_route  # noqa: B018

    # -- writing -----------------------------------------------------------------

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form; Content-Length is set to the body length in bytes.

        Rows nobody modified are written exactly as received (name spelling,
        spacing, folding); only line ends are normalised to CRLF.
        """
        body = self.body
        length = str(len(body))
        lines = [self._start_line()]
        seen_length = False
        for key, name, value, raw in self.headers._rows:
            if key == "content-length":
                if seen_length:
                    continue
                seen_length = True
                if value != length:
                    lines.append(f"{name}: {length}")
                    continue
            lines.append(raw)
        if not seen_length:
            lines.append(f"Content-Length: {length}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    """A SIP request: method, Request-URI, headers and body (bytes)."""

    __slots__ = ("_uri", "_uri_text", "method")

    def __init__(
        self,
        method: str,
        uri: Uri | str,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        if _abnf.METHOD_RE.fullmatch(method) is None:
            raise LocalProtocolError(f"invalid method {method!r}")
        self.method = method
        self.uri = uri if isinstance(uri, Uri) else Uri.parse(uri)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers or ())
        self.body = bytes(body)

    @classmethod
    def _parsed(cls, method: str, uri: Uri, uri_text: str, headers: Headers, body: bytes) -> Request:
        self = cls.__new__(cls)
        self.method = method
        self._uri = uri
        self._uri_text = uri_text
        self.headers = headers
        self.body = body
        return self

    @property
    def uri(self) -> Uri:
        """The Request-URI."""
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self._uri_text = str(value)

    @property
    def cseq(self) -> CSeq:
        """CSeq; its method must equal the request method (§8.1.1.5)."""
        value = self._cseq()
        if value.method != self.method:
            raise SipParseError(f"CSeq method {value.method} does not match request method {self.method}")
        return value

    def copy(self) -> Request:
        """An independent copy: header changes on it do not touch this one."""
        return Request._parsed(self.method, self._uri, self._uri_text, self.headers.copy(), self.body)

    def _start_line(self) -> str:
        return f"{self.method} {self._uri_text} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_text}>"


class Response(Message):
    """A SIP response: status code, reason phrase, headers and body (bytes)."""

    __slots__ = ("reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        if not 100 <= status_code <= 699:
            raise LocalProtocolError(f"status code {status_code} outside 100-699")
        if reason is not None and ("\r" in reason or "\n" in reason):
            raise LocalProtocolError("line break in reason phrase")
        self.status_code = status_code
        self.reason = reason if reason is not None else REASON_PHRASES.get(status_code, "")
        self.headers = headers if isinstance(headers, Headers) else Headers(headers or ())
        self.body = bytes(body)

    @classmethod
    def _parsed(cls, status_code: int, reason: str, headers: Headers, body: bytes) -> Response:
        self = cls.__new__(cls)
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.body = body
        return self

    def copy(self) -> Response:
        """An independent copy: header changes on it do not touch this one."""
        return Response._parsed(self.status_code, self.reason, self.headers.copy(), self.body)

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status_code} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.reason}>"


# What a response copies from its request besides the Via rows (§8.2.6.2),
# in the order it is written; Timestamp only into a 100 (§8.2.6.1).
_COPIED_ORDER = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_COPIED = frozenset(("from", "to", "call-id", "cseq", "timestamp"))


def _unfolded(row: HeaderRow) -> HeaderRow:
    """A folded row written back on one line (its value is already unfolded)."""
    return (row[0], row[1], row[2], f"{row[1]}: {row[2]}")


def _derived_to_tag(request: Request) -> str:
    """A To tag that is the same for every response to the same request.

    Derived from Call-ID, From tag and the top Via branch, so a stateless
    element (RFC 3261 §8.2.7) and a retransmitted request get the same tag.
    """
    branch = request.top_via.branch or ""
    material = f"{request.call_id}\x00{request.from_.tag or ''}\x00{branch}\x00{request.cseq.number}"
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def make_response(
    request: Request,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
) -> Response:
    """Build a response to ``request`` as RFC 3261 §8.2.6 says.

    Copies every Via (in order), From, Call-ID and CSeq verbatim, and To; if
    To has no tag and the status is above 100, adds ``to_tag`` or, when none
    is given, a tag derived from the request so that every response to it
    carries the same one. A 100 copies Timestamp (§8.2.6.1).
    Raises ``SipParseError`` if the request lacks a header the response needs.
    """
    # One pass over the request's rows: every Via row and the first row of
    # each other copied header, reused as they are (already checked when
    # they were parsed or added), so the response repeats the request's
    # spelling byte for byte. This runs for every final response.
    rows: list[HeaderRow] = []
    first: dict[str, HeaderRow] = {}
    for row in request.headers._rows:
        key = row[0]
        if key == "via":
            rows.append(row)
        elif key in _COPIED and key not in first:
            first[key] = row
    if not rows:
        raise _missing("Via")
    for key, label in _COPIED_ORDER:
        found = first.get(key)
        if found is None:
            raise _missing(label)
        row = found
        if key == "to" and status_code > 100 and request.to.tag is None:
            tag = to_tag if to_tag is not None else _derived_to_tag(request)
            if "\r" in tag or "\n" in tag or "\x00" in tag:
                raise LocalProtocolError(f"line break or NUL in the To tag {tag!r}")
            # Append to the received text so the To URI stays byte-identical.
            value = f"{row[2]};tag={tag}"
            row = (key, row[1], value, f"{row[1]}: {value}")
        elif "\n" in row[3]:
            row = _unfolded(row)
        rows.append(row)
    if status_code == 100:
        timestamp = first.get("timestamp")
        if timestamp is not None:
            rows.append(_unfolded(timestamp) if "\n" in timestamp[3] else timestamp)
    # (checked last, as the Response constructor did, so a bad request is
    # reported first whatever the caller passed)
    if not 100 <= status_code <= 699:
        raise LocalProtocolError(f"status code {status_code} outside 100-699")
    if reason is None:
        reason = REASON_PHRASES.get(status_code, "")
    elif "\r" in reason or "\n" in reason:
        raise LocalProtocolError("line break in reason phrase")
    return Response._parsed(status_code, reason, Headers.from_rows(rows), b"")
