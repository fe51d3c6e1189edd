"""application/im-iscomposing+xml documents (RFC 3994 §6): the IsComposing value, parse, build.

Parsing runs the same hardened XML parser as the IMDN codec (``sipimdn._safexml``: size cap, UTF-8
only, no DTD or entities, bounded depth), validates the tree against the RFC 3994 schema (embedded
below), then reads and checks the values the schema leaves loose: ``state`` must be ``active`` or
``idle`` (RFC 3994 §3), ``lastactive`` an xs:dateTime Python can represent, ``refresh`` a positive
integer. Elements of other namespaces after ``refresh`` (the schema's ``xs:any ##other``) are kept
as canonical bytes and written back on build.

Errors: :class:`~sipimdn.errors.IsComposingError` with status 400, or 413 for a document over the
size cap. A UAS answers a MESSAGE carrying a bad document with that status and nothing else.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from lxml import etree

from .._safexml import make_parser, parse_xml
from ..cpim.message import CpimMessage, parse_media_type
from ..errors import IsComposingError, LocalProtocolError

__all__ = [
    "CONTENT_TYPE",
    "MAX_DOCUMENT_SIZE",
    "XML_NS",
    "ComposingState",
    "IsComposing",
    "build_iscomposing",
    "composing_from_content",
    "composing_from_cpim",
    "is_composing_type",
    "parse_iscomposing",
]

CONTENT_TYPE: Final = "application/im-iscomposing+xml"
"""Media type of a composition indication (registered by RFC 3994)."""

XML_NS: Final = "urn:ietf:params:xml:ns:im-iscomposing"
"""XML namespace of the ``<isComposing>`` document (registered by RFC 3994)."""

MAX_DOCUMENT_SIZE: Final = 8 * 1024
"""Cap on one document in bytes: a real indication is about 300 bytes; larger is refused with 413."""

_MAX_DEPTH: Final = 8
_MAX_CONTENT_TYPE: Final = 256


class ComposingState(StrEnum):
    """The two states of a composer (RFC 3994 §3)."""

    #: The user is composing a message.
    ACTIVE = "active"
    #: The user is not composing (or stopped long enough ago).
    IDLE = "idle"


# The XML schema RFC 3994 publishes for the document, as published.
_SCHEMA_XSD: Final = b"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="urn:ietf:params:xml:ns:im-iscomposing"
    elementFormDefault="qualified" attributeFormDefault="unqualified"
    xmlns:xs="http://www.w3.org/2001/XMLSchema"
    xmlns:tns="urn:ietf:params:xml:ns:im-iscomposing">
  <xs:element name="isComposing">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="state" type="xs:string"/>
        <xs:element name="lastactive" type="xs:dateTime" minOccurs="0"/>
        <xs:element name="contenttype" type="xs:string" minOccurs="0"/>
        <xs:element name="refresh" type="xs:positiveInteger" minOccurs="0"/>
        <xs:any namespace="##other" processContents="lax" minOccurs="0" maxOccurs="unbounded"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""
_SCHEMA_TREE: Final = etree.fromstring(_SCHEMA_XSD, make_parser())
# lxml validators are not thread-safe: one compiled schema per thread that validates.
_local = threading.local()


def _schema() -> etree.XMLSchema:
    schema: etree.XMLSchema | None = getattr(_local, "schema", None)
    if schema is None:
        schema = _local.schema = etree.XMLSchema(_SCHEMA_TREE)
    return schema


def _q(local: str) -> str:
    return f"{{{XML_NS}}}{local}"


@dataclass(frozen=True, slots=True)
class IsComposing:
    """One ``<isComposing>`` document, as parsed or to be built (RFC 3994 §6)."""

    state: ComposingState
    """Whether the sender is composing (``<state>``, mandatory)."""
    last_active: _dt.datetime | None = None
    """When the sender was last active (``<lastactive>``); aware when the document gave a zone."""
    content_type: str | None = None
    """What is being composed (``<contenttype>``): a media type such as ``text/plain``, or just
    its top-level type (``audio``)."""
    refresh: int | None = None
    """Seconds until the sender refreshes an active state (``<refresh>``, RFC 3994 §3.2)."""
    extensions: tuple[bytes, ...] = ()
    """Elements of other namespaces after the known ones, serialised (exclusive C14N)."""

    def to_xml(self) -> bytes:
        """Serialise as a UTF-8 application/im-iscomposing+xml document."""
        return _render(self)


# -- parse ----------------------------------------------------------------------------------------


def parse_iscomposing(data: bytes, *, max_size: int = MAX_DOCUMENT_SIZE) -> IsComposing:
    """Parse and validate an application/im-iscomposing+xml document.

    Raises :class:`~sipimdn.errors.IsComposingError` (400; 413 when larger than ``max_size``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_iscomposing takes bytes")
    root = parse_xml(bytes(data), max_size=max_size, max_depth=_MAX_DEPTH, error=IsComposingError)
    if root.tag != _q("isComposing"):
        raise IsComposingError(f"root element is {root.tag!r}, not isComposing in {XML_NS}")
    schema = _schema()
    if not schema.validate(root):
        error = schema.error_log.last_error  # type: ignore[attr-defined]  # missing from lxml-stubs
        raise IsComposingError("schema violation" if error is None else f"schema violation: {error.message}")
    state: ComposingState | None = None
    last_active: _dt.datetime | None = None
    content_type: str | None = None
    refresh: int | None = None
    extensions: list[bytes] = []
    for child in root:
        tag = child.tag
        text = (child.text or "").strip()
        if tag == _q("state"):
            try:
                state = ComposingState(text)
            except ValueError:
                raise IsComposingError(
                    f"state must be active or idle (RFC 3994 §3), not {text[:40]!r}"
                ) from None
        elif tag == _q("lastactive"):
            last_active = _parse_datetime(text)
        elif tag == _q("contenttype"):
            if len(text) > _MAX_CONTENT_TYPE:
                raise IsComposingError(f"contenttype longer than {_MAX_CONTENT_TYPE} characters")
            content_type = text or None
        elif tag == _q("refresh"):
            refresh = _parse_refresh(text)
        else:
            # Only ##other elements get past the schema; comments and PIs were removed by the parser.
            extensions.append(_serialise(child))
    if state is None:  # pragma: no cover - the schema makes <state> mandatory
        raise IsComposingError("isComposing without state")
    return IsComposing(state, last_active, content_type, refresh, tuple(extensions))


def _parse_datetime(text: str) -> _dt.datetime:
    try:
        # Python 3.11 reads the xs:dateTime forms RFC 3994 §5 shows ("...T10:43:00Z", offsets,
        # fractions); years beyond 9999, negative years and 24:00:00 are refused.
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        raise IsComposingError(f"lastactive is not a usable date-time: {text[:40]!r}") from None


def _parse_refresh(text: str) -> int:
    if not text.isdigit() or len(text) > 10:
        raise IsComposingError(f"refresh is not a positive integer of at most 10 digits: {text[:20]!r}")
    value = int(text)
    if value <= 0:
        raise IsComposingError("refresh must be positive (xs:positiveInteger in the RFC 3994 schema)")
    return value


def _serialise(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False, with_tail=False)


# -- CPIM and bare bodies -------------------------------------------------------------------------


def is_composing_type(content_type: str | None) -> bool:
    """True when a Content-Type value (parameters allowed, any case) is the is-composing type."""
    if not content_type:
        return False
    try:
        return parse_media_type(content_type)[0] == CONTENT_TYPE
    except ValueError:
        return False


def composing_from_content(content_type: str | None, body: bytes) -> IsComposing | None:
    """The indication carried by a body of ``content_type``, or None when it is another type.

    For a bare MESSAGE body, or the decoded inner entity of a message/cpim body (liblinphone wraps
    indications in CPIM when CPIM is on). Raises :class:`~sipimdn.errors.IsComposingError` when the
    type matches but the document is bad.
    """
    if not is_composing_type(content_type):
        return None
    return parse_iscomposing(body)


def composing_from_cpim(message: CpimMessage) -> IsComposing | None:
    """The indication inside a parsed message/cpim, or None when its content is something else.

    Raises :class:`~sipimdn.errors.CpimError` for a bad inner Content-Type or transfer encoding and
    :class:`~sipimdn.errors.IsComposingError` for a bad document.
    """
    if message.content_type != CONTENT_TYPE:
        return None
    return parse_iscomposing(message.decoded_body())


# -- build ----------------------------------------------------------------------------------------

# A media type or a bare top-level type ("text", "audio"), as RFC 3994 §3.4 shows.
_CONTENT_TYPE_RE: Final = re.compile(r"[A-Za-z0-9!#$&^_.+-]+(?:/[A-Za-z0-9!#$&^_.+-]+)?")


def build_iscomposing(
    state: ComposingState | str,
    *,
    last_active: _dt.datetime | None = None,
    content_type: str | None = None,
    refresh: int | None = None,
    extensions: tuple[bytes, ...] = (),
) -> bytes:
    """Build an application/im-iscomposing+xml document (UTF-8 bytes).

    Raises :class:`~sipimdn.errors.LocalProtocolError` for an unknown state, a refresh that is not
    a positive integer, a content type that is not a media type or top-level type, or an extension
    that is not one well-formed element outside the is-composing namespace.
    """
    try:
        state = ComposingState(state)
    except ValueError:
        raise LocalProtocolError(f"state must be active or idle, not {state!r}") from None
    if refresh is not None and (isinstance(refresh, bool) or not isinstance(refresh, int) or refresh <= 0):
        raise LocalProtocolError(f"refresh must be a positive integer of seconds, not {refresh!r}")
    if content_type is not None and (
        len(content_type) > _MAX_CONTENT_TYPE or _CONTENT_TYPE_RE.fullmatch(content_type) is None
    ):
        raise LocalProtocolError(f"contenttype is not a media type: {content_type!r}")
    checked = tuple(_serialise(_extension(raw)) for raw in extensions)
    return IsComposing(state, last_active, content_type, refresh, checked).to_xml()


def _extension(raw: bytes) -> etree._Element:
    try:
        element = etree.fromstring(raw, make_parser())
    except etree.XMLSyntaxError as exc:
        raise LocalProtocolError(f"extension is not well-formed XML: {exc}") from None
    if not str(element.tag).startswith("{") or str(element.tag).startswith(f"{{{XML_NS}}}"):
        raise LocalProtocolError("an extension element needs a namespace other than is-composing's")
    return element


def _format_datetime(value: _dt.datetime) -> str:
    if value.tzinfo is not None and value.utcoffset() == _dt.timedelta(0):
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def _render(doc: IsComposing) -> bytes:
    root = etree.Element(_q("isComposing"), nsmap={None: XML_NS})  # type: ignore[dict-item]
    etree.SubElement(root, _q("state")).text = doc.state.value
    if doc.last_active is not None:
        etree.SubElement(root, _q("lastactive")).text = _format_datetime(doc.last_active)
    if doc.content_type is not None:
        etree.SubElement(root, _q("contenttype")).text = doc.content_type
    if doc.refresh is not None:
        etree.SubElement(root, _q("refresh")).text = str(doc.refresh)
    for raw in doc.extensions:
        root.append(_extension(raw))
    return _DECLARATION + etree.tostring(root, encoding="UTF-8")


_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'
