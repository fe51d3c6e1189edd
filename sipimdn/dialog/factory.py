"""Identifiers and out-of-dialog requests (RFC 3261 §8.1.1, §19.3; RFC 3428 §4).

Every identifier we put on a request is random bytes from the operating system's CSPRNG (drawn
in blocks by :mod:`sipimdn._tokens`, which hands each byte out once): branches carry 96 random bits after
the magic cookie (§8.1.1.7 wants them unique in space and time, and an unpredictable branch keeps
an off-path attacker from forging responses to our requests), tags 64 bits (§19.3 asks for at
least 32, cryptographically random), Call-IDs 128 bits.

The To tag a UAS puts on its responses (``new_local_tag``) is made on the receive path, once per
request, where even pooled randomness is worth saving. It is a
64-bit random prefix drawn once per 65,536 tags, then a counter: every tag carries 64
cryptographically random bits that no other process shares (§19.3's "at least 32 bits of
randomness", whose purpose is global uniqueness), and tags from one process never repeat. A tag
only identifies the dialog a response would create; it guards nothing, so its next value being
guessable from the last one costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from .._cache import remember
from .._tokens import token_hex
from ..errors import LocalProtocolError
from ..headers import NameAddr, Via, _make_via, header_key
from ..message import HeaderRow, Headers, Request
from ..transport.flow import Address, Transport
from ..uri import Uri

__all__ = [
    "MAGIC_COOKIE",
    "RequestTemplate",
    "build_request",
    "new_branch",
    "new_call_id",
    "new_local_tag",
    "new_tag",
    "stamp_via",
]

#: RFC 3261 §8.1.1.7: every branch we make starts with this.
MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh Via branch: the magic cookie and 96 random bits."""
    return MAGIC_COOKIE + token_hex(12)


def new_tag() -> str:
    """A fresh From/To tag: 64 random bits."""
    return token_hex(8)


class _TagSource:
    """A random 64-bit prefix (re-drawn every 65,536 tags) followed by a counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = ""
        self._count = 0x10000

    def __call__(self) -> str:
        count = self._count
        if count >= 0x10000:
            self._prefix = token_hex(8)
            count = 0
        self._count = count + 1
        return f"{self._prefix}{count:x}"


#: A fresh To tag for a response we send as a UAS (see the module docstring): 64 random bits and
#: a counter.
new_local_tag = _TagSource()


def new_call_id(host: str | None = None) -> str:
    """A fresh Call-ID: 128 random bits, optionally ``@host`` (§8.1.1.4)."""
    token = token_hex(16)
    return f"{token}@{host}" if host else token


def build_request(
    method: str,
    request_uri: Uri | str,
    from_: NameAddr | str,
    to: NameAddr | str,
    *,
    call_id: str | None = None,
    cseq: int = 1,
    from_tag: str | None = None,
    max_forwards: int = 70,
    route: Iterable[str] = (),
    contact: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """Build an out-of-dialog request as §8.1.1 says; the Via is added later by ``stamp_via``.

    From gets ``from_tag`` or a fresh tag; To never has one outside a dialog (§8.1.1.2). MESSAGE
    requests never carry Contact (RFC 3428 §4); ask for one on MESSAGE and this raises.
    """
    if not 1 <= cseq < 2**31:
        raise LocalProtocolError(f"CSeq number {cseq} outside 1..2**31-1 (§8.1.1.5)")
    if contact is not None and method == "MESSAGE":
        raise LocalProtocolError("RFC 3428 §4: a MESSAGE request must not contain a Contact header")
    from_addr = from_ if isinstance(from_, NameAddr) else NameAddr.parse(from_)
    to_addr = to if isinstance(to, NameAddr) else NameAddr.parse(to)
    if to_addr.tag is not None:
        raise LocalProtocolError("an out-of-dialog request must not carry a To tag (§8.1.1.2)")
    if from_addr.tag is not None:
        from_text = str(from_addr)
    elif from_tag is None and "tag" not in from_addr.params:
        # A fresh tag (hex) goes last: the same text with_tag() would format, without
        # formatting our own (usually the same) From again for every request.
        from_text = f"{_name_addr_text(from_addr)};tag={new_tag()}"
    else:
        from_text = str(from_addr.with_tag(from_tag or new_tag()))
    rows: list[tuple[str, str]] = [(name, value) for name, value in (("Route", r) for r in route)]
    rows += [
        ("Max-Forwards", str(max_forwards)),
        ("From", from_text),
        ("To", _name_addr_text(to_addr)),
        ("Call-ID", call_id or new_call_id()),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        rows.append(("Contact", contact))
    for name, value in headers:
        if name.lower() in {"via", "v", "content-length", "l"}:
            raise LocalProtocolError(f"{name} is managed by the stack")
        rows.append((name, value))
    if content_type is not None:
        rows.append(("Content-Type", content_type))
    checked = _checked_rows(rows)
    if checked is None or method not in _PLAIN_METHODS:
        return Request(method, request_uri, rows if checked is None else Headers.from_rows(checked), body)
    # What Request() makes of the same rows, without formatting the Request-URI again: a Uri
    # is immutable and the same object comes back for the same text (Uri.parse's cache).
    uri = request_uri if isinstance(request_uri, Uri) else Uri.parse(request_uri)
    return Request._parsed(method, uri, str(uri), Headers.from_rows(checked), bytes(body))


#: Methods Request() accepts (its method token check passes), for the shortcut above.
_PLAIN_METHODS = frozenset(
    {"MESSAGE", "OPTIONS", "REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "SUBSCRIBE", "NOTIFY", "INFO",
     "UPDATE", "PRACK", "REFER", "PUBLISH"}
)  # fmt: skip


# The header names requests are built with, and their lookup keys (header_key).
_KNOWN_KEYS: dict[str, str] = {
    name: header_key(name)
    for name in ("Route", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Type",
                 "User-Agent")
}  # fmt: skip


def _checked_rows(items: list[tuple[str, str]]) -> list[HeaderRow] | None:
    """The rows ``Headers(items)`` holds, when every name is one of ours (a token) and no value
    has what ``Headers.add`` refuses (CR, LF, NUL); None leaves the rows to ``Headers.add``,
    which then raises its own error. tests/test_send_fast_paths.py holds the two equal."""
    out: list[HeaderRow] = []
    known = _KNOWN_KEYS
    for name, value in items:
        key = known.get(name)
        if key is None or "\r" in value or "\n" in value or "\x00" in value:
            return None
        out.append((key, name, value, f"{name}: {value}"))
    return out


# NameAddr -> its text, for the values requests are built from again and again (our own From,
# a peer's To whose Uri the core shares between parses). Keyed by identity, holding the object
# so the id cannot be reused while the entry lives; NameAddr and Uri are immutable.
_TEXT_CACHE: dict[int, tuple[object, str]] = {}
_TEXT_CACHE_MAX = 256


def _name_addr_text(addr: NameAddr) -> str:
    if addr.display_name is None and not addr.params:
        return _uri_in_angles(addr.uri)  # <uri>: as NameAddr.__str__ writes it
    entry = _TEXT_CACHE.get(id(addr))
    if entry is not None and entry[0] is addr:
        return entry[1]
    text = str(addr)
    remember(_TEXT_CACHE, id(addr), (addr, text), _TEXT_CACHE_MAX)
    return text


def stamp_via(request: Request, transport: Transport, sent_by: Address, *, rport: bool = True,
              branch: str | None = None) -> Via:
    """Write our top Via: transport, sent-by, a fresh branch (a new transaction) and ``rport``.

    Replaces the top Via if the request has one (our own from an earlier attempt), prepends one
    otherwise. Returns the Via written.
    """
    rows = request.headers._rows
    if branch is None and _without_via(rows):
        # A fresh request's first Via (every request we send goes through here once).
        parts = _via_parts(transport, sent_by, rport)
        if parts is not None:
            return _push_first_via(request, parts, rows)
    params: dict[str, str | None] = {"branch": branch or new_branch()}
    if rport:
        params["rport"] = None  # RFC 3581 §3: ask for the source port in the response
    via = Via(transport.value, sent_by[0], sent_by[1], params)
    if "via" in request.headers:
        request.set_top_via(via)
    else:
        request.headers.prepend("Via", str(via))
        # As set_top_via does: the typed top Via is the one just written (a Via parses back
        # from its text equal to itself), so the transaction layer reading it next parses nothing.
        request.headers._typed["via:top"] = via
    return via


# -- templates: the constant rows of the requests sent again and again ----------------------------

#: Rows every out-of-dialog MESSAGE built from a template carries unchanged (§8.1.1.6: Max-Forwards
#: 70; §8.1.1.5: CSeq 1 for a new request). Rows are immutable tuples, so every request shares them.
_MAX_FORWARDS_ROW: HeaderRow = ("max-forwards", "Max-Forwards", "70", "Max-Forwards: 70")


class RequestTemplate:
    """What :func:`build_request` writes for one method, From, Route set, extra headers and
    Content-Type, kept once: the rows that do not change between requests (Route, Max-Forwards,
    CSeq, User-Agent, Content-Type) are built and checked here and shared by every request,
    and the From text is formatted once, with only its tag fresh each time.

    A request built from a template is a new out-of-dialog request (§8.1.1): fresh From tag and
    Call-ID, CSeq 1, no To tag. :meth:`build` returns exactly what :func:`build_request` returns
    for the same arguments (tests/test_request_template.py holds the two equal), or None when
    that one would take its general route (a value it must refuse, a URI to check again).
    """

    __slots__ = ("_cseq_row", "_from_text", "_head_rows", "_method", "_tail_rows")

    def __init__(self, method: str, from_text: str, head_rows: tuple[HeaderRow, ...],
                 tail_rows: tuple[HeaderRow, ...]) -> None:
        self._method = method
        self._from_text = from_text
        self._head_rows = head_rows
        self._tail_rows = tail_rows
        self._cseq_row: HeaderRow = ("cseq", "CSeq", f"1 {method}", f"CSeq: 1 {method}")

    @classmethod
    def of(
        cls,
        method: str,
        from_: NameAddr,
        *,
        route: Iterable[str] = (),
        headers: Iterable[tuple[str, str]] = (),
        content_type: str | None = None,
    ) -> RequestTemplate | None:
        """The template for these constant arguments of :func:`build_request`, or None when
        build_request would not take its direct route with them (an unknown header name, a
        line break or NUL in a value, a method Request() checks, a From with a tag or
        parameters, a Contact): then build_request itself must be used, for its errors."""
        if method not in _PLAIN_METHODS:
            return None
        if from_.tag is not None or from_.params:
            return None
        head = _checked_rows([("Route", r) for r in route])
        tail_items = list(headers)
        if any(name.lower() in {"via", "v", "content-length", "l"} for name, _ in tail_items):
            return None
        if content_type is not None:
            tail_items.append(("Content-Type", content_type))
        tail = _checked_rows(tail_items)
        from_text = _name_addr_text(from_)
        if head is None or tail is None or _has_break(from_text):
            return None
        return cls(method, from_text, (*head, _MAX_FORWARDS_ROW), tuple(tail))

    def build(self, request_uri: Uri, to: Uri, body: bytes) -> Request | None:
        """``build_request(method, request_uri, from_, NameAddr(to), body=body, ...)`` with this
        template's constant arguments; None (nothing built) when the To URI's text has a line
        break or NUL, which build_request would refuse through ``Headers.add``."""
        to_text = _uri_in_angles(to)
        if _has_break(to_text):
            return None
        from_value = f"{self._from_text};tag={new_tag()}"
        call_id = new_call_id()
        rows = [
            *self._head_rows,
            ("from", "From", from_value, f"From: {from_value}"),
            ("to", "To", to_text, f"To: {to_text}"),
            ("call-id", "Call-ID", call_id, f"Call-ID: {call_id}"),
            self._cseq_row,
            *self._tail_rows,
        ]
        headers = Headers.from_rows(rows)
        return Request._parsed(self._method, request_uri, str(request_uri), headers, bytes(body))


def _has_break(text: str) -> bool:
    """What ``Headers.add`` refuses in a value: a line break (it would inject rows) or NUL."""
    return "\r" in text or "\n" in text or "\x00" in text


def _uri_in_angles(uri: Uri) -> str:
    """``str(NameAddr(uri))``: ``<uri>``, cached by the (shared, immutable) Uri object."""
    entry = _TEXT_CACHE.get(id(uri))
    if entry is not None and entry[0] is uri:
        return entry[1]
    text = f"<{uri}>"
    remember(_TEXT_CACHE, id(uri), (uri, text), _TEXT_CACHE_MAX)
    return text


# (transport, sent-by, rport) -> our Via's text around its branch ("SIP/2.0/UDP host:port;branch="
# and ";rport" or "") as str(Via) writes them, with the Via's transport, host and port; None
# when the text needs the general route. One entry per listening address and transport.
# tests/test_request_template.py holds the fast route equal to the general one.
_ViaParts = tuple[str, str, str, str, int | None]
_VIA_PARTS: dict[tuple[Transport, Address, bool], _ViaParts | None] = {}
_VIA_PARTS_MAX = 64


def _via_parts(transport: Transport, sent_by: Address, rport: bool) -> _ViaParts | None:
    key = (transport, sent_by, rport)
    if key in _VIA_PARTS:
        return _VIA_PARTS[key]
    params: dict[str, str | None] = {"branch": MAGIC_COOKIE}
    if rport:
        params["rport"] = None
    via = Via(transport.value, sent_by[0], sent_by[1], params)
    head, cookie, tail = str(via).partition(f";branch={MAGIC_COOKIE}")
    parts: _ViaParts | None = None
    if cookie and not _has_break(head) and tail in ("", ";rport"):
        parts = (f"{head};branch=", tail, via.transport, via.host, via.port)
    return remember(_VIA_PARTS, key, parts, _VIA_PARTS_MAX)


def _without_via(rows: list[HeaderRow]) -> bool:
    for row in rows:  # noqa: SIM110 - a loop: 0.2 us less than all() over a generator, per request sent
        if row[0] == "via":
            return False
    return True


def _push_first_via(request: Request, parts: _ViaParts, rows: list[HeaderRow]) -> Via:
    """``request.headers.prepend("Via", str(via))`` for a request without a Via (the row goes
    first) and a fresh branch, with the text from its cached parts; the typed Via is cached as
    stamp_via caches it."""
    head, tail, transport, host, port = parts
    branch = new_branch()
    value = f"{head}{branch}{tail}"
    params: dict[str, str | None] = {"branch": branch, "rport": None} if tail else {"branch": branch}
    via = _make_via(transport, host, port, MappingProxyType(params))
    rows.insert(0, ("via", "Via", value, f"Via: {value}"))
    typed = request.headers._typed
    typed.clear()
    typed["via:top"] = via
    return via
