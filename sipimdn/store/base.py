"""The store contract: records, write operations, snapshots and the ``Store`` protocol.

What the disposition tracker (:mod:`sipimdn.imdn.tracker`) must survive a
restart with is kept as five kinds of flat, frozen records, one table each:

``sent``      :class:`SentRecord`      a message we sent and still await notifications for
``owed``      :class:`OwedRecord`      a notification we owe and have not had acknowledged
``received``  :class:`ReceivedRecord`  a received message that may still be owed a notification
``seen``      :class:`SeenRecord`      a (sender, Message-ID) pair already handed up (dedup)
``peer``      :class:`PeerRecord`      what a peer refused (capability flags)

Every record has a string ``key`` (unique in its table) and an ``expires_at``
(after which nobody needs it: :meth:`Store.purge` may drop it). The tracker
never calls a store: it queues :class:`Put` and :class:`Delete` operations,
and the adapter hands them, in order, to :meth:`Store.apply`. Records are
whole-value upserts, so applying an operation twice is harmless.

Records hold plain strings (states and statuses are the tracker's StrEnum
values written as text) so a store needs no knowledge of the tracker, and
:func:`record_to_json` / :func:`record_from_json` give every store the same
serialisation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..errors import StoreError

__all__ = [
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
    "SharedStore",
    "SharedValues",
    "Snapshot",
    "Store",
    "StoreOp",
    "check_op",
    "received_key",
    "record_from_json",
    "record_to_json",
    "snapshot_from_records",
]


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

_CLASSES: dict[str, type[Any]] = {
    cls.TABLE: cls for cls in (SentRecord, OwedRecord, ReceivedRecord, SeenRecord, PeerRecord)
}
#: The table names, in a fixed order.
TABLES: tuple[str, ...] = tuple(_CLASSES)


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


def snapshot_from_records(records: Sequence[AnyRecord]) -> Snapshot:
    """Sort loaded records into a :class:`Snapshot`."""
    return Snapshot(
        sent=tuple(r for r in records if isinstance(r, SentRecord)),
        owed=tuple(r for r in records if isinstance(r, OwedRecord)),
        received=tuple(r for r in records if isinstance(r, ReceivedRecord)),
        seen=tuple(r for r in records if isinstance(r, SeenRecord)),
        peers=tuple(r for r in records if isinstance(r, PeerRecord)),
    )


@runtime_checkable
class Store(Protocol):
    """Persistence for the disposition tracker.

    Synchronous on purpose: the asyncio adapter calls it from one worker
    thread, in the order the tracker produced the operations. Implementations
    must be thread-safe and raise :class:`~sipimdn.errors.StoreError` on failure.
    """

    def apply(self, ops: Sequence[StoreOp]) -> None:
        """Apply operations in order, atomically (all or none)."""
        ...

    def load(self, now: float) -> Snapshot:
        """Return every record whose ``expires_at`` is later than ``now``."""
        ...

    def purge(self, now: float) -> int:
        """Remove records whose ``expires_at`` is at or before ``now``; return how many."""
        ...

    def close(self) -> None:
        """Release resources; the store is unusable afterwards."""
        ...


def check_op(op: object) -> None:
    """Raise :class:`~sipimdn.errors.StoreError` for anything but a :class:`Put` of a record or a
    :class:`Delete` naming a known table (a plugged-in caller may hand us anything)."""
    if isinstance(op, Delete):
        if op.table not in _CLASSES:
            raise StoreError(f"unknown store table {op.table!r}")
    elif not isinstance(op, Put) or type(op.record) not in _CLASSES.values():
        raise StoreError(f"not a store operation: {op!r}")


# --- serialisation, shared by every store that keeps text -------------------------------------------


def _plain(value: Any) -> Any:
    """Turn records (and their tuples) into JSON-ready lists and dicts."""
    if isinstance(value, RecipientRecord):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def record_to_json(record: AnyRecord) -> str:
    """Serialise a record as compact JSON (tuples become lists)."""
    data = {f.name: _plain(getattr(record, f.name)) for f in fields(record)}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class SharedValues:
    """One object per distinct value among the records decoded with it (pass it to
    :func:`record_from_json` for every row of one load).

    JSON decoding makes new objects for every field of every row, but loaded records repeat
    values a lot: a message's dedup entry and received record share its Message-ID, sender
    key and expiry; the sender is often its own key; request tuples, policies, states and our
    own URI recur in every row. The tracker keeps what is loaded for as long as it is
    tracked, so duplicates would cost memory per tracked message for the whole run.
    Only strings, floats and tuples of strings are shared, each type in its own table (an
    int never stands in for an equal float, nor ``True`` for ``1``).
    """

    __slots__ = ("_floats", "_strings", "_tuples")

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}
        self._floats: dict[float, float] = {}
        self._tuples: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def fields(self, data: dict[str, Any]) -> None:
        """Replace the values of ``data`` by the shared equal ones (in place)."""
        strings, floats, tuples = self._strings, self._floats, self._tuples
        for name, value in data.items():
            kind = type(value)
            if kind is str:
                data[name] = strings.setdefault(value, value)
            elif kind is float and value:  # 0.0 == -0.0: zeros keep their own sign
                data[name] = floats.setdefault(value, value)
            elif kind is tuple and all(type(item) is str for item in value):
                one = tuples.get(value)
                if one is None:
                    one = tuples[value] = tuple(strings.setdefault(item, item) for item in value)
                data[name] = one


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value)


def _recipient(data: dict[str, Any], shared: SharedValues | None) -> RecipientRecord:
    if shared is not None:
        shared.fields(data)
    return RecipientRecord(**data)


def record_from_json(table: str, text: str, shared: SharedValues | None = None) -> AnyRecord:
    """Rebuild a record of ``table`` from :func:`record_to_json` output.

    ``shared``: equal values of the records decoded with the same :class:`SharedValues`
    become one object (a store passes one per load). Raises :class:`~sipimdn.errors.StoreError` when the
    text does not describe such a record.
    """
    cls = _CLASSES.get(table)
    if cls is None:
        raise StoreError(f"unknown store table {table!r}")
    try:
        data: dict[str, Any] = json.loads(text)
        if cls is SentRecord:
            data["recipients"] = tuple(_recipient(item, shared) for item in data["recipients"])
            data["requested"] = _strings(data["requested"])
            data["intermediaries"] = _strings(data["intermediaries"])
            data["notification_ids"] = _strings(data["notification_ids"])
            data["metadata"] = tuple((str(k), str(v)) for k, v in data["metadata"])
        elif cls is OwedRecord:
            data["imdn_route"] = _strings(data["imdn_route"])
        elif cls is ReceivedRecord:
            data["requested"] = _strings(data["requested"])
            data["imdn_route"] = _strings(data["imdn_route"])
        elif cls is PeerRecord:
            data["flags"] = _strings(data["flags"])
        if shared is not None:
            shared.fields(data)
        record: AnyRecord = cls(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"corrupt {table} record: {exc}") from exc
    return record


# --- several workers, one store ----------------------------------------------------------------------


@runtime_checkable
class SharedStore(Store, Protocol):
    """A :class:`Store` that several user agent processes ("workers") may share.

    The primitives a deployment of several workers builds on: atomic dedup by
    (sender, Message-ID) across processes, ownership of ``sent`` and ``owed``
    records through leases (a worker that dies stops renewing; a survivor takes
    its records over), and a notification channel through which one worker
    wakes the others when a ``sent`` record changes. A Put of a ``sent`` or
    ``owed`` record makes the writing worker its owner when the record is new;
    updates keep the owner. Same threading rules as :class:`Store`.
    """

    #: This worker's name among those sharing the store.
    worker_id: str
    #: Seconds an owner's lease lasts without :meth:`renew_leases`.
    lease: float

    def claim_seen(self, record: SeenRecord, now: float) -> bool:
        """Write ``record`` unless a live (not expired at ``now``) entry has its key; True if written.

        Of several workers claiming the same key at once, exactly one gets True.
        """
        ...

    def renew_leases(self) -> int:
        """Extend this worker's lease on the records it owns; return how many."""
        ...

    def take_over(self, now: float, limit: int = 1000) -> Snapshot:
        """Own (and return) up to ``limit`` records per table whose owner's lease expired."""
        ...

    def notify(self, payload: str) -> None:
        """Send ``payload`` to every listener of the store, in any worker."""
        ...

    def listen(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Deliver notifications (payloads) to ``callback``, from any thread; return an unsubscriber."""
        ...
