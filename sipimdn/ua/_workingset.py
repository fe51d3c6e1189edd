"""The working set's miss path: read back from the store what the tracker left there.

The tracker keeps at most ``config.working_set_max`` received and as many
sent records in memory and lets the idle ones go, the store holding them all
(see :mod:`sipimdn.imdn.tracker.workingset`). It stays sans-IO, so reading
them back is done here, on the store's worker thread after every write
queued before (:meth:`StoreWriter.read <sipimdn.ua._persist.StoreWriter.read>`),
so the read sees the record's last state and never blocks the event loop:

- ``mark_displayed`` / ``report_disposition`` / ``IncomingMessage.report``
  about a message the tracker does not hold: ``load_received``, re-admit,
  then ask the tracker as if it had never left;
- a notification about a message we sent that the tracker does not hold:
  answered 200 at once as always, then ``load_sent``, re-admit, apply;
- ``await_disposition`` of such a message: read the same way;
- the tracking deadlines of evicted sent messages: when the earliest passes,
  the sent records then due are read (``load_sent_due``) and ended, with the
  events they would have had in memory (at most a second or so late).

Only when the tracker says a record may be in the store
(:attr:`~sipimdn.imdn.tracker.DispositionTracker.reads_back`); otherwise an
unknown message stays unknown without any store read. At start the tracker
is resumed with the working set only (``load_working_set``): the most recent
records, every owed notification, dedup entry and peer flag.

Several workers sharing a store (PostgreSQL, :mod:`._shared`): a worker
resumes with its working set too (the most recent received records, whoever
received them, and the most recent sent records it owns), received records
are read back the same way, and the deadlines of its evicted sent records are
read from the rows it owns. A notification about a sent message this worker
does not hold goes through the store as before (it may be another worker's):
kept for the owner of the row, who is woken and reads the forwarded
notifications of the records it owns, reads an evicted record back
(``load_sent``), then applies it. The worker that received the notification
may be that owner: the path is the same. Records taken over from a worker
that stopped enter the tracker a batch at a time (at most
``working_set_max``) and are trimmed to the cap like any others, the rest
waiting in the store, owned. A store that cannot read records back
(:class:`~sipimdn.store.base.ReadBackStore`) keeps everything in memory, as
before.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..errors import StoreError
from ..imdn.tracker import TrackerConfig
from ..store import ReadBackStore, SentRecord, SharedStore, Snapshot, Store, WorkingSetStore
from ._shared import SharedPath, is_ended, without_ended

__all__ = ["WorkingSetPath", "working_set_config"]

_log = logging.getLogger("sipimdn.ua.store")

#: Most sent records whose deadline passed read back at once (the rest on the next read).
_DUE_LIMIT = 1000
#: After a failed read of the due sent records, try again this much later (seconds).
_DUE_RETRY = 30.0


def working_set_config(config: TrackerConfig, store: Store, shared: SharedStore | None) -> TrackerConfig:
    """``config`` as far as ``store`` can hold the working set's evicted records."""
    if config.working_set_max is None:
        return config
    if not isinstance(store, ReadBackStore):
        _log.info("store %s cannot read records back: every tracked record stays in memory", type(store))
        return dataclasses.replace(config, working_set_max=None)
    if not isinstance(store, WorkingSetStore):
        return dataclasses.replace(config, evict_sent=False)
    return config


class WorkingSetPath(SharedPath):
    """Read evicted records back before the tracker is asked about them."""

    async def _load_working_set(
        self, config: TrackerConfig, now: float, shared: SharedStore | None
    ) -> tuple[Snapshot, bool]:
        """What the user agent resumes with, and whether it is only part of the store. With a
        shared store, only what this worker owns of the leased records (``load_own``), without
        the final records of messages whose tracking ended."""
        store = self._writer.store
        cap = config.working_set_max
        if cap is None or not isinstance(store, WorkingSetStore):
            if shared is not None:
                return without_ended(await self._writer.load_own(now)), False
            return await self._writer.load(now), False
        snapshot = await self._writer.read(store.load_working_set, now, cap)
        partial = len(snapshot.received) >= cap or len(snapshot.sent) >= cap
        return (snapshot if shared is None else without_ended(snapshot)), partial

    async def _read_back_received(self, message_id: str, sender: str | None) -> None:
        """Re-admit the received record(s) of ``message_id`` if the tracker let them go."""
        tracker = self._require_tracker()
        store = self._writer.store
        if not tracker.reads_back or tracker.received(message_id, sender) is not None:
            return
        if not isinstance(store, ReadBackStore):
            return
        self._pump()  # every change so far is queued before the read
        key = None if sender is None else tracker.sender_key(sender)
        self._counters.working_set_reads += 1
        try:
            records = await self._writer.read(store.load_received, message_id, key, time.time())
        except StoreError:
            _log.exception("store read of received message %s failed", message_id)
            raise
        if records and not self._closed:
            tracker.readmit(records, time.time())

    def _sent_evicted(self, message_id: str) -> bool:
        """Whether a notification about ``message_id`` must wait for its record to be read back."""
        tracker = self._tracker
        return (
            self._shared is None
            and tracker is not None
            and tracker.reads_back
            and tracker.sent(message_id) is None
        )

    async def _read_back_sent(self, message_id: str, *, owned: bool = False) -> None:
        """Re-admit the sent record of ``message_id`` if the tracker let it go. ``owned``: with a
        shared store, the caller knows this worker owns the row (a notification forwarded to
        it); otherwise only a store of one worker's is read back (another worker's row is
        that worker's to track)."""
        store = self._writer.store
        tracker = self._tracker
        if not isinstance(store, ReadBackStore) or tracker is None:
            return
        if owned:
            if not tracker.reads_back or tracker.sent(message_id) is not None:
                return
        elif not self._sent_evicted(message_id):
            return
        self._pump()
        self._counters.working_set_reads += 1
        record = await self._writer.read(store.load_sent, message_id, time.time())
        # A shared store keeps the final record of a message whose tracking ended: not tracked again.
        if record is not None and not is_ended(record) and not self._closed:
            self._require_tracker().readmit([record], time.time())

    async def _before_forwarded(self, message_id: str) -> None:
        await self._read_back_sent(message_id, owned=True)

    async def _apply_read_back(self, notes: list[dict[str, Any]]) -> None:
        """Apply notifications about messages whose records are read back first, in order."""
        for fields in notes:
            try:
                await self._read_back_sent(fields["message_id"])
            except StoreError as exc:
                # Applied anyway: the tracker rejects it as about an unknown message, logged.
                _log.error("store read of sent message %s failed: %s", fields["message_id"], exc)
            if self._closed:
                return
            self._apply_notification(fields)

    async def _current_record(self, message_id: str) -> SentRecord | None:
        if self._sent_evicted(message_id):
            await self._read_back_sent(message_id)
        return await super()._current_record(message_id)

    # -- the deadlines of evicted sent messages --------------------------------------------------

    def _arm_sweep(self, due: float) -> None:
        if self._sweeping is None or self._sweeping.done():
            self._sweep_timer.arm(due)

    def _on_sweep_timer(self, now: float) -> None:
        if self._closed or self._tracker is None:
            return
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = self._spawn(self._sweep_due())

    async def _sweep_due(self) -> None:
        """Read the evicted sent records whose deadline passed; the tracker ends them."""
        tracker = self._require_tracker()
        store = self._writer.store
        if tracker.sweep_started() is None or not isinstance(store, WorkingSetStore):
            return
        grace = tracker.config.expiry_report_grace
        now = time.time()
        self._pump()
        self._counters.working_set_reads += 1
        try:
            records, later = await self._writer.read(store.load_sent_due, now + grace, now, _DUE_LIMIT)
        except StoreError as exc:
            _log.error("store read of sent messages due failed (retried in %gs): %s", _DUE_RETRY, exc)
            records, later = (), now + grace + _DUE_RETRY
        if self._closed:
            return
        more = len(records) >= _DUE_LIMIT
        # A shared store keeps the final record of a message whose tracking ended: not ended twice.
        records = tuple(r for r in records if not is_ended(r))
        tracker.readmit_due(
            records,
            time.time(),
            next_deadline=None if later is None else later - grace,
            more=more,
        )
        self._sweeping = None
        self._pump()
