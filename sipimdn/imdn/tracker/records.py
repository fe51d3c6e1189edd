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

import keyword
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar, cast

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


#: A record's own ``evolve``, per record class (made on first use, see :func:`_evolver`).
_EVOLVERS: dict[type[Any], Callable[..., Any]] = {}
#: Default of every parameter of an evolver: "keep the record's value".
_KEEP: Any = object()


def evolve(record: _R, /, **changes: Any) -> _R:
    """The tracker's own (not exported) ``dataclasses.replace`` for these records (no
    ``__post_init__``, every field in ``__init__``), at about two thirds less than its cost:
    the tracker replaces a few records for every message it handles. An unknown field name is
    the same TypeError (an unexpected keyword argument)."""
    try:
        evolver = _EVOLVERS[type(record)]
    except KeyError:
        evolver = _EVOLVERS[type(record)] = _evolver(type(record))
    result: _R = evolver(record, **changes)
    return result


def record_maker(cls: type[_R]) -> Callable[..., _R]:
    """``cls(**fields)`` for one of these record classes, made cheaper: a function taking the
    same keyword arguments (the same defaults) that sets each slot through its descriptor,
    where the frozen dataclass ``__init__`` goes through ``object.__setattr__`` per field
    (about 1.4 against 2.4 us for the twenty fields of an :class:`OwedRecord`). The record is
    the one ``cls`` makes: these classes have no ``__post_init__`` (tests/test_store.py
    holds the two equal)."""
    names = _field_names(cls)
    record_fields = fields(cast(Any, cls))
    params = ", ".join(f.name if f.default is MISSING else f"{f.name}=_default_{f.name}"
                       for f in record_fields)
    defaults = {f"_default_{f.name}": f.default for f in record_fields if f.default is not MISSING}
    values = {name: name for name in names}
    maker: Callable[..., _R] = _compile(cls, "make", f"*, {params}", values, defaults)
    return maker


def _field_names(cls: type[Any]) -> list[str]:
    if "__post_init__" in cls.__dict__ or any(f.default_factory is not MISSING for f in fields(cls)):
        raise TypeError(f"{cls.__name__}: not a plain record")  # (never: our records)
    names = [f.name for f in fields(cls)]
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise TypeError(f"{cls.__name__}.{name}: not a plain field name")  # (never: our records)
    return names


def _compile(cls: type[Any], function: str, params: str, values: dict[str, str],
             scope: dict[str, Any]) -> Callable[..., Any]:
    """``def function(params)`` returning a new ``cls`` object whose slots get ``values`` (field
    name -> expression), set through the slot descriptors in field order: what the frozen
    ``__init__`` stores, without its ``object.__setattr__`` per field. The source is made from
    the dataclass's own field names (checked by _field_names); locals start with "_", which no
    field name does."""
    body = "".join(f"    _set_{name}(_r, {expression})\n" for name, expression in values.items())
    source = f"def {function}({params}):\n    _r = _new(_cls)\n{body}    return _r\n"
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **scope}
    namespace.update({f"_set_{name}": cls.__dict__[name].__set__ for name in values})
    exec(source, namespace)
    compiled: Callable[..., Any] = namespace[function]
    return compiled


def _evolver(cls: type[Any]) -> Callable[..., Any]:
    """``def evolve(record, *, a=KEEP, ...)`` for the fields of ``cls``, each slot set to
    ``record.a if a is KEEP else a``: one call with keyword defaults, where a generic replace
    builds and merges a dict of every field, and the record made as :func:`record_maker`
    makes it."""
    names = _field_names(cls)
    params = "record, /, *, " + ", ".join(f"{name}=_KEEP" for name in names)
    values = {name: f"record.{name} if {name} is _KEEP else {name}" for name in names}
    return _compile(cls, "evolve", params, values, {"_KEEP": _KEEP})


_RECORD_CLASSES: tuple[type[Any], ...] = (RecipientRecord, *CLASSES.values())
for _cls in _RECORD_CLASSES:
    _EVOLVERS[_cls] = _evolver(_cls)
