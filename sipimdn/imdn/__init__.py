"""IMDN codecs (RFC 5438): CPIM IMDN headers, message/imdn+xml documents, aggregation; no I/O.

``parse_notification(data)`` returns a :class:`Notification`;
``build_notification(...)`` returns the XML bytes; :func:`build_im`,
:func:`build_imdn`, :func:`build_imdn_message` and :func:`recognise` work on
whole CPIM messages.
Malformed peer data raises :class:`ImdnError`. The vocabulary (kinds,
statuses, requests, disposition states) is :mod:`sipimdn.imdn.vocabulary`;
the sans-IO tracker lives in ``sipimdn.imdn.tracker`` (imported from there,
not re-exported here).
"""

from __future__ import annotations

from ..errors import ImdnError
from .aggregation import MAX_INFLATED_SIZE, MAX_PARTS, MimePart, build_multipart, inflate, split_multipart
from .document import (
    ALLOWED_STATUSES,
    CONTENT_TYPE,
    XML_NS,
    Kind,
    Notification,
    Status,
    build_notification,
    make_notification,
    parse_notification,
)
from .headers import (
    IMDN_NS,
    DispositionRequest,
    ImdnHeaders,
    NotifyRequest,
    format_disposition_notification,
    imdn_headers,
    new_message_id,
    parse_disposition_notification,
)
from .message import (
    ReceivedImdn,
    build_im,
    build_imdn,
    build_imdn_message,
    imdn_destination,
    is_imdn,
    recognise,
)

__all__ = [
    "ALLOWED_STATUSES",
    "CONTENT_TYPE",
    "IMDN_NS",
    "MAX_INFLATED_SIZE",
    "MAX_PARTS",
    "XML_NS",
    "DispositionRequest",
    "ImdnError",
    "ImdnHeaders",
    "Kind",
    "MimePart",
    "Notification",
    "NotifyRequest",
    "ReceivedImdn",
    "Status",
    "build_im",
    "build_imdn",
    "build_imdn_message",
    "build_multipart",
    "build_notification",
    "format_disposition_notification",
    "imdn_destination",
    "imdn_headers",
    "inflate",
    "is_imdn",
    "make_notification",
    "new_message_id",
    "parse_disposition_notification",
    "parse_notification",
    "recognise",
    "split_multipart",
]
