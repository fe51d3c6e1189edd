"""What requests and responses share (RFC 3261 §7): ``Message``, its typed accessors and wire form.

Typed values (Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Type, Contact, Route,
Record-Route, Expires; RFC 3261 §20) are parsed on first access and cached in the headers'
typed cache until a header is modified: most messages are routed on four or five headers and
nobody reads the rest. A typed accessor raises ``SipParseError`` (status 400) when the header it
reads is missing or malformed, or repeated where only one is allowed (RFC 4475 §3.3.8);
``validate()`` runs all of them at once. ``stamp_received`` records a request's source in its
top Via (RFC 3261 §18.2.1, RFC 3581 §4). ``to_bytes`` writes the message (RFC 3261 §7) with
Content-Length set to the body's length (§20.14), untouched rows byte for byte.
"""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

from .. import _abnf
from .._cache import remember_text
from ..errors import LocalProtocolError, SipParseError
from ..headers import ContentType, CSeq, NameAddr, Via, _make_via, split_comma_list
from ._rows import INDEX_KEY, Headers

__all__ = ["Message"]

#: Cache sentinel: ``None`` is a legitimate cached value (header absent).
_MISS: object = object()
#: Typed-cache key of the per-message index used by single-valued accessors (and by
#: ``Headers.get`` while it is there).
_INDEX = INDEX_KEY


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
        index: tuple[dict[str, str], set[str]] | None = typed.get(_INDEX)
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
        first, repeated = index
        if key in repeated:
            raise SipParseError(f"more than one {label} header")
        return first.get(key)

    # Each accessor looks in the cache first (the common case once the
    # transaction layer has routed the message) and parses on a miss; a required
    # header's absence is checked in place (one call fewer per read).

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        cached: list[Via] = self.headers._typed.get("via", _MISS)
        if cached is _MISS:
            cached = [Via.parse(v) for v in self.headers.get_all("via")]
            self.headers._typed["via"] = cached
        return list(cached)

    @property
    def top_via(self) -> Via:
        """The top Via (raises ``SipParseError`` if there is none)."""
        cached: Via = self.headers._typed.get("via:top", _MISS)
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
        return cached

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
        stamped = _make_via(via.transport, via.host, via.port, MappingProxyType(merged))
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
        if len(changes) == 2 and "received" not in params and text.endswith(";rport"):
            # The usual RFC 3581 request: a valueless rport last and no received. What the
            # loop below writes: that rport filled in, received appended.
            value = f"{text}={changes['rport']};received={ip}"
        else:
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
        cached: str = self.headers._typed.get("call-id", _MISS)
        if cached is _MISS:
            value = self._single("call-id", "Call-ID")
            if value is None:
                raise _missing("Call-ID")
            # callid = word [ "@" word ]: no whitespace inside.
            if " " in value or "\t" in value:
                raise SipParseError(f"bad Call-ID {value[:200]!r}")
            self.headers._typed["call-id"] = cached = value
        return cached

    @property
    def cseq(self) -> CSeq:
        """CSeq (number and method)."""
        return self._cseq()

    def _cseq(self) -> CSeq:
        cached: CSeq = self.headers._typed.get("cseq", _MISS)
        if cached is _MISS:
            value = self._single("cseq", "CSeq")
            if value is None:
                raise _missing("CSeq")
            cached = CSeq.parse(value)
            self.headers._typed["cseq"] = cached
        return cached

    @property
    def from_(self) -> NameAddr:
        """From."""
        cached: NameAddr = self.headers._typed.get("from", _MISS)
        if cached is _MISS:
            value = self._single("from", "From")
            if value is None:
                raise _missing("From")
            cached = NameAddr.parse(value)
            self.headers._typed["from"] = cached
        return cached

    @property
    def to(self) -> NameAddr:
        """To."""
        cached: NameAddr = self.headers._typed.get("to", _MISS)
        if cached is _MISS:
            value = self._single("to", "To")
            if value is None:
                raise _missing("To")
            cached = NameAddr.parse(value)
            self.headers._typed["to"] = cached
        return cached

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards, or None if absent."""
        cached: int | None = self.headers._typed.get("max-forwards", _MISS)
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
        return cached

    @property
    def content_type(self) -> ContentType | None:
        """Content-Type, or None if absent."""
        cached: ContentType | None = self.headers._typed.get("content-type", _MISS)
        if cached is _MISS:
            value = self._single("content-type", "Content-Type")
            cached = None if value is None else ContentType.parse(value)
            self.headers._typed["content-type"] = cached
        return cached

    def _name_addr_list(self, key: str) -> list[NameAddr]:
        cached: list[NameAddr] = self.headers._typed.get(key, _MISS)
        if cached is _MISS:
            cached = [NameAddr.parse(v) for v in self.headers.get_all(key)]
            self.headers._typed[key] = cached
        return list(cached)

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

        cached: int | None = self.headers._typed.get("expires", _MISS)
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
        return cached

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
