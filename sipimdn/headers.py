"""Typed values of the SIP header fields sipimdn interprets (RFC 3261 §20).

Each class has ``parse(text)`` (raising ``SipParseError``, status 400) and
``__str__`` giving a canonical spelling. The values are immutable; build a new
one with ``with_params`` / ``with_tag`` and put it back through the message
(for example ``Request.set_top_via``). Parameter names are stored lower-case;
quoted parameter values are stored unquoted and re-quoted when written.

Also here: the header-name table (compact forms, canonical spellings), the
comma splitting rule that ``Headers.get_all`` uses, and the identity a trusted
network element asserts (P-Asserted-Identity, RFC 3325 §9.1).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

from . import _abnf
from ._cache import remember_text
from ._fastinit import maker
from .errors import SipParseError
from .uri import Uri

__all__ = [
    "COMPACT_FORMS",
    "AssertedIdentity",
    "CSeq",
    "ContentType",
    "NameAddr",
    "Via",
    "canonical_name",
    "header_key",
    "is_list_header",
    "split_comma_list",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


# -- header names ---------------------------------------------------------

#: Compact forms: RFC 3261 §7.3.3 and the IANA SIP header registry
#: (RFC 3515, 3841, 3892, 4028, 4474, 6665).
COMPACT_FORMS: Mapping[str, str] = MappingProxyType(
    {
        "a": "accept-contact",
        "b": "referred-by",
        "c": "content-type",
        "d": "request-disposition",
        "e": "content-encoding",
        "f": "from",
        "i": "call-id",
        "j": "reject-contact",
        "k": "supported",
        "l": "content-length",
        "m": "contact",
        "n": "identity-info",
        "o": "event",
        "r": "refer-to",
        "s": "subject",
        "t": "to",
        "u": "allow-events",
        "v": "via",
        "x": "session-expires",
        "y": "identity",
    }
)

# Spellings that title-casing would get wrong.
_CANONICAL_SPECIAL = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "identity-info": "Identity-Info",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
}

# Header fields whose grammar is a single value (or free text that may contain
# commas), so a comma inside them never separates values (RFC 3261 §7.3.1).
# The four authentication headers are here because their values are
# comma-separated parameter lists that must never be split (§7.3.1, §20.7).
_SINGLE_VALUED = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "authentication-info",
        "call-id",
        "content-disposition",
        "content-length",
        "content-type",
        "cseq",
        "date",
        "expires",
        "from",
        "to",
        "max-forwards",
        "min-expires",
        "mime-version",
        "organization",
        "priority",
        "reply-to",
        "retry-after",
        "server",
        "subject",
        "timestamp",
        "user-agent",
        "refer-to",
        "referred-by",
        "event",
        "session-expires",
        "min-se",
        "identity",
        "identity-info",
        "subscription-state",
        "rack",
        "rseq",
        "sip-etag",
        "sip-if-match",
    }
)

_KEY_CACHE: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lookup key of a header name: lower-case, compact form expanded."""
    key = _KEY_CACHE.get(name)
    if key is None:
        lowered = name.lower()
        key = remember_text(_KEY_CACHE, name, COMPACT_FORMS.get(lowered, lowered), 2048, max_key=64)
    return key


def canonical_name(name: str) -> str:
    """The conventional spelling of a header name (``i`` -> ``Call-ID``)."""
    key = header_key(name)
    special = _CANONICAL_SPECIAL.get(key)
    if special is not None:
        return special
    return "-".join(part[:1].upper() + part[1:] for part in key.split("-"))


def is_list_header(key: str) -> bool:
    """True if commas in this header's value separate values."""
    return key not in _SINGLE_VALUED


def split_comma_list(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and ``<...>``.

    Empty elements (``a,,b`` or a trailing comma) are dropped: RFC 3261
    §7.3.1 lists are ``#rule`` lists, which allow them to be empty.
    """
    if '"' not in value and "<" not in value:
        if "," not in value:
            stripped = value.strip()
            return [stripped] if stripped else []
        return [p for p in (part.strip() for part in value.split(",")) if p]
    items: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    return [p for p in (part.strip() for part in items) if p]


# -- shared helpers ---------------------------------------------------------


def _unquote(text: str) -> str:
    """The content of a quoted-string without quotes and backslash escapes."""
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\" and i + 1 < len(inner):
            i += 1
            ch = inner[i]
        out.append(ch)
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _param_text(name: str, value: str | None) -> str:
    if value is None:
        return f";{name}"
    if value and (_abnf.TOKEN_RE.fullmatch(value) or _is_bracketed_v6(value)):
        return f";{name}={value}"
    return f";{name}={_quote(value)}"


def _is_bracketed_v6(value: str) -> bool:
    return value[:1] == "[" and value[-1:] == "]" and _abnf.IPV6_CHARS_RE.fullmatch(value[1:-1]) is not None


def _params_text(params: Mapping[str, str | None]) -> str:
    return "".join(_param_text(k, v) for k, v in params.items())


def _split_simple_params(text: str, what: str) -> dict[str, str | None]:
    """``;name[=value]`` pairs already matched by a fast-path regex."""
    params: dict[str, str | None] = {}
    if text:
        for part in text[1:].split(";"):
            name, eq, value = part.partition("=")
            name = name.lower()
            if name in params:
                raise SipParseError(f"parameter {name!r} repeated in {what}")
            params[name] = value if eq else None
    return params


def parse_params(text: str, pos: int, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` from ``text[pos:]`` to the end.

    Names are lower-cased; quoted values are unquoted. A parameter repeated
    with the same name is an error (RFC 3261 §20.42 and §20.20 give each name
    once; silently keeping one would hide the other).
    """
    if _abnf.SIMPLE_PARAMS_RE.fullmatch(text, pos) is not None:
        # Fast path: ";name[=value]" pairs with no whitespace or quotes.
        return _split_simple_params(text[pos:], what)
    params: dict[str, str | None] = {}
    end = len(text)
    match = _abnf.GENERIC_PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            if not text[pos:].strip(" \t"):
                break
            raise SipParseError(f"bad parameter in {what}: {text[pos:][:80]!r}")
        name = m.group("name").lower()
        if name in params:
            raise SipParseError(f"parameter {name!r} repeated in {what}")
        value = m.group("value")
        if value is not None and value[:1] == '"':
            value = _unquote(value)
        params[name] = value
        pos = m.end()
    return params


def _frozen(params: Mapping[str, str | None]) -> Mapping[str, str | None]:
    return params if type(params) is MappingProxyType else MappingProxyType(dict(params))


# -- NameAddr -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameAddr:
    """From, To, Contact, Route, Record-Route values (RFC 3261 §20.10, §20.20).

    ``name-addr / addr-spec`` followed by header parameters (``tag`` and
    others). Without angle brackets, parameters after the URI belong to the
    header, not to the URI (§20.10).
    """

    uri: Uri
    display_name: str | None = None
    params: Mapping[str, str | None] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen(self.params))

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse a name-addr or addr-spec with parameters."""
        cached = _NAME_ADDRS.get(text)
        if cached is not None:
            return cached
        head, tag_sep, tag = text.rpartition(";tag=")
        if tag_sep:
            # The usual From (and To of a response): a tag-less value seen before plus ";tag=".
            # ``head`` took the fast path below with no parameters (only such values are
            # cached), so the fast path would match ``text`` with the same groups and the tag
            # as its only parameter, exactly when the tag is a run of the characters it allows.
            base = _NAME_ADDRS.get(head)
            if base is not None and not base.params and _TAG_VALUE_RE.fullmatch(tag) is not None:
                return _make_name_addr(base.uri, base.display_name, MappingProxyType({"tag": tag}))
        m = _abnf.NAME_ADDR_FAST_RE.fullmatch(text)
        if m is None:
            return cls._parse_general(text)
        quoted, plain, uri_text, params_text = m.groups()
        if not params_text:
            params: Mapping[str, str | None] = _EMPTY
        elif params_text[:5] == ";tag=" and params_text.find(";", 5) < 0:
            # The usual From/To: only a tag (SIMPLE_PARAMS_RE matched, so
            # the value is a non-empty run of token characters).
            params = MappingProxyType({"tag": params_text[5:]})
        else:
            params = MappingProxyType(_split_simple_params(params_text, "address"))
        display = quoted if quoted is not None else plain
        parsed = _make_name_addr(Uri.parse(uri_text), display, params)
        if len(params) == 1 and "tag" in params:
            # Remember the value without its tag, for the next one from the same sender.
            head = text[: m.start("params")]
            if head not in _NAME_ADDRS:
                remember_text(_NAME_ADDRS, head, _make_name_addr(parsed.uri, display, _EMPTY), 1024)
        elif "tag" not in params:
            # A To without a tag (every out-of-dialog request), a Contact, a
            # Route: the same text comes back message after message. Values
            # with a tag are per transaction and would only churn the cache.
            remember_text(_NAME_ADDRS, text, parsed, 1024)
        return parsed

    @classmethod
    def _parse_general(cls, text: str) -> NameAddr:
        """The full grammar (quoted-pairs, whitespace, addr-spec, quoted parameters)."""
        s = text.strip(" \t")
        display: str | None = None
        if s[:1] == '"':
            # display-name as quoted-string
            i = 1
            n = len(s)
            while i < n:
                ch = s[i]
                if ch == "\\":
                    i += 2
                    continue
                if ch == '"':
                    break
                i += 1
            else:
                raise SipParseError(f"unterminated quoted display name in {text[:200]!r}")
            display = _unquote(s[: i + 1])
            rest = s[i + 1 :].lstrip(" \t")
            if rest[:1] != "<":
                raise SipParseError(f"quoted display name not followed by <URI> in {text[:200]!r}")
        else:
            lt = s.find("<")
            if lt >= 0:
                token_part = s[:lt].strip(" \t")
                if token_part:
                    # display-name = *(token LWS)
                    for word in token_part.split():
                        if _abnf.TOKEN_RE.fullmatch(word) is None:
                            raise SipParseError(f"bad display name {token_part!r}")
                    display = " ".join(token_part.split())
                rest = s[lt:]
            else:
                rest = s
        if rest[:1] == "<":
            gt = rest.find(">")
            if gt < 0:
                raise SipParseError(f"missing '>' in {text[:200]!r}")
            # No whitespace inside the brackets: addr-spec has none, and
            # RFC 4475 §3.1.2.14 prefers rejecting it to guessing.
            uri_text = rest[1:gt]
            pos = gt + 1
            params = parse_params(rest, pos, "address")
        else:
            # addr-spec: the URI runs to the first ';' (header params follow)
            # and may not contain ',', '?' or ';' of its own (§20.10).
            semi = rest.find(";")
            uri_text = (rest if semi < 0 else rest[:semi]).rstrip(" \t")
            if not uri_text or any(c in uri_text for c in ' \t,?<>"'):
                raise SipParseError(f"bad address {text[:200]!r}")
            params = parse_params(rest, len(uri_text), "address") if semi >= 0 else {}
        return _make_name_addr(Uri.parse(uri_text), display, MappingProxyType(params))

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (From/To), or None."""
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        """A copy with ``;tag=`` set."""
        return self.with_params(tag=tag)

    def with_params(self, **params: str | None) -> NameAddr:
        """A copy with the given header parameters set (``None`` makes a flag)."""
        merged = dict(self.params)
        merged.update({k.lower(): v for k, v in params.items()})
        return NameAddr(self.uri, self.display_name, merged)

    def __str__(self) -> str:
        # Always write angle brackets: required when the URI has ',', ';' or
        # '?' (§20.10) and harmless otherwise.
        head = f"<{self.uri}>"
        if self.display_name is not None:
            head = f"{_quote(self.display_name)} {head}"
        return head + _params_text(self.params)


#: ``NameAddr(uri, display_name, params)`` for the parsers, without __init__ and __post_init__
#: (``params`` is already read-only): a name-addr per From, To and Contact of every message
#: (see sipimdn._fastinit).
_make_name_addr: Callable[[Uri, str | None, Mapping[str, str | None]], NameAddr] = maker(
    NameAddr, skip_post_init=True)
# Parsed name-addr values without a tag, by text (immutable, so shareable).
_NAME_ADDRS: dict[str, NameAddr] = {}
# A tag value the name-addr fast path takes: what its parameter pattern allows after "=".
_TAG_VALUE_RE = re.compile(rf"[{_abnf.token_char}:]+")


# -- Via ---------------------------------------------------------------------


#: ``received`` values already found to be IP addresses (every response to a request we sent
#: echoes our Via with the address the peer saw, RFC 3581 §4: the same few come back each time,
#: and :mod:`ipaddress` costs more than the rest of the Via). Bounded; refusals are not kept.
_RECEIVED_OK: dict[str, bool] = {}


def _received_ok(received: str) -> bool:
    """Whether a Via ``received`` value is an IP address (RFC 3261 §20.42: IPv4address /
    IPv6address; the brackets of an IPv6 reference accepted), remembered when it is."""
    try:
        ipaddress.ip_address(received[1:-1] if received[:1] == "[" else received)
    except ValueError:
        return False
    remember_text(_RECEIVED_OK, received, True, 256, max_key=64)
    return True


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm (RFC 3261 §20.42, RFC 3581 rport).

    ``transport`` is upper-case; ``host`` has no IPv6 brackets.
    """

    transport: str
    host: str
    port: int | None = None
    params: Mapping[str, str | None] = field(default_factory=_empty)
    protocol: str = "SIP/2.0"

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen(self.params))

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one via-parm (not a comma list)."""
        head, semi, _ = text.partition(";")
        sent = _VIA_HEADS.get(head)
        if sent is not None and (not semi or _abnf.SIMPLE_PARAMS_RE.fullmatch(text, len(head)) is not None):
            # The sent-protocol and sent-by of this peer were read by the fast path below (a
            # sent-by holds no ";", so ``head`` is exactly what it matched before the
            # parameters): only the parameters are new, checked by the same pattern.
            cached_params = _split_simple_params(text[len(head):], "Via")
            if cached_params:
                cls._check_params(cached_params, text)
            return _make_via(sent[0], sent[1], sent[2], MappingProxyType(cached_params))
        fast = _abnf.VIA_FAST_RE.fullmatch(text)
        if fast is not None:
            transport, host, port_text, params_text = fast.groups()
            if host[0] == "[":
                host = host[1:-1]
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    raise SipParseError(f"bad IPv6 address in Via {text[:200]!r}") from None
            fast_port = None
            if port_text is not None:
                fast_port = int(port_text)
                if not 0 < fast_port <= 65535:
                    raise SipParseError(f"bad port in Via {text[:200]!r}")
            fast_params = _split_simple_params(params_text, "Via")
            if fast_params:
                cls._check_params(fast_params, text)
            transport = transport.upper()
            sent_by = (transport, host, fast_port)
            remember_text(_VIA_HEADS, text[: fast.start("params")], sent_by, 256, max_key=128)
            return _make_via(transport, host, fast_port, MappingProxyType(fast_params))
        m = _abnf.VIA_SENT_RE.match(text)
        if m is None:
            raise SipParseError(f"bad Via {text[:200]!r}")
        name, version, transport, host, port_text = m.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"Via with unsupported protocol {name}/{version}")
        if host[0] == "[":
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise SipParseError(f"bad IPv6 address in Via {text[:200]!r}") from None
        elif _abnf.IPV4_RE.fullmatch(host) is not None:
            pass
        elif _abnf.HOSTNAME_RE.fullmatch(host) is None or host.rstrip(".").rpartition(".")[2][:1].isdigit():
            # (a numeric top label means a mistyped address such as 300.1.1.1)
            raise SipParseError(f"bad host in Via {text[:200]!r}")
        port: int | None = None
        if port_text is not None:
            port = _abnf.digits_value(port_text, 5)
            if port is None or not 0 < port <= 65535:
                raise SipParseError(f"bad port in Via {text[:200]!r}")
        params = parse_params(text, m.end(), "Via")
        if params:
            cls._check_params(params, text)
        return _make_via(transport.upper(), host, port, MappingProxyType(params))

    @staticmethod
    def _check_params(params: Mapping[str, str | None], text: str) -> None:
        # via-ttl = "ttl" EQUAL ttl (1*3DIGIT, 0-255)
        if "ttl" in params:
            ttl = params["ttl"]
            hops = _abnf.digits_value(ttl, 3) if ttl is not None and ttl.isdigit() and ttl.isascii() else None
            if hops is None or hops > 255:
                raise SipParseError(f"bad ttl in Via {text[:200]!r}")
        # RFC 3581: response-port = "rport" [EQUAL 1*DIGIT]
        rport = params.get("rport")
        if rport is not None and (
            not rport.isdigit() or not rport.isascii() or not 0 < (_abnf.digits_value(rport, 5) or 0) <= 65535
        ):
            raise SipParseError(f"bad rport in Via {text[:200]!r}")
        # via-received = "received" EQUAL (IPv4address / IPv6address)
        if "received" in params:
            received = params["received"]
            if received is None:
                raise SipParseError(f"received without a value in Via {text[:200]!r}")
            if received not in _RECEIVED_OK and not _received_ok(received):
                raise SipParseError(f"bad received address in Via {text[:200]!r}")
        if "branch" in params and not params["branch"]:
            raise SipParseError(f"branch without a value in Via {text[:200]!r}")

    @property
    def branch(self) -> str | None:
        """The branch parameter (transaction id when it starts with z9hG4bK)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received parameter (source address seen by the next hop)."""
        return self.params.get("received")

    @property
    def maddr(self) -> str | None:
        """The maddr parameter."""
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        """The ttl parameter as an int."""
        value = self.params.get("ttl")
        return _abnf.digits_value(value, 3) if value is not None else None

    @property
    def rport(self) -> int | None:
        """The value of rport, or None when absent or present without a value."""
        value = self.params.get("rport")
        return _abnf.digits_value(value, 5) if value else None

    @property
    def has_rport(self) -> bool:
        """True when rport is present, with or without a value (RFC 3581)."""
        return "rport" in self.params

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) as written by the sender; host without brackets."""
        return (self.host, self.port)

    def with_params(self, **params: str | None) -> Via:
        """A copy with the given parameters set (``None`` makes a flag)."""
        merged = dict(self.params)
        merged.update({k.lower(): v for k, v in params.items()})
        return Via(self.transport, self.host, self.port, merged, self.protocol)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {host}{port}{_params_text(self.params)}"


# (transport, host, port) of the sent-protocol and sent-by texts the fast path of Via.parse
# accepted: one per peer, the same in every request it sends, while the parameters change.
_VIA_HEADS: dict[str, tuple[str, str, int | None]] = {}

#: ``Via(transport, host, port, params)`` (protocol SIP/2.0) for the parser and the layers that
#: stamp or write a Via, without __init__ and __post_init__ (``params`` is already read-only).
_make_via: Callable[[str, str, int | None, Mapping[str, str | None]], Via] = maker(Via, skip_post_init=True)


# -- CSeq ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq (RFC 3261 §20.16): a sequence number below 2**31 and a method."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``."""
        cached = _CSEQS.get(text)
        if cached is not None:
            return cached
        m = _abnf.CSEQ_RE.fullmatch(text.strip(" \t"))
        if m is None:
            raise SipParseError(f"bad CSeq {text[:200]!r}")
        number_text = m.group("number")
        # §8.1.1.5: the number MUST be expressible as a 32-bit unsigned
        # integer and be less than 2**31.
        # (length first: int() of thousands of digits would raise ValueError)
        if len(number_text) > 10 or (number := int(number_text)) >= 2**31:
            raise SipParseError(f"CSeq number out of range in {text[:200]!r}")
        # Out of dialog every request says "1 MESSAGE": the same immutable value again.
        return remember_text(_CSEQS, text, _make_cseq(number, m.group("method")), 256, max_key=64)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


#: Parsed CSeq values by text.
_CSEQS: dict[str, CSeq] = {}

#: ``CSeq(number, method)`` for the parser, without __init__ (see sipimdn._fastinit).
_make_cseq: Callable[[int, str], CSeq] = maker(CSeq)


# -- Content-Type ---------------------------------------------------------------

_CONTENT_TYPES: dict[str, ContentType] = {}


@dataclass(frozen=True, slots=True)
class ContentType:
    """Content-Type (RFC 3261 §20.15): type/subtype with parameters.

    ``type`` and ``subtype`` keep the received case; ``mime`` is lower-case.
    Parameter values are unquoted.
    """

    type: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if type(self.params) is not MappingProxyType:
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @classmethod
    def parse(cls, text: str) -> ContentType:
        """Parse ``m-type SLASH m-subtype *(SEMI m-parameter)``."""
        # A handful of values (message/cpim, text/plain;charset=UTF-8, ...)
        # make up nearly all traffic, and the result is immutable.
        cached = _CONTENT_TYPES.get(text)
        if cached is not None:
            return cached
        return remember_text(_CONTENT_TYPES, text, cls._parse(text), 256)

    @classmethod
    def _parse(cls, text: str) -> ContentType:
        fast = _abnf.CONTENT_TYPE_FAST_RE.fullmatch(text)
        if fast is not None:
            raw_params = _split_simple_params(fast.group("params"), "Content-Type")
            if all(v is not None for v in raw_params.values()):
                # (a valueless parameter falls through to the error below)
                checked = cast("dict[str, str]", raw_params)
                return cls(fast.group("type"), fast.group("subtype"), MappingProxyType(checked))
        s = text.strip(" \t")
        m = _abnf.CONTENT_TYPE_RE.match(s)
        if m is None:
            raise SipParseError(f"bad Content-Type {text[:200]!r}")
        raw = parse_params(s, m.end(), "Content-Type")
        params: dict[str, str] = {}
        for name, value in raw.items():
            if value is None:
                raise SipParseError(f"Content-Type parameter {name!r} without a value")
            params[name] = value
        return cls(m.group("type"), m.group("subtype"), MappingProxyType(params))

    @property
    def mime(self) -> str:
        """``type/subtype`` in lower case, for comparisons."""
        return f"{self.type}/{self.subtype}".lower()

    @property
    def charset(self) -> str | None:
        """The charset parameter, lower-case, or None."""
        value = self.params.get("charset")
        return value.lower() if value is not None else None

    def __str__(self) -> str:
        return f"{self.type}/{self.subtype}" + "".join(
            f";{k}={v}" if v and _abnf.TOKEN_RE.fullmatch(v) else f";{k}={_quote(v)}"
            for k, v in self.params.items()
        )


# -- P-Asserted-Identity ----------------------------------------------------------

#: RFC 3325 §9.1: one value, or two (a sip/sips URI and a tel URI).
_MAX_ASSERTED = 2
_SIP_SCHEMES = frozenset({"sip", "sips"})


@dataclass(frozen=True, slots=True)
class AssertedIdentity:
    """The sender's identity as a network element asserts it: P-Asserted-Identity (RFC 3325 §9.1).

    ``PAssertedID-value = name-addr / addr-spec``, one or two of them: one
    sip, sips or tel URI, or a sip/sips URI and a tel URI. The grammar has
    no header parameters, so ``<sip:a@b>;tag=1`` is malformed, and an
    addr-spec keeps everything after ``;`` as URI parameters
    (``sip:+12025550123@example.com;user=phone``). Whether to believe it is
    not decided here: only a value received from a trusted element means
    anything (RFC 3325 §4, §9.1; see :mod:`sipimdn.trust`).
    """

    #: The values in the order received (one or two), parameters-free.
    values: tuple[NameAddr, ...]

    @classmethod
    def parse(cls, values: Iterable[str]) -> AssertedIdentity | None:
        """The identity of ``values`` (``Headers.get_all("P-Asserted-Identity")``).

        None when there is no value; raises :class:`~sipimdn.errors.SipParseError`
        for a malformed one, more than two, a scheme other than sip/sips/tel,
        or two of one kind.
        """
        parsed: list[NameAddr] = []
        for raw in values:
            for value in split_comma_list(raw):
                if len(parsed) == _MAX_ASSERTED:
                    raise SipParseError("more than two P-Asserted-Identity values (RFC 3325 §9.1)")
                parsed.append(_asserted_value(value))
        if not parsed:
            return None
        if len(parsed) == _MAX_ASSERTED and _tel_last(parsed[0]) == _tel_last(parsed[1]):
            raise SipParseError(
                "two P-Asserted-Identity values must be one sip/sips URI and one tel URI (RFC 3325 §9.1)"
            )
        return cls(tuple(parsed))

    @property
    def uris(self) -> tuple[str, ...]:
        """The asserted URIs as text, sip/sips first."""
        return tuple(str(value.uri) for value in sorted(self.values, key=_tel_last))

    @property
    def uri(self) -> str:
        """The sip/sips URI if asserted, else the tel URI: whom the request is from."""
        return self.uris[0]

    @property
    def display_name(self) -> str | None:
        """The first display name given, if any."""
        return next((v.display_name for v in self.values if v.display_name is not None), None)

    def __str__(self) -> str:
        return ", ".join(str(value) for value in self.values)


def _tel_last(value: NameAddr) -> bool:
    return value.uri.scheme == "tel"


def _asserted_value(text: str) -> NameAddr:
    s = text.strip(" \t")
    if "<" in s:
        value = NameAddr.parse(s)
        if value.params:
            raise SipParseError(f"P-Asserted-Identity takes no header parameters: {text[:200]!r}")
    else:
        # addr-spec: the whole value is the URI, parameters included (no header parameters here).
        value = NameAddr(Uri.parse(s))
    scheme = value.uri.scheme
    if scheme not in _SIP_SCHEMES and scheme != "tel":
        raise SipParseError(f"P-Asserted-Identity must be a sip, sips or tel URI, not {scheme} "
                            "(RFC 3325 §9.1)")
    return value
