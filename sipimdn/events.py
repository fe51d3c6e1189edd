"""Events the user agent hands to the application.

Disposition events (``ua.on_disposition``) are the tracker's own frozen
events, re-exported here so applications import them from one place:

- :class:`DispositionChanged`: the state of one recipient of a message we
  sent moved (``pending -> accepted -> delivered -> displayed``, or
  ``failed``/``forbidden``/``error``/``expired``), caused by the SIP final
  response, a verified IMDN or expiry;
- :class:`NotificationAccepted`: a verified IMDN arrived (also ``processed``
  and ``stored``, which change no state);
- :class:`NotificationRejected`: an IMDN that failed the correlation and
  anti-forgery checks (RFC 5438 §7.1.2, §14.1). It was answered 200 so
  the sender learns nothing, and it was *not* applied: it is reported so the
  application can log or alert, never trusted;
- :class:`TrackingEnded`: the message reached its expiry and is forgotten.

Notification events (``ua.on_notification``) tell what happened to the
notifications *we* owe: :class:`NotificationSent` (defined here: the IMDN
MESSAGE got a final response, or failed to), :class:`NotificationAbandoned`
and :class:`NotificationsDeclined` (from the tracker).

Registration events (``ua.on_registration``) are the registration client's
(:mod:`sipimdn.registration`): :class:`RegistrationSucceeded` (also each
refresh), :class:`RegistrationFailed` (``retry_at`` None: given up),
:class:`RegistrationExpired` and :class:`Unregistered`.

One clock: every time an event carries (``DispositionChanged.at``,
``RegistrationSucceeded.refresh_at``, ``RegistrationFailed.retry_at``) is
wall-clock seconds since the epoch, as :func:`time.time` returns, so it can
be compared with ``time.time()`` and shown with :func:`datetime.datetime.fromtimestamp`.
The user agent still schedules registration refreshes on the event loop's
monotonic clock (a change of the system time does not move them); only the
values it reports are converted.
"""

from __future__ import annotations

from dataclasses import dataclass

from .imdn.tracker import (
    DispositionChanged,
    DispositionState,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationRejected,
    NotificationsDeclined,
    TrackingEnded,
)
from .imdn.vocabulary import Kind, Status
from .registration import (
    RegistrationEvent,
    RegistrationExpired,
    RegistrationFailed,
    RegistrationSucceeded,
    Unregistered,
)

__all__ = [
    "DispositionChanged",
    "DispositionEvent",
    "DispositionState",
    "NotificationAbandoned",
    "NotificationAccepted",
    "NotificationEvent",
    "NotificationRejected",
    "NotificationSent",
    "NotificationsDeclined",
    "RegistrationEvent",
    "RegistrationExpired",
    "RegistrationFailed",
    "RegistrationSucceeded",
    "TrackingEnded",
    "Unregistered",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationSent:
    """An IMDN we owed was sent; ``sip_status`` is the answer to its MESSAGE."""

    #: The IMDN's own imdn.Message-ID.
    notification_id: str
    #: The Message-ID of the message it reports on.
    message_id: str
    #: ``Kind.DELIVERY``, ``Kind.DISPLAY`` or ``Kind.PROCESSING`` (a :class:`str` enum).
    kind: Kind
    #: The reported status (``Status.DELIVERED``, ``Status.DISPLAYED``...; a :class:`str` enum).
    status: Status
    #: Where the IMDN went (the Request-URI).
    to: str
    #: Final SIP status of the IMDN's MESSAGE; None after a timeout or transport failure.
    sip_status: int | None
    #: 1 for the first attempt, then 2, 3... for retries.
    attempt: int


#: What ``ua.on_disposition`` handlers receive.
DispositionEvent = DispositionChanged | NotificationAccepted | NotificationRejected | TrackingEnded

#: What ``ua.on_notification`` handlers receive.
NotificationEvent = NotificationSent | NotificationAbandoned | NotificationsDeclined
