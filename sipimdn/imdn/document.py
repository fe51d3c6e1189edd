"""message/imdn+xml documents (RFC 5438 §7.2.1.1, §11): the Notification value, parse and build.

Parsing runs the hardened XML parser (``_safexml``), optionally maps the
draft-03 "read" naming to display, validates against the shipped
``imdn.xsd`` (written from RFC 5438 §11.2), then reads the fields. Building
renders a fixed element order (§11.1) and validates the result against the
same schema before returning it.

Extension elements (any namespace other than imdn's, §11.1) are kept on parse
as serialised bytes, both the ones after the notification element
(``extensions``) and the ones inside ``<status>`` after the value
(``status_extensions``), and written back on build.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from lxml import etree

from .._cache import remember_text
from .._fastinit import maker
from .._safexml import MAX_DEPTH, MAX_DOCUMENT_SIZE, make_parser, parse_xml
from ..cpim import grammar
from ..cpim.values import parse_datetime
from ..errors import ImdnError, LocalProtocolError
from .vocabulary import ALLOWED_STATUSES, Kind, Status

__all__ = [
    "ALLOWED_STATUSES",
    "CONTENT_TYPE",
    "XML_NS",
    "Kind",
    "Notification",
    "Status",
    "build_notification",
    "make_notification",
    "parse_notification",
    "validate",
]

XML_NS: Final = "urn:ietf:params:xml:ns:imdn"
"""XML namespace of message/imdn+xml (RFC 5438 §15.2)."""

CONTENT_TYPE: Final = "message/imdn+xml"
"""Media type of an IMDN document (RFC 5438 §15.1)."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One IMDN document (``<imdn>``), as parsed or to be built.

    ``recipient_uri`` and ``original_recipient_uri`` are both set or both None
    (the schema groups them), and ``subject`` needs them (§11.1.3-§11.1.5).
    """

    message_id: str
    """The Message-ID of the IM this notification is about (``<message-id>``)."""
    datetime: str
    """The IM's DateTime as the sender wrote it (``<datetime>``, an xs:string)."""
    kind: Kind
    """Which notification: delivery, display or processing."""
    status: Status
    """The reported status; always in ``ALLOWED_STATUSES[kind]``."""
    recipient_uri: str | None = None
    """The final recipient the report is about (``<recipient-uri>``)."""
    original_recipient_uri: str | None = None
    """The recipient the IM was first addressed to (``<original-recipient-uri>``)."""
    subject: str | None = None
    """One Subject of the IM (``<subject>``)."""
    extensions: tuple[bytes, ...] = ()
    """Extension elements after the notification element, serialised."""
    status_extensions: tuple[bytes, ...] = ()
    """Extension elements inside ``<status>`` after the value, serialised."""

    @property
    def sent_at(self) -> _dt.datetime | None:
        """``datetime`` parsed leniently (timezone-aware), or None when it is not a date-time."""
        try:
            return parse_datetime(self.datetime).value
        except ValueError:
            return None

    def to_xml(self) -> bytes:
        """Serialise as a UTF-8 message/imdn+xml document (checked against the schema)."""
        return _render(self)


# -- schema ---------------------------------------------------------------------------

_SCHEMA_TREE: Final = etree.fromstring(
    resources.files(__package__).joinpath("imdn.xsd").read_bytes(), make_parser()
)
# lxml validators are not thread-safe: one compiled schema per thread that validates.
_local = threading.local()


def _schema() -> etree.XMLSchema:
    schema: etree.XMLSchema | None = getattr(_local, "schema", None)
    if schema is None:
        schema = _local.schema = etree.XMLSchema(_SCHEMA_TREE)
    return schema


def validate(root: etree._Element) -> str | None:
    """Validate an ``<imdn>`` element against the shipped schema; return the first error or None."""
    schema = _schema()
    if schema.validate(root):
        return None
    error = schema.error_log.last_error  # type: ignore[attr-defined]  # missing from lxml-stubs
    return "schema violation" if error is None else f"schema violation: {error.message}"


# -- parse ----------------------------------------------------------------------------


def _q(local: str) -> str:
    return f"{{{XML_NS}}}{local}"


# draft-ietf-simple-imdn-03 called display notifications "read"; some clients still send it.
_DRAFT_RENAMES = {_q("read-notification"): _q("display-notification"), _q("read"): _q("displayed")}


def parse_notification(
    data: bytes,
    *,
    accept_draft_read: bool = False,
    accept_lone_recipient: bool = False,
    max_size: int = MAX_DOCUMENT_SIZE,
    max_depth: int = MAX_DEPTH,
) -> Notification:
    """Parse and validate a message/imdn+xml document.

    ``accept_draft_read=True`` reads draft-03's ``<read-notification>`` and
    ``<read/>`` status as display/displayed (input only; never generated).

    ``accept_lone_recipient=True`` accepts a ``<recipient-uri>`` without the
    ``<original-recipient-uri>`` the schema pairs it with (some SMS/RCS
    gateways send that) and reads the original as the same URI. Off by default:
    such a document breaks RFC 5438 §11.

    A document with no notification element is refused: RFC 5438 §11.1.6
    makes one mandatory even though the schema's ``<empty/>`` alternative
    allows none, and there is nothing to act on without it.

    Raises :class:`~sipimdn.errors.ImdnError`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_notification takes bytes")
    root = parse_xml(bytes(data), max_size=max_size, max_depth=max_depth)
    if root.tag != _q("imdn"):
        raise ImdnError(f"root element is {root.tag!r}, not imdn in {XML_NS}")
    if accept_draft_read:
        for element in root.iter(*_DRAFT_RENAMES):
            element.tag = _DRAFT_RENAMES[str(element.tag)]
    if accept_lone_recipient:
        _pair_lone_recipient(root)
    problem = validate(root)
    if problem is not None:
        raise ImdnError(problem)
    return _read(root)


def _pair_lone_recipient(root: etree._Element) -> None:
    recipient = root.find(_q("recipient-uri"))
    if recipient is None or root.find(_q("original-recipient-uri")) is not None:
        return
    original = etree.Element(_q("original-recipient-uri"))
    original.text = recipient.text
    original.tail = recipient.tail
    recipient.addnext(original)


_NS_PREFIX: Final = f"{{{XML_NS}}}"
# Tag -> meaning for every element the schema allows as a child of <imdn> or
# <status>: one dict lookup per element instead of string slicing and enum calls.
_FIELD_BY_TAG: Final = {
    _q(local): local
    for local in ("message-id", "datetime", "recipient-uri", "original-recipient-uri", "subject")
}
_KIND_BY_TAG: Final = {_q(kind.element): kind for kind in Kind}
_STATUS_BY_TAG: Final = {_q(status.value): status for status in Status}


def _read(root: etree._Element) -> Notification:
    # Runs on a schema-valid tree: each imdn child is a field or the one
    # notification element, whose <status> starts with a status element.
    fields: dict[str, str] = {}
    kind: Kind | None = None
    status: Status | None = None
    extensions: list[bytes] = []
    status_extensions: list[bytes] = []
    for child in root:
        tag = child.tag
        field = _FIELD_BY_TAG.get(tag)
        if field is not None:
            fields[field] = child.text or ""
            continue
        found = _KIND_BY_TAG.get(tag)
        if found is not None:
            kind = found
            status_element = child[0]
            status = _STATUS_BY_TAG.get(status_element[0].tag)
            if status is None:
                raise ImdnError(f"unknown status element {status_element[0].tag!r}")
            if len(status_element) > 1:
                status_extensions.extend(_serialise(e) for e in list(status_element)[1:])
            continue
        if str(tag).startswith(_NS_PREFIX):
            raise ImdnError(f"unexpected element {tag!r} in imdn")
        extensions.append(_serialise(child))
    if kind is None or status is None:
        raise ImdnError("IMDN has no notification element (RFC 5438 §11.1.6)")
    # The schema's per-kind <choice> already enforces ALLOWED_STATUSES; keep the
    # table authoritative in case the schema is ever loosened.
    if status not in ALLOWED_STATUSES[kind]:
        raise ImdnError(f"status {status} is not allowed in a {kind} notification")
    message_id = fields["message-id"]
    return Notification(
        # xs:token: the schema collapses whitespace for validation, so do we.
        message_id=message_id if _PLAIN_TOKEN_RE.fullmatch(message_id) else " ".join(message_id.split()),
        datetime=fields["datetime"],
        kind=kind,
        status=status,
        recipient_uri=_strip(fields.get("recipient-uri")),
        original_recipient_uri=_strip(fields.get("original-recipient-uri")),
        subject=fields.get("subject"),
        extensions=tuple(extensions),
        status_extensions=tuple(status_extensions),
    )


# A value with no white space (as str.split() sees it: \s is the same set) is
# its own collapse.
_PLAIN_TOKEN_RE: Final = re.compile(r"\S*")


def _strip(value: str | None) -> str | None:
    # xs:anyURI has whiteSpace=collapse: surrounding whitespace is not part of the value.
    return None if value is None else value.strip()


def _serialise(element: etree._Element) -> bytes:
    # Exclusive C14N: only the namespaces the element uses, a canonical form, so
    # equal extensions compare equal however they were written.
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False, with_tail=False)


# -- build ----------------------------------------------------------------------------


def build_notification(
    *,
    message_id: str,
    datetime: str,
    kind: Kind | str,
    status: Status | str,
    recipient_uri: str | None = None,
    original_recipient_uri: str | None = None,
    subject: str | None = None,
    extensions: tuple[bytes, ...] = (),
    status_extensions: tuple[bytes, ...] = (),
) -> bytes:
    """Build a message/imdn+xml document (UTF-8 bytes) for the IM ``message_id``.

    ``datetime`` is the IM's DateTime string, echoed verbatim (§7.2.1.1).
    ``original_recipient_uri`` defaults to ``recipient_uri`` because the schema
    requires both or neither. Raises :class:`~sipimdn.errors.LocalProtocolError`
    for a status that does not belong to ``kind`` or any other invalid field.
    """
    notification = make_notification(
        message_id=message_id,
        datetime=datetime,
        kind=kind,
        status=status,
        recipient_uri=recipient_uri,
        original_recipient_uri=original_recipient_uri,
        subject=subject,
        extensions=extensions,
        status_extensions=status_extensions,
    )
    return notification.to_xml()


def make_notification(
    *,
    message_id: str,
    datetime: str,
    kind: Kind | str,
    status: Status | str,
    recipient_uri: str | None = None,
    original_recipient_uri: str | None = None,
    subject: str | None = None,
    extensions: tuple[bytes, ...] = (),
    status_extensions: tuple[bytes, ...] = (),
) -> Notification:
    """Check the fields and return a :class:`Notification` (see :func:`build_notification`)."""
    # The members by value (a member is its own value, StrEnum); the enum call says what is wrong.
    known_kind = _KIND_OF.get(kind) if isinstance(kind, str) else None
    known_status = _STATUS_OF.get(status) if isinstance(status, str) else None
    if known_kind is None or known_status is None:
        try:
            known_kind = Kind(kind)
            known_status = Status(status)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
    kind, status = known_kind, known_status
    if status not in ALLOWED_STATUSES[kind]:
        raise LocalProtocolError(f"status {status} is not allowed in a {kind} notification (RFC 5438 §5)")
    if grammar.LENIENT_TOKEN_RE.fullmatch(message_id) is None:
        # It echoes the IM's Message-ID header: a CPIM Token (RFC 5438 §6.3), or at
        # least what imdn_headers() accepts from a peer; never empty or spaced.
        raise LocalProtocolError(f"message-id must be a CPIM Token: {message_id!r}")
    if original_recipient_uri is not None and recipient_uri is None:
        raise LocalProtocolError("original-recipient-uri needs recipient-uri (RFC 5438 §11.1)")
    if recipient_uri is not None and original_recipient_uri is None:
        original_recipient_uri = recipient_uri
    if subject is not None and recipient_uri is None:
        raise LocalProtocolError("subject needs recipient-uri (RFC 5438 §11.1 schema)")
    # (checked above: built without the dataclass __init__, one per notification we send)
    return _make_notification(
        message_id,
        datetime,
        kind,
        status,
        recipient_uri,
        original_recipient_uri,
        subject,
        tuple(_serialise(_extension(raw)) for raw in extensions) if extensions else (),
        tuple(_serialise(_extension(raw)) for raw in status_extensions) if status_extensions else (),
    )


#: ``Notification(...)`` by position without the frozen dataclass ``__init__`` (see sipimdn._fastinit).
_make_notification: Callable[..., Notification] = maker(Notification)


_KIND_OF: Final[dict[str, Kind]] = {k.value: k for k in Kind}
_STATUS_OF: Final[dict[str, Status]] = {s.value: s for s in Status}


def _render(n: Notification) -> bytes:
    fast = _render_template(n)
    if fast is not None:
        return fast
    return _render_tree(n)


# Characters the template writes as they are: XML 1.0 Char (§2.2) minus CR,
# which libxml2 writes as "&#13;" (rare enough to leave to the tree builder),
# and minus U+FFFE/U+FFFF, which lxml refuses. Lone surrogates are excluded too.
_PLAIN_TEXT_RE: Final = re.compile("[\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
# imdn:uri in imdn.xsd, verbatim; XSD patterns are anchored and its \s is [ \t\n\r].
_XSD_URI_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[^ \t\n\r%]|%[0-9A-Fa-f]{2})+")
_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_HEAD: Final = '<?xml version="1.0" encoding="UTF-8"?>\n<imdn xmlns="' + XML_NS + '">'
_TAILS: Final = {
    (kind, status): f"<{kind.element}><status><{status.value}/></status></{kind.element}></imdn>"
    for kind, statuses in ALLOWED_STATUSES.items()
    for status in statuses
}


def _render_template(n: Notification) -> bytes | None:
    """The document as text, for the common case; None sends the case to the lxml tree builder.

    Taken only when the result is provably what :func:`_render_tree` writes
    and valid against imdn.xsd: no extension elements, every text made of
    characters written verbatim (``& < >`` escaped as libxml2 does), a
    message-id that is a non-empty xs:token without white space, URIs
    matching the schema's pattern, a (kind, status) pair of the table. The
    differential test in tests/test_imdn_fastpaths.py holds it to byte identity.
    """
    if n.extensions or n.status_extensions:
        return None
    tail = _TAILS.get((n.kind, n.status))
    if tail is None:
        return None
    message_id = n.message_id
    datetime = n.datetime
    if (
        _PLAIN_TEXT_RE.fullmatch(message_id) is None
        or _PLAIN_TEXT_RE.fullmatch(datetime) is None
        or grammar.LENIENT_TOKEN_RE.fullmatch(message_id) is None
    ):
        return None
    parts = [_HEAD, "<message-id>", message_id.translate(_ESCAPES), "</message-id><datetime>"]
    parts += [datetime.translate(_ESCAPES), "</datetime>"]
    recipient = n.recipient_uri
    if recipient is not None:
        first = _uri_element("recipient-uri", recipient)
        second = _uri_element("original-recipient-uri", n.original_recipient_uri or recipient)
        if first is None or second is None:
            return None
        parts += [first, second]
        subject = n.subject
        if subject is not None:
            if _PLAIN_TEXT_RE.fullmatch(subject) is None:
                return None
            parts += ["<subject>", subject.translate(_ESCAPES), "</subject>"]
    elif n.subject is not None or n.original_recipient_uri is not None:
        return None
    parts.append(tail)
    return "".join(parts).encode("utf-8")


def _uri_element(name: str, uri: str) -> str | None:
    """``<name>uri</name>`` as the template writes it, or None if the URI is not for the
    template (see :func:`_render_template`); a pure function of its arguments, remembered:
    the recipient URIs are ours and repeat."""
    key = f"{name} {uri}"
    element = _URI_ELEMENTS.get(key)
    if element is None:
        if _PLAIN_TEXT_RE.fullmatch(uri) is None or _XSD_URI_RE.fullmatch(uri) is None:
            return None
        element = remember_text(
            _URI_ELEMENTS, key, f"<{name}>{uri.translate(_ESCAPES)}</{name}>", 256, max_key=300
        )
    return element


_URI_ELEMENTS: dict[str, str] = {}


def _render_tree(n: Notification) -> bytes:
    extensions = [_extension(raw) for raw in n.extensions]
    status_extensions = [_extension(raw) for raw in n.status_extensions]
    # libxml2 does not write xmlns="" when an element with no namespace is moved
    # under a default namespace, so such an element inside an extension would
    # silently join the imdn namespace. Use a prefix for imdn in that (rare) case;
    # otherwise keep the default-namespace form of every RFC 5438 example.
    unqualified = any(
        not str(e.tag).startswith("{")
        for ext in (*extensions, *status_extensions)
        for e in ext.iter(tag=etree.Element)
    )
    nsmap = {"imdn": XML_NS} if unqualified else {None: XML_NS}
    root = etree.Element(_q("imdn"), nsmap=nsmap)  # type: ignore[arg-type]
    try:
        _text(root, "message-id", n.message_id)
        _text(root, "datetime", n.datetime)
        if n.recipient_uri is not None:
            _text(root, "recipient-uri", n.recipient_uri)
            _text(root, "original-recipient-uri", n.original_recipient_uri or n.recipient_uri)
            if n.subject is not None:
                _text(root, "subject", n.subject)
        notification = etree.SubElement(root, _q(Kind(n.kind).element))
        status = etree.SubElement(notification, _q("status"))
        etree.SubElement(status, _q(Status(n.status).value))
        for ext in status_extensions:
            status.append(ext)
        for ext in extensions:
            root.append(ext)
    except ValueError as exc:  # lxml refuses control characters and bad names
        raise LocalProtocolError(f"cannot build IMDN: {exc}") from None
    problem = validate(root)
    if problem is not None:
        raise LocalProtocolError(f"cannot build IMDN: {problem}")
    # Double-quoted declaration as in every RFC 5438 example (lxml writes single quotes).
    return _XML_DECLARATION + etree.tostring(root, xml_declaration=False, encoding="UTF-8")


_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _text(parent: etree._Element, local: str, text: str) -> None:
    etree.SubElement(parent, _q(local)).text = text


def _extension(raw: bytes) -> etree._Element:
    try:
        return parse_xml(raw)
    except ImdnError as exc:
        raise LocalProtocolError(f"bad IMDN extension element: {exc.reason}") from None
