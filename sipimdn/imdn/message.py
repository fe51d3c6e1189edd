"""Whole CPIM messages for IMDN (RFC 5438 §7, §9): build an IM, build its IMDN, recognise an IMDN.

* :func:`build_im`: an outgoing instant message with the IMDN request headers
  (§7.1.1: Message-ID, DateTime, Disposition-Notification).
* :func:`build_imdn`: the IMDN answering a received IM, in one call
  (§7.2.1, §7.2.1.1): From/To swapped, a fresh Message-ID, IMDN-Route copied
  from IMDN-Record-Route in order, encapsulated ``message/imdn+xml`` with
  ``Content-Disposition: notification`` and no Disposition-Notification.
* :func:`recognise`: decides whether a received CPIM message is an IMDN
  (§9: encapsulated ``message/imdn+xml``, ``Content-Disposition:
  notification``, a notification element) and returns its notifications,
  aggregated (§8.3) and deflated bodies included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .._cache import remember
from ..cpim import build as _cpim_build
from ..cpim import grammar
from ..cpim.build import build_from_lines, build_with_known, check_header_lines, format_header, format_text
from ..cpim.message import CPIM_NS, DEFAULT_LIMITS, CpimHeader, CpimMessage
from ..cpim.values import CpimAddress, format_datetime, parse_address
from ..errors import CpimError, ImdnError, LocalProtocolError
from .aggregation import MAX_INFLATED_SIZE, build_multipart, inflate, split_multipart
from .document import CONTENT_TYPE, Kind, Notification, Status, make_notification, parse_notification
from .headers import (
    IMDN_NS,
    DispositionRequest,
    NotifyRequest,
    format_disposition_notification,
    imdn_headers,
    new_message_id,
)

__all__ = [
    "ReceivedImdn",
    "build_im",
    "build_imdn",
    "build_imdn_bytes",
    "build_imdn_message",
    "imdn_destination",
    "is_imdn",
    "recognise",
]


def _address(value: CpimAddress | str) -> CpimAddress:
    """A CpimAddress as is; a string is a bare URI, or ``Name <URI>`` when it holds a "<"."""
    if isinstance(value, CpimAddress):
        return value
    if "<" in value:
        try:
            return parse_address(value)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
    return CpimAddress(uri=value)


def build_im(
    *,
    from_: CpimAddress | str,
    to: CpimAddress | str | Sequence[CpimAddress | str],
    body: bytes,
    now: float,
    content_type: str = "text/plain; charset=utf-8",
    notify: Iterable[DispositionRequest | NotifyRequest | str] = (),
    message_id: str | None = None,
    subject: str | None = None,
    subject_lang: str | None = None,
    cc: Sequence[CpimAddress | str] = (),
    prefix: str = "imdn",
    mime_headers: Iterable[tuple[str, str]] = (),
) -> CpimMessage:
    """Build an outgoing instant message (RFC 5438 §7.1.1, header order of its example).

    ``now`` (POSIX seconds) becomes the DateTime header (RFC 5438 §7.1.1.2).
    ``message_id`` defaults to :func:`~sipimdn.imdn.new_message_id`. ``notify``
    lists the IMDNs to request; empty means none is requested (the
    Message-ID is still sent, which peers use for de-duplication).
    Raises :class:`~sipimdn.errors.LocalProtocolError` for invalid input.
    """
    recipients = [to] if isinstance(to, CpimAddress | str) else list(to)
    if not recipients:
        raise LocalProtocolError("an IM needs at least one To")
    mid = message_id if message_id is not None else new_message_id()
    if grammar.TOKEN_RE.fullmatch(mid) is None:
        raise LocalProtocolError(f"Message-ID must be a CPIM Token: {mid!r}")
    lines = [format_header("From", str(_address(from_)))]
    lines += [format_header("To", str(_address(r))) for r in recipients]
    lines += [format_header("cc", str(_address(r))) for r in cc]
    lines.append(format_header("NS", f"{prefix} <{IMDN_NS}>"))
    lines.append(format_header(f"{prefix}.Message-ID", mid))
    lines.append(format_header("DateTime", format_datetime(now)))
    if subject is not None:
        params = [("lang", subject_lang)] if subject_lang is not None else []
        lines.append(format_header("Subject", format_text(subject), params))
    requests = [str(r) for r in notify]
    if requests:
        value = format_disposition_notification(requests)
        lines.append(format_header(f"{prefix}.Disposition-Notification", value))
    return build_from_lines(lines, content_type=content_type, body=body, mime_headers=mime_headers)


def build_imdn(
    im: CpimMessage,
    *,
    kind: Kind | str,
    status: Status | str,
    now: float,
    own_address: CpimAddress | str | None = None,
    message_id: str | None = None,
    include_recipient: bool = True,
    include_subject: bool = False,
    prefix: str = "imdn",
) -> CpimMessage:
    """Build the IMDN answering the received instant message ``im`` (RFC 5438 §7.2.1.1).

    ``own_address`` is which of the IM's recipients we are (default: its first
    To); it becomes the CPIM From and ``<recipient-uri>``.
    ``<original-recipient-uri>`` is the IM's Original-To if any, else the same
    URI. ``include_recipient=False`` leaves both out (undisclosed lists,
    RFC 5438 §8, §14.2). The IMDN's DateTime is ``now``; ``<datetime>`` echoes the IM's
    DateTime verbatim.

    Raises :class:`~sipimdn.errors.LocalProtocolError` when ``im`` is itself an
    IMDN (no IMDN for an IMDN, RFC 5438 §7.2.1), lacks the Message-ID/DateTime/From an IMDN needs, or
    ``status`` does not belong to ``kind``; and
    :class:`~sipimdn.errors.ImdnError` when its IMDN headers are malformed.
    """
    if is_imdn(im):
        raise LocalProtocolError("no IMDN is ever sent for an IMDN (RFC 5438 §7.2.1)")
    headers = imdn_headers(im)
    if headers.message_id is None:
        raise LocalProtocolError("the IM has no IMDN Message-ID to report on (RFC 5438 §6.3)")
    im_datetime = im.date_time
    if im_datetime is None:
        raise LocalProtocolError("the IM has no DateTime to echo in <datetime> (RFC 5438 §7.1.1.2)")
    sender = im.from_
    if sender is None:
        raise LocalProtocolError("the IM has no CPIM From to send the IMDN to")
    me = _own_address(im, own_address)
    subject = im.subject if include_subject and include_recipient else None
    notification = make_notification(
        message_id=headers.message_id,
        datetime=im_datetime.raw.rstrip(" "),
        kind=kind,
        status=status,
        recipient_uri=me.uri if include_recipient else None,
        original_recipient_uri=(
            (headers.original_to.uri if headers.original_to else me.uri) if include_recipient else None
        ),
        subject=subject,
    )
    return build_imdn_message(
        notification,
        from_=me,
        to=sender,
        now=now,
        message_id=message_id,
        routes=headers.record_routes,
        prefix=prefix,
    )


def build_imdn_message(
    notifications: Notification | Sequence[Notification],
    *,
    from_: CpimAddress | str,
    to: CpimAddress | str,
    now: float,
    message_id: str | None = None,
    routes: Sequence[CpimAddress | str] = (),
    prefix: str = "imdn",
) -> CpimMessage:
    """Wrap notification(s) in a CPIM IMDN (RFC 5438 §7.2.1.1), from already-known fields.

    ``from_`` is the IM's recipient (us), ``to`` the IM's CPIM From; ``routes``
    are the IM's IMDN-Record-Route values in their order (they become
    IMDN-Route, §7.2.1). One notification gives ``message/imdn+xml``; several
    give an aggregated ``multipart/mixed`` body (§8.3). ``message_id`` is the
    IMDN's own Message-ID (default: fresh; keep it stable across retries).
    No Disposition-Notification and no IMDN-Record-Route are ever written.
    """
    if isinstance(notifications, Notification):
        content_type: str = CONTENT_TYPE
        body = notifications.to_xml()
    else:
        content_type, body = build_multipart([n.to_xml() for n in notifications])
    mid = message_id if message_id is not None else new_message_id()
    if grammar.TOKEN_RE.fullmatch(mid) is None:
        raise LocalProtocolError(f"Message-ID must be a CPIM Token: {mid!r}")
    lines = [
        format_header("From", str(_address(from_))),
        format_header("To", str(_address(to))),
        format_header("NS", f"{prefix} <{IMDN_NS}>"),
        format_header(f"{prefix}.Message-ID", mid),
    ]
    date_time = format_datetime(now)
    lines.append(format_header("DateTime", date_time))
    lines += [format_header(f"{prefix}.IMDN-Route", str(_address(r))) for r in routes]
    if content_type == CONTENT_TYPE:
        # The common case, without parsing again what was just made: the Message-ID is a
        # Token, bound to the IMDN namespace by the NS line before it (RFC 3862 §3.4), and
        # the DateTime is ours (format_datetime writes strict RFC 3339). From, To, NS and
        # the routes are checked as build_from_lines checks them.
        known = {
            3: CpimHeader(lines[3], prefix, "Message-ID", IMDN_NS, (), mid),
            4: CpimHeader(lines[4], None, "DateTime", CPIM_NS, (), date_time),
        }
        return build_with_known(lines, known, mime=_SINGLE_MIME, body=body)
    return build_from_lines(
        lines,
        content_type=content_type,
        body=body,
        mime_headers=[("Content-Disposition", "notification")],
    )


#: The MIME headers of a one-notification IMDN, as build_from_lines checks and parses them.
_SINGLE_MIME: Final = build_from_lines(
    [], content_type=CONTENT_TYPE, body=b"", mime_headers=[("Content-Disposition", "notification")]
).mime_headers
#: Their wire form with the empty line after them, as CpimMessage.to_bytes writes it.
_SINGLE_MIME_BYTES: Final = ("".join(h.raw + "\r\n" for h in _SINGLE_MIME) + "\r\n").encode("utf-8")


def build_imdn_bytes(
    notification: Notification,
    *,
    from_: CpimAddress | str,
    to: CpimAddress | str,
    now: float,
    message_id: str,
    routes: Sequence[CpimAddress | str] = (),
) -> bytes:
    """``build_imdn_message(...).to_bytes()`` for one notification: the IMDN's wire form.

    The common case (string addresses, no IMDN-Route, a Token Message-ID) is
    written as text, from lines already known to pass the checks
    :func:`build_imdn_message` runs; anything else is left to it, so the
    refusals are its own. tests/test_imdn_fastpaths.py holds the two to the same
    bytes and the same errors.
    """
    if (
        not routes
        and isinstance(from_, str)
        and isinstance(to, str)
        and not _cpim_build.SELF_CHECK
        and grammar.TOKEN_RE.fullmatch(message_id) is not None
    ):
        from_line = _address_line("From", from_)
        to_line = _address_line("To", to) if from_line is not None else None
        if to_line is not None:
            body = notification.to_xml()  # what build_imdn_message does first, errors included
            try:
                date_time = format_datetime(now)
            except LocalProtocolError:
                date_time = ""  # refused below, by build_imdn_message
            if date_time:
                head = (
                    f"{from_line}\r\n{to_line}\r\n{_IMDN_NS_LINE}\r\nimdn.Message-ID: {message_id}\r\n"
                    f"DateTime: {date_time}\r\n\r\n"
                ).encode()
                data = head + _SINGLE_MIME_BYTES + body
                # The size limits as build_with_known counts them (see cpim.build._check_sizes):
                # the header block is the text less its last CRLF's LF, the whole is data.
                limits = DEFAULT_LIMITS
                if (
                    limits.max_headers >= 5
                    and len(head) - 1 <= limits.max_header_bytes
                    and len(data) <= limits.max_size
                ):
                    return data
    return build_imdn_message(
        notification, from_=from_, to=to, now=now, message_id=message_id, routes=routes
    ).to_bytes()


def _address_line(name: str, value: str) -> str | None:
    """The From/To line :func:`build_imdn_message` writes for ``value``, if it passes its checks.

    A pure function of ``(name, value)``: the line is formatted as there and parsed as
    build_with_known parses it (no prefix, so the CPIM namespace whatever follows); None
    when anything refuses it or notes a leniency (then the general path says why).
    """
    key = (name, value)
    line = _ADDRESS_LINES.get(key)
    if line is not None:
        return line
    if name in _PLAIN_ADDRESS_NAMES and grammar.URI_RE.fullmatch(value) is not None:
        # A bare URI (a new peer's, most often): the URI grammar excludes "<", ">", DQUOTE, SP
        # and control characters, so "<URI>" is a strict address value (RFC 3862 §3) with no
        # Formal-name, and the line is what the general path writes and passes; tests/
        # test_imdn_fastpaths.py holds the two equal.
        line = f"{name}: <{value}>"
    else:
        try:
            line = format_header(name, str(_address(value)))
            check_header_lines([line])
        except (LocalProtocolError, ValueError):
            return None
    if len(value) <= _ADDRESS_LINES_MAX_KEY:
        remember(_ADDRESS_LINES, key, line, _ADDRESS_LINES_MAX)
    return line


# (name, value) -> the checked From/To line; values are peers' CPIM From (bounded).
_ADDRESS_LINES: dict[tuple[str, str], str] = {}
_ADDRESS_LINES_MAX = 1024
_ADDRESS_LINES_MAX_KEY = 256
_IMDN_NS_LINE: Final = format_header("NS", f"imdn <{IMDN_NS}>")
#: The header names whose bare-URI lines _address_line writes without the parser.
_PLAIN_ADDRESS_NAMES: Final = frozenset({"From", "To"})


def _own_address(im: CpimMessage, own: CpimAddress | str | None) -> CpimAddress:
    recipients = im.to
    if own is None:
        if not recipients:
            raise LocalProtocolError("the IM has no CPIM To; pass own_address")
        return recipients[0]
    if isinstance(own, CpimAddress):
        return own
    for r in recipients:  # keep the display name the sender gave us
        if r.uri == own:
            return r
    return CpimAddress(uri=own)


def imdn_destination(im: CpimMessage) -> str | None:
    """Where the IMDN for ``im`` goes: the top IMDN-Record-Route URI, else the CPIM From URI (§7.2.1)."""
    headers = imdn_headers(im)
    if headers.record_routes:
        return headers.record_routes[0].uri
    sender = im.from_
    return None if sender is None else sender.uri


@dataclass(frozen=True, slots=True)
class ReceivedImdn:
    """A received CPIM message recognised as an IMDN."""

    cpim: CpimMessage
    """The whole CPIM message."""
    message_id: str | None
    """The IMDN's own CPIM Message-ID (not the reported one, which is in each notification)."""
    notifications: tuple[Notification, ...]
    """One per document; several for an aggregated IMDN (§8.3)."""
    disposition_marker: bool
    """True when ``Content-Disposition: notification`` was present (all three §9 markers)."""
    aggregated: bool
    """True for a ``multipart/mixed`` body."""


def is_imdn(msg: CpimMessage) -> bool:
    """Does ``msg`` carry or claim to carry a notification? The cheap loop guard: no IMDN for
    an IMDN (RFC 5438 §7.2.1)."""
    if msg.content_disposition == "notification":
        return True
    ctype = msg.mime_header("Content-Type") or ""
    if ctype.split(";", 1)[0].strip().lower() == CONTENT_TYPE:
        return True
    return ctype.lower().startswith("multipart/") and CONTENT_TYPE.encode() in msg.body.lower()


def recognise(
    msg: CpimMessage,
    *,
    require_disposition: bool = False,
    accept_draft_read: bool = False,
    accept_lone_recipient: bool = False,
    max_inflated_size: int = MAX_INFLATED_SIZE,
) -> ReceivedImdn | None:
    """Return the notifications of an IMDN, or None when ``msg`` is an instant message (RFC 5438 §9).

    The encapsulated entity must be ``message/imdn+xml`` (or ``multipart/mixed``
    with such parts, §8.3); a Content-Transfer-Encoding (base64,
    quoted-printable) and then ``Content-Encoding: deflate`` are undone first.
    ``Content-Disposition: notification`` is required only with
    ``require_disposition=True``: Blink/sipsimple omit it,
    and the result records whether it was there. Each document must hold a
    notification element. A multipart body mixing IMDN and other parts is
    refused (RFC 5438 §9). Disposition-Notification headers in an IMDN are
    ignored (RFC 5438 §7.2.1). ``accept_draft_read`` and ``accept_lone_recipient`` are
    passed to :func:`~sipimdn.imdn.parse_notification` for each document.

    Raises :class:`~sipimdn.errors.ImdnError` when the message claims to be
    an IMDN but its body is malformed.
    """
    marker = msg.content_disposition == "notification"
    if require_disposition and not marker:
        return None
    ctype = msg.content_type
    if ctype not in (CONTENT_TYPE, "multipart/mixed"):
        return None
    try:
        body = msg.decoded_body()
    except CpimError as exc:
        raise ImdnError(exc.reason, exc.status_code) from None
    encoding = (msg.mime_header("Content-Encoding") or "").strip().lower()
    if encoding in ("deflate",):
        body = inflate(body, max_size=max_inflated_size)
    elif encoding not in ("", "identity"):
        if ctype == CONTENT_TYPE or marker:
            raise ImdnError(f"unsupported Content-Encoding {encoding!r} on an IMDN", 415)
        return None
    if ctype == CONTENT_TYPE:
        documents = [body]
        aggregated = False
    else:
        boundary = msg.content_type_params.get("boundary")
        if boundary is None:
            raise ImdnError("multipart/mixed without a boundary parameter")
        parts = split_multipart(body, boundary)
        imdn_parts = [p for p in parts if p.content_type == CONTENT_TYPE]
        if not imdn_parts:
            return None
        if len(imdn_parts) != len(parts):
            raise ImdnError("an IM and an IMDN in one multipart body (RFC 5438 §9)")
        documents = [p.body for p in imdn_parts]
        aggregated = True
    notifications = tuple(
        parse_notification(
            d, accept_draft_read=accept_draft_read, accept_lone_recipient=accept_lone_recipient
        )
        for d in documents
    )
    headers = imdn_headers(msg)
    return ReceivedImdn(
        cpim=msg,
        message_id=headers.message_id,
        notifications=notifications,
        disposition_marker=marker,
        aggregated=aggregated,
    )
