"""The tracker's part in several workers sharing one store: dedup claims and take-over.

Several user agent processes ("workers") may share one store (see
:class:`~sipimdn.store.base.SharedStore`). Each keeps its own tracker; the
store decides, atomically, which worker is first to receive a (sender,
Message-ID) pair, and hands the records of a worker whose lease ran out to
a survivor. This module is what the tracker contributes: the dedup entry a
worker claims before it records a message (:meth:`SharedSide.dedup_record`,
same key and expiry as the one :meth:`~.receiver.ReceiverSide.record_received`
writes, so the tracker's later write replaces the claim),
:meth:`SharedSide.adopt`, which takes records over into a running tracker, and
:meth:`SharedSide.release`, its converse: a worker whose lease ran out (it was
cut off from the store, or paused) lost records to a survivor, the one writer
of them from then on, and stops tracking them.
"""

from __future__ import annotations

from collections.abc import Iterable

from .receiver import ReceiverSide
from .records import (
    Delete,
    OwedRecord,
    ReceivedRecord,
    SeenRecord,
    SentRecord,
    Snapshot,
    evolve,
    received_key,
)

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
                evolve(stored, in_flight=False, next_attempt_at=now) if stored.in_flight else stored
            )
            if owed.next_attempt_at <= now:
                self._dispatch(owed, now)
            else:
                self._put(owed, write=False)
        # Past working_set_max the idle ones leave memory at once (the store has them, owned
        # by this worker now): a take-over never grows memory beyond the cap.
        self._bound_working_set(now, scan=len(self._received) + len(self._sent))
        return tuple(adopted)

    def leased_keys(self, table: str) -> list[str]:
        """The keys of the ``sent`` (Message-IDs) or ``owed`` (notification ids) records tracked
        here: those a shared store gives an owner."""
        if table == SentRecord.TABLE:
            return list(self._sent)
        if table == OwedRecord.TABLE:
            return list(self._owed)
        raise ValueError(f"no owners in table {table!r}")

    def release(self, table: str, keys: Iterable[str], now: float) -> list[str]:
        """Stop tracking the ``sent`` or ``owed`` records ``keys``: another worker owns them now
        (it took them over while this one's lease had run out). Returns the keys that were
        tracked here.

        No store write (they are the other worker's to write) and no event: an owed
        notification released is not sent from here (a hand-out still queued finds it gone:
        :meth:`~.dispatch.DispatchSide.notification_held` says so), nor is its outcome
        applied; the notifications waiting behind it for the same destination go now.
        """
        if table not in (SentRecord.TABLE, OwedRecord.TABLE):
            raise ValueError(f"no owners in table {table!r}")
        released = []
        for key in keys:
            if table == SentRecord.TABLE:
                if self._sent.pop(key, None) is None:
                    continue
            else:
                owed = self._owed.pop(key, None)
                if owed is None:
                    continue
                self._owed_gone(owed)
                address = self._address(owed.request_uri)
                self._guard.forget(address, key)
                for waiting in self._guard.release(address, now):
                    other = self._owed.get(waiting)
                    if other is not None and not other.in_flight:
                        self._dispatch(other, now)
            self._unswept += 1  # its timer entry is stale now
            released.append(key)
        return released

    def hold_notification(self, notification_id: str, until: float) -> bool:
        """Put a handed-out notification back unsent, due again at ``until`` (the attempt does
        not count): the adapter may not send it now (its worker is not sure it still owns
        it). False when it is no longer owed here (nothing to send)."""
        owed = self._owed.get(notification_id)
        if owed is None or not owed.in_flight:
            return False
        self._guard.forget(self._address(owed.request_uri), notification_id)
        self._put(evolve(owed, attempts=max(0, owed.attempts - 1), in_flight=False, next_attempt_at=until))
        return True
