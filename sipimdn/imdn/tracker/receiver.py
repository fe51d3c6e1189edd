"""The receiver side of the tracker: what we received and the notifications we owe (RFC 5438 §7.2).

**Dedup.** :meth:`~ReceiverSide.record_received` remembers every received
message by (sender, Message-ID) for ``dedup_ttl``: a copy sent again in a
new transaction is answered with the first copy's status, never handed up
twice. Messages owed a notification keep that entry in the store (their
notification survives a restart, so must their dedup); the others keep it
in memory only. At most ``dedup_max`` entries are kept in all: past it the
oldest are evicted (counted in ``dedup_evictions``, logged at most once a
minute, removed from the store), so a peer sending fresh Message-IDs cannot
grow memory or the store without bound; a copy older than that window
reaches the application again. Plain-text messages have no Message-ID: they are
remembered by sender and SIP transaction identity
(:meth:`~ReceiverSide.record_plain`), in memory, bounded.

**One received message** that asked for notifications (after policy) goes
through the states of :data:`RECEIVER_TRANSITIONS`:

``deciding``
    recorded, the application is deciding the answer. A report made now
    (``mark_displayed`` inside the handler) is decided at once, with the
    same rules as after the answer, and kept; it is owed if the answer is a
    2xx and dropped otherwise (RFC 5438 §7.2.1.1: nothing after a non-2xx).
``answering``
    answered 2xx, the answer not yet on the wire (the adapter waits for the
    store first). The notifications the answer made owed (the kept reports,
    the automatic ``delivered``, display ``forbidden`` by policy) and any
    reported meanwhile are owed and written, but their
    :class:`~.events.NotificationOwed` events are held, so no notification
    overtakes the answer (RFC 5438 §7.2.1.1, §7.2.1.2).
``open``
    answered 2xx and sent: a report is owed and handed out at once. The
    record is dropped as soon as every requested notification is owed or
    declined, and at ``received_ttl``.
``closed``
    answered non-2xx, settled or expired: nothing more is ever owed.

A notification owed becomes an :class:`~sipimdn.store.base.OwedRecord`,
handed out as :class:`~.events.NotificationOwed` and retried with
exponential backoff on timeout, 408 and 5xx until acknowledged or given up:
that is :mod:`.dispatch`'s job (:class:`ReceiverSide` builds on its
:class:`~.dispatch.DispatchSide`). The loop guard (RFC 5438 §7.2.1: never
notify a notification), IMDN-Record-Route trust and cap, anonymous senders
(§12.1.1) and display privacy (§14.2) are enforced here; the budgets that
keep us from being a reflector (§14: a count and a byte budget per
destination address, a silent destination parked; see :mod:`.destinations`)
in :mod:`.dispatch`. Both report what they refuse as
:class:`~.events.NotificationsDeclined`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

from ...errors import LocalProtocolError
from ..vocabulary import (
    ALLOWED_STATUSES,
    RECIPIENT_REQUESTS,
    DisplayPolicy,
    Kind,
    notification_kind,
    was_requested,
)
from ._base import (
    _RECEIVED,
    _SEEN,
    _VOLATILE,
    DedupEntry,
    dedup_entry,
    dedup_expiry,
    dedup_status,
    shared_kinds,
    token,
)
from .dispatch import DispatchSide
from .events import (
    DeclineReason,
    NotificationOwed,
    NotificationsDeclined,
    Reception,
)
from .identity import is_anonymous
from .records import OwedRecord, Put, ReceivedRecord, SeenRecord, evolve

__all__ = ["RECEIVER_TRANSITIONS", "ReceiptInput", "ReceiptState", "ReceiverSide"]


class ReceiptState(StrEnum):
    """Where one received message that asked for notifications stands (see the module docstring)."""

    #: Recorded; the answer is being decided. Reports are decided and kept.
    DECIDING = "deciding"
    #: Answered 2xx, the answer not yet sent: notifications owed, their hand-out held.
    ANSWERING = "answering"
    #: Answered 2xx and sent: reports are owed and handed out at once.
    OPEN = "open"
    #: Answered non-2xx, settled or expired: nothing is owed any more.
    CLOSED = "closed"


class ReceiptInput(StrEnum):
    """What can happen to a received message that asked for notifications."""

    #: The application reports an outcome (``mark_displayed``, ``report_disposition``).
    REPORT = "report"
    #: We decided a 2xx answer.
    ANSWER_2XX = "answer-2xx"
    #: We decided a non-2xx answer.
    ANSWER_FAILURE = "answer-failure"
    #: The 2xx answer is on the wire.
    ANSWER_SENT = "answer-sent"
    #: ``received_ttl`` passed.
    EXPIRE = "expire"


_D, _AN, _O, _C = ReceiptState.DECIDING, ReceiptState.ANSWERING, ReceiptState.OPEN, ReceiptState.CLOSED

#: The receiver-side state machine: ``(state, input) -> next state``. A pair not listed is
#: refused: a report in ``closed`` owes nothing (or raises after a non-2xx answer), a second
#: answer or a stray ``answer_sent`` changes nothing.
RECEIVER_TRANSITIONS: Mapping[tuple[ReceiptState, ReceiptInput], ReceiptState] = {
    (_D, ReceiptInput.REPORT): _D,
    (_D, ReceiptInput.ANSWER_2XX): _AN,
    (_D, ReceiptInput.ANSWER_FAILURE): _C,
    (_D, ReceiptInput.EXPIRE): _C,
    (_AN, ReceiptInput.REPORT): _AN,
    (_AN, ReceiptInput.ANSWER_SENT): _O,
    (_O, ReceiptInput.REPORT): _O,
    (_O, ReceiptInput.EXPIRE): _C,
}

#: Where a 2xx answer leads from ``deciding`` (looked up once: the answer is on the hot path).
_AFTER_2XX = RECEIVER_TRANSITIONS[_D, ReceiptInput.ANSWER_2XX]
#: No reports made before the answer (shared, never changed).
_NO_EARLY: Mapping[str, OwedRecord | None] = {}
#: ``delivery_owed``/``display_owed`` value of a notification refused by policy or rate limit.
_DECLINED = "declined"
#: Most distinct CPIM To / Original-To strings kept for sharing between received records.
_COMMON_TEXTS_MAX = 256
_NO_REQUEST = Reception(duplicate=False, previous_status=None, requested=())
#: Each display policy's text (an enum member's ``value`` is a property lookup: once per message).
_POLICY_TEXT: Mapping[DisplayPolicy, str] = {policy: policy.value for policy in DisplayPolicy}


class Receipt:
    """What the tracker keeps, in memory only, about a message in ``deciding`` or ``answering``.

    Made only when needed: a report before the answer, or a 2xx answer not yet sent.
    """

    __slots__ = ("early", "held", "state")

    def __init__(self, state: ReceiptState) -> None:
        self.state = state
        #: Reports decided before the answer, by kind: the notification to owe, or None if declined.
        self.early: dict[str, OwedRecord | None] = {}
        #: Hand-outs held until the answer is sent.
        self.held: list[NotificationOwed] = []


class ReceiverSide(DispatchSide):
    """Record received messages, their answers and reports; owe the notifications they ask for
    (handed out, retried and abandoned by :class:`~.dispatch.DispatchSide`)."""

    # --- received messages ---------------------------------------------------------------------

    def record_received(
        self,
        *,
        message_id: str,
        sender: str,
        now: float,
        requested: Iterable[object] = (),
        sip_from: str | None = None,
        recipient: str | None = None,
        original_recipient: str | None = None,
        datetime: str | None = None,
        subject: str | None = None,
        imdn_route: Sequence[str] = (),
        route_trusted: bool | None = None,
        is_notification: bool = False,
        display_policy: object | None = None,
    ) -> Reception:
        """Remember a received message before it is handed to the application.

        ``sender`` is its CPIM From (or SIP From for a bare message),
        ``requested`` its Disposition-Notification tokens (unknown ones are
        ignored, RFC 5438 §6.2), ``imdn_route`` its IMDN-Record-Route values in
        order, ``recipient`` its CPIM To, ``datetime`` its raw DateTime.
        ``is_notification`` marks an IMDN (never owed anything, §7.2.1). The same
        ``sender`` string names the message in later calls
        (:meth:`message_answered`, :meth:`mark_displayed`, :meth:`report_disposition`).
        """
        key = (self._sender_key(sender), message_id)
        duplicate = self._duplicate(key)
        if duplicate is not None:
            return duplicate
        reception = self._record_new(
            key, message_id, sender, now, requested, sip_from, recipient, original_recipient, datetime,
            subject, imdn_route, route_trusted, is_notification, display_policy,
        )
        self._bound_dedup(now)
        self._bound_working_set(now)
        return reception

    def record_unrequested(self, message_id: str, sender: str, now: float) -> Reception:
        """:meth:`record_received` for a message that requests no notification a recipient
        sends (no ``requested`` token among ``positive-delivery``, ``negative-delivery`` and
        ``display``): the same result and effects (dedup of copies sent again, in memory
        only, no event, no store write), through the short route such a message takes, with
        none of the arguments it does not need. The other arguments of
        :meth:`record_received` only matter when something may be owed."""
        # With nothing requested, record_received takes that short route itself (no sort, no
        # policy): one path for the dedup entry and the bounds, not two.
        return self.record_received(message_id=message_id, sender=sender, now=now)

    def _duplicate(self, key: tuple[str, str]) -> Reception | None:
        """The reception of a copy of a message already received, or None for a new one."""
        seen = self._dedup_entry(key)
        if seen is not None:
            return Reception(duplicate=True, previous_status=dedup_status(seen), requested=())
        known = self._received.get(key)
        if known is not None:
            # Its dedup entry was evicted (dedup_max) but the message still awaits notifications:
            # still a duplicate, never a second set of notifications.
            return Reception(duplicate=True, previous_status=known.answered_status, requested=())
        return None

    def _dedup_entry(self, key: tuple[str, str]) -> DedupEntry | None:
        """The dedup entry of ``key``, stored or in memory only, or None."""
        # Not ``a or b``: an entry may be a bare expiry time (see DedupEntry), 0.0 on some clock.
        seen = self._seen.get(key)
        return self._volatile.get(key) if seen is None else seen

    def _remember_unrequested(self, key: tuple[str, str], now: float) -> None:
        """A new message owed nothing: its dedup entry lives in memory only (see the module
        docstring). New (no dedup entry yet), it needs only its table slot and its timer."""
        expiry = now + self.config.dedup_ttl
        self._volatile[key] = (None, expiry)  # a DedupEntry, not answered yet
        self._push(expiry, _VOLATILE, key)

    def _record_new(  # noqa: PLR0917 - the arguments of record_received, one call site
        self,
        key: tuple[str, str],
        message_id: str,
        sender: str,
        now: float,
        requested: Iterable[object],
        sip_from: str | None,
        recipient: str | None,
        original_recipient: str | None,
        datetime: str | None,
        subject: str | None,
        imdn_route: Sequence[str],
        route_trusted: bool | None,
        is_notification: bool,
        display_policy: object | None,
    ) -> Reception:
        sender_key = key[0]
        dedup_expiry = now + self.config.dedup_ttl
        kinds = sorted({token(k) for k in requested} & RECIPIENT_REQUESTS) if requested else []
        policy = self._admit_requests(
            message_id, sender, kinds, sip_from, imdn_route, route_trusted, is_notification, display_policy
        )
        if policy is None:
            self._remember_unrequested(key, now)
            return _NO_REQUEST
        route, display = policy
        # The key is made once here and shared by the dedup entry, the received record's table
        # slot, the Message-ID index and their timer (memory per tracked message). Both records
        # are new (record_received found neither): what TrackerCore._put would do for them,
        # without its general checks. In memory the dedup entry is a DedupEntry (nothing the
        # collector tracks); the record is built for the store write only.
        self._seen[key] = (None, dedup_expiry)
        self._writes.append(Put(SeenRecord(sender_key, message_id, None, dedup_expiry)))
        self._push(dedup_expiry, _SEEN, key)
        requested_kinds = shared_kinds(kinds)
        # With the default TTLs both entries expire together: one float object, and one timer
        # entry serves both (see TrackerCore._put).
        received_expiry = (
            dedup_expiry
            if self.config.received_ttl == self.config.dedup_ttl
            else now + self.config.received_ttl
        )
        # The SIP From is often the very text of the CPIM From or of its key: one object, not
        # two. The CPIM To and Original-To name us (or a list of ours): the same few values
        # for every message, each kept once (memory per tracked message).
        if sip_from == sender:
            sip_from = sender
        elif sip_from == sender_key:
            sip_from = sender_key
        record = ReceivedRecord(
            message_id=message_id,
            sender_key=sender_key,
            sender=sender,
            sip_from=sip_from,
            recipient=self._common_text(recipient),
            original_recipient=self._common_text(original_recipient),
            datetime=datetime,
            subject=subject,
            requested=requested_kinds,
            imdn_route=route,
            answered_status=None,
            delivery_owed=None,
            display_owed=None,
            display_policy=_POLICY_TEXT[display],
            received_at=now,
            expires_at=received_expiry,
        )
        self._received[key] = record
        self._index_received(message_id, key)
        self._queue_received(key, True, Put(record))
        if received_expiry != dedup_expiry:  # else the dedup entry's timer serves both
            self._push(received_expiry, _RECEIVED, key)
        return Reception(duplicate=False, previous_status=None, requested=requested_kinds)

    def _admit_requests(  # noqa: PLR0917 - one call site, the arguments of record_received
        self,
        message_id: str,
        sender: str,
        kinds: list[str],
        sip_from: str | None,
        imdn_route: Sequence[str],
        route_trusted: bool | None,
        is_notification: bool,
        display_policy: object | None,
    ) -> tuple[tuple[str, ...], DisplayPolicy] | None:
        """Apply policy to the requests of a new message: ``(route, display policy)``, or None if
        nothing can be owed. ``kinds`` loses what policy refuses (in place)."""
        if not kinds:
            return None

        def decline(which: Sequence[str], reason: DeclineReason) -> None:
            self._emit(NotificationsDeclined(message_id, sender, tuple(which), reason))

        if is_notification:
            decline(kinds, DeclineReason.LOOP_GUARD)
            return None
        # RCS clients put an anonymous CPIM From on messages whose SIP From is real: the SIP
        # identity decides, and it is also where the IMDN is routed.
        if self.config.decline_anonymous and is_anonymous(sip_from if sip_from else sender):
            decline(kinds, DeclineReason.ANONYMOUS)
            return None
        route = tuple(imdn_route)
        trusted = self.config.trust_imdn_route if route_trusted is None else route_trusted
        if route and not trusted:
            decline(kinds, DeclineReason.ROUTE_UNTRUSTED)
            route = ()
        elif len(route) > self.config.max_imdn_route:
            decline(kinds, DeclineReason.ROUTE_TOO_LONG)
            route = ()
        target = route[0] if route else (sip_from or sender)
        if self._peer_refuses_imdn(target):
            decline(kinds, DeclineReason.PEER_REFUSES_IMDN)
            return None
        policy = DisplayPolicy(token(display_policy)) if display_policy is not None else None
        policy = policy or self.config.display_policy
        if "display" in kinds and policy is DisplayPolicy.SILENT:
            decline(["display"], DeclineReason.PRIVACY)
            kinds.remove("display")
            if not kinds:
                return None
        return route, policy

    def record_plain(self, sender: str, transaction: str, now: float) -> Reception:
        """Remember a received message without Message-ID (plain text) by its SIP transaction.

        ``transaction`` identifies the request (Call-ID, From tag and CSeq
        number; never the Call-ID alone, which some peers reuse across
        MESSAGEs). Kept in memory, at most ``plain_dedup_capacity`` entries
        for ``plain_dedup_ttl``; nothing is ever owed for such a message.
        """
        entries = self._plain
        while entries:
            first, (expiry, _) = next(iter(entries.items()))
            if expiry > now:
                break
            del entries[first]
        key = (sender, transaction)
        entry = entries.get(key)
        if entry is not None:
            return Reception(duplicate=True, previous_status=entry[1], requested=())
        entries[key] = (now + self.config.plain_dedup_ttl, None)
        if len(entries) > self.config.plain_dedup_capacity:
            entries.popitem(last=False)
        return _NO_REQUEST

    def plain_answered(self, sender: str, transaction: str, status_code: int) -> None:
        """Record the final status answered to a plain-text message (see :meth:`record_plain`).

        A 2xx or 6xx is what a copy sent again gets too; any other answer
        means "not delivered", so a later copy is a fresh attempt.
        """
        key = (sender, transaction)
        entry = self._plain.get(key)
        if entry is None:
            return
        if 200 <= status_code < 300 or status_code >= 600:
            self._plain[key] = (entry[0], status_code)
        else:
            del self._plain[key]

    def message_answered(
        self, message_id: str, sender: str, status_code: int, now: float, *, sent: bool = True
    ) -> bool:
        """Record the final status we answer; a 2xx makes the notifications due at once owed.

        ``sender`` is the same value given to :meth:`record_received`. With
        ``sent=False`` the answer is not on the wire yet: the notifications
        owed are written but their hand-out waits for :meth:`answer_sent`.
        Returns True when it does (apply :meth:`writes_to_apply` before
        sending the answer, so what the answer commits us to survives a
        crash). Raises :class:`~sipimdn.errors.LocalProtocolError` for a
        provisional status.
        """
        if status_code < 200:
            raise LocalProtocolError(f"{status_code} is not a final status")
        key = (self._sender_key(sender), message_id)
        seen = self._seen.get(key)
        if seen is not None and dedup_status(seen) is None:
            # Same deadline, so the same timer entry: what TrackerCore._put would do is the new
            # value in its slot and the store write of the record.
            expires_at = dedup_expiry(seen)
            self._seen[key] = dedup_entry(status_code, expires_at)
            self._writes.append(Put(SeenRecord(key[0], key[1], status_code, expires_at)))
        else:
            volatile = self._volatile.get(key)
            if volatile is not None and dedup_status(volatile) is None:
                # In memory only, same deadline: the new value in its slot is all there is to do.
                self._volatile[key] = dedup_entry(status_code, dedup_expiry(volatile))
        record = self._received.get(key)
        if record is None or record.answered_status is not None:
            return False
        # Deciding (the record is not answered yet): the receipt, if any, holds early reports.
        receipt = self._receipts.pop(key, None)
        if status_code >= 300:
            # deciding -> closed. RFC 5438 §7.2.1.1: after a non-2xx answer no delivery
            # notification of any kind; the early reports are dropped with the record.
            self._delete(ReceivedRecord.TABLE, key)
            return False
        early = receipt.early if receipt is not None else _NO_EARLY
        if not sent:
            # Answering: every notification handed out from here on waits in the receipt until
            # answer_sent (see _held_behind_answer).
            self._receipts[key] = Receipt(_AFTER_2XX)
        delivery_owed, display_owed = record.delivery_owed, record.display_owed
        requested = record.requested
        if Kind.DELIVERY in early:
            delivery_owed = self._commit_owed(early[Kind.DELIVERY], now)
        elif "positive-delivery" in requested and self.config.auto_delivered:
            # RFC 5438 §7.2.1.1: a 2xx says the message reached us; an explicit report made
            # before the answer replaces this automatic one.
            delivery_owed = self._owe(record, Kind.DELIVERY, "delivered", now)
        if Kind.DISPLAY in early:
            display_owed = self._commit_owed(early[Kind.DISPLAY], now)
        elif "display" in requested and record.display_policy == DisplayPolicy.FORBIDDEN:
            display_owed = self._owe(record, Kind.DISPLAY, "forbidden", now)
        if _still_open(requested, delivery_owed, display_owed):
            answered = evolve(
                record, answered_status=status_code, delivery_owed=delivery_owed, display_owed=display_owed
            )
            self._put(answered, key=key)
        else:
            self._delete(ReceivedRecord.TABLE, key)
        return not sent

    def answer_sent(self, message_id: str, sender: str) -> None:
        """The 2xx recorded with ``message_answered(..., sent=False)`` is on the wire: hand out
        the notifications held behind it."""
        key = (self._sender_key(sender), message_id)
        receipt = self._receipts.get(key)
        if receipt is None or self._step(receipt.state, ReceiptInput.ANSWER_SENT) is None:
            return
        del self._receipts[key]
        self._events.extend(receipt.held)

    def _held_behind_answer(self, owed: OwedRecord) -> list[NotificationOwed] | None:
        # Whatever makes a notification due (its message's answer, a report, its destination
        # proven alive by the answer to an earlier IMDN, a waiting time), while its message's 2xx
        # is decided but not on the wire yet (the answer waits for the store) it waits behind
        # that 2xx: RFC 5438 §7.2.1.1 owes delivery notifications for a message accepted, and a
        # peer must not see the IMDN of a message whose 200 it has not had.
        if not self._receipts:
            return None
        receipt = self._receipts.get((owed.sender_key, owed.message_id))
        if receipt is not None and receipt.state is ReceiptState.ANSWERING:
            return receipt.held
        return None

    def mark_displayed(self, message_id: str, now: float, sender: str | None = None) -> OwedRecord | None:
        """The application showed the message: owe ``displayed`` if requested and the policy allows.

        Returns the owed notification, or None when nothing is owed (not
        requested, already owed, policy). Before the answer the decision is
        the same, and the notification is owed once the answer is a 2xx
        (RFC 5438 §7.2.1.2: display notifications follow a 2xx). Raises
        :class:`~sipimdn.errors.LocalProtocolError` if ``sender`` is needed to
        tell two messages apart.
        """
        record = self._find_received(message_id, sender)
        if record is None or "display" not in record.requested:
            return None
        if record.display_policy != DisplayPolicy.SEND:
            return None
        return self._report(record, Kind.DISPLAY, "displayed", now, strict=False)

    def report_disposition(
        self, message_id: str, kind: object, status: object, now: float, sender: str | None = None
    ) -> OwedRecord | None:
        """The application reports an outcome: owe the matching notification if it was requested.

        ``kind`` is ``delivery`` (``delivered``, ``failed``, ``forbidden``,
        ``error``) or ``display`` (``displayed``, ``forbidden``, ``error``).
        Returns the notification owed, or None when that notification was not
        requested (or display policy ``silent``, or the same was owed
        already). Before the answer the decision is the same and the
        notification is owed once the answer is a 2xx. Raises
        :class:`~sipimdn.errors.LocalProtocolError` for a bad kind or status,
        a message answered non-2xx (RFC 5438 §7.2.1.1), or a second,
        different notification of one type (RFC 5438 §7.2: one per type).
        """
        known = notification_kind(kind)
        status_text = token(status)
        if known is None or known is Kind.PROCESSING:
            # RFC 5438 §7.2: the recipient never generates processing notifications.
            raise LocalProtocolError(f"a recipient cannot send {token(kind)!r} notifications")
        if status_text not in ALLOWED_STATUSES[known]:
            raise LocalProtocolError(f"{status_text!r} is not a {known} status")
        record = self._find_received(message_id, sender)
        if record is None:
            if self._answered_non_2xx(message_id, sender):
                raise LocalProtocolError("the message was answered with a non-2xx status (RFC 5438 §7.2.1.1)")
            return None
        if not was_requested(record.requested, known, status_text):
            return None
        if known is Kind.DISPLAY and record.display_policy == DisplayPolicy.SILENT:
            return None
        return self._report(record, known, status_text, now, strict=True)

    def received(self, message_id: str, sender: str | None = None) -> ReceivedRecord | None:
        """A received message that may still be owed a notification, or None (also when its
        record left memory for the store: see :mod:`.workingset`)."""
        try:
            return self._find_received(message_id, sender)
        except LocalProtocolError:
            return None

    def receipt_state(self, message_id: str, sender: str) -> ReceiptState:
        """Where a received message stands (``closed`` also for one never recorded or owed nothing)."""
        key = (self._sender_key(sender), message_id)
        receipt = self._receipts.get(key)
        if receipt is not None:
            return ReceiptState(receipt.state)
        record = self._received.get(key)
        if record is None:
            return _C
        return _D if record.answered_status is None else _O

    def is_duplicate(self, message_id: str, sender: str) -> bool:
        """Whether (sender, Message-ID) was already received (without recording anything)."""
        key = (self._sender_key(sender), message_id)
        return key in self._seen or key in self._volatile

    # --- internals -----------------------------------------------------------------------------

    @staticmethod
    def _step(state: ReceiptState, step: ReceiptInput) -> ReceiptState | None:
        return RECEIVER_TRANSITIONS.get((state, step))

    def _report(
        self, record: ReceivedRecord, kind: Kind, status: str, now: float, *, strict: bool
    ) -> OwedRecord | None:
        """Owe (or, before the answer, decide and keep) one reported notification.

        ``strict``: a different notification of the same type already owed raises
        (``report_disposition``); otherwise it is simply not owed (``mark_displayed``).
        """
        key = (record.sender_key, record.message_id)
        receipt = self._receipts.get(key)
        if record.answered_status is None:
            # Deciding: the same rules now, the notification once the answer is a 2xx.
            if receipt is None:
                receipt = self._receipts[key] = Receipt(_D)
            if kind in receipt.early:
                kept = receipt.early[kind]
                already = _DECLINED if kept is None else kept.status
            elif kind is Kind.DISPLAY and record.display_policy == DisplayPolicy.FORBIDDEN:
                already = "forbidden"  # owed by policy with the 2xx
            else:
                already = None
        else:
            already = record.delivery_owed if kind is Kind.DELIVERY else record.display_owed
        if already is not None:
            if already in (status, _DECLINED) or not strict:
                return None
            raise LocalProtocolError(f"a {kind} notification ({already}) is already owed (RFC 5438 §7.2)")
        state = receipt.state if receipt is not None else _O
        if self._step(state, ReceiptInput.REPORT) is None:
            return None
        if state is _D:
            assert receipt is not None
            owed = self._new_owed(record, kind, status, now)
            receipt.early[kind] = owed
            return owed
        owed = self._new_owed(record, kind, status, now)
        record = self._commit(record, kind, owed, now)
        self._settle_received(record)
        return None if owed is None else self._owed.get(owed.notification_id)

    def _sender_key(self, sender: str) -> str:
        # From ``sender`` alone, so every later call naming the same sender finds the record.
        # A key holds no space, so the (sender key, Message-ID) pair stays unambiguous.
        key = self._key(sender)
        if key is None:
            key = "raw:" + sender.strip().replace("%", "%25").replace(" ", "%20")
        return key

    def _find_received(self, message_id: str, sender: str | None) -> ReceivedRecord | None:
        if sender is not None:
            return self._received.get((self._sender_key(sender), message_id))
        keys = self._received_keys(message_id)
        if len(keys) > 1:
            raise LocalProtocolError(f"several senders used Message-ID {message_id!r}: name the sender")
        return self._received[keys[0]] if keys else None

    def _answered_non_2xx(self, message_id: str, sender: str | None) -> bool:
        if sender is not None:
            key = (self._sender_key(sender), message_id)
            seen = self._dedup_entry(key)
            status = None if seen is None else dedup_status(seen)
            return status is not None and status >= 300
        return any(
            key[1] == message_id and (status := dedup_status(entry)) is not None and status >= 300
            for table in (self._seen, self._volatile)
            for key, entry in table.items()
        )

    def _common_text(self, text: str | None) -> str | None:
        """``text``, or the equal string kept from an earlier message (see record_received)."""
        if text is None:
            return None
        common = self._common
        kept = common.get(text)
        if kept is None:
            if len(common) >= _COMMON_TEXTS_MAX:
                # Peer-supplied, so bounded: a flood of distinct values costs a fresh start,
                # never unbounded memory.
                common.clear()
            kept = common[text] = text
        return kept

    def _owe(
        self,
        record: ReceivedRecord,
        kind: str,
        status: str,
        now: float,
    ) -> str:
        """Owe one notification now (or decline it): the status its type is marked used with."""
        owed = self._new_owed(record, kind, status, now, hand_out=True)
        return _DECLINED if owed is None else owed.status

    def _commit_owed(self, owed: OwedRecord | None, now: float) -> str:
        """Hand out ``owed`` (None: declined): the status its type is marked used with."""
        if owed is None:
            return _DECLINED
        self._dispatch(owed, now)
        return owed.status

    def _commit(
        self,
        record: ReceivedRecord,
        kind: str,
        owed: OwedRecord | None,
        now: float,
    ) -> ReceivedRecord:
        """Hand out ``owed`` (None: declined) and mark its type used on ``record``."""
        return _with_owed(record, kind, self._commit_owed(owed, now))

    def _settle_received(self, record: ReceivedRecord) -> None:
        """Keep a received record while a notification may still be owed for it."""
        if _still_open(record.requested, record.delivery_owed, record.display_owed):
            self._put(record)
        else:
            self._delete(ReceivedRecord.TABLE, (record.sender_key, record.message_id))

    def _received_expired(self, key: tuple[str, str]) -> None:
        receipt = self._receipts.get(key)
        if receipt is not None and self._step(receipt.state, ReceiptInput.EXPIRE) is not None:
            del self._receipts[key]


def _still_open(requested: tuple[str, ...], delivery_owed: str | None, display_owed: str | None) -> bool:
    """Whether a notification requested may still be owed (its type not owed nor declined yet)."""
    if delivery_owed is None and ("positive-delivery" in requested or "negative-delivery" in requested):
        return True
    return display_owed is None and "display" in requested


def _with_owed(record: ReceivedRecord, kind: str, status: str) -> ReceivedRecord:
    if kind == Kind.DELIVERY:
        return evolve(record, delivery_owed=status)
    return evolve(record, display_owed=status)
