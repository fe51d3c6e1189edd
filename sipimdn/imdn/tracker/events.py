"""What the tracker reports: frozen events drained with ``next_event()``, and why it refused."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..vocabulary import DispositionState
from .records import OwedRecord

__all__ = [
    "DeclineReason",
    "DispositionChanged",
    "NotificationAbandoned",
    "NotificationAccepted",
    "NotificationOwed",
    "NotificationRejected",
    "NotificationsDeclined",
    "OwedNotification",
    "Reception",
    "RejectReason",
    "TrackerEvent",
    "TrackingEnded",
]


class RejectReason(StrEnum):
    """Why a received notification was not applied."""

    #: Its Message-ID is not one we sent, or tracking ended (RFC 5438 §14.1: unsolicited).
    UNKNOWN_MESSAGE = "unknown-message"
    #: Neither its sender nor its recipient URIs are a recipient or intermediary of the message.
    NOT_A_RECIPIENT = "not-a-recipient"
    #: That type of notification was not requested (RFC 5438 §7.1.1).
    NOT_REQUESTED = "not-requested"
    #: A replay, or a second notification of one type for one recipient (RFC 5438 §7.2).
    DUPLICATE = "duplicate"
    #: The status does not belong to the notification kind (RFC 5438 §5).
    INVALID_STATUS = "invalid-status"
    #: The notification kind is none of delivery, display, processing.
    UNKNOWN_KIND = "unknown-kind"
    #: Verified through an intermediary but it does not say which recipient it is about.
    AMBIGUOUS_RECIPIENT = "ambiguous-recipient"
    #: A negative delivery notification after a non-2xx final response (RFC 5438 §7.2.1.1).
    AFTER_SIP_FAILURE = "after-sip-failure"
    #: The message already tracks as many list members as the configuration allows.
    TOO_MANY_RECIPIENTS = "too-many-recipients"


class DeclineReason(StrEnum):
    """Why a requested notification will not be sent."""

    #: The message is itself a notification; never notify a notification (RFC 5438 §7.2.1).
    LOOP_GUARD = "loop-guard"
    #: The sender is anonymous (RFC 5438 §12.1.1, §14).
    ANONYMOUS = "anonymous"
    #: The peer answered 415/488 to an earlier IMDN.
    PEER_REFUSES_IMDN = "peer-refuses-imdn"
    #: Too many notifications generated towards this destination address recently (or, through
    #: a trusted IMDN-Record-Route, for this originator).
    RATE_LIMITED = "rate-limited"
    #: The destination used its budget of notification bytes for the current window.
    BYTE_BUDGET = "byte-budget"
    #: The destination left a notification wholly unanswered and is parked for a while.
    DESTINATION_SILENT = "destination-silent"
    #: Display policy ``silent`` (RFC 5438 §14.2).
    PRIVACY = "privacy"
    #: IMDN-Record-Route not honoured because the path is not trusted (RFC 5438 §14.1);
    #: the IMDN goes to the sender.
    ROUTE_UNTRUSTED = "route-untrusted"
    #: More IMDN-Record-Route entries than allowed; the IMDN goes to the sender.
    ROUTE_TOO_LONG = "route-too-long"


#: An owed notification as handed to the adapter (the stored record itself).
OwedNotification = OwedRecord


@dataclass(frozen=True, slots=True)
class DispositionChanged:
    """The main state of one recipient of a sent message moved forward."""

    #: Message-ID of the message we sent.
    message_id: str
    #: The recipient's URI (as registered, or as the list member was reported).
    recipient: str
    #: The state before the change.
    previous: DispositionState
    #: The state now.
    state: DispositionState
    #: Notification kind that caused it (``delivery``/``display``), if a notification did.
    kind: str | None
    #: Notification status that caused it, if a notification did.
    status: str | None
    #: Final SIP status that caused it, if the response did.
    sip_status: int | None
    #: When it changed: the ``now`` the tracker was given. From a
    #: :class:`~sipimdn.ua.UserAgent`, wall-clock seconds (:func:`time.time`).
    at: float

    @property
    def event_id(self) -> str:
        """The same for every report of this change, whichever worker makes it: states only move
        forward, so (message, recipient, new state) happens once. Handlers told of a change more
        than once (several workers, a take-over) can use it to act once."""
        return f"{self.message_id} {self.recipient} {self.state.value}"


@dataclass(frozen=True, slots=True)
class NotificationAccepted:
    """A verified notification was recorded (``processing`` ones arrive only as this)."""

    #: Message-ID of the message we sent.
    message_id: str
    #: The recipient it was applied to.
    recipient: str
    #: ``delivery``, ``display`` or ``processing``.
    kind: str
    #: Its status value.
    status: str
    #: The notification's own Message-ID, if it had one.
    notification_id: str | None
    #: Whether it moved the main state (a :class:`DispositionChanged` follows if so).
    changed: bool


@dataclass(frozen=True, slots=True)
class NotificationRejected:
    """A received notification failed a check and was not applied (log it; answer 200 anyway)."""

    #: The Message-ID it named (possibly one we never sent).
    message_id: str
    #: Which check failed.
    reason: RejectReason
    #: The kind and status as received (unnormalised, for the log).
    kind: str
    status: str
    #: The sender it claimed (CPIM From, else SIP From), for the log.
    sender: str | None
    #: Human explanation.
    detail: str


@dataclass(frozen=True, slots=True)
class TrackingEnded:
    """No further notification is awaited for a sent message; its record is dropped."""

    #: Message-ID of the message we sent.
    message_id: str
    #: Final ``(recipient URI, state)`` of every recipient.
    states: tuple[tuple[str, DispositionState], ...]


@dataclass(frozen=True, slots=True)
class NotificationOwed:
    """Send this IMDN now, then report with :meth:`DispositionTracker.notification_outcome`."""

    #: Everything needed to build, route and identify the IMDN.
    notification: OwedRecord


@dataclass(frozen=True, slots=True)
class NotificationAbandoned:
    """An owed notification was given up."""

    #: The IMDN's own Message-ID.
    notification_id: str
    #: Message-ID of the received message it was about.
    message_id: str
    #: ``attempts-exhausted``, ``peer-refuses-imdn``, ``rejected-<status>`` or ``expired``.
    reason: str


@dataclass(frozen=True, slots=True)
class NotificationsDeclined:
    """Requested notifications we will not send (or route differently), and why."""

    #: Message-ID of the received message.
    message_id: str
    #: Its sender, as given to :meth:`DispositionTracker.record_received`.
    sender: str
    #: The affected kinds (request tokens).
    kinds: tuple[str, ...]
    #: Why.
    reason: DeclineReason


TrackerEvent = (
    DispositionChanged
    | NotificationAccepted
    | NotificationRejected
    | TrackingEnded
    | NotificationOwed
    | NotificationAbandoned
    | NotificationsDeclined
)


@dataclass(frozen=True, slots=True)
class Reception:
    """What :meth:`DispositionTracker.record_received` found out about a received message."""

    #: The same (sender, Message-ID) was received before: answer it, do not hand it up again.
    duplicate: bool
    #: The final status answered to the first copy, if it was decided.
    previous_status: int | None
    #: The notification kinds we may still honour for it (after policy).
    requested: tuple[str, ...]
