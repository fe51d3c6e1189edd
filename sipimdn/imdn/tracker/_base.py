"""The tracker's bookkeeping: its tables, the timer heap, the write-behind queue and restore.

Rule 1 of the tracker: all its state is declared here, in
:meth:`TrackerCore.__init__`; the sender side (:mod:`.sender`) and the
receiver side (:mod:`.receiver`) only read and change it through
:meth:`~TrackerCore._put` and :meth:`~TrackerCore._delete`, which keep the
timer heap and the store operations in step with the tables.

**Persistence: write-behind operations.** The tracker keeps its state in
memory and is authoritative while running, except that long-lived sent and
received records are a bounded cache (the working set, :mod:`.workingset`):
an idle one may leave memory, the store keeping it, and the adapter reads it
back when it is needed. Every change that a restart
needs also appends a whole-record :class:`~sipimdn.store.base.Put` or a
:class:`~sipimdn.store.base.Delete` to a queue drained with
:meth:`~TrackerCore.writes_to_apply`; the adapter applies each batch, in
order, with :meth:`Store.apply <sipimdn.store.base.Store.apply>`. The
tracker never calls a store: it must stay sans-IO and fast on the event
loop, and whole-record upserts are idempotent (replaying a batch is
harmless, the store never holds half a record). Two kinds of change are
not written, because a restart does not need them: the dedup entry of a
message that is owed no notification (kept in memory, for this run, in the
``volatile`` table: a store write per message would buy dedup only for a
resend that straddles our restart), and the removal of an expired dedup
entry (the store skips expired rows on load and drops them on purge).
After a restart, ``DispositionTracker(config, snapshot=store.load(now),
now=now)`` rebuilds everything: owed notifications (also those handed out
but never acknowledged: the peer dedups on their stable Message-ID) are due
again at once, sent messages still correlate, received messages can still
be marked displayed, dedup entries and peer flags survive.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from ..._ratelog import RateLimitedTally
from ..._tokens import token_hex
from ..vocabulary import REQUEST_KINDS
from .config import TrackerConfig
from .destinations import DestinationGuard
from .events import NotificationOwed, TrackerEvent
from .identity import identity_key
from .records import (
    AnyRecord,
    Delete,
    OwedRecord,
    PeerRecord,
    Put,
    ReceivedRecord,
    SeenRecord,
    SentRecord,
    Snapshot,
    StoreOp,
    evolve,
    received_key,
)

if TYPE_CHECKING:
    from .dispatch import LongWindow
    from .receiver import Receipt

__all__ = [
    "PEER_CPIM",
    "PEER_NO_CPIM",
    "PEER_NO_IMDN",
    "DedupEntry",
    "TrackerCore",
    "dedup_entry",
    "dedup_expiry",
    "dedup_status",
]

#: Peer flag: the peer answered 415 (or 488) to an IMDN; send it no more.
PEER_NO_IMDN = "no-imdn"
#: Peer flag: the peer answered 415 to message/cpim (kept for the UA's text/plain fallback).
PEER_NO_CPIM = "no-cpim"
#: Peer flag: the peer takes message/cpim (listed in the Accept of its OPTIONS answer, or it
#: sent us CPIM); with neither flag, what it takes is unknown.
PEER_CPIM = "cpim"

_SENT, _OWED, _RECEIVED, _SEEN, _PEER = "sent", "owed", "received", "seen", "peer"
#: Dedup entries kept in memory only (messages owed no notification); never written.
_VOLATILE = "volatile"
#: Every sorted combination of request tokens, each one tuple object: a record keeps its
#: requested kinds by reference to one of these instead of a tuple of its own (memory per
#: tracked message; see :func:`shared_kinds`).
_KIND_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    combo: combo
    for size in range(len(REQUEST_KINDS) + 1)
    for combo in itertools.combinations(sorted(REQUEST_KINDS), size)
}
_log = logging.getLogger("sipimdn.imdn.tracker")
#: At most one log line about dedup (or working-set) evictions per this many seconds.
_EVICTION_LOG_INTERVAL = 60.0
#: The timer heap is never swept of stale entries while it holds at most this many.
_HEAP_SWEEP_MIN = 4096
#: Dedup entries and received records share one key space (and usually one deadline).
_RECEIVED_SPACE = (_SEEN, _RECEIVED)
#: The tables a timer entry may name, by the code in the low bits of its tag (see _push).
_TIMED_TABLES = (_SENT, _OWED, _RECEIVED, _SEEN, _VOLATILE, _PEER)
_TABLE_CODE = {name: code for code, name in enumerate(_TIMED_TABLES)}
_TABLE_BITS = 3
_TABLE_MASK = (1 << _TABLE_BITS) - 1

#: In memory, dedup entries and received records are keyed by ``(sender key, Message-ID)``: a
#: pair of the strings the records hold anyway, where their store key (:func:`received_key`)
#: would be a third string per message. Every other table uses its store key.
MemKey = str | tuple[str, str]
#: A dedup entry in memory: what the message's :class:`SeenRecord` holds beyond its key. One is
#: kept per received message for ``dedup_ttl`` (up to ``dedup_max``, 100,000 by default), so
#: two costs per message matter:
#:
#: * the cyclic collector: a record object (a slotted dataclass is a container to it) is one
#:   more object for every collection to walk, tens of thousands at a few thousand messages a
#:   second, all of them at every full collection (pauses of tens to hundreds of milliseconds).
#:   An exact tuple whose items are all untracked (None, int, float) is untracked by the
#:   collector at its first young collection, as is the ``(str, str)`` key, and so then is the
#:   timer entry holding that key: none of them is walked again.
#: * memory: a message answered 200 (nearly all) keeps its bare expiry time, the float object
#:   its timer entry (and its received record, if any) holds already: no object of its own.
#:   Any other status, or none yet, is ``(status, expires_at)``.
#:
#: :func:`dedup_entry`, :func:`dedup_status` and :func:`dedup_expiry` make and read them; the
#: :class:`SeenRecord` is built only where a record is needed (a store write, a snapshot).
DedupEntry = float | tuple[int | None, float]


def dedup_entry(status: int | None, expires_at: float) -> DedupEntry:
    """The in-memory form of a dedup entry (see :data:`DedupEntry`)."""
    return expires_at if status == 200 else (status, expires_at)


def dedup_status(entry: DedupEntry) -> int | None:
    """The status of a dedup entry (see :data:`DedupEntry`)."""
    return entry[0] if isinstance(entry, tuple) else 200


def dedup_expiry(entry: DedupEntry) -> float:
    """The expiry time of a dedup entry (see :data:`DedupEntry`)."""
    return entry[1] if isinstance(entry, tuple) else entry


def _store_key(key: MemKey) -> str:
    return key if isinstance(key, str) else received_key(*key)


def _random_id() -> str:
    """128 random bits in hex (the default notification Message-ID)."""
    return token_hex(16)


def shared_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """``kinds`` sorted, as the shared tuple of :data:`_KIND_TUPLES` when there is one."""
    combo = tuple(sorted(kinds))
    return _KIND_TUPLES.get(combo, combo)


def token(value: object) -> str:
    """Accept plain strings and StrEnum/Enum members alike."""
    return str(getattr(value, "value", value))


class TrackerCore:
    """The state of a :class:`~sipimdn.imdn.tracker.DispositionTracker` and its bookkeeping.

    ``snapshot`` (from :meth:`Store.load <sipimdn.store.base.Store.load>`)
    resumes a previous run at time ``now``; ``partial=True`` says it holds only
    the working set (``load_working_set``): the other sent and received records
    are in the store, read back on a miss (see :mod:`.workingset`). ``id_factory`` makes the
    Message-IDs of the notifications we send (default: 128 random bits in
    hex, a valid CPIM Token that cannot be guessed: RFC 5438 §14.1 relies on it).
    """

    def __init__(
        self,
        config: TrackerConfig | None = None,
        *,
        snapshot: Snapshot | None = None,
        now: float = 0.0,
        id_factory: Callable[[], str] | None = None,
        partial: bool = False,
    ) -> None:
        self.config = config or TrackerConfig()
        self._new_id = id_factory or _random_id
        # --- sender side; sent and received records are kept least recently used first (the
        # working set, see .workingset)
        self._sent: OrderedDict[str, SentRecord] = OrderedDict()
        # Identity keys of config.trusted_intermediaries.
        self._trusted_hops = frozenset(
            key
            for key in (identity_key(uri, compare_ports=self.config.compare_ports)
                        for uri in self.config.trusted_intermediaries)
            if key is not None
        )
        # --- receiver side
        self._owed: dict[str, OwedRecord] = {}
        self._received: OrderedDict[tuple[str, str], ReceivedRecord] = OrderedDict()
        # Received key -> how many of its notifications are owed (queued, in flight or held):
        # such a received record is not idle, so it stays in memory.
        self._owed_for: dict[tuple[str, str], int] = {}
        # Message-ID -> received key, or a list of them: almost always one sender per
        # Message-ID, so the key itself (no container per tracked message). Built on the first
        # lookup without the sender (``mark_displayed(message_id)``), then kept in step: an
        # application that always names the sender (the user agent's messages do) never pays
        # its entry per tracked message (memory per tracked message). None: not built yet.
        self._received_by_id: dict[str, tuple[str, str] | list[tuple[str, str]]] | None = None
        # Dedup entries, each table in arrival order (one TTL, so also expiry order); together
        # at most config.dedup_max, the oldest evicted first (_bound_dedup).
        # Ordered dicts, not plain ones: _bound_dedup takes the oldest entry at every message once
        # the cap is reached, and a plain dict finds its first live entry by stepping over every
        # slot deleted before it (tens of microseconds at 100,000 entries); a linked order is O(1).
        # Each entry is a DedupEntry (nothing the collector tracks), never a record.
        self._seen: OrderedDict[tuple[str, str], DedupEntry] = OrderedDict()
        self._volatile: OrderedDict[tuple[str, str], DedupEntry] = OrderedDict()
        self._dedup_evictions = 0
        # Evictions reported in one log line a minute at most.
        self._dedup_evictions_log = RateLimitedTally(_EVICTION_LOG_INTERVAL)
        # Received messages whose answer is being decided or sent (see receiver.Receipt):
        # only those with reports made before the answer or notifications held behind it.
        self._receipts: dict[tuple[str, str], Receipt] = {}
        # Plain-text messages (no Message-ID) by (sender, transaction identity): final status
        # answered, or None while deciding; expiry order is insertion order (one TTL).
        self._plain: OrderedDict[tuple[str, str], tuple[float, int | None]] = OrderedDict()
        # Rate limit: originator key -> times of the notifications generated for it in the window.
        self._rate: dict[str, float | list[float] | LongWindow] = {}
        # Size past which the limiter prunes idle originators (the first call sets it).
        self._rate_prune_at = 0
        # Per destination address: byte budget, proof of life, parking (see .destinations).
        self._guard = DestinationGuard(
            byte_budget=self.config.byte_budget,
            window=self.config.rate_window,
            park_base=self.config.park_base,
            park_cap=self.config.park_cap,
        )
        # Notifications declined by a rate limit, a byte budget or a parked destination.
        self._suppressed = 0
        # Received messages' CPIM To / Original-To values, one object each (receiver._common_text).
        self._common: dict[str, str] = {}
        # --- both: the working set (see .workingset). Records left in memory for the store;
        # when the last log line about it was written, and what it did not report yet;
        # whether a record missing from memory may be in the store (evicted, or not loaded:
        # ``partial``); the earliest tracking deadline of a sent record evicted since the last
        # sweep (None: none), which the adapter reads back when it passes.
        self._ws_evictions = 0
        self._ws_evictions_log = RateLimitedTally(_EVICTION_LOG_INTERVAL)
        self._reads_back = partial
        self._evicted_sent_due: float | None = now if partial else None
        self._peers: dict[str, PeerRecord] = {}
        self._events: deque[TrackerEvent] = deque()
        # Store operations not yet handed out (writes_to_apply); None where one was withdrawn.
        self._writes: list[StoreOp | None] = []
        # Received records created since the last hand-out, by key: the index in _writes of
        # the one Put queued for each (the store has never held them). Deleted before the
        # hand-out, such a record costs the store nothing: its Put is withdrawn, no Delete
        # (a received message settled by its answer: positive delivery owed at once).
        self._queued_new: dict[MemKey, int] = {}
        self._withdrawn = 0
        # Timers: (deadline, tag, key), the tag being the push's sequence number shifted left
        # by _TABLE_BITS, the code of the record's table in the bits freed (so entries of one
        # deadline fire in push order, and an entry is a 3-tuple: memory per tracked message).
        # An entry goes stale (is skipped) when its record is
        # deleted or gets another deadline; stale entries are dropped when they reach the top
        # and, in bulk, once they may be a quarter of the heap (_push). _unswept counts what
        # may have made an entry stale since the last sweep, less the stale entries dropped
        # from the top since (an upper bound on the stale entries in the heap).
        self._heap: list[tuple[float, int, MemKey]] = []
        self._unswept = 0
        # The entry get_timer last found live at the top, and _unswept then: while both hold,
        # it is still live (every change that can make an entry stale counts in _unswept; the
        # count goes down only as the top entry leaves, which changes the top).
        self._top_live: tuple[float, int, MemKey] | None = None
        self._top_unswept = 0
        self._seq = 0
        self._tables: dict[str, dict[Any, Any]] = {
            _SENT: self._sent,
            _OWED: self._owed,
            _RECEIVED: self._received,
            _SEEN: self._seen,
            _VOLATILE: self._volatile,
            _PEER: self._peers,
        }
        # The tables of the working set, each least recently used first.
        self._recency: dict[str, OrderedDict[Any, Any]] = {_SENT: self._sent, _RECEIVED: self._received}
        if snapshot is not None:
            self._restore(snapshot, now)

    # --- outputs -------------------------------------------------------------------------------

    def next_event(self) -> TrackerEvent | None:
        """The next event, in the order their causes happened, or None."""
        return self._events.popleft() if self._events else None

    def writes_to_apply(self) -> list[StoreOp]:
        """Store operations produced since the last call; apply them in this order."""
        writes, self._writes = self._writes, []
        if self._queued_new:
            self._queued_new = {}
        if self._withdrawn:
            self._withdrawn = 0
            return [op for op in writes if op is not None]
        return cast("list[StoreOp]", writes)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        heap = self._heap
        if not heap:
            return None
        top = heap[0]
        if top is self._top_live and self._unswept == self._top_unswept:
            # Nothing went stale since this entry was found live (the UA asks after every input).
            return top[0]
        while heap and not self._live(*heap[0]):
            heapq.heappop(heap)
            self._popped_stale()
        if not heap:
            return None
        self._top_live, self._top_unswept = heap[0], self._unswept
        return heap[0][0]

    def handle_timer(self, now: float) -> None:
        """Run everything due at or before ``now``: expiries, retries, give-ups, housekeeping."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, tag, key = heapq.heappop(heap)
            if not self._live(when, tag, key):
                self._popped_stale()
                continue
            table = _TIMED_TABLES[tag & _TABLE_MASK]
            if table == _VOLATILE:
                self._delete(table, key)
            elif isinstance(key, tuple):
                # The received space. One entry may serve a dedup entry and a received record
                # with this deadline: its own table first (the order the two entries had before
                # they were merged).
                for name in (table, _RECEIVED if table == _SEEN else _SEEN):
                    if self._deadline(name, key) == when:
                        if name == _RECEIVED:
                            self._received_expired(key)
                        self._delete(name, key)
            elif table == _SENT:
                self._sent_due(self._sent[key], now)
            elif table == _OWED:
                self._owed_due(self._owed[key], now)
            else:
                self._delete(table, key)
        # Records that became idle since they were admitted leave memory now if over the cap.
        self._bound_working_set(now)

    def snapshot(self) -> Snapshot:
        """Everything a store fed :meth:`writes_to_apply` holds (for checks and exports).

        Dedup entries kept in memory only (messages owed no notification) are not in it.
        """
        return Snapshot(
            sent=tuple(self._sent.values()),
            owed=tuple(self._owed.values()),
            received=tuple(self._received.values()),
            seen=tuple(SeenRecord(key[0], key[1], dedup_status(entry), dedup_expiry(entry))
                       for key, entry in self._seen.items()),
            peers=tuple(self._peers.values()),
        )

    @property
    def tracked_sent(self) -> int:
        """Messages we sent that are still tracked (awaiting or remembering their notifications)."""
        return len(self._sent)

    @property
    def tracked_received(self) -> int:
        """Received messages remembered for their notifications (owed or still reportable)."""
        return len(self._received)

    @property
    def owed_count(self) -> int:
        """Notifications we owe and have not sent (or are retrying)."""
        return len(self._owed)

    # --- dedup bound ---------------------------------------------------------------------------

    @property
    def dedup_size(self) -> int:
        """How many (sender, Message-ID) pairs are remembered for dedup (at most ``dedup_max``)."""
        return len(self._seen) + len(self._volatile)

    @property
    def dedup_evictions(self) -> int:
        """How many dedup entries were forgotten before their time to stay under ``dedup_max``."""
        return self._dedup_evictions

    def _bound_dedup(self, now: float) -> None:
        """Evict the oldest dedup entries past ``dedup_max`` (a Delete for the stored ones)."""
        seen, volatile = self._seen, self._volatile
        excess = len(seen) + len(volatile) - self.config.dedup_max
        evicted = 0
        while excess > 0:
            first_seen = next(iter(seen.items()), None)
            first_volatile = next(iter(volatile.items()), None)
            if first_volatile is None or (
                first_seen is not None and dedup_expiry(first_seen[1]) <= dedup_expiry(first_volatile[1])
            ):
                assert first_seen is not None
                key = first_seen[0]
                del seen[key]
                self._writes.append(Delete(_SEEN, _store_key(key)))
            else:
                key = first_volatile[0]
                del volatile[key]
            self._unswept += 1  # its timer entry is stale now
            excess -= 1
            self._dedup_evictions += 1
            evicted += 1
        due = self._dedup_evictions_log.add(now, evicted)
        if due is not None:
            _log.warning(
                "dedup table full (dedup_max=%d): forgot the %d oldest entries since the last report, "
                "%d in all; a copy of a message older than the window will reach the application again",
                self.config.dedup_max,
                due,
                self._dedup_evictions,
            )

    # --- peers ---------------------------------------------------------------------------------

    def peer_flags(self, uri: str) -> frozenset[str]:
        """Flags remembered for the peer at ``uri`` (empty if none)."""
        record = self._peers.get(self._key(uri) or uri)
        return frozenset(record.flags) if record is not None else frozenset()

    def _peer_refuses_imdn(self, uri: str) -> bool:
        """``PEER_NO_IMDN in self.peer_flags(uri)``, without the set (asked for every message)."""
        peers = self._peers
        if not peers:
            return False
        record = peers.get(self._key(uri) or uri)
        return record is not None and PEER_NO_IMDN in record.flags

    def set_peer_flag(self, uri: str, flag: str, on: bool, now: float) -> None:
        """Remember (or forget) a capability flag of the peer at ``uri``."""
        key = self._key(uri) or uri
        flags = set(self.peer_flags(uri))
        flags.add(flag) if on else flags.discard(flag)
        if flags:
            self._put(PeerRecord(key, tuple(sorted(flags)), now, now + self.config.peer_flag_ttl))
        elif key in self._peers:
            self._delete(_PEER, key)

    # --- hooks of the two sides (called by handle_timer and _restore) --------------------------

    def _sent_due(self, record: SentRecord, now: float) -> None:
        """A sent message reached its tracking deadline (the sender side ends it)."""
        raise NotImplementedError

    def _owed_due(self, owed: OwedRecord, now: float) -> None:
        """An owed notification is due: send, retry or give up (the receiver side decides)."""
        raise NotImplementedError

    def _received_expired(self, key: tuple[str, str]) -> None:
        """A received record is about to expire (the receiver side forgets its receipt)."""
        raise NotImplementedError

    def _bound_working_set(self, now: float, *, scan: int = 32) -> None:
        """Leave idle records to the store past ``working_set_max``, looking at ``scan`` records
        of each table at most (see :mod:`.workingset`)."""
        raise NotImplementedError

    def _dispatch(self, owed: OwedRecord, now: float) -> None:
        """Hand out the next attempt of an owed notification."""
        self._hand_out(
            evolve(
                owed,
                attempts=owed.attempts + 1,
                in_flight=True,
                next_attempt_at=now + self.config.in_flight_timeout,
            )
        )

    def _hand_out(self, owed: OwedRecord) -> None:
        """Keep ``owed``, an attempt just started, and report it (or hold the report, see
        :meth:`_held_behind_answer`)."""
        self._put(owed)
        event = NotificationOwed(owed)
        held = self._held_behind_answer(owed)
        if held is None:
            self._events.append(event)
        else:
            held.append(event)

    def _held_behind_answer(self, owed: OwedRecord) -> list[NotificationOwed] | None:
        """Where to keep the report of ``owed`` until its message's answer is on the wire, or
        None to report it now (the receiver side knows answers; see its override)."""
        return None

    # --- bookkeeping ---------------------------------------------------------------------------

    def _key(self, uri: str | None) -> str | None:
        key = identity_key(uri, compare_ports=self.config.compare_ports)
        # The cache hands back the first equal string it was given, maybe another message's
        # that is gone by now; the caller's own (kept in its record) is the one to share.
        return uri if key is not uri and key == uri and type(uri) is str else key

    def _emit(self, event: TrackerEvent) -> None:
        self._events.append(event)

    def _deadline(self, table: str, key: MemKey) -> float | None:
        record = self._tables[table].get(key)
        return None if record is None else _deadline_of(record)

    def _live(self, when: float, tag: int, key: MemKey) -> bool:
        """Whether a timer entry still stands for a record (else it is stale and skipped)."""
        table = _TIMED_TABLES[tag & _TABLE_MASK]
        if self._deadline(table, key) == when:
            return True
        # A dedup entry and a received record of one key and deadline share one entry.
        return (
            table in _RECEIVED_SPACE and self._deadline(_RECEIVED if table == _SEEN else _SEEN, key) == when
        )

    def _put(
        self, record: AnyRecord, *, write: bool = True, key: MemKey | None = None, table: str | None = None
    ) -> None:
        """Store ``record`` in its table (or ``table``); ``key`` (equal to its memory key) shares that key."""
        name = table or record.TABLE
        entries = self._tables[name]
        if key is None:
            key = _mem_key(record)
        old = entries.get(key)
        if isinstance(record, SeenRecord):  # kept as a DedupEntry, not as its record
            entries[key] = dedup_entry(record.status, record.expires_at)
        else:
            entries[key] = record
        if old is None:
            if isinstance(record, ReceivedRecord) and isinstance(key, tuple):
                self._index_received(record.message_id, key)
            elif isinstance(record, OwedRecord):
                owner = (record.sender_key, record.message_id)
                self._owed_for[owner] = self._owed_for.get(owner, 0) + 1
        else:
            recency = self._recency.get(name)
            if recency is not None:
                recency.move_to_end(key)  # used just now: the last to leave memory
        if write and name != _VOLATILE:
            if name == _RECEIVED:
                self._queue_received(key, old is None, Put(record))
            else:
                self._writes.append(Put(record))
        deadline = _deadline_of(record)
        if old is not None:
            if _deadline_of(old) == deadline:
                return
            self._unswept += 1
        if name in _RECEIVED_SPACE:
            # The dedup entry and the received record of one message usually expire together:
            # the timer entry of the one already there serves both (memory per tracked message).
            other = self._deadline(_RECEIVED if name == _SEEN else _SEEN, key)
            if other == deadline:
                return
        self._push(deadline, name, key)

    def _popped_stale(self) -> None:
        """A stale entry left the heap from the top: one fewer for the next sweep to drop. (In
        a steady flow most go this way, the oldest first: notifications acknowledged within
        their in-flight timeout, dedup entries evicted oldest first at ``dedup_max``; counted
        out, they no longer bring a sweep of the whole heap every few thousand messages.)"""
        if self._unswept:
            self._unswept -= 1

    def _push(self, deadline: float, table: str, key: MemKey) -> None:
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq << _TABLE_BITS | _TABLE_CODE[table], key))
        if self._unswept * 4 > len(heap) > _HEAP_SWEEP_MIN:
            # Entries of records deleted or rescheduled long before their deadline (notifications
            # acknowledged at once, messages settled early) would otherwise stay until then. The
            # sweep keeps the live ones, whose (deadline, tag) order is unchanged. It runs after
            # at least a quarter of the heap's length in deletions and reschedules since the
            # last one (never during a restore, which deletes nothing): amortised O(1) each.
            live = self._live
            heap[:] = [entry for entry in heap if live(*entry)]
            heapq.heapify(heap)
            self._unswept = 0
            self._top_live = None

    def _index_received(self, message_id: str, key: tuple[str, str]) -> None:
        index = self._received_by_id
        if index is None:  # not built: the first lookup without the sender builds it
            return
        keys = index.get(message_id)
        if keys is None:
            index[message_id] = key
        elif isinstance(keys, tuple):
            if keys != key:
                index[message_id] = [keys, key]
        elif key not in keys:
            keys.append(key)

    def _owed_gone(self, owed: OwedRecord) -> None:
        """``owed`` left the owed table: one notification fewer keeps its message in memory."""
        owner = (owed.sender_key, owed.message_id)
        left = self._owed_for.pop(owner, 1) - 1
        if left > 0:
            self._owed_for[owner] = left

    def _unindex_received(self, message_id: str, key: MemKey) -> None:
        index = self._received_by_id
        if index is None:
            return
        if index.get(message_id) == key:  # one sender used this Message-ID: the usual case
            del index[message_id]
            return
        rest = [k for k in self._received_keys(message_id) if k != key]
        if len(rest) > 1:
            index[message_id] = rest
        elif rest:
            index[message_id] = rest[0]
        else:
            index.pop(message_id, None)

    def _received_keys(self, message_id: str) -> list[tuple[str, str]]:
        """The keys of the received records (in memory) with this Message-ID."""
        index = self._received_by_id
        if index is None:
            # First lookup without the sender: index what is held now (one pass; from here on
            # every record coming or going updates it).
            index = self._received_by_id = {}
            for key in self._received:
                self._index_received(key[1], key)
        keys = index.get(message_id)
        if keys is None:
            return []
        return [keys] if isinstance(keys, tuple) else list(keys)

    def _delete(self, table: str, key: MemKey) -> None:
        record = self._tables[table].pop(key, None)
        if record is None:
            return
        if table not in _RECEIVED_SPACE or self._deadline(
            _RECEIVED if table == _SEEN else _SEEN, key
        ) != _deadline_of(record):
            # Its timer entry is stale now, unless it also serves the message's other record.
            self._unswept += 1
        if isinstance(record, ReceivedRecord):
            self._unindex_received(record.message_id, key)
        elif isinstance(record, OwedRecord):
            self._owed_gone(record)
        if table == _RECEIVED:
            index = self._queued_new.pop(key, None)
            if index is not None:  # created since the last hand-out: the store never had it
                self._writes[index] = None
                self._withdrawn += 1
                return
        if table not in (_SEEN, _VOLATILE):
            # An expired dedup entry needs no Delete: the store skips it on load and purge drops it.
            self._writes.append(Delete(table, _store_key(key)))

    def _queue_received(self, key: MemKey, new: bool, put: Put) -> None:
        """Queue the Put of a received record; ``new``: it was not in memory before."""
        index = self._queued_new.get(key)
        if index is not None:
            self._writes[index] = put  # still the store's first sight of it: one Put is enough
        elif new and not self._reads_back:
            # Absent from memory and nothing ever left memory for the store (working set,
            # partial resume): the store does not hold it either.
            self._queued_new[key] = len(self._writes)
            self._writes.append(put)
        else:
            self._writes.append(put)

    def _restore(self, snapshot: Snapshot, now: float) -> None:
        records: list[AnyRecord] = [*snapshot.sent, *snapshot.received, *snapshot.seen, *snapshot.peers]
        # A message's received record and dedup entry have equal keys: one object for both (the
        # table slots, the Message-ID index and the timer entry all hold it).
        keys: dict[MemKey, MemKey] = {}
        for record in records:
            key = _mem_key(record)
            self._put(record, write=False, key=keys.setdefault(key, key))
        for stored in sorted(snapshot.owed, key=lambda o: o.created_at):
            # Handed out before the restart but never acknowledged: due again now. The peer
            # recognises the resend by its unchanged Message-ID.
            owed = evolve(stored, in_flight=False, next_attempt_at=now) if stored.in_flight else stored
            if owed.next_attempt_at <= now < owed.expires_at:
                self._dispatch(owed, now)
            else:
                self._put(owed, write=False)
        # A store written with a larger cap (or none) is trimmed to this one; so is the
        # working set, when the store gave more than it holds.
        self._bound_dedup(now)
        self._bound_working_set(now, scan=len(self._received) + len(self._sent))


def _mem_key(record: AnyRecord) -> MemKey:
    """The key of ``record`` in the tracker's tables (see :data:`MemKey`)."""
    if isinstance(record, (ReceivedRecord, SeenRecord)):
        return (record.sender_key, record.message_id)
    return record.key


def _deadline_of(record: AnyRecord | DedupEntry) -> float:
    if isinstance(record, (tuple, float, int)):  # a dedup entry
        return dedup_expiry(record)
    if isinstance(record, OwedRecord):
        return min(record.next_attempt_at, record.expires_at)
    if isinstance(record, SentRecord):
        return record.deadline
    return record.expires_at
