"""The records the disposition tracker keeps and a store persists, and the write operations.

What the tracker must survive a restart with is kept as five kinds of flat,
frozen records, one table each:

``sent``      :class:`SentRecord`      a message we sent and still await notifications for
``owed``      :class:`OwedRecord`      a notification we owe and have not had acknowledged
``received``  :class:`ReceivedRecord`  a received message that may still be owed a notification
``seen``      :class:`SeenRecord`      a (sender, Message-ID) pair already handed up (dedup)
``peer``      :class:`PeerRecord`      what a peer refused (capability flags)

Every record has a string ``key`` (unique in its table) and an ``expires_at``
(after which nobody needs it). The tracker never calls a store: it queues
:class:`Put` and :class:`Delete` operations, and the adapter hands them, in
order, to :meth:`Store.apply <sipimdn.store.base.Store.apply>`. Records are
whole-value upserts, so applying an operation twice is harmless. They hold
plain strings (states and statuses are the vocabulary's StrEnum values
written as text), so a store needs no knowledge of the tracker. Defined
here, beside the tracker and free of I/O; :mod:`sipimdn.store` re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..._fastinit import evolver

__all__ = [
    "CLASSES",
    "TABLES",
    "AnyRecord",
    "Delete",
    "OwedRecord",
    "PeerRecord",
    "Put",
    "ReceivedRecord",
    "RecipientRecord",
    "SeenRecord",
    "SentRecord",
    "Snapshot",
    "StoreOp",
    "received_key",
]

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class RecipientRecord:
    """The disposition of one recipient of a sent message."""

    #: The recipient's URI as given when the message was registered (or as a member reported it).
    uri: str
    #: Its identity key (:func:`sipimdn.uri.identity_key`), used for matching.
    key: str
    #: Main state: a :class:`sipimdn.imdn.tracker.DispositionState` value.
    state: str
    #: Status of the delivery notification received, if any (``delivered``, ``failed``, ...).
    delivery: str | None = None
    #: Status of the display notification received, if any.
    display: str | None = None
    #: Status of the processing notification received, if any.
    processing: str | None = None
    #: Identity key of the intended recipient or intermediary this member was reported through.
    via: str | None = None
    #: When the state last changed (tracker clock).
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class SentRecord:
    """A message we sent and whose notifications we still await."""

    TABLE: ClassVar[str] = "sent"

    #: The CPIM ``imdn.Message-ID`` of the message.
    message_id: str
    #: Intended recipients first, then members learnt from notifications (``via`` set).
    recipients: tuple[RecipientRecord, ...]
    #: Requested notification kinds (``Disposition-Notification`` tokens), sorted.
    requested: tuple[str, ...]
    #: Identity keys of intermediaries the message was sent through (list servers...).
    intermediaries: tuple[str, ...]
    created_at: float
    #: Tracking deadline: unsettled recipients become ``expired`` then and the record is dropped.
    deadline: float
    #: Store expiry: the deadline plus a grace period, so a deadline that passed while the
    #: user agent was down is still reported after a restart.
    expires_at: float
    #: Final SIP status of the MESSAGE, once known.
    sip_status: int | None = None
    #: The ``imdn.Message-ID`` values of notifications already applied (replay guard).
    notification_ids: tuple[str, ...] = ()
    #: Application data kept with the message (survives restarts), sorted by name.
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """The table key: the Message-ID."""
        return self.message_id


@dataclass(frozen=True, slots=True)
class OwedRecord:
    """A notification (IMDN) we owe a peer, with everything needed to build and route it."""

    TABLE: ClassVar[str] = "owed"

    #: The new ``imdn.Message-ID`` of the IMDN itself; stable across retries.
    notification_id: str
    #: Message-ID of the IM this notification is about (``<message-id>``).
    message_id: str
    #: Identity key of the IM's sender (with ``message_id``, the received-message key).
    sender_key: str
    #: ``delivery`` or ``display``.
    kind: str
    #: ``delivered``, ``failed``, ``forbidden``, ``error``, ``displayed``.
    status: str
    #: SIP Request-URI: the top IMDN-Route if honoured, else the IM's SIP From (RFC 5438 §7.2.1).
    request_uri: str
    #: SIP To: the IM's SIP From.
    sip_to: str
    #: CPIM To: the IM's CPIM From.
    cpim_to: str
    #: CPIM From: the IM's CPIM To (ourselves as its recipient), if known.
    cpim_from: str | None
    #: ``<recipient-uri>``: the IM's CPIM To, if known.
    recipient_uri: str | None
    #: ``<original-recipient-uri>``: the IM's Original-To, if any.
    original_recipient_uri: str | None
    #: ``<datetime>``: the IM's DateTime, raw, echoed unchanged.
    datetime: str | None
    #: ``<subject>``: one of the IM's subjects, if any.
    subject: str | None
    #: IMDN-Route values to put in the IMDN (copies of the IM's IMDN-Record-Route, same order).
    imdn_route: tuple[str, ...]
    #: Identity key of the peer the IMDN goes to (for the "refuses IMDN" memory).
    peer_key: str
    #: Attempts started so far (1 while the first is in flight).
    attempts: int
    #: Queued: when to send next. In flight: when to give up waiting for the outcome.
    next_attempt_at: float
    #: True while an attempt has been handed out and its outcome is not known.
    in_flight: bool
    created_at: float
    #: Give the notification up at this time.
    expires_at: float

    @property
    def key(self) -> str:
        """The table key: the notification's own Message-ID."""
        return self.notification_id

    @property
    def attempt(self) -> int:
        """The 1-based number of the attempt currently handed out."""
        return self.attempts


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A received message that asked for notifications and may still be owed one."""

    TABLE: ClassVar[str] = "received"

    message_id: str
    #: Identity key of the sender (CPIM From, else SIP From).
    sender_key: str
    #: The IM's CPIM From as received.
    sender: str
    #: The IM's SIP From URI, if known.
    sip_from: str | None
    #: The IM's CPIM To (us), if known.
    recipient: str | None
    #: The IM's Original-To, if any.
    original_recipient: str | None
    #: The IM's DateTime, raw.
    datetime: str | None
    subject: str | None
    #: Notification kinds requested that we may honour, sorted.
    requested: tuple[str, ...]
    #: IMDN-Record-Route values honoured (empty when not trusted or too long).
    imdn_route: tuple[str, ...]
    #: Final SIP status we answered, once decided.
    answered_status: int | None
    #: Delivery status already owed (``declined`` when refused by policy), or None.
    delivery_owed: str | None
    #: Display status already owed (``declined`` when refused by policy), or None.
    display_owed: str | None
    #: The :class:`sipimdn.imdn.tracker.DisplayPolicy` value in force for this message.
    display_policy: str
    received_at: float
    expires_at: float

    @property
    def key(self) -> str:
        """The table key: sender identity and Message-ID."""
        return received_key(self.sender_key, self.message_id)


@dataclass(frozen=True, slots=True)
class SeenRecord:
    """A (sender, Message-ID) pair already received: later copies are duplicates."""

    TABLE: ClassVar[str] = "seen"

    sender_key: str
    message_id: str
    #: The final status answered the first time, once decided.
    status: int | None
    expires_at: float

    @property
    def key(self) -> str:
        """The table key: sender identity and Message-ID."""
        return received_key(self.sender_key, self.message_id)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """Capability flags learnt about one peer (e.g. ``no-imdn`` after a 415 to an IMDN)."""

    TABLE: ClassVar[str] = "peer"

    #: Identity key of the peer.
    peer_key: str
    #: Sorted flag names.
    flags: tuple[str, ...]
    updated_at: float
    expires_at: float

    @property
    def key(self) -> str:
        """The table key: the peer's identity key."""
        return self.peer_key


AnyRecord = SentRecord | OwedRecord | ReceivedRecord | SeenRecord | PeerRecord

#: Record class per table name.
CLASSES: dict[str, type[Any]] = {
    cls.TABLE: cls for cls in (SentRecord, OwedRecord, ReceivedRecord, SeenRecord, PeerRecord)
}
#: The table names, in a fixed order.
TABLES: tuple[str, ...] = tuple(CLASSES)


def received_key(sender_key: str, message_id: str) -> str:
    """Key of a received message: a Message-ID is unique per sender only."""
    # A sender key never holds a space, so splitting at the first space is unambiguous even for
    # the non-Token Message-IDs some peers send.
    return f"{sender_key} {message_id}"


@dataclass(frozen=True, slots=True)
class Put:
    """Insert or replace one record (whole value)."""

    record: AnyRecord


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove one record; removing a missing one is not an error."""

    #: One of ``TABLES``.
    table: str
    key: str


StoreOp = Put | Delete


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a store holds that had not expired when it was loaded."""

    sent: tuple[SentRecord, ...] = ()
    owed: tuple[OwedRecord, ...] = ()
    received: tuple[ReceivedRecord, ...] = ()
    seen: tuple[SeenRecord, ...] = ()
    peers: tuple[PeerRecord, ...] = ()


#: A record's own ``evolve``, per record class (see :func:`evolve`).
_EVOLVERS: dict[type[Any], Callable[..., Any]] = {}


def evolve(record: _R, /, **changes: Any) -> _R:
    """The tracker's own (not exported) ``dataclasses.replace`` for these records, at about two
    thirds less than its cost (:func:`sipimdn._fastinit.evolver`): the tracker replaces a few
    records for every message it handles. An unknown field name is the same TypeError (an
    unexpected keyword argument)."""
    try:
        replace = _EVOLVERS[type(record)]
    except KeyError:
        replace = _EVOLVERS[type(record)] = evolver(type(record))
    result: _R = replace(record, **changes)
    return result


_RECORD_CLASSES: tuple[type[Any], ...] = (RecipientRecord, *CLASSES.values())
for _cls in _RECORD_CLASSES:
    _EVOLVERS[_cls] = evolver(_cls)
