"""IMDN CPIM headers (RFC 5438 §6, §10): typed access, Disposition-Notification, Message-ID.

All five headers live in the namespace ``urn:ietf:params:imdn`` and are found
by that URI whatever prefix the sender bound to it (RFC 3862 §3.4). ABNF, RFC 5438 §10::

    Disposition-Notification = "Disposition-Notification" ": "
                               [ notify-req *(COMMA notify-req) ]
    notify-req  = ("negative-delivery" / "positive-delivery"
                   / "processing" / "display" / Token) *(SEMI Ext-param)
    Message-ID  = "Message-ID" ": " Token
    Original-To = "Original-To" ": " [Formal-name] "<" URI ">"
    IMDN-Record-Route = "IMDN-Record-Route" ": " [Formal-name] "<" URI ">"
    IMDN-Route  = "IMDN-Route" ": " [Formal-name] "<" URI ">"
    SEMI  = *SP ";" *SP
    COMMA = *SP "," *SP
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .._cache import remember, remember_text
from .._fastinit import maker
from ..cpim import grammar
from ..cpim.message import CpimHeader, CpimMessage
from ..cpim.values import CpimAddress, parse_address
from ..errors import ImdnError, LocalProtocolError
from .vocabulary import DispositionRequest

__all__ = [
    "IMDN_NS",
    "DispositionRequest",
    "ImdnHeaders",
    "NotifyRequest",
    "format_disposition_notification",
    "imdn_headers",
    "new_message_id",
    "parse_disposition_notification",
]

IMDN_NS = "urn:ietf:params:imdn"
"""Namespace URI of the IMDN CPIM headers (RFC 5438 §6.1)."""


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    """One notify-req: a value (one of :class:`DispositionRequest` or an unknown Token) and its parameters."""

    token: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def known(self) -> DispositionRequest | None:
        """The RFC 5438 value, or None for an extension token (ignored, RFC 5438 §7.2)."""
        try:
            return DispositionRequest(self.token)
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.token + "".join(f";{k}={v}" for k, v in self.params)


# notify-req, with SEMI = *SP ";" *SP around each Ext-param.
_EXT_PARAM = rf"(?P<k>{grammar.name})=(?P<v>{grammar.string}|{grammar.token}|{grammar.number})"
_PARAM_RE = re.compile(rf" *; *{_EXT_PARAM}")
_NOTIFY_REQ_RE = re.compile(
    rf"(?P<token>{grammar.token})(?P<params>(?: *; *{grammar.name}="
    rf"(?:{grammar.string}|{grammar.token}|{grammar.number}))*)"
)


def parse_disposition_notification(value: str) -> tuple[NotifyRequest, ...]:
    """Parse a Disposition-Notification value; empty means "no IMDN requested" (RFC 5438 §6.2).

    COMMA is ``*SP "," *SP``, so ``positive-delivery,display`` (no space, seen
    in the field) is valid. Raises ``ValueError`` on anything else.
    """
    # The same few values arrive on every IM: memoise them (the result is immutable).
    cached = _DISPOSITION_REQUESTS.get(value)
    if cached is None:
        cached = remember_text(_DISPOSITION_REQUESTS, value, _parse_dn(value), 256)
    return cached


_DISPOSITION_REQUESTS: dict[str, tuple[NotifyRequest, ...]] = {}


def _parse_dn(value: str) -> tuple[NotifyRequest, ...]:
    text = value.strip(" ")
    if not text:
        return ()
    out: list[NotifyRequest] = []
    for raw_item in text.split(","):
        item = raw_item.strip(" ")
        m = _NOTIFY_REQ_RE.fullmatch(item)
        if m is None:
            raise ValueError(f"malformed Disposition-Notification entry: {item!r}")
        params = tuple((p.group("k"), p.group("v")) for p in _PARAM_RE.finditer(m.group("params")))
        out.append(NotifyRequest(token=m.group("token"), params=params))
    return tuple(out)


def format_disposition_notification(requests: Iterable[NotifyRequest | DispositionRequest | str]) -> str:
    """Render notify-reqs as ``a, b`` (the spaced form of RFC 5438's examples)."""
    parts: list[str] = []
    for req in requests:
        text = str(req)
        if _NOTIFY_REQ_RE.fullmatch(text) is None:
            raise LocalProtocolError(f"not a Disposition-Notification value: {text!r}")
        parts.append(text)
    return ", ".join(parts)


def new_message_id() -> str:
    """A fresh Message-ID: 128 random bits from ``secrets`` as base64url (RFC 5438 §6.3).

    The alphabet ``A-Z a-z 0-9 - _`` is all NAMECHAR, so the result is a valid
    CPIM Token (unlike standard base64's ``/`` and ``=``).
    """
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class ImdnHeaders:
    """The IMDN headers of one CPIM message, typed."""

    message_id: str | None
    """``Message-ID`` (a CPIM Token; separators tolerated on receive), or None when absent."""
    disposition_notification: tuple[NotifyRequest, ...] | None
    """All notify-reqs of every Disposition-Notification header; None when no such header."""
    original_to: CpimAddress | None
    """``Original-To`` set by an intermediary (§6.4), or None."""
    record_routes: tuple[CpimAddress, ...]
    """``IMDN-Record-Route`` values, top (newest) first (§6.5)."""
    routes: tuple[CpimAddress, ...]
    """``IMDN-Route`` values in order (§6.6)."""

    @property
    def requested(self) -> frozenset[DispositionRequest]:
        """The RFC 5438 notification types requested (unknown tokens dropped, RFC 5438 §7.2)."""
        requests = self.disposition_notification
        if not requests:
            return _NONE_REQUESTED
        # The same few values arrive on every IM: short ones memoised by value (the result is
        # immutable; a long list a peer made up is computed, never kept).
        cached = _REQUESTED.get(requests)
        if cached is None:
            cached = frozenset(r.known for r in requests if r.known is not None)
            if len(requests) <= _REQUESTED_MAX_KEY:
                remember(_REQUESTED, requests, cached, 256)
        return cached


#: ``ImdnHeaders(...)`` by position without the frozen dataclass ``__init__``: one per received
#: CPIM message (see sipimdn._fastinit).
_make_imdn_headers: Callable[..., ImdnHeaders] = maker(ImdnHeaders)
_NONE_REQUESTED: frozenset[DispositionRequest] = frozenset()
_REQUESTED: dict[tuple[NotifyRequest, ...], frozenset[DispositionRequest]] = {}
_REQUESTED_MAX_KEY = 8


def imdn_headers(msg: CpimMessage) -> ImdnHeaders:
    """Read and check the IMDN headers of ``msg`` (by namespace URI, any prefix).

    Raises :class:`~sipimdn.errors.ImdnError` when one is malformed or a
    single-valued header (Message-ID, Original-To) is repeated.
    """
    # One pass over the headers (most are not IMDN ones), grouped by name.
    found: dict[str, list[CpimHeader]] = {}
    for h in msg.headers:
        if h.namespace == IMDN_NS:
            group = found.get(h.name)
            if group is None:
                found[h.name] = [h]
            else:
                group.append(h)
    if not found:
        return _NO_HEADERS
    ids = found.get("Message-ID", ())
    if len(ids) > 1:
        raise ImdnError("more than one IMDN Message-ID header")
    message_id: str | None = None
    if ids:
        message_id = ids[0].value.rstrip(" ")
        # The ABNF says Token, but refusing a whole IM because its Message-ID holds
        # a separator (``abc@host``) helps nobody: accept any non-empty value
        # without SP/CTL, which can still be echoed in <message-id> (xs:token).
        if grammar.LENIENT_TOKEN_RE.fullmatch(message_id) is None:
            raise ImdnError(f"IMDN Message-ID is empty or holds spaces: {message_id!r}")
    dn_headers = found.get("Disposition-Notification", ())
    disposition: tuple[NotifyRequest, ...] | None = None
    if dn_headers:
        # §7.2.1 speaks of the header "fields" in the plural; accept several, concatenated.
        reqs: list[NotifyRequest] = []
        for h in dn_headers:
            try:
                reqs.extend(parse_disposition_notification(h.value))
            except ValueError as exc:
                raise ImdnError(str(exc)) from None
        disposition = tuple(reqs)
    originals = found.get("Original-To", ())
    if len(originals) > 1:
        raise ImdnError("more than one Original-To header (RFC 5438 §6.4)")
    record_routes = found.get("IMDN-Record-Route")
    routes = found.get("IMDN-Route")
    return _make_imdn_headers(
        message_id,
        disposition,
        _address(originals[0]) if originals else None,
        tuple(_address(h) for h in record_routes) if record_routes else (),
        tuple(_address(h) for h in routes) if routes else (),
    )


#: A message without IMDN headers (immutable, so shared).
_NO_HEADERS = ImdnHeaders(None, None, None, (), ())


def _address(h: CpimHeader) -> CpimAddress:
    try:
        return parse_address(h.value)
    except ValueError as exc:
        raise ImdnError(f"{h.full_name}: {exc}") from None
