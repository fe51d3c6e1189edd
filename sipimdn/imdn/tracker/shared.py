"""The tracker's part in several workers sharing one store: dedup claims and take-over.

Several user agent processes ("workers") may share one store (see
:class:`~sipimdn.store.base.SharedStore`). Each keeps its own tracker; the
store decides, atomically, which worker is first to receive a (sender,
Message-ID) pair, and hands the records of a worker whose lease ran out to
a survivor. This module is what the tracker contributes: the dedup entry a
worker claims before it records a message (:meth:`SharedSide.dedup_record`,
same key and expiry as the one :meth:`~.receiver.ReceiverSide.record_received`
writes, so the tracker's later write replaces the claim), and
:meth:`SharedSide.adopt`, which takes records over into a running tracker.
"""

from __future__ import annotations

from dataclasses import replace

from .receiver import ReceiverSide
from .records import Delete, OwedRecord, ReceivedRecord, SeenRecord, Snapshot, received_key

__all__ = ["SharedSide"]


class SharedSide(ReceiverSide):
    """Claims and take-over for a tracker whose store other workers share."""

    def dedup_record(self, message_id: str, sender: str, now: float) -> SeenRecord:
        """The dedup entry of a message from ``sender``, to claim in a shared store before
        :meth:`~.receiver.ReceiverSide.record_received` (nothing is recorded here)."""
        return SeenRecord(self._sender_key(sender), message_id, None, now + self.config.dedup_ttl)

    def withdraw_answer(self, message_id: str, sender: str) -> None:
        """Forget a received message as if it never arrived: its 2xx, recorded with
        ``message_answered(..., sent=False)``, will not be sent because what it commits us to
        could not be stored (the shared store went away), so it is refused instead.

        The notifications held behind the answer are dropped, its records removed, and a Delete
        of its dedup entry queued (releasing the claim, so a resend is received afresh once the
        store is back; the adapter retries that write until it succeeds).
        """
        sender_key = self._sender_key(sender)
        key = (sender_key, message_id)
        self._receipts.pop(key, None)
        for owed in [
            o for o in self._owed.values() if o.message_id == message_id and o.sender_key == sender_key
        ]:
            self._delete(OwedRecord.TABLE, owed.notification_id)
        self._delete(ReceivedRecord.TABLE, key)
        self._delete("volatile", key)
        self._delete(SeenRecord.TABLE, key)
        self._writes.append(Delete(SeenRecord.TABLE, received_key(sender_key, message_id)))

    def adopt(self, snapshot: Snapshot, now: float) -> tuple[str, ...]:
        """Track ``sent`` and ``owed`` records taken over from another worker; return the
        Message-IDs of the sent messages adopted.

        Records this tracker already holds are left alone (it is their writer). An owed
        notification that was in flight when its worker died is due again at once (the peer
        recognises a resend by its unchanged Message-ID, RFC 5438 §7.2.1.1), as after a restart.
        """
        adopted = []
        for record in snapshot.sent:
            if record.message_id in self._sent:
                continue
            self._put(record, write=False)
            adopted.append(record.message_id)
        for stored in sorted(snapshot.owed, key=lambda o: o.created_at):
            if stored.notification_id in self._owed or stored.expires_at <= now:
                continue
            owed: OwedRecord = (
                replace(stored, in_flight=False, next_attempt_at=now) if stored.in_flight else stored
            )
            if owed.next_attempt_at <= now:
                self._dispatch(owed, now)
            else:
                self._put(owed, write=False)
        return tuple(adopted)
