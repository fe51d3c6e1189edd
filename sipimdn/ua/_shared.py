"""Several workers, one state: what the user agent does when its store is shared.

Any number of user agent processes ("workers") with the same AOR may share a
multi-worker :class:`~sipimdn.store.base.SharedStore` (PostgreSQL), each with
its own tracker. Only here does a worker talk to the store on the hot path,
and only when the store is really shared (SQLite is one worker's):

- **Dedup across workers.** A received IM whose (sender, Message-ID) this
  worker's tracker does not know is claimed in the store
  (:meth:`~sipimdn.store.base.SharedStore.claim_message`, atomic) before it
  is recorded and handed up. Claimed before: a copy another worker received
  (a resend with a new Call-ID), answered as that worker answered it and not
  handed up. The answer is written into the claim; a claim left unanswered
  for longer than ``worker_lease + handler_deadline`` belonged to a worker
  that died while deciding, and is taken over (the crash window: such a
  message may have reached the dead worker's application, and reaches the
  survivor's; nothing else is handed up twice).
  A store that cannot be reached: 503 with Retry-After, never a 2xx whose
  obligations are not stored (RFC 3261 §21.5.4).
- **Correlation across workers** (RFC 5438 §7.1.2 by Message-ID). A
  notification about a message this worker did not send is forwarded to the
  owner of that message's ``sent`` record through the store
  (:meth:`~sipimdn.store.base.SharedStore.forward_notification`): the row is
  the truth, the database notification the wake-up. The owner applies it
  through its tracker, the one writer of that record, so two workers never
  race on it. Each write of a ``sent`` record wakes the workers waiting for
  that Message-ID (:meth:`SharedPath._await_disposition`).
- **Ownership and take-over.** Every quarter of ``config.worker_lease`` a
  worker renews the leases of the records it owns, takes over those whose
  owner stopped renewing (a survivor sends the owed IMDNs and tracks the
  awaited notifications of a worker killed with SIGKILL) and applies the
  notifications forwarded to it (also those whose wake-up was lost).
- **Database gone.** A claim that fails is a 503 with Retry-After. A 2xx
  whose records did not reach the store (the database went away after the
  claim) is not sent either: the message is refused with 503 and forgotten
  (:meth:`~sipimdn.imdn.tracker.shared.SharedSide.withdraw_answer`), its
  claim released once the store is back, so the sender's retry is received
  afresh. The handler did run for it: across a database outage a message
  may reach the application twice (at least once, never a 2xx with
  obligations nobody can take over). Calls fail fast while the database is
  down and the store reconnects by itself, so the worker recovers when it returns.
- **Fencing.** Only a record's owner writes it (the store tests the owner in
  the writing statement: :meth:`~sipimdn.store.base.SharedStore.apply_owned`).
  A worker counts on its lease for 80% of it after each successful renewal
  (measured on its monotonic clock from before the renewal: the rows it
  still owns are leased past that, on the database's clock). Past that it
  may have lost records to a survivor, so an owed IMDN whose turn comes is
  put back, not sent, until a renewal succeeds; a late renewal then asks the
  store which records another worker owns now. Those, and the records whose
  writes the store fenced off, are released from the tracker (not sent, not
  tracked here any more), logged once per batch and counted
  (``records_lost``); a handle of a sent message released follows the new
  owner's record in the store. The remaining window: a pause between the
  check and the send longer than the rest of the lease, the retransmissions
  of a transaction already started, and clocks that disagree on how long a
  lease lasts; the IM sender then gets a notification twice with the same
  Message-ID and disposition, which it has already applied.
- **Ended messages.** The tracker drops a message when its tracking ends; in
  a shared store the final record stays (marked ended, never adopted) until
  it expires, so a worker waiting on that Message-ID reads the final state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import MessageNotTracked, StoreError
from ..imdn.tracker import DispositionState
from ..imdn.vocabulary import TERMINAL_STATES, reached
from ..stack import IncomingRequest
from ..store import Delete, OwedRecord, Put, SeenRecord, SentRecord, SharedStore, Snapshot, Store, StoreOp
from ..store.base import ENDED_METADATA
from . import _wire
from ._base import AgentCore

if TYPE_CHECKING:
    from ._receive import Pending
    from .outgoing import SentMessage

__all__ = ["ENDED", "SharedPath", "shared_store", "without_ended"]

_log = logging.getLogger("sipimdn.ua.shared")

#: Metadata name marking a ``sent`` record whose tracking ended (kept for readers, never adopted).
ENDED = ENDED_METADATA
#: Retry-After (seconds) of the 503 given while the shared store cannot be reached.
RETRY_AFTER = 5
#: How long the final record of a message whose tracking ended stays readable (seconds).
ENDED_KEEP = 3600.0
#: How often a worker waiting on another worker's message re-reads it without a wake-up.
_AWAIT_POLL = 1.0
#: The part of its lease a worker counts on after a renewal (the rest covers the database's
#: clock running a little faster than this machine's, and the time a renewal takes to return).
_LEASE_TRUST = 0.8
#: Most records per table taken over from stopped workers per lease tick.
_TAKE_OVER_MAX = 1000
#: Keys per ownership check after a late renewal (one statement each).
_LOST_CHUNK = 5000


def shared_store(store: Store) -> SharedStore | None:
    """``store`` as a store other processes share, or None (one worker's: nothing to share)."""
    if isinstance(store, SharedStore) and getattr(store, "multi_worker", False):
        return store
    return None


def ended_writes(ops: Sequence[StoreOp], now: float) -> list[StoreOp]:
    """``ops`` with each ``sent`` Delete that follows a Put of the same record turned into a Put
    of that final record marked :data:`ENDED`, expiring within :data:`ENDED_KEEP` of ``now``
    (purge removes it)."""
    last: dict[str, SentRecord] = {}
    out: list[StoreOp] = []
    for op in ops:
        if isinstance(op, Put) and isinstance(op.record, SentRecord):
            last[op.record.message_id] = op.record
        elif isinstance(op, Delete) and op.table == SentRecord.TABLE and op.key in last:
            record = last[op.key]
            metadata = tuple(sorted({**dict(record.metadata), ENDED: "1"}.items()))
            expires = min(record.expires_at, now + ENDED_KEEP)
            out.append(Put(replace(record, metadata=metadata, expires_at=expires)))
            continue
        out.append(op)
    return out


def is_ended(record: SentRecord) -> bool:
    """Whether ``record`` is the final state of a message whose tracking ended."""
    return any(name == ENDED for name, _ in record.metadata)


def without_ended(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` without the final records of messages whose tracking ended."""
    return replace(snapshot, sent=tuple(r for r in snapshot.sent if not is_ended(r)))


def recipient_state(record: SentRecord) -> DispositionState:
    """The state of the message's first intended recipient (what ``SentMessage.state`` follows)."""
    for entry in record.recipients:
        if entry.via is None:
            return DispositionState(entry.state)
    return DispositionState(record.recipients[0].state)


def _settled(state: DispositionState, wanted: DispositionState) -> bool:
    return reached(state, wanted) or state in TERMINAL_STATES


class SharedPath(AgentCore):
    """Claims, forwarding, take-over and cross-worker waits (see the module docstring)."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def _shared_start(self, store: SharedStore, renewed_at: float) -> None:
        """Listen for the other workers' wake-ups, hear of the writes fenced off and start the
        lease ticks. ``renewed_at``: when (``time.monotonic()``) the leases of the records this
        worker resumed were renewed, before it loaded them."""
        self._shared = store
        self._lease_sure_until = renewed_at + store.lease * _LEASE_TRUST
        self._writer.on_fenced(self._on_fenced)
        loop = asyncio.get_running_loop()

        def wake(payload: str) -> None:  # on the store's thread
            loop.call_soon_threadsafe(self._on_store_notice, payload)

        self._unlisten = await asyncio.to_thread(store.listen, wake)
        self._lease_task = self._spawn(self._lease_ticks(store))

    def _shared_stop(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _shared_writes(self, ops: list[StoreOp]) -> list[StoreOp]:
        return ended_writes(ops, time.time()) if self._shared is not None else ops

    def _tick_interval(self, store: SharedStore) -> float:
        return min(self.config.worker_lease, store.lease) / 4

    async def _lease_ticks(self, store: SharedStore) -> None:
        interval = self._tick_interval(store)
        while not self._closed:
            try:
                await self._lease_tick(store)
            except StoreError as exc:
                _log.warning("shared store: lease renewal or take-over failed: %s", exc)
            await asyncio.sleep(interval)

    async def _lease_tick(self, store: SharedStore) -> None:
        if self._unreleased:
            keys = list(self._unreleased)
            await asyncio.to_thread(store.apply, [Delete(SeenRecord.TABLE, key) for key in keys])
            self._unreleased.difference_update(keys)
        started = time.monotonic()
        await asyncio.to_thread(store.renew_leases)
        if time.monotonic() > self._lease_sure_until:
            # The renewal came after our lease may have run out: another worker may have
            # taken records over meanwhile. Until we know which, nothing owed is sent.
            await self._drop_lost(store)
        # The renewal ran after `started`: every row still ours is leased past started + lease.
        self._lease_sure_until = started + store.lease * _LEASE_TRUST
        now = time.time()
        # At most a working set's worth at once: the tracker trims what it adopts to its cap
        # (the rest stays in the store, owned now, read back when needed).
        cap = self._require_tracker().config.working_set_max
        limit = _TAKE_OVER_MAX if cap is None else max(1, min(cap, _TAKE_OVER_MAX))
        taken = await asyncio.to_thread(store.take_over, now, limit)
        if self._closed:
            return
        if taken.sent or taken.owed:
            adopted = self._require_tracker().adopt(without_ended(taken), now)
            _log.warning(
                "took over %d awaited message(s) and %d owed notification(s) from workers that stopped",
                len(adopted),
                len(taken.owed),
            )
            self._pump()
        # Also what was forwarded while its owner was gone, or whose wake-up was lost.
        self._kick_forwarded()

    # -- fencing: records lost to another worker ---------------------------------------------------

    def _may_send_owed(self, notification_id: str) -> bool:
        """Whether an owed notification may go out now: always with a store of one worker's;
        with a shared one only while this worker is sure it still owns the notification's
        record (else it is put back, due at the next lease tick, which finds out)."""
        store = self._shared
        if store is None or time.monotonic() <= self._lease_sure_until:
            return True
        tracker = self._require_tracker()
        if tracker.hold_notification(notification_id, time.time() + self._tick_interval(store)):
            _log.debug("IMDN %s held: this worker's lease on it is not confirmed", notification_id)
            self._pump()
        return False

    def _on_fenced(self, ops: tuple[StoreOp, ...]) -> None:
        """The store refused writes of records another worker owns now (on the loop)."""
        lost: dict[str, list[str]] = {}
        for op in ops:
            table, key = (op.record.TABLE, op.record.key) if isinstance(op, Put) else (op.table, op.key)
            lost.setdefault(table, []).append(key)
        self._lose(lost, "its writes were fenced off")

    async def _drop_lost(self, store: SharedStore) -> None:
        """Find the records tracked here that another worker owns now, and stop tracking them."""
        await self._writer.written()  # what was written before counts (fenced writes are reported)
        lost: dict[str, list[str]] = {}
        for table in (SentRecord.TABLE, OwedRecord.TABLE):
            keys = self._require_tracker().leased_keys(table)
            for at in range(0, len(keys), _LOST_CHUNK):
                found = await asyncio.to_thread(store.owned_elsewhere, table, keys[at : at + _LOST_CHUNK])
                lost.setdefault(table, []).extend(found)
        if not self._closed:
            self._lose(lost, "found on renewing its lease late")

    def _lose(self, lost: dict[str, list[str]], how: str) -> None:
        """Stop tracking and sending what another worker took over: it is that worker's to
        send and track now (the one writer of those records)."""
        if self._closed or self._tracker is None or self._shared is None:
            return
        tracker, store = self._tracker, self._shared
        now = time.time()
        count = 0
        for table, keys in lost.items():
            released = tracker.release(table, keys, now)
            count += len(released)
            if table == SentRecord.TABLE:
                for message_id in released:
                    handle = self._handles.get(message_id)
                    if handle is not None:
                        self._spawn(self._follow(store, handle))
        if not count:
            return
        self._counters.records_lost += count
        _log.warning(
            "shared store: %d awaited message(s) or owed notification(s) now belong to another "
            "worker (this one's lease ran out, %s): no longer tracked or sent from here",
            count,
            how,
        )
        self._pump()

    async def _follow(self, store: SharedStore, handle: SentMessage) -> None:
        """Keep a :class:`SentMessage` whose record another worker took over up to date from
        the store (that worker applies its notifications now)."""
        loop = asyncio.get_running_loop()
        message_id = handle.message_id
        while not self._closed:
            waiter: asyncio.Future[None] = loop.create_future()
            self._sent_waiters.setdefault(message_id, []).append(waiter)
            try:
                try:
                    record = await asyncio.to_thread(store.load_sent, message_id, time.time())
                except StoreError:  # read again at the next poll
                    await asyncio.wait([waiter], timeout=_AWAIT_POLL)
                    continue
                if record is None:  # gone: its tracking ended and its record expired
                    handle._set_ended()
                    return
                state = recipient_state(record)
                if state != handle.state:
                    handle._set_state(state)
                if is_ended(record) or state in TERMINAL_STATES:
                    handle._set_ended()
                    return
                await asyncio.wait([waiter], timeout=_AWAIT_POLL)
            finally:
                self._drop_waiter(message_id, waiter)

    def _drop_waiter(self, message_id: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._sent_waiters.get(message_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._sent_waiters[message_id]

    # -- dedup across workers ----------------------------------------------------------------------

    def _claim_first(self, incoming: IncomingRequest, inbound: _wire.Inbound, sender: str) -> bool:
        """True when the IM waits for a claim in the shared store (it is received afterwards)."""
        message_id = inbound.message_id
        if self._shared is None or message_id is None:
            return False
        if self._require_tracker().is_duplicate(message_id, sender):
            return False  # this worker's tracker answers it
        self._spawn_wire(self._claim(self._shared, incoming, inbound, sender, message_id))
        return True

    async def _claim(
        self,
        store: SharedStore,
        incoming: IncomingRequest,
        inbound: _wire.Inbound,
        sender: str,
        message_id: str,
    ) -> None:
        record = self._require_tracker().dedup_record(message_id, sender, time.time())
        try:
            kept = await self._claim_batched(store, record)
        except StoreError as exc:
            _log.error(
                "shared store unreachable: MESSAGE %s from %s answered 503: %s", message_id, sender, exc
            )
            incoming.respond(503, None, [("Retry-After", str(RETRY_AFTER))])
            return
        if self._closed:
            return
        tracker = self._require_tracker()
        if kept is not None and not tracker.is_duplicate(message_id, sender):
            # Another worker received it first (a resend with a new Call-ID): never handed up
            # twice; answered as that worker answered it, as the tracker answers a duplicate.
            status = kept.status or self.config.deadline_status
            _log.info(
                "duplicate message %s from %s (another worker's) answered %d", message_id, sender, status
            )
            incoming.respond(status)
            return
        # First (or a copy this worker recorded meanwhile, which the tracker answers).
        self._receive_claimed(incoming, inbound)

    async def _claim_batched(self, store: SharedStore, record: SeenRecord) -> SeenRecord | None:
        """``store.claim_message(record, ...)``, with the claims made meanwhile: while one batch
        is in the database, the next gathers, and goes as one statement (one thread hand-off
        and one round trip for all of them, as the writer's group commit)."""
        waiter: asyncio.Future[SeenRecord | None] = asyncio.get_running_loop().create_future()
        self._claim_queue.append((record, waiter))
        if not self._claiming:
            self._claiming = True
            self._spawn(self._run_claims(store))
        return await waiter

    async def _run_claims(self, store: SharedStore) -> None:
        try:
            while self._claim_queue and not self._closed:
                batch, self._claim_queue = self._claim_queue, []
                now = time.time()
                # A claim still unanswered after this long is abandoned (its worker died before
                # answering): taken over, so the message is received here rather than lost.
                abandoned = now - (self.config.worker_lease + self.config.handler_deadline)
                stale_expiry = abandoned + self._require_tracker().config.dedup_ttl
                records = [record for record, _ in batch]
                try:
                    answers = await asyncio.to_thread(store.claim_messages, records, now, stale_expiry)
                except StoreError as exc:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for (_, waiter), answer in zip(batch, answers, strict=True):
                    if not waiter.done():
                        waiter.set_result(answer)
        finally:
            self._claiming = False
            for _, waiter in self._claim_queue if self._closed else ():
                waiter.cancel()

    def _receive_claimed(self, incoming: IncomingRequest, inbound: _wire.Inbound) -> None:
        """Receive an IM once claimed (the receive path)."""
        raise NotImplementedError

    def _store_answer(self, pending: Pending, status: int) -> None:
        """Write the answer into the message's dedup entry, so a copy reaching another worker
        gets the same answer and the claim is never taken for abandoned (the tracker writes
        it only for messages owed a notification)."""
        if self._shared is None or pending.message_id is None or self._tracker is None:
            return
        record = self._tracker.dedup_record(pending.message_id, pending.sender, time.time())
        self._writer.submit([Put(replace(record, status=status))])

    def _refuse_unstored(self, pending: Pending) -> bool:
        """Refuse (503) a received IM whose 2xx could not be made durable; True if done so.

        Only with a shared store and a Message-ID (see the module docstring).
        """
        if self._shared is None or pending.message_id is None or self._tracker is None:
            return False
        _log.error(
            "shared store write failed: MESSAGE %s from %s answered 503 instead of its 2xx",
            pending.message_id,
            pending.sender,
        )
        pending.respond(503, None, [("Retry-After", str(RETRY_AFTER))])
        tracker = self._tracker
        tracker.withdraw_answer(pending.message_id, pending.sender)
        # The claim's release must reach the store, which is failing now: retried on the ticks.
        self._unreleased.add(tracker.dedup_record(pending.message_id, pending.sender, 0.0).key)
        self._pump()
        return True

    # -- correlation across workers ----------------------------------------------------------------

    def _is_foreign(self, message_id: str) -> bool:
        """Whether a notification about ``message_id`` goes to another worker: the store is
        shared and this worker's tracker does not track that message."""
        return self._shared is not None and self._require_tracker().sent(message_id) is None

    def _forward_then_answer(self, incoming: IncomingRequest, notes: list[dict[str, Any]]) -> None:
        """Keep ``notes`` (notification_received arguments) for the owners of their messages,
        then answer the IMDN: 200, or 503 with Retry-After when the store cannot keep them (the
        peer sends it again, RFC 5438 §7.2.1.1 keeps its Message-ID: the replay guard absorbs
        what was applied twice)."""
        assert self._shared is not None
        self._spawn_wire(self._forward(self._shared, incoming, notes))

    async def _forward(
        self, store: SharedStore, incoming: IncomingRequest, notes: list[dict[str, Any]]
    ) -> None:
        unknown = []
        try:
            for fields in notes:
                kept = await asyncio.to_thread(
                    store.forward_notification, fields["message_id"], json.dumps(fields), time.time()
                )
                if not kept:
                    unknown.append(fields)
        except StoreError as exc:
            _log.error("shared store unreachable: IMDN %s answered 503: %s", incoming.request.call_id, exc)
            incoming.respond(503, None, [("Retry-After", str(RETRY_AFTER))])
            return
        incoming.respond(200)
        if self._closed:
            return
        for fields in unknown:
            # No worker tracks it: this worker's tracker rejects it (an unknown Message-ID).
            self._apply_notification(fields)

    def _apply_notification(self, fields: dict[str, Any]) -> None:
        # A row written before the asserted identity was forwarded has no such field: the
        # From claims decide, as they did then.
        asserted = fields.get("asserted_identity")
        if asserted is not None and not (
            isinstance(asserted, list) and all(isinstance(uri, str) for uri in asserted)
        ):
            raise TypeError(f"asserted_identity must be a list of URIs, not {asserted!r}")
        self._require_tracker().notification_received(now=time.time(), **fields)
        self._pump()

    async def _before_forwarded(self, message_id: str) -> None:
        """Before a forwarded notification about ``message_id`` (a ``sent`` row this worker
        owns) is applied: read its record back if it left memory (the working set's business;
        :class:`~sipimdn.errors.StoreError` when the store cannot be read)."""

    def _on_store_notice(self, payload: str) -> None:
        if self._closed or self._shared is None:
            return
        if payload.startswith("i:"):
            tracker = self._tracker
            # Ours if we track it; perhaps ours too if its record may have left memory (the
            # store hands each worker only the forwarded notifications of the rows it owns).
            if tracker is not None and (tracker.reads_back or tracker.sent(payload[2:]) is not None):
                self._kick_forwarded()
            return
        for waiter in self._sent_waiters.pop(payload, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _kick_forwarded(self) -> None:
        """Read the forwarded notifications soon: one reader at a time, run again if asked meanwhile."""
        self._forwarded_due = True
        if self._shared is not None and (self._forwarding is None or self._forwarding.done()):
            self._forwarding = self._spawn(self._apply_forwarded(self._shared))

    async def _apply_forwarded(self, store: SharedStore) -> None:
        """Apply the notifications other workers forwarded for messages this worker owns."""
        while self._forwarded_due and not self._closed:
            self._forwarded_due = False
            try:
                rows = await asyncio.to_thread(store.take_forwarded, time.time())
            except StoreError as exc:
                _log.warning("shared store: forwarded notifications not read: %s", exc)
                return
            if not rows or self._closed:
                continue
            for _, data in rows:
                try:
                    fields = json.loads(data)
                    if not isinstance(fields, dict) or not isinstance(fields.get("message_id"), str):
                        raise TypeError(f"not a notification: {data[:200]!r}")
                    await self._before_forwarded(fields["message_id"])
                    if self._closed:
                        return
                    self._apply_notification(fields)
                except StoreError as exc:
                    # Kept in the store: applied on a later wake-up or lease tick (those applied
                    # before it again, which the replay guard absorbs).
                    _log.warning("shared store: forwarded notifications not applied: %s", exc)
                    return
                except (ValueError, TypeError) as exc:
                    _log.error("shared store: unreadable forwarded notification dropped: %s", exc)
            # Dropped once what they changed is stored: a crash in between applies them again,
            # which the tracker's replay guard absorbs (same notification Message-ID).
            await self._writer.written()
            try:
                await asyncio.to_thread(store.drop_forwarded, [row_id for row_id, _ in rows])
            except StoreError as exc:
                _log.warning("shared store: forwarded notifications not dropped: %s", exc)
                return
            self._forwarded_due = True  # there may be more than one batch

    # -- waiting on a message any worker sent ------------------------------------------------------

    async def _await_disposition(
        self, message_id: str, target: str | DispositionState, timeout: float | None
    ) -> DispositionState:
        wanted = DispositionState(target)
        handle = self._handles.get(message_id)
        if handle is not None:
            return await handle.await_disposition(wanted, timeout)
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        last: DispositionState | None = None
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self._sent_waiters.setdefault(message_id, []).append(waiter)
            try:
                record = await self._current_record(message_id)
                if record is None:
                    # Never tracked, or gone: ended and its final record expired unread.
                    raise MessageNotTracked(message_id, last)
                last = recipient_state(record)
                if _settled(last, wanted) or (self._shared is not None and is_ended(record)):
                    return last  # reached, or can no longer: terminal, or tracking ended
                left = _AWAIT_POLL if end is None else min(_AWAIT_POLL, end - loop.time())
                if left <= 0:
                    raise TimeoutError(f"message {message_id} did not reach {wanted.value}")
                await asyncio.wait([waiter], timeout=left)
            finally:
                self._drop_waiter(message_id, waiter)

    async def _current_record(self, message_id: str) -> SentRecord | None:
        record = self._require_tracker().sent(message_id)
        if record is None and self._shared is not None:
            record = await asyncio.to_thread(self._shared.load_sent, message_id, time.time())
        return record
