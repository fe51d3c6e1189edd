"""The IMDN vocabulary (RFC 5438): notification kinds, statuses, requests and disposition states.

One definition of each word, imported by the codecs (:mod:`.document`,
:mod:`.headers`), the tracker and the user agent. Plain data and pure
functions; no I/O, no parsing.

``DispositionState`` is not an RFC 5438 word: it is how far one recipient
of a message we sent has got, derived from the SIP final response and the
notifications received, and it only moves forward along
:data:`POSITIVE_CHAIN` or into a terminal failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Final, Literal, TypeAlias

__all__ = [
    "ALLOWED_STATUSES",
    "POSITIVE_CHAIN",
    "RECIPIENT_REQUESTS",
    "REQUEST_KINDS",
    "STATE_RANK",
    "TERMINAL_STATES",
    "DisplayPolicy",
    "DispositionRequest",
    "DispositionState",
    "Kind",
    "KindName",
    "NotifyName",
    "Status",
    "StatusName",
    "notification_kind",
    "reached",
    "was_requested",
]


class Kind(StrEnum):
    """The notification category, named after the request token (RFC 5438 §5)."""

    DELIVERY = "delivery"
    DISPLAY = "display"
    PROCESSING = "processing"

    @property
    def element(self) -> str:
        """The XML element name: ``delivery-notification`` etc."""
        return f"{self.value}-notification"


class Status(StrEnum):
    """Every status value of RFC 5438 §11.1.7; which ones fit a kind is in :data:`ALLOWED_STATUSES`."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DISPLAYED = "displayed"
    PROCESSED = "processed"
    STORED = "stored"
    FORBIDDEN = "forbidden"
    ERROR = "error"


#: A notification kind as a plain string, for type checkers: ``"delivery"``, ``"display"`` or
#: ``"processing"`` (the values of :class:`Kind`). APIs take ``Kind | KindName``, so a misspelt
#: literal is a type error.
KindName: TypeAlias = Literal["delivery", "display", "processing"]

#: A notification status as a plain string (the values of :class:`Status`).
StatusName: TypeAlias = Literal[
    "delivered", "failed", "displayed", "processed", "stored", "forbidden", "error"
]


ALLOWED_STATUSES: Final[Mapping[Kind, frozenset[Status]]] = {
    Kind.DELIVERY: frozenset({Status.DELIVERED, Status.FAILED, Status.FORBIDDEN, Status.ERROR}),
    Kind.DISPLAY: frozenset({Status.DISPLAYED, Status.FORBIDDEN, Status.ERROR}),
    Kind.PROCESSING: frozenset({Status.PROCESSED, Status.STORED, Status.FORBIDDEN, Status.ERROR}),
}
"""Allowed ``<status>`` values per notification kind (RFC 5438 §5, §11.1.7). Members are
``StrEnum``: plain strings look up and compare equal (``ALLOWED_STATUSES["delivery"]``)."""


class DispositionRequest(StrEnum):
    """The four notify-req values of the Disposition-Notification header (RFC 5438 §6.2)."""

    POSITIVE_DELIVERY = "positive-delivery"
    NEGATIVE_DELIVERY = "negative-delivery"
    PROCESSING = "processing"
    DISPLAY = "display"


#: A notification request as a plain string (the values of :class:`DispositionRequest`).
NotifyName: TypeAlias = Literal["positive-delivery", "negative-delivery", "processing", "display"]

#: The ``Disposition-Notification`` request tokens RFC 5438 §6.2 defines, as plain strings.
REQUEST_KINDS: Final = frozenset(request.value for request in DispositionRequest)

#: The request tokens a recipient answers: it never sends processing notifications, which are
#: an intermediary's (RFC 5438 §7.2). A message requesting none of these is owed nothing by its
#: recipient.
RECIPIENT_REQUESTS: Final = frozenset(
    request.value
    for request in (
        DispositionRequest.POSITIVE_DELIVERY,
        DispositionRequest.NEGATIVE_DELIVERY,
        DispositionRequest.DISPLAY,
    )
)


class DispositionState(StrEnum):
    """Main disposition state of one recipient of a sent message."""

    #: Sent, no final SIP response and no notification yet.
    PENDING = "pending"
    #: A 2xx final response arrived (202 included: relayed, not yet delivered; RFC 3428 §7).
    ACCEPTED = "accepted"
    #: A ``delivered`` delivery notification arrived.
    DELIVERED = "delivered"
    #: A ``displayed`` display notification arrived (terminal).
    DISPLAYED = "displayed"
    #: A non-2xx final response, or a ``failed`` delivery notification (terminal).
    FAILED = "failed"
    #: A ``forbidden`` delivery or display notification (terminal).
    FORBIDDEN = "forbidden"
    #: An ``error`` delivery or display notification (terminal).
    ERROR = "error"
    #: Tracking ended with no positive news (terminal).
    EXPIRED = "expired"
    #: Accepted, but sent without message/cpim because the peer does not take it (its 415,
    #: or the Accept of its OPTIONS answer): the notifications requested cannot come, since
    #: RFC 5438 §6 carries requests only in CPIM (terminal).
    UNSUPPORTED = "unsupported"


#: The positive path, in order; a state later in it implies every earlier one
#: (``displayed`` implies ``delivered``: a display notification may arrive alone or first).
POSITIVE_CHAIN: Final = (
    DispositionState.PENDING,
    DispositionState.ACCEPTED,
    DispositionState.DELIVERED,
    DispositionState.DISPLAYED,
)

TERMINAL_STATES: Final = frozenset(
    {
        DispositionState.DISPLAYED,
        DispositionState.FAILED,
        DispositionState.FORBIDDEN,
        DispositionState.ERROR,
        DispositionState.EXPIRED,
        DispositionState.UNSUPPORTED,
    }
)

#: Progress rank: a state change never lowers it (terminal failures rank highest).
STATE_RANK: Final[Mapping[DispositionState, int]] = {
    **{state: rank for rank, state in enumerate(POSITIVE_CHAIN)},
    DispositionState.FAILED: 4,
    DispositionState.FORBIDDEN: 4,
    DispositionState.ERROR: 4,
    DispositionState.EXPIRED: 4,
    DispositionState.UNSUPPORTED: 4,
}

_CHAIN_INDEX: Final = {state: index for index, state in enumerate(POSITIVE_CHAIN)}


def reached(state: DispositionState | str, target: DispositionState | str) -> bool:
    """Whether ``state`` is ``target`` or lies beyond it on :data:`POSITIVE_CHAIN`.

    A failure state only reaches itself.
    """
    if state == target:
        return True
    here, there = _CHAIN_INDEX.get(DispositionState(state)), _CHAIN_INDEX.get(DispositionState(target))
    return here is not None and there is not None and here >= there


class DisplayPolicy(StrEnum):
    """What we do with a request for a display notification (RFC 5438 §14.2: the user's consent)."""

    #: Send ``displayed`` when the application marks the message displayed.
    SEND = "send"
    #: Answer every display request with ``forbidden`` as soon as we answer 2xx (RFC 5438 §5.3).
    FORBIDDEN = "forbidden"
    #: Never send a display notification (RFC 5438 §7.2.1.2 allows silence).
    SILENT = "silent"


def notification_kind(kind: object) -> Kind | None:
    """``kind`` (a :class:`Kind`, its value or its element name) as a :class:`Kind`, or None."""
    text = str(getattr(kind, "value", kind)).strip().lower().removesuffix("-notification")
    try:
        return Kind(text)
    except ValueError:
        return None


def was_requested(requested: Sequence[str] | frozenset[str], kind: str, status: str) -> bool:
    """Whether a ``kind``/``status`` notification answers one of the ``requested`` tokens.

    ``delivered`` answers ``positive-delivery``, ``failed`` answers
    ``negative-delivery``, and ``forbidden``/``error`` answer either
    (RFC 5438 §7.2.1.1); display and processing answer their own token.
    """
    if kind == Kind.DISPLAY:
        return "display" in requested
    if kind == Kind.PROCESSING:
        return "processing" in requested
    if status == Status.DELIVERED:
        return "positive-delivery" in requested
    if status == Status.FAILED:
        return "negative-delivery" in requested
    return "positive-delivery" in requested or "negative-delivery" in requested
