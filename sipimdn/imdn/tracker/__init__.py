"""Sans-IO disposition tracker: what we sent and await, what we received and owe (RFC 5438).

Theory of operation
-------------------
Rule 1: every decision about notification state lives here, on both sides;
the asyncio user agent only feeds inputs (API calls, SIP outcomes, decoded
notifications, ``handle_timer(now)``), drains outputs
(:meth:`DispositionTracker.next_event`, :meth:`DispositionTracker.writes_to_apply`)
and does what they say. Rule 2: nothing here does I/O, reads a clock or
knows the wire format; peers' values arrive as plain strings, so the
tracker does not depend on the codecs.

One module per job:

- :mod:`sipimdn.imdn.vocabulary`: kinds, statuses, requests, disposition
  states and their order (shared with the codecs and the user agent);
- :mod:`sipimdn.store.base`: the records the tracker keeps and the store persists;
- :mod:`.events`: what the tracker reports; :mod:`.config`: its tunables;
  :mod:`.identity`: how URIs are compared;
- :mod:`._base`: the tables, timer heap, write-behind queue and restore;
- :mod:`.sender`: messages we sent (:data:`TRANSITIONS`);
- :mod:`.receiver`: messages we received, their dedup, answers, reports and
  which notifications they owe (:data:`RECEIVER_TRANSITIONS`);
- :mod:`.dispatch`: the notifications we owe, from owing (or declining) to
  handing out, retrying, parking and abandoning them;
- :mod:`.destinations`: the notification budgets per destination address
  (RFC 5438 §14: we are no reflector).
- :mod:`.shared`: dedup claims and take-over when workers share a store;
- :mod:`.workingset`: the bounded cache of sent and received records (the
  store holds them all; the adapter reads an evicted one back on a miss).
"""

from __future__ import annotations

from ..vocabulary import (
    ALLOWED_STATUSES,
    REQUEST_KINDS,
    STATE_RANK,
    TERMINAL_STATES,
    DisplayPolicy,
    DispositionState,
    was_requested,
)
from ._base import PEER_CPIM, PEER_NO_CPIM, PEER_NO_IMDN
from .config import TrackerConfig
from .events import (
    DeclineReason,
    DispositionChanged,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationOwed,
    NotificationRejected,
    NotificationsDeclined,
    OwedNotification,
    Reception,
    RejectReason,
    TrackerEvent,
    TrackingEnded,
)
from .identity import identity_key, is_anonymous
from .receiver import RECEIVER_TRANSITIONS, ReceiptInput, ReceiptState
from .records import OwedRecord
from .sender import TRANSITIONS, SenderInput, SenderSide
from .shared import SharedSide
from .workingset import WorkingSetSide

__all__ = [
    "ALLOWED_STATUSES",
    "PEER_CPIM",
    "PEER_NO_CPIM",
    "PEER_NO_IMDN",
    "RECEIVER_TRANSITIONS",
    "REQUEST_KINDS",
    "STATE_RANK",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "DeclineReason",
    "DisplayPolicy",
    "DispositionChanged",
    "DispositionState",
    "DispositionTracker",
    "NotificationAbandoned",
    "NotificationAccepted",
    "NotificationOwed",
    "NotificationRejected",
    "NotificationsDeclined",
    "OwedNotification",
    "OwedRecord",
    "ReceiptInput",
    "ReceiptState",
    "Reception",
    "RejectReason",
    "SenderInput",
    "TrackerConfig",
    "TrackerEvent",
    "TrackingEnded",
    "identity_key",
    "is_anonymous",
    "was_requested",
]


class DispositionTracker(SenderSide, SharedSide, WorkingSetSide):
    """Sans-IO state of sent and received messages' notifications (see the package docstring).

    ``DispositionTracker(config, snapshot=store.load(now), now=now)`` resumes
    a previous run; ``id_factory`` makes the Message-IDs of the notifications
    we send (default: 128 random bits in hex).
    """

    __slots__ = ()
