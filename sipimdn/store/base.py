"""The store contract: the ``Store`` protocol, snapshots from rows and the shared serialisation.

The records a store keeps (``sent``, ``owed``, ``received``, ``seen``,
``peer``) and the write operations (:class:`Put`, :class:`Delete`) are the
tracker's, defined once in :mod:`sipimdn.imdn.tracker.records` (sans-IO)
and re-exported here. Every record has a string ``key`` (unique in its
table) and an ``expires_at`` (after which nobody needs it:
:meth:`Store.purge` may drop it). The tracker never calls a store: it
queues operations, and the adapter hands them, in order, to
:meth:`Store.apply`. Records are whole-value upserts, so applying an
operation twice is harmless. :func:`record_to_json` /
:func:`record_from_json` give every store the same serialisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from json.encoder import encode_basestring
from typing import Any, Protocol, runtime_checkable

from .._fastinit import source_fields
from ..errors import StoreError
from ..imdn.tracker.records import CLASSES as _CLASSES
from ..imdn.tracker.records import (
    TABLES,
    AnyRecord,
    Delete,
    OwedRecord,
    PeerRecord,
    Put,
    ReceivedRecord,
    RecipientRecord,
    SeenRecord,
    SentRecord,
    Snapshot,
    StoreOp,
    received_key,
)

__all__ = [
    "ENDED_METADATA",
    "TABLES",
    "AnyRecord",
    "Delete",
    "InlineStore",
    "OwedRecord",
    "PeerRecord",
    "Put",
    "ReadBackStore",
    "ReceivedRecord",
    "RecipientRecord",
    "SeenRecord",
    "SentRecord",
    "SharedStore",
    "SharedValues",
    "Snapshot",
    "Store",
    "StoreOp",
    "WorkingSetStore",
    "check_op",
    "received_key",
    "record_from_json",
    "record_to_json",
    "snapshot_from_records",
]

#: Metadata name marking the final ``sent`` record of a message whose tracking ended, which a
#: shared store keeps for the other workers to read until it expires: never tracked again, so
#: never in a working set nor due (:class:`WorkingSetStore` skips it).
ENDED_METADATA = "sipimdn.ended"


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
    thread, in the order the tracker produced the operations (and, for an
    :class:`InlineStore`, sometimes from its event loop's thread, never at the
    same time). Implementations must be thread-safe and raise
    :class:`~sipimdn.errors.StoreError` on failure.
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


@runtime_checkable
class InlineStore(Store, Protocol):
    """A :class:`Store` whose writes may be made on the caller's thread without waiting.

    The asyncio user agent writes from one worker thread so that its event loop never waits
    on the store. For a write that is local and short that costs more than it saves: handing
    a batch to the worker and hearing back takes two thread switches and two extra loop
    turns, and a commit of a few SQLite rows takes about 17 us on a warm calling thread
    against about 60 us on a worker just woken. A 2xx that must wait for its records to be
    durable (RFC 3428 §7: the 200 says the message was accepted) waits on that round trip.
    So when its worker is idle the writer asks such a store to apply the batch right away,
    on the loop's thread: :meth:`try_apply` either applies it at once or does nothing and
    says so (the batch then goes to the worker as before); it never blocks. Work a commit
    would do that can wait (SQLite's WAL checkpoints, which copy pages and fsync) is put off
    for :meth:`upkeep`, which the writer runs on its worker.
    """

    @property
    def inline_writes(self) -> bool:
        """True when :meth:`try_apply` may apply: a write is local and short (in memory, or a
        file committed without an fsync each time), never a network round trip."""
        ...

    def try_apply(self, ops: Sequence[StoreOp]) -> bool:
        """:meth:`Store.apply` if that needs no waiting: True when applied, False when nothing
        was done because it would have had to wait (another thread or process holds the store).
        A failure raises :class:`~sipimdn.errors.StoreError` as :meth:`Store.apply` does."""
        ...

    @property
    def upkeep_due(self) -> bool:
        """True when writes made by :meth:`try_apply` put off work that may wait."""
        ...

    def upkeep(self) -> None:
        """Do the work :meth:`try_apply` put off, on a thread that may wait."""
        ...


@runtime_checkable
class ReadBackStore(Store, Protocol):
    """A :class:`Store` that reads single records back: the miss path of the tracker's working
    set (see :mod:`sipimdn.imdn.tracker.workingset`). Without it the tracker keeps every sent
    and received record in memory. Same threading rules as :class:`Store`; the adapter calls
    these after every write it queued before, so they see the tracker's latest state."""

    def load_received(
        self, message_id: str, sender_key: str | None, now: float
    ) -> tuple[ReceivedRecord, ...]:
        """The ``received`` records of ``message_id`` not expired at ``now``: the one from
        ``sender_key`` (at most one), or from any sender when it is None."""
        ...

    def load_sent(self, message_id: str, now: float) -> SentRecord | None:
        """The ``sent`` record of ``message_id``, unless expired at ``now`` (None: unknown)."""
        ...


@runtime_checkable
class WorkingSetStore(ReadBackStore, Protocol):
    """A :class:`ReadBackStore` that also loads a bounded working set at start and the sent
    records whose tracking deadline passed (memory, SQLite, PostgreSQL). A store several
    workers share gives each worker only the ``sent`` (and ``owed``) records it owns."""

    def load_working_set(self, now: float, limit: int) -> Snapshot:
        """:meth:`Store.load`, but at most ``limit`` ``received`` and ``limit`` ``sent`` records:
        those expiring last (the most recent); the others stay in the store."""
        ...

    def load_sent_due(
        self, before: float, now: float, limit: int
    ) -> tuple[tuple[SentRecord, ...], float | None]:
        """Up to ``limit`` ``sent`` records with ``now < expires_at <= before``, expiring first
        first, and the earliest ``expires_at`` after ``before`` (None if no record has one)."""
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
        return {name: _plain(getattr(value, name)) for name in _field_names(RecipientRecord)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


#: Field names per record class, in declaration order (``dataclasses.fields`` costs about
#: 2 us a call; every write of every record serialises it).
_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}
#: What ``json.dumps(data, separators=(",", ":"), ensure_ascii=False)`` builds on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def record_to_json(record: AnyRecord) -> str:
    """Serialise a record as compact JSON (tuples become lists)."""
    try:
        writer = _JSON_WRITERS[type(record)]
    except KeyError:
        writer = _JSON_WRITERS[type(record)] = _json_writer(type(record))
    return writer(record)


#: :func:`record_to_json` per record class (see :func:`_json_writer`).
_JSON_WRITERS: dict[type[Any], Callable[[Any], str]] = {}


def _json_writer(cls: type[Any]) -> Callable[[Any], str]:
    """The text ``_ENCODER.encode({"a": r.a, ...})`` gives for a record of ``cls``, built
    without the dict and the encoder for the values its fields are declared to hold.

    Every write of every record is serialised, on the store's thread, and the general encoder
    costs about 2.5 us for a dedup entry (a dict, then an encoder object built per call). So
    each field's value is spelled as the encoder spells it (strings by its own C escaper,
    finite floats and ints by their ``repr``, None, booleans, tuples of strings) in one
    f-string per class. A value its field does not declare (an int in a float field, a NaN,
    a bool where an int is declared) goes through the encoder on its own, and anything the
    fast spelling cannot take (a non-string where a string is declared raises TypeError)
    makes the whole record go the general way (:func:`_general_json_writer`): the text is
    the same either way (tests/test_store.py holds them equal).
    """
    slow = _general_json_writer(cls)
    parts = []
    for number, f in enumerate(source_fields(cls)):
        value = f"r.{f.name}"
        spelled = _FIELD_SPELLINGS.get(str(f.type))
        if spelled is None:
            spelled = f"_encode(_plain({value}))" if "Record" in str(f.type) else f"_encode({value})"
        else:
            spelled = spelled.format(value)
        parts.append(f'{"," if number else ""}"{f.name}":{{{spelled}}}')
    source = (
        "def to_json(r):\n"
        "    try:\n"
        f"        return f'''{{{{{''.join(parts)}}}}}'''\n"
        "    except TypeError:\n"
        "        return _slow(r)\n"
    )
    scope: dict[str, Any] = {
        "_encode": _ENCODER.encode,
        "_plain": _plain,
        "_slow": slow,
        "_string": encode_basestring,
        "_float": float.__repr__,
        "_int": int.__repr__,
        "_inf": math.inf,
    }
    exec(source, scope)  # source made above from the dataclass's own field names (source_fields)
    writer: Callable[[Any], str] = scope["to_json"]
    return writer


#: How :func:`_json_writer` spells a field by its declared type (``{0}`` is the value): what
#: ``_ENCODER`` writes for a value of that type, and the encoder itself for any other value.
#: ``_string`` raises TypeError for a non-string (the record then goes the general way);
#: ``-inf < x < inf`` is false for NaN and the infinities, which the encoder spells.
_FIELD_SPELLINGS = {
    "str": "_string({0})",
    "str | None": '"null" if {0} is None else _string({0})',
    "float": "_float({0}) if -_inf < {0} < _inf and type({0}) is float else _encode({0})",
    "int": "_int({0}) if type({0}) is int else _encode({0})",
    "int | None": '"null" if {0} is None else _int({0}) if type({0}) is int else _encode({0})',
    "bool": '"true" if {0} is True else "false" if {0} is False else _encode({0})',
    "tuple[str, ...]": '"[" + ",".join(map(_string, {0})) + "]" if type({0}) is tuple else _encode({0})',
}


def _general_json_writer(cls: type[Any]) -> Callable[[Any], str]:
    """``lambda r: encode({"a": r.a, ...})`` for the fields of ``cls``, in declaration order.

    Strings, numbers, None and tuples of them go as they are (the encoder writes a tuple as
    a list); only a field that may hold records (``SentRecord.recipients``) goes through
    :func:`_plain`. The reference :func:`_json_writer` falls back on.
    """
    items = []
    for f in source_fields(cls):
        holds_records = "Record" in str(f.type)
        items.append(f"{f.name!r}: {'_plain(r.' + f.name + ')' if holds_records else 'r.' + f.name}")
    source = f"def to_json(r):\n    return _encode({{{', '.join(items)}}})\n"
    scope: dict[str, Any] = {"_encode": _ENCODER.encode, "_plain": _plain}
    exec(source, scope)  # source made above from the dataclass's own field names (source_fields)
    writer: Callable[[Any], str] = scope["to_json"]
    return writer


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
    updates keep the owner, and only the owner writes or deletes the record
    (:meth:`apply_owned`: a worker whose records were taken over is fenced
    off). Same threading rules as :class:`Store`.
    """

    #: This worker's name among those sharing the store.
    worker_id: str
    #: Seconds an owner's lease lasts without :meth:`renew_leases`.
    lease: float
    #: True when other processes may really share it (PostgreSQL); False for the one-worker
    #: form (SQLite), where claims, forwarding and take-over have nothing to do.
    multi_worker: bool

    def load_own(self, now: float) -> Snapshot:
        """What this worker resumes with: its own ``sent``/``owed`` records and every other record."""
        ...

    def load_sent(self, message_id: str, now: float) -> SentRecord | None:
        """The ``sent`` record of ``message_id`` whichever worker owns it (None: unknown or expired)."""
        ...

    def forward_notification(self, message_id: str, data: str, now: float) -> bool:
        """Keep a notification received about a message another worker owns, for that owner,
        and wake it; False (nothing kept) when no worker tracks ``message_id``."""
        ...

    def take_forwarded(self, now: float, limit: int = 1000) -> list[tuple[int, str]]:
        """Notifications forwarded for records this worker owns, as ``(id, data)``, oldest first."""
        ...

    def drop_forwarded(self, ids: Sequence[int]) -> None:
        """Delete forwarded notifications once applied and stored."""
        ...

    def claim_seen(self, record: SeenRecord, now: float) -> bool:
        """Write ``record`` unless a live (not expired at ``now``) entry has its key; True if written.

        Of several workers claiming the same key at once, exactly one gets True.
        """
        ...

    def claim_message(
        self, record: SeenRecord, now: float, stale_expiry: float | None = None
    ) -> SeenRecord | None:
        """:meth:`claim_seen` saying who kept the key: None when ``record`` was written, else the
        live entry (whose ``status`` is the first copy's answer, once given). An entry still
        unanswered whose ``expires_at`` is at or before ``stale_expiry`` is taken over: its
        claimer died before answering (atomic too: one taker)."""
        ...

    def claim_messages(
        self, records: Sequence[SeenRecord], now: float, stale_expiry: float | None = None
    ) -> list[SeenRecord | None]:
        """:meth:`claim_message` for several records at once (one round trip where it matters),
        the answers in order; a key given twice is claimed by its first record only."""
        ...

    def apply_owned(self, ops: Sequence[StoreOp]) -> tuple[StoreOp, ...]:
        """:meth:`~Store.apply` with the owner's fence, returning the operations fenced off.

        A Put or Delete of a ``sent`` or ``owed`` record whose row another worker owns (it
        took the row over when this worker's lease ran out) changes nothing and is returned:
        one writer per record at a time. Everything else is applied as :meth:`~Store.apply`
        applies it (a Put of a new record makes this worker its owner).
        """
        ...

    def owned_elsewhere(self, table: str, keys: Sequence[str]) -> list[str]:
        """The keys among ``keys`` whose ``table`` row (``sent`` or ``owed``) another worker owns."""
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
