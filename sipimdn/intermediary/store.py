"""Where a store-and-forward intermediary keeps the messages it holds (parked messages).

The sans-IO :class:`~sipimdn.intermediary.forward.StoreAndForward` never
touches storage: every change it makes is queued as a :data:`ParkedOp`
(whole-record upsert or delete, like the tracker's write-behind log), which
the adapter applies in order with :meth:`ParkedStore.apply` *before* it
answers 202, so an accepted message survives a crash. ``load()`` returns
every record, expired ones included: the core must still send their
negative delivery notification after a restart.

:mod:`sipimdn.store` holds the user agent's tracker records (sent, owed,
received); parked messages are another kind of record, so they get this
small protocol instead of a change to that one. The SQLite implementation is
:class:`~sipimdn.intermediary.sqlite.SqliteParkedStore`, kept apart so that the
sans-IO cores import these records without sqlite3.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DropParked",
    "ImdnOrigin",
    "MemoryParkedStore",
    "ParkedMessage",
    "ParkedOp",
    "ParkedStore",
    "PutParked",
]


@dataclass(frozen=True, slots=True)
class ImdnOrigin:
    """What an intermediary needs to build a notification about the IM it holds (RFC 5438 §7.2.1.1)."""

    message_id: str
    """The IM's ``imdn.Message-ID`` (echoed in ``<message-id>``)."""
    datetime: str
    """The IM's DateTime as written (echoed in ``<datetime>``)."""
    reply_to: str
    """The IM's CPIM From: the notification's CPIM To."""
    reply_sip: str
    """The IM's SIP From URI: the notification's SIP To (and Request-URI without IMDN-Record-Route)."""
    routes: tuple[str, ...]
    """The IM's IMDN-Record-Route URIs as received (before ours), top first: the IMDN-Route to write."""
    recipient: str
    """The final recipient (``<recipient-uri>``, RFC 5438 §7.2.1.1)."""
    original_recipient: str
    """``<original-recipient-uri>``: the IM's Original-To, else the recipient."""
    requested: tuple[str, ...]
    """The IM's Disposition-Notification tokens (RFC 5438 values only)."""


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """One MESSAGE an intermediary holds until it is forwarded, fails or expires."""

    key: str
    """Our own identifier of the record."""
    target: str
    """The URI to deliver to (an AOR, located at every attempt, or a next hop)."""
    sip_from: str
    """SIP From URI of the forwarded request (the original sender's, or ours for our own IMDNs)."""
    sip_from_name: str | None
    """Display name of that From."""
    sip_to: str
    """SIP To URI of the forwarded request."""
    content_type: str
    """SIP Content-Type of the body."""
    body: bytes
    """The body as it will be forwarded (IMDN-Record-Route and Original-To already added)."""
    received_at: float
    """When we accepted it."""
    expires_at: float
    """When we stop trying (and owe ``failed`` if asked)."""
    next_attempt_at: float
    """When the next forwarding attempt is due."""
    max_forwards: int = 70
    """Max-Forwards for the forwarded request (the received one minus one)."""
    attempts: int = 0
    """Forwarding attempts made so far."""
    owed: tuple[str, ...] = ()
    """Notifications this intermediary may still send about it: ``processing``, ``negative-delivery``."""
    origin: ImdnOrigin | None = None
    """Set when notifications may be owed (an IM whose sender asked for some)."""
    group: str | None = None
    """The fan-out this copy belongs to (list explosion), or None."""
    is_notification: bool = False
    """True for an IMDN being relayed: a notification is never itself notified about."""
    processing_sent: bool = False
    """A processing notification went out already (RFC 5438 §8.1: at most one)."""
    extra: tuple[tuple[str, str], ...] = field(default=())
    """Free (name, value) pairs the adapter attaches (kept across restarts)."""
    message_id: str | None = None
    """The CPIM ``imdn.Message-ID`` of the body, if any (to recognise a re-sent message)."""


@dataclass(frozen=True, slots=True)
class PutParked:
    """Insert or replace a parked message."""

    record: ParkedMessage


@dataclass(frozen=True, slots=True)
class DropParked:
    """Remove a parked message."""

    key: str


ParkedOp = PutParked | DropParked


class ParkedStore(Protocol):
    """Persistence of parked messages; synchronous and thread-safe (call it off the event loop)."""

    def apply(self, ops: Sequence[ParkedOp]) -> None:
        """Apply the operations atomically, in order."""

    def load(self) -> list[ParkedMessage]:
        """Every record held, in no particular order (expired ones too)."""

    def close(self) -> None:
        """Release resources; the store is unusable afterwards."""


class MemoryParkedStore:
    """Keeps parked messages in a dict (tests; nothing survives the process)."""

    def __init__(self) -> None:
        self._records: dict[str, ParkedMessage] = {}
        self._lock = threading.Lock()

    def apply(self, ops: Sequence[ParkedOp]) -> None:
        """Apply the operations in order."""
        with self._lock:
            for op in ops:
                if isinstance(op, PutParked):
                    self._records[op.record.key] = op.record
                else:
                    self._records.pop(op.key, None)

    def load(self) -> list[ParkedMessage]:
        """Every record held."""
        with self._lock:
            return list(self._records.values())

    def close(self) -> None:
        """Nothing to release."""
