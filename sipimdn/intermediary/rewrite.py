"""Edits an intermediary makes to CPIM messages (RFC 5438 §6.4-§6.6, §8); pure functions, no I/O.

A CPIM message is immutable (RFC 3862 §6); an intermediary that must change
one emits a new message built from the old one's header lines (RFC 5438 §14.1).
Every function here returns a fresh :class:`~sipimdn.cpim.CpimMessage`
whose other lines are kept byte for byte, so a recipient sees the sender's
headers as written (prefixes, parameters, order).

Placement rules:

* ``IMDN-Record-Route`` is inserted as the *top* one (the first in header
  order, RFC 5438 §6.5: "top = newest"), i.e. just above the first existing
  one, with the prefix that line already uses; with none present it is
  appended.
* ``Original-To`` is added only when absent (RFC 5438 §6.4: never a second one,
  never modified).
* Appended IMDN headers use a prefix bound to ``urn:ietf:params:imdn`` at
  the end of the header block, declaring a fresh one when there is none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .. import cpim
from ..cpim import CPIM_NS, CpimAddress, CpimMessage
from ..errors import CpimError, LocalProtocolError
from ..imdn import IMDN_NS

__all__ = [
    "add_original_to",
    "add_record_route",
    "pop_imdn_route",
    "replace_to",
]


# RFC 3862 §3.6: URI as in RFC 2396 -- a scheme, a colon and no space, control character,
# quote or angle bracket. Checked here because the header builder writes values as given,
# and a CR/LF in a URI taken from a request would otherwise inject a header.
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"\x00-\x1f\x7f]+")


def _address_of(value: CpimAddress | str) -> CpimAddress:
    address = value if isinstance(value, CpimAddress) else CpimAddress(uri=value)
    if _URI_RE.fullmatch(address.uri) is None:
        raise LocalProtocolError(f"not a URI usable in a CPIM header: {address.uri!r}")
    if address.display_name is not None and any(c in address.display_name for c in "\r\n"):
        raise LocalProtocolError("line break in a CPIM display name")
    return address


def _rebuild(msg: CpimMessage, lines: Sequence[str]) -> CpimMessage:
    head = "".join(line + "\r\n" for line in lines) + "\r\n"
    mime = "".join(h.raw + "\r\n" for h in msg.mime_headers) + "\r\n"
    try:
        return cpim.parse(head.encode("utf-8") + mime.encode("utf-8") + msg.body)
    except CpimError as exc:  # a value we were given does not fit the grammar
        raise LocalProtocolError(f"cannot rewrite CPIM message: {exc.reason}") from None


def _imdn_prefix(msg: CpimMessage) -> tuple[str, list[str]]:
    """A prefix bound to the IMDN namespace at the end of the headers, and the NS lines to add for it."""
    bindings = msg.namespaces()
    for prefix, uri in bindings.items():
        if prefix and uri == IMDN_NS:
            return prefix, []
    prefix = "imdn"
    n = 1
    while prefix in bindings:
        n += 1
        prefix = f"imdn{n}"
    return prefix, [cpim.format_header("NS", f"{prefix} <{IMDN_NS}>")]


def add_record_route(msg: CpimMessage, uri: str) -> CpimMessage:
    """Return ``msg`` with ``IMDN-Record-Route: <uri>`` as its top entry (RFC 5438 §6.5)."""
    lines = [h.raw for h in msg.headers]
    value = str(_address_of(uri))
    for index, h in enumerate(msg.headers):
        if h.namespace == IMDN_NS and h.name == "IMDN-Record-Route" and h.prefix:
            # The binding in force just above this line is the one in force for it.
            lines.insert(index, cpim.format_header(f"{h.prefix}.IMDN-Record-Route", value))
            return _rebuild(msg, lines)
    prefix, ns_lines = _imdn_prefix(msg)
    return _rebuild(msg, [*lines, *ns_lines, cpim.format_header(f"{prefix}.IMDN-Record-Route", value)])


def add_original_to(msg: CpimMessage, uri: str) -> CpimMessage:
    """Return ``msg`` with ``Original-To: <uri>`` unless it already has one (RFC 5438 §6.4)."""
    value = _address_of(uri)
    if msg.get(IMDN_NS, "Original-To") is not None:
        return msg
    prefix, ns_lines = _imdn_prefix(msg)
    line = cpim.format_header(f"{prefix}.Original-To", str(value))
    return _rebuild(msg, [*(h.raw for h in msg.headers), *ns_lines, line])


def replace_to(msg: CpimMessage, address: CpimAddress | str) -> CpimMessage:
    """Return ``msg`` whose CPIM To headers are replaced by one ``To: address`` (list explosion, §8).

    The new To takes the place of the first old one; cc headers are kept.
    """
    to = _address_of(address)
    lines: list[str] = []
    placed = False
    for h in msg.headers:
        if h.namespace == CPIM_NS and h.name == "To":
            if not placed:
                lines.append(cpim.format_header("To", str(to)))
                placed = True
            continue
        lines.append(h.raw)
    if not placed:
        lines.insert(1 if lines else 0, cpim.format_header("To", str(to)))
    return _rebuild(msg, lines)


def pop_imdn_route(msg: CpimMessage) -> CpimMessage:
    """Return ``msg`` without its top ``IMDN-Route`` (RFC 5438 §8).

    Raises :class:`~sipimdn.errors.LocalProtocolError` when it has none.
    """
    for index, h in enumerate(msg.headers):
        if h.namespace == IMDN_NS and h.name == "IMDN-Route":
            lines = [x.raw for i, x in enumerate(msg.headers) if i != index]
            return _rebuild(msg, lines)
    raise LocalProtocolError("the message has no IMDN-Route to remove")
