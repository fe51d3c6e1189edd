"""Identity of the URIs a notification names: one key per address of record.

The tracker matches a notification's senders and recipient URIs against the
recipients of the message it is about; peers write the same identity in
several ways (``im:`` in CPIM, ``sip:`` in SIP, escaped or not, with or
without a port), so every URI is compared through :func:`identity_key`.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from urllib.parse import unquote

__all__ = ["identity_key", "is_anonymous"]


# sip, sips, im and pres URIs name the same kind of identity (an AOR); CPIM
# From/To often use im: where SIP uses sip:, so they compare equal.
_SIP_FAMILY = {"sip": 5060, "sips": 5061, "im": 5060, "pres": 5060}
_TEL_VISUAL = str.maketrans("", "", "-.()")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


@functools.lru_cache(maxsize=4096)  # pure, and the same few peers come back all the time
def identity_key(uri: str | None, *, compare_ports: bool = False) -> str | None:
    """Normalise a URI (or ``name-addr``) to a string that is equal for the same identity.

    SIP-like URIs (sip, sips, im, pres) become ``sip:user@host`` with the user
    unescaped (case kept), the host lower-case (IP addresses in canonical
    form), URI parameters, headers and password dropped; with
    ``compare_ports`` a ``:port`` is kept, defaulted to 5060 (5061 for sips).
    ``tel:`` keeps the number without visual separators. Other schemes keep
    their text lower-cased without parameters. Returns None for text that is
    not a URI, which then matches nothing.
    """
    key = _identity(uri, compare_ports)
    # A URI already in normal form (the common case) gives back the caller's own string, so a
    # record that keeps both the URI and its key (a received message's sender) holds one object.
    return uri if key == uri and type(uri) is str else key


def _identity(uri: str | None, compare_ports: bool) -> str | None:
    if uri is None:
        return None
    text = uri.strip()
    if "<" in text:
        start = text.index("<")
        end = text.find(">", start)
        if end < 0:
            return None
        text = text[start + 1 : end].strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    # RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    if not colon or not rest or not _SCHEME.fullmatch(scheme):
        return None
    if scheme in _SIP_FAMILY:
        return _sip_identity(scheme, rest, compare_ports)
    if scheme == "tel":
        number = rest.split(";", 1)[0].translate(_TEL_VISUAL).lower()
        return f"tel:{number}" if number else None
    return f"{scheme}:{rest.split(';', 1)[0].lower()}"


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
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed
    if ":" in host:
        host = f"[{host}]"
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    who = f"{user}@" if user is not None else ""
    if compare_ports:
        return f"sip:{who}{host}:{port or _SIP_FAMILY[scheme]}"
    return f"sip:{who}{host}"


def is_anonymous(uri: str | None) -> bool:
    """True for RFC 3323 style anonymous identities (``anonymous@anonymous.invalid``) and non-URIs."""
    key = identity_key(uri)
    if key is None:
        return True
    user, _, host = key.partition(":")[2].rpartition("@")
    return user.lower() == "anonymous" or host.endswith(".invalid") or host == "invalid"
