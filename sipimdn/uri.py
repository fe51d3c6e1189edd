"""URIs as SIP uses them: sip:, sips: (RFC 3261 §19.1), tel: (RFC 3966), im:/pres:
(RFC 3860/3859) and any other absoluteURI kept opaque.

``Uri`` is an immutable value object. Equality and hashing follow RFC 3261
§19.1.4 for sip/sips (and the same rules for im/pres); tel URIs compare with
visual separators removed (RFC 3966 §4); other schemes compare the scheme
case-insensitively and the rest exactly. Parsed URIs are cached by text, which
is safe because they are immutable and cheap because the same handful of URIs
(our own AOR, the peer's) appears in almost every message.

:func:`identity_key` is the coarser comparison of *who* a URI names (an
address of record): sip, sips, im and pres URIs of the same user and host
give the same key whatever their parameters, which is what matching a
notification or a list member to an address needs (RFC 5438 §7.1.1,
RFC 3862 §3.3 use im: where SIP uses sip:).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

from . import _abnf
from ._cache import remember_text
from ._fastinit import maker, setter
from .errors import LocalProtocolError, SipParseError

__all__ = ["Uri", "identity_key", "parse_uri"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


# Parameters that, when present in either URI, must be present in both and
# match (RFC 3261 §19.1.4, fourth bullet).
_MUST_MATCH_PARAMS = ("user", "ttl", "method", "maddr", "transport")
#: The comparison key's part for those parameters when a URI has none of them.
_NONE_OF_THE_MUST_MATCH = tuple((name, None) for name in _MUST_MATCH_PARAMS)

# Characters that may appear unescaped in each component when we write a URI
# back (the complements of the ABNF classes in _abnf.py).
_USER_SAFE = "-_.!~*'()&=+$,;?/"
_PASSWORD_SAFE = "-_.!~*'()&=+$,"
_PARAM_SAFE = "-_.!~*'()[]/:&+$"
_HEADER_SAFE = "-_.!~*'()[]/?:+$"

_SIP_LIKE = frozenset({"sip", "sips", "im", "pres"})
#: RFC 3966 §5.1.1 visual-separator characters, not significant when comparing numbers.
_TEL_SEPARATORS = str.maketrans("", "", "-.()")

# Parsed URIs by text (a peer must not be able to pin much memory: short texts only).
_CACHE: dict[str, Uri] = {}
_CACHE_MAX = 4096


def _ipv6_or_none(host: str) -> str | None:
    """The canonical text of an IPv6 host, or None if it is not one."""
    try:
        return ipaddress.IPv6Address(host).compressed
    except ValueError:
        return None


def _fail(text: str, why: str) -> SipParseError:
    return SipParseError(f"invalid URI {text[:200]!r}: {why}")


def _parse_uri_params(text: str) -> dict[str, str | None]:
    """Split ``;name[=value]`` pairs (already checked against the grammar)."""
    params: dict[str, str | None] = {}
    for part in text.split(";")[1:]:
        name, eq, value = part.partition("=")
        # Names compare case-insensitively (§19.1.4), so store them lower-case.
        params[unquote(name).lower()] = unquote(value) if eq else None
    return params


@dataclass(frozen=True, slots=True, eq=False)
class Uri:
    """A URI: sip, sips, tel, im, pres, or any other scheme kept opaque.

    ``host`` holds an IPv6 address without brackets; ``str()`` adds them back.
    ``user`` and ``password`` are unescaped. For ``tel:`` the number is in
    ``user`` and ``host`` is empty. For schemes we do not interpret, ``host``
    is empty and the part after ``scheme:`` is in ``opaque``.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Mapping[str, str | None] = field(default_factory=_empty)
    headers: Mapping[str, str] = field(default_factory=_empty)
    opaque: str | None = None
    # Derived once per object, on first use: the text ``str()`` writes, the comparison key and
    # its hash. A Uri never changes (frozen, its mappings read-only copies) and the parse cache
    # hands the same object out for every message naming it, so each is worked out once.
    _text: str | None = field(default=None, init=False, repr=False, compare=False)
    _cmp_key: tuple[object, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Freeze caller-supplied dicts so a shared (cached) Uri cannot change.
        if type(self.params) is not MappingProxyType:
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if type(self.headers) is not MappingProxyType:
            object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    # -- parsing ---------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Uri:
        """Parse a URI; raise ``SipParseError`` (400) if it is malformed."""
        cached = _CACHE.get(text)
        if cached is not None:
            return cached
        return remember_text(_CACHE, text, cls._parse(text), _CACHE_MAX, max_key=512)

    @classmethod
    def _parse(cls, text: str) -> Uri:
        colon = text.find(":")
        if colon <= 0:
            raise _fail(text, "no scheme")
        scheme_text = text[:colon]
        if _abnf.SCHEME_RE.fullmatch(scheme_text) is None:
            raise _fail(text, "bad scheme")
        scheme = scheme_text.lower()
        rest = text[colon + 1 :]
        if scheme in _SIP_LIKE:
            return cls._parse_sip_like(text, scheme, rest)
        if scheme == "tel":
            m = _abnf.TEL_URI_RE.fullmatch(rest)
            if m is None:
                raise _fail(text, "bad tel: number or parameters")
            return cls("tel", m.group("number"), params=_parse_uri_params(m.group("params")))
        if _abnf.OPAQUE_URI_RE.fullmatch(rest) is None:
            raise _fail(text, "characters not allowed in a URI")
        return cls(scheme, opaque=rest)

    @classmethod
    def _parse_sip_like(cls, text: str, scheme: str, rest: str) -> Uri:
        m = _abnf.SIP_URI_RE.fullmatch(rest)
        if m is None:
            raise _fail(text, f"does not match the {scheme}: grammar")
        user, password, host, port_text, params_text, headers_text = m.groups()
        if host[0] == "[":
            canonical = _ipv6_or_none(host[1:-1])
            if canonical is None:
                raise _fail(text, "bad IPv6 reference")
            host = host[1:-1]
        elif _abnf.IPV4_RE.fullmatch(host) is not None:
            pass
        elif _abnf.HOSTNAME_RE.fullmatch(host) is None or host.rstrip(".").rpartition(".")[2][:1].isdigit():
            # toplabel must start with a letter, so "1.2.3" or "a.1b" is neither
            # an address nor a host name.
            raise _fail(text, "bad host")
        port: int | None = None
        if port_text is not None:
            port = _abnf.digits_value(port_text, 5)
            if port is None or port > 65535:
                raise _fail(text, "port above 65535")
        params = MappingProxyType(_parse_uri_params(params_text)) if params_text else _EMPTY
        headers: Mapping[str, str] = _EMPTY
        if headers_text:
            fields: dict[str, str] = {}
            for item in headers_text.split("&"):
                name, _, value = item.partition("=")
                fields[unquote(name)] = unquote(value)
            headers = MappingProxyType(fields)
        uri = _make(
            scheme,
            unquote(user) if user is not None else None,
            unquote(password) if password is not None else None,
            host,
            port,
            params,
            headers,
        )
        if (
            not params_text
            and not headers_text
            and password is None
            and (user is None or "%" not in user)
            and (port_text is None or port_text == str(port))
            and text.startswith(scheme)
        ):
            # The usual ``sip:user@host[:port]`` already written as str() writes it: the scheme
            # in lower case, a user with no escapes (quote() keeps every character the user
            # grammar allows), a port without leading zeros, the host as given, nothing after:
            # its text is the input (tests/test_message_fastpaths.py holds the two equal).
            _set_text(uri, text)
        return uri

    # -- derived values --------------------------------------------------

    @property
    def transport(self) -> str | None:
        """The ``transport=`` parameter, lower-case, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def secure(self) -> bool:
        """True for sips: URIs (every hop must use TLS)."""
        return self.scheme == "sips"

    @property
    def host_port(self) -> str:
        """``host[:port]`` with IPv6 brackets, as it appears in the URI."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_params(self, **params: str | None) -> Uri:
        """A copy with the given URI parameters set (``None`` makes a flag)."""
        merged = dict(self.params)
        merged.update({k.lower(): v for k, v in params.items()})
        return Uri(
            self.scheme, self.user, self.password, self.host, self.port, merged, self.headers, self.opaque
        )

    def without_params(self, *names: str) -> Uri:
        """A copy without the named URI parameters."""
        drop = {n.lower() for n in names}
        kept = {k: v for k, v in self.params.items() if k not in drop}
        return Uri(
            self.scheme, self.user, self.password, self.host, self.port, kept, self.headers, self.opaque
        )

    # -- writing -----------------------------------------------------------

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._write()
            _set_text(self, text)
        return text

    def _write(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.scheme == "tel":
            parts.append(self.user or "")
        else:
            if self.user is not None:
                parts.append(quote(self.user, safe=_USER_SAFE))
                if self.password is not None:
                    parts.append(":" + quote(self.password, safe=_PASSWORD_SAFE))
                parts.append("@")
            if not self.host:
                raise LocalProtocolError(f"{self.scheme}: URI without a host")
            parts.append(self.host_port)
        for name, value in self.params.items():
            parts.append(";" + quote(name, safe=_PARAM_SAFE))
            if value is not None:
                parts.append("=" + quote(value, safe=_PARAM_SAFE))
        if self.headers:
            parts.append(
                "?"
                + "&".join(
                    f"{quote(k, safe=_HEADER_SAFE)}={quote(v, safe=_HEADER_SAFE)}"
                    for k, v in self.headers.items()
                )
            )
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Uri({str(self)!r})"

    # -- comparison (RFC 3261 §19.1.4) -----------------------------------

    def _host_key(self) -> str:
        if ":" in self.host:
            canonical = _ipv6_or_none(self.host)
            if canonical is not None:
                return canonical
        return self.host.lower()

    def _key(self) -> tuple[object, ...]:
        key = self._cmp_key
        if key is None:
            key = self._make_key()
            _set_cmp_key(self, key)
        return key

    def _make_key(self) -> tuple[object, ...]:
        """The parts that must be equal for two URIs to be equal.

        Parameters present in only one URI are ignored unless they are one of
        user/ttl/method/maddr/transport, so they cannot be part of the key;
        ``__eq__`` checks the common ones.
        """
        if self.opaque is not None:
            return (self.scheme, self.opaque)
        if self.scheme == "tel":
            # RFC 3966 §4: visual separators are not significant; hex digits
            # and parameter names compare case-insensitively.
            number = (self.user or "").translate(_TEL_SEPARATORS).lower()
            return ("tel", number, tuple(sorted((k, (v or "").lower()) for k, v in self.params.items())))
        params = self.params
        if params:
            special = tuple(
                (name, (params[name] or "").lower()) if name in params else (name, None)
                for name in _MUST_MATCH_PARAMS
            )
        else:
            special = _NONE_OF_THE_MUST_MATCH  # (most URIs: a peer's address has no parameter)
        headers = tuple(sorted((k.lower(), v) for k, v in self.headers.items())) if self.headers else ()
        # userinfo is compared case-sensitively, everything else not.
        return (self.scheme, self.user, self.password, self._host_key(), self.port, special, headers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Uri):
            return NotImplemented
        if self is other:
            return True
        if self._key() != other._key():
            return False
        if self.opaque is not None or self.scheme == "tel":
            return True
        for name, value in self.params.items():
            if name in other.params:
                theirs = other.params[name]
                if (value or "").lower() != (theirs or "").lower():
                    return False
        return True

    def __hash__(self) -> int:
        value = self._hash
        if value is None:
            key = self._cmp_key
            if key is None:
                key = self._make_key()
                _set_cmp_key(self, key)
            value = hash(key)
            _set_hash(self, value)
        return value


# The values a Uri works out on first use and keeps (its text, comparison key and hash), set in
# their slots past the frozen __setattr__ (see sipimdn._fastinit).
_set_text = setter(Uri, "_text")
_set_cmp_key = setter(Uri, "_cmp_key")
_set_hash = setter(Uri, "_hash")
#: ``Uri(scheme, user, password, host, port, params, headers)`` for the parser, without the
#: dataclass ``__init__`` (eight frozen ``__setattr__`` calls, three more for the derived values,
#: and the copies ``__post_init__`` makes of its mappings): the parser's mappings are already
#: read-only and owned by the Uri alone. tests/test_uri_properties.py holds the two equal.
_make: Callable[[str, str | None, str | None, str, int | None, Mapping[str, str | None], Mapping[str, str]],
                Uri] = maker(Uri, skip_post_init=True)


def parse_uri(text: str) -> Uri:
    """Parse a URI; raise ``SipParseError`` (400) if it is malformed."""
    return Uri.parse(text)


# -- identities --------------------------------------------------------------

# sip, sips, im and pres URIs name the same kind of identity (an AOR); CPIM
# From/To often use im: where SIP uses sip:, so they compare equal. The value
# is the default port, for comparisons that keep ports.
_SIP_FAMILY = {"sip": 5060, "sips": 5061, "im": 5060, "pres": 5060}
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def identity_key(uri: str | None, *, compare_ports: bool = False) -> str | None:
    """Normalise a URI (or ``name-addr``) to a string that is equal for the same identity.

    SIP-like URIs (sip, sips, im, pres) become ``sip:user@host`` with the user
    unescaped (case kept), the host lower-case (IP addresses in canonical
    form), URI parameters, headers and password dropped; with
    ``compare_ports`` a ``:port`` is kept, defaulted to 5060 (5061 for sips).
    ``tel:`` keeps the number without visual separators (RFC 3966 §5.1.1).
    Other schemes keep their text lower-cased without parameters. Returns None
    for text that is not a URI, which then matches nothing.

    Unlike :class:`Uri` equality (RFC 3261 §19.1.4) this never raises and
    ignores every parameter: it answers "the same address?", not "the same URI?".
    """
    if uri is None:
        return None
    # Pure, and the same few peers come back all the time: memoised by text.
    table = _PORT_IDENTITIES if compare_ports else _IDENTITIES
    key = table.get(uri, _NOT_A_URI)
    if key is _NOT_A_URI:
        key = _identity(uri, compare_ports, table)
        # A URI already in normal form (the common case) gives back the caller's own string, so a
        # record that keeps both the URI and its key (a received message's sender) holds one object.
        key = remember_text(table, uri, uri if key == uri and type(uri) is str else key, 4096)
    return key


_NOT_A_URI = ""  # (never a key: every key has a scheme and a colon)
_IDENTITIES: dict[str, str | None] = {}
_PORT_IDENTITIES: dict[str, str | None] = {}


def _identity(uri: str, compare_ports: bool, table: dict[str, str | None]) -> str | None:
    text = uri.strip()
    if "<" in text:
        start = text.index("<")
        end = text.find(">", start)
        if end < 0:
            return None
        text = text[start + 1 : end].strip()
        if "<" not in text:
            # The addr-spec of a name-addr often comes alone too (a message's CPIM From and
            # its SIP From): memoised under its own text, one parse serves both.
            key = table.get(text, _NOT_A_URI)
            if key is _NOT_A_URI:
                key = _addr_identity(text, compare_ports)
                key = remember_text(table, text, text if key == text else key, 4096)
            return key
    return _addr_identity(text, compare_ports)


def _addr_identity(text: str, compare_ports: bool) -> str | None:
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not rest or not _SCHEME.fullmatch(scheme):
        return None
    if scheme in _SIP_FAMILY:
        return _sip_identity(scheme, rest, compare_ports)
    if scheme == "tel":
        number = rest.split(";", 1)[0].translate(_TEL_SEPARATORS).lower()
        return f"tel:{number}" if number else None
    return f"{scheme}:{rest.split(';', 1)[0].lower()}"


#: Hosts as :func:`identity_key` writes them, by their lower-cased text: a host is the same
#: few peers' (or our own) address over and over, and telling an IP address from a name with
#: :mod:`ipaddress` costs more than the rest of the key.
_HOSTS: dict[str, str] = {}


def _identity_host(host: str) -> str:
    """``host`` (lower-case, no trailing dot) in canonical form: an IP address compressed, an
    IPv6 one in brackets."""
    canonical = _HOSTS.get(host)
    if canonical is None:
        canonical = host
        with contextlib.suppress(ValueError):
            canonical = ipaddress.ip_address(host).compressed
        if ":" in canonical:
            canonical = f"[{canonical}]"
        remember_text(_HOSTS, host, canonical, 1024)
    return canonical


def _sip_identity(scheme: str, rest: str, compare_ports: bool) -> str | None:
    # The user part may not contain an unescaped "@" (RFC 3261 §25.1), so the
    # first "@" ends the userinfo.
    user: str | None = None
    userinfo, at, hostpart = rest.partition("@")
    if at:
        user = unquote(userinfo.split(":", 1)[0])
        if not user:
            return None
    else:
        hostpart = rest
    for stop in (";", "?"):
        hostpart = hostpart.split(stop, 1)[0]
    port_text = ""
    if hostpart.startswith("["):
        close = hostpart.find("]")
        if close < 0:
            return None
        host, port_text = hostpart[1:close], hostpart[close + 1 :]
        if port_text and not port_text.startswith(":"):
            return None
        port_text = port_text[1:]
    else:
        host, _, port_text = hostpart.partition(":")
    host = host.lower().rstrip(".")
    if not host:
        return None
    host = _identity_host(host)
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    who = f"{user}@" if user is not None else ""
    if compare_ports:
        return f"sip:{who}{host}:{port or _SIP_FAMILY[scheme]}"
    return f"sip:{who}{host}"
