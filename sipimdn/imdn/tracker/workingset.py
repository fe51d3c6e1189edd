"""The working set: a bounded cache of the long-lived records, the store holding the truth.

A received message that asked for a display notification stays tracked
until the application marks it displayed or ``received_ttl`` passes (days);
a sent message stays tracked until its notifications came or its deadline.
Kept in memory, both grow with the traffic. Memory therefore holds at most
``TrackerConfig.working_set_max`` received and as many sent records, least
recently used first; past the cap the oldest *idle* ones leave memory
(:meth:`WorkingSetSide.working_set_evictions`, logged at most once a
minute). Nothing is written for that: every change of a record was queued
as a whole-record Put when it happened, so the store has its last state.

Idle means the tracker has nothing to do for it by itself:

- a received record whose answer is decided and sent (no receipt: no report
  kept before the answer, no notification held behind it) and none of whose
  notifications is owed (queued, in flight, retried or waiting for a parked
  destination): all that can still happen is a report from the application;
- a sent record whose final SIP response came and whose tracking deadline
  is still ahead: all that can still happen is a notification about it.

Owed notifications, dedup entries and peer flags never leave memory (dedup
has its own cap, ``dedup_max``): an evicted message whose dedup entry lives
is still answered as a duplicate.

The tracker stays sans-IO, so the adapter does the reading (the miss path).
:attr:`WorkingSetSide.reads_back` says whether a record missing from memory
may be in the store. If so, before it asks the tracker about a message it
does not hold (``mark_displayed``, ``report_disposition``, a notification
about a sent message), the adapter reads the record from the store, after
every write queued before, and hands it to :meth:`WorkingSetSide.readmit`;
then it asks, and the tracker answers exactly as if the record had never
left. An evicted sent message's deadline is not on the timer heap any more:
:attr:`WorkingSetSide.evicted_sent_due` says when the earliest passes, the
adapter reads the sent records due by then and hands them to
:meth:`WorkingSetSide.readmit_due`, which ends their tracking (the same
events as if they had stayed). A store row is removed when its record ends
(a Delete, read back first if need be) or by the store's purge once expired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ._base import dedup_expiry
from .receiver import ReceiverSide
from .records import ReceivedRecord, SentRecord

__all__ = ["WorkingSetSide"]

_log = logging.getLogger("sipimdn.imdn.tracker")
#: Most records looked at per table and call: non-idle ones met go to the back, so a call
#: costs O(1) however many are not idle; calls are frequent (every admission, acknowledgement
#: and timer), so a backlog of records that became idle meanwhile drains quickly.
_SCAN_MAX = 32


class WorkingSetSide(ReceiverSide):
    """Evict idle sent and received records past ``working_set_max``; take them back."""

    @property
    def working_set_evictions(self) -> int:
        """How many sent and received records left memory for the store so far."""
        return self._ws_evictions

    @property
    def reads_back(self) -> bool:
        """Whether a sent or received record missing from memory may be in the store (one was
        evicted, or the tracker was resumed from a partial snapshot): the adapter then reads it
        back before asking about it (see the module docstring)."""
        return self._reads_back

    @property
    def evicted_sent_due(self) -> float | None:
        """The earliest tracking deadline of a sent record evicted since the last
        :meth:`readmit_due` (or, after a partial resume, the resume time); None if none."""
        return self._evicted_sent_due

    def sender_key(self, sender: str) -> str:
        """The identity key the records of messages from ``sender`` are stored under
        (:class:`~sipimdn.store.base.ReceivedRecord` ``sender_key``)."""
        return self._sender_key(sender)

    def readmit(self, records: Iterable[ReceivedRecord | SentRecord], now: float) -> int:
        """Take records read back from the store into memory again; return how many.

        A record the tracker holds is left alone (memory is newer than the store), as is
        one expired at ``now``. Nothing is written: the store has them.
        """
        taken = 0
        for record in records:
            if record.expires_at <= now or self._holds(record):
                continue
            self._put(record, write=False)
            taken += 1
        return taken

    def sweep_started(self) -> float | None:
        """The adapter starts reading the evicted sent records now due: :attr:`evicted_sent_due`
        is returned and cleared (records evicted meanwhile set it again)."""
        due, self._evicted_sent_due = self._evicted_sent_due, None
        return due

    def readmit_due(
        self, records: Iterable[SentRecord], now: float, *, next_deadline: float | None, more: bool = False
    ) -> int:
        """Take back the sent records whose tracking deadline passed and end them now (their
        events come as if they had stayed in memory); return how many were taken.

        ``next_deadline``: the earliest deadline of the sent records left in the store (None
        if none); ``more``: the read stopped at its limit (read again at once).
        """
        records = list(records)
        taken = self.readmit([r for r in records if r.deadline <= now], now)
        self.handle_timer(now)
        # A record read but not yet due (stored with another grace period): due at its deadline.
        ahead = [r.deadline for r in records if r.deadline > now and not self._holds(r)]
        due = now if more else min((d for d in (next_deadline, *ahead) if d is not None), default=None)
        if due is not None and (self._evicted_sent_due is None or due < self._evicted_sent_due):
            self._evicted_sent_due = due
        return taken

    # --- internals -----------------------------------------------------------------------------

    def _holds(self, record: ReceivedRecord | SentRecord) -> bool:
        if isinstance(record, SentRecord):
            return record.message_id in self._sent
        return (record.sender_key, record.message_id) in self._received

    def _bound_working_set(self, now: float, *, scan: int = _SCAN_MAX) -> None:
        cap = self.config.working_set_max
        if cap is None:
            return
        evicted = 0
        received = self._received
        excess = len(received) - cap
        budget = scan
        while excess > 0 and budget > 0:
            budget -= 1
            key, record = next(iter(received.items()))
            if record.answered_status is None or key in self._receipts or key in self._owed_for:
                received.move_to_end(key)  # not idle: looked at again after the others
                continue
            del received[key]
            self._unindex_received(record.message_id, key)
            seen = self._seen.get(key)
            if seen is None or dedup_expiry(seen) != record.expires_at:
                self._unswept += 1  # its timer entry is stale now (else the dedup entry's, too)
            excess -= 1
            evicted += 1
        sent = self._sent
        excess = len(sent) - cap if self.config.evict_sent else 0
        budget = scan
        while excess > 0 and budget > 0:
            budget -= 1
            message_id, message = next(iter(sent.items()))
            if message.sip_status is None or message.deadline <= now:
                sent.move_to_end(message_id)
                continue
            del sent[message_id]
            self._unswept += 1
            if self._evicted_sent_due is None or message.deadline < self._evicted_sent_due:
                self._evicted_sent_due = message.deadline
            excess -= 1
            evicted += 1
        if evicted:
            self._reads_back = True
            self._ws_evictions += evicted
        due = self._ws_evictions_log.add(now, evicted)
        if due is not None:
            _log.info(
                "working set full (working_set_max=%d): %d idle record(s) left memory for the store "
                "since the last report, %d in all (read back when needed)",
                cap,
                due,
                self._ws_evictions,
            )
