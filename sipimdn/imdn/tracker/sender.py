"""The sender side of the tracker: what we sent and the notifications we await (RFC 5438 §7.1).

A message registered with :meth:`~SenderSide.register_sent` has one
:class:`~sipimdn.store.base.RecipientRecord` per intended recipient whose
main state follows :data:`TRANSITIONS`: ``pending -> accepted -> delivered
-> displayed`` or one of the terminal ``failed / forbidden / error /
expired / unsupported``. The table only ever moves forward; a missing ``(state, input)``
pair means "no change" (a late ``delivered`` after ``displayed`` is recorded
in ``.delivery`` and changes nothing). The final SIP response moves only
recipients still ``pending``, so a notification that overtook the response
(liblinphone sends its IMDN before its 200) still counts.

**Lists.** A recipient may be a URI list (RFC 5365) or another fan-out
point whose members we never learn in advance. A notification whose
``original-recipient-uri`` is an intended recipient and whose
``recipient-uri`` is someone else adds that member as its own entry (``via``
the list), with its own monotonic state and its own one-per-type guard; the
list's entry takes the first news of each type. Members are learnt only
from the list itself (the notification's sender is the list, or an
intermediary the message went through), or, once the recipient is known to
be a list (``register_sent(..., expect_members=True)``, or members already
reported through it), from a member speaking for itself. A third party
naming a one-to-one recipient as "the list it reached me through" is the
forged-member attack: rejected. From then on the message stays tracked
until its deadline (RFC 5438 §7.1.4: be ready for several IMDNs), because
nothing tells us how many members are still to report;
``expect_members=True`` says so from the start. The members of one message
are capped by ``TrackerConfig.max_recipients`` (``too-many-recipients``
beyond it), so a flood of members cannot grow one record without bound.

**Correlation and safety (RFC 5438 §7.1.2, §14.1).** A notification is
applied only when, in this order: its kind and status are valid together
(§5); its Message-ID is one we sent and still track (§7.1.2); it comes
from the recipient it is about (the identity a trusted proxy asserted,
RFC 3325 §9.1, else its SIP From or CPIM From), from the list
that recipient was reached through, or from a known intermediary of that
message (the ``recipient-uri`` / ``original-recipient-uri`` of the XML only
say *which* recipient: they are the sender's claim and never vouch for
it); its type was requested (§7.1.1); it is not a replay (same
notification Message-ID) nor a second notification of the same type for
the same recipient; and it is not a negative delivery after we saw a
non-2xx final response (§7.2.1.1: no negative delivery notification after a
failure response). Anything else becomes a
:class:`~.events.NotificationRejected` event and changes nothing; the user
agent answers 200 anyway, so a prober learns nothing. The unpredictable
Message-ID (§14.1) and the origin check together are what stand between a
third party and a recipient's state: identities in a notification are not
authenticated unless the network asserts them (§14). Where a trusted proxy
does (``asserted_identity``, RFC 3325 §9.1), that identity alone is the
sender: a notification naming the recipient in its From but asserted for a
third party is rejected, and one asserted for the recipient is accepted
whatever its From says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum

from ...errors import LocalProtocolError
from ..vocabulary import (
    ALLOWED_STATUSES,
    REQUEST_KINDS,
    TERMINAL_STATES,
    DispositionState,
    notification_kind,
    was_requested,
)
from ._base import TrackerCore, shared_kinds, token
from .events import (
    DispositionChanged,
    NotificationAccepted,
    NotificationRejected,
    RejectReason,
    TrackingEnded,
)
from .records import Put, RecipientRecord, SentRecord, evolve

__all__ = ["TRANSITIONS", "SenderInput", "SenderSide"]


class SenderInput(Enum):
    """What can happen to one recipient's disposition."""

    SIP_OK = "sip-2xx"
    SIP_FAIL = "sip-failure"
    DELIVERED = ("delivery", "delivered")
    DELIVERY_FAILED = ("delivery", "failed")
    DELIVERY_FORBIDDEN = ("delivery", "forbidden")
    DELIVERY_ERROR = ("delivery", "error")
    DISPLAYED = ("display", "displayed")
    DISPLAY_FORBIDDEN = ("display", "forbidden")
    DISPLAY_ERROR = ("display", "error")
    EXPIRE = "expire"
    #: A 2xx to a message that requested notifications but went out without CPIM.
    SIP_OK_WITHOUT_CPIM = "sip-2xx-without-cpim"


_P, _A, _DV, _DS = (
    DispositionState.PENDING,
    DispositionState.ACCEPTED,
    DispositionState.DELIVERED,
    DispositionState.DISPLAYED,
)
_F, _FB, _E, _X, _U = (
    DispositionState.FAILED,
    DispositionState.FORBIDDEN,
    DispositionState.ERROR,
    DispositionState.EXPIRED,
    DispositionState.UNSUPPORTED,
)

#: The whole sender-side state machine: ``(state, input) -> next state``.
#: A pair that is not listed changes nothing. Terminal states list nothing.
#: Display ``forbidden``/``error`` end the recipient even after ``delivered``:
#: the delivery outcome stays readable in ``RecipientRecord.delivery``.
TRANSITIONS: Mapping[tuple[DispositionState, SenderInput], DispositionState] = {
    (_P, SenderInput.SIP_OK): _A,
    (_P, SenderInput.SIP_FAIL): _F,
    (_P, SenderInput.SIP_OK_WITHOUT_CPIM): _U,
    (_P, SenderInput.DELIVERED): _DV,
    (_P, SenderInput.DELIVERY_FAILED): _F,
    (_P, SenderInput.DELIVERY_FORBIDDEN): _FB,
    (_P, SenderInput.DELIVERY_ERROR): _E,
    (_P, SenderInput.DISPLAYED): _DS,
    (_P, SenderInput.DISPLAY_FORBIDDEN): _FB,
    (_P, SenderInput.DISPLAY_ERROR): _E,
    (_P, SenderInput.EXPIRE): _X,
    (_A, SenderInput.DELIVERED): _DV,
    (_A, SenderInput.DELIVERY_FAILED): _F,
    (_A, SenderInput.DELIVERY_FORBIDDEN): _FB,
    (_A, SenderInput.DELIVERY_ERROR): _E,
    (_A, SenderInput.DISPLAYED): _DS,
    (_A, SenderInput.DISPLAY_FORBIDDEN): _FB,
    (_A, SenderInput.DISPLAY_ERROR): _E,
    (_A, SenderInput.EXPIRE): _X,
    (_DV, SenderInput.DISPLAYED): _DS,
    (_DV, SenderInput.DISPLAY_FORBIDDEN): _FB,
    (_DV, SenderInput.DISPLAY_ERROR): _E,
}

_NOTIFICATION_INPUTS: Mapping[tuple[str, str], SenderInput] = {
    member.value: member for member in SenderInput if isinstance(member.value, tuple)
}


_POSITIVE = frozenset({"positive-delivery", "display"})


class SenderSide(TrackerCore):
    """Register sent messages, apply their SIP outcome and the notifications about them."""

    def register_sent(
        self,
        *,
        message_id: str,
        recipients: Sequence[str],
        requested: Iterable[object],
        now: float,
        expires_at: float | None = None,
        intermediaries: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        expect_members: bool = False,
    ) -> SentRecord:
        """Start tracking a message we are about to send.

        ``requested`` are the ``Disposition-Notification`` tokens put in the
        message. ``expect_members=True`` says the recipients are lists (or
        other fan-out points): their members' notifications are awaited until
        the deadline even if the first ones settle everything requested
        (RFC 5438 §7.1.4). Without it a recipient becomes a list as soon as a
        notification names a member reached through it. Raises
        :class:`~sipimdn.errors.LocalProtocolError` for an empty or already
        tracked Message-ID, an unknown token, no usable recipient URI or a
        deadline not after ``now``.
        """
        if not message_id or " " in message_id:
            raise LocalProtocolError(f"unusable Message-ID {message_id!r}")
        if message_id in self._sent:
            raise LocalProtocolError(f"Message-ID {message_id!r} is already tracked")
        kinds = {token(kind) for kind in requested}
        unknown = kinds - REQUEST_KINDS
        if unknown:
            raise LocalProtocolError(f"unknown notification request(s): {', '.join(sorted(unknown))}")
        entries: dict[str, RecipientRecord] = {}
        for uri in recipients:
            key = self._key(uri)
            if key is None:
                raise LocalProtocolError(f"recipient {uri!r} is not a usable URI")
            entries.setdefault(key, RecipientRecord(uri=uri, key=key, state=_P, updated_at=now))
        if not entries:
            raise LocalProtocolError("a sent message needs at least one recipient")
        if len(entries) > self.config.max_recipients:
            raise LocalProtocolError(f"more than {self.config.max_recipients} recipients")
        hops = tuple(k for k in (self._key(uri) for uri in intermediaries) if k is not None)
        if expect_members:
            # A list server is an intermediary of the message (RFC 5438 §8): recording the
            # targets there keeps the record open until the deadline and survives a restart
            # with no new store field.
            hops = tuple(dict.fromkeys((*hops, *entries)))
        deadline = now + self.config.tracking_ttl if expires_at is None else expires_at
        if deadline <= now:
            raise LocalProtocolError("expires_at must be later than now")
        record = SentRecord(
            message_id=message_id,
            recipients=tuple(entries.values()),
            requested=shared_kinds(kinds),
            intermediaries=hops,
            created_at=now,
            deadline=deadline,
            expires_at=deadline + self.config.expiry_report_grace,
            metadata=tuple(sorted((metadata or {}).items())),
        )
        self._put(record)
        self._bound_working_set(now)
        return record

    def response_received(
        self, message_id: str, status_code: int, now: float, *, imdn_dropped: bool = False
    ) -> bool:
        """Apply the final SIP response to a sent message (408 for a timeout, 503 for transport loss).

        Report the outcome of the whole send once (after any 415 -> text/plain
        fallback); ``imdn_dropped=True`` says the message finally went out
        without CPIM, so no notification can come and tracking ends now: after
        a 2xx, a recipient of a message that requested notifications ends
        ``unsupported`` (one that requested none stays ``accepted``).
        Returns False for an unknown Message-ID or a second final response.
        """
        record = self._sent.get(message_id)
        if record is None or record.sip_status is not None:
            return False
        if status_code < 200:
            return True
        step = SenderInput.SIP_OK if 200 <= status_code < 300 else SenderInput.SIP_FAIL
        if step is SenderInput.SIP_OK and imdn_dropped and record.requested:
            step = SenderInput.SIP_OK_WITHOUT_CPIM
        record = evolve(record, sip_status=status_code)
        record = self._advance_all(record, step, now, sip_status=status_code, only_pending=True)
        self._put(record)
        if imdn_dropped or not self._can_change(record):
            self._end_tracking(record, now, expire=False)
        self._bound_working_set(now)  # it may be idle now
        return True

    def notification_received(
        self,
        *,
        message_id: str,
        kind: object,
        status: object,
        now: float,
        sender: str | None = None,
        sip_from: str | None = None,
        recipient_uri: str | None = None,
        original_recipient_uri: str | None = None,
        notification_id: str | None = None,
        asserted_identity: str | Sequence[str] | None = None,
    ) -> bool:
        """Check and apply a received notification; True iff it was verified and recorded.

        ``sender`` is the IMDN's CPIM From, ``sip_from`` its SIP From URI,
        ``notification_id`` its own ``imdn.Message-ID``. ``asserted_identity``
        is the sender's identity as a trusted proxy asserted it
        (P-Asserted-Identity, RFC 3325 §9.1: one URI, or a sip/sips and a tel
        URI); when given it is the sender, and the From claims vouch for
        nothing (a tel URI alone matches only a recipient addressed by tel
        URI: a sip URI with ``user=phone`` is not taken for the same number).
        Never raises for peer data: a refusal is a
        :class:`NotificationRejected` event.
        """
        kind_text, status_text = token(kind), token(status)
        asserted = (
            (asserted_identity,) if isinstance(asserted_identity, str) else tuple(asserted_identity or ())
        )
        claimed = asserted[0] if asserted else sender or sip_from

        def reject(reason: RejectReason, detail: str) -> bool:
            if asserted and reason is RejectReason.NOT_A_RECIPIENT:
                detail += (
                    f" (sender asserted by a trusted proxy: {', '.join(asserted)};"
                    " SIP and CPIM From not used)"
                )
            self._emit(NotificationRejected(message_id, reason, kind_text, status_text, claimed, detail))
            return False

        known = notification_kind(kind)
        if known is None:
            return reject(RejectReason.UNKNOWN_KIND, f"unknown notification kind {kind_text!r}")
        norm_kind = known.value
        if status_text not in ALLOWED_STATUSES[known]:
            return reject(RejectReason.INVALID_STATUS, f"{status_text!r} is not a {norm_kind} status")
        record = self._sent.get(message_id)
        if record is None:
            return reject(RejectReason.UNKNOWN_MESSAGE, "no message with this Message-ID is awaited")
        # Who sent it (RFC 5438 §7, §14): the identity a trusted proxy asserted, else the From claims.
        claims = asserted or (sender, sip_from)
        sender_keys = [k for k in map(self._key, claims) if k is not None]
        target, member_of, why = self._resolve(
            record, sender_keys, self._key(recipient_uri), self._key(original_recipient_uri)
        )
        if why is not None:
            return reject(*why)
        if not was_requested(record.requested, norm_kind, status_text):
            return reject(RejectReason.NOT_REQUESTED, f"{norm_kind} {status_text} was not requested")
        if notification_id is not None and notification_id in record.notification_ids:
            return reject(RejectReason.DUPLICATE, "this notification was already applied (replay)")
        entry = self._entry(record, target) if target is not None else None
        if entry is not None and getattr(entry, norm_kind) is not None:
            return reject(
                RejectReason.DUPLICATE,
                f"a {norm_kind} notification ({getattr(entry, norm_kind)}) was already applied",
            )
        negative = norm_kind == "delivery" and status_text != "delivered"
        if negative and record.sip_status is not None and record.sip_status >= 300:
            return reject(RejectReason.AFTER_SIP_FAILURE, "negative delivery after a non-2xx final response")
        if entry is None:
            assert recipient_uri is not None and target is not None  # _resolve only asks for a member then
            if len(record.recipients) >= self.config.max_recipients:
                return reject(
                    RejectReason.TOO_MANY_RECIPIENTS,
                    f"member {recipient_uri!r} not tracked: this message already tracks "
                    f"max_recipients={self.config.max_recipients} recipients and list members",
                )
            initial = _A if record.sip_status is not None and record.sip_status < 300 else _P
            entry = RecipientRecord(
                uri=recipient_uri, key=target, state=initial, via=member_of, updated_at=now
            )
            record = evolve(record, recipients=(*record.recipients, entry))
        if notification_id is not None:
            ids = (*record.notification_ids, notification_id)[-self.config.max_notification_ids :]
            record = evolve(record, notification_ids=ids)
        record, _ = self._apply_notification(
            record, entry.key, norm_kind, status_text, now, notification_id=notification_id
        )
        # A member reported through an intended recipient (list server, retargeting) also moves
        # that recipient's entry, once per type: first news wins.
        if member_of is not None:
            parent = self._entry(record, member_of)
            if parent is not None and getattr(parent, norm_kind) is None:
                record, _ = self._apply_notification(
                    record, parent.key, norm_kind, status_text, now, notification_id=None
                )
        self._put(record)
        if not self._can_change(record) and record.sip_status is not None:
            self._end_tracking(record, now, expire=False)
        # A record read back for this notification counts against the cap again.
        self._bound_working_set(now)
        return True

    def sent(self, message_id: str) -> SentRecord | None:
        """The tracked state of a sent message, or None once tracking ended (or while its record
        is left to the store: see :mod:`.workingset`)."""
        return self._sent.get(message_id)

    # --- internals ------------------------------------------------------------------------------

    def _sent_due(self, record: SentRecord, now: float) -> None:
        self._end_tracking(record, now, expire=True)

    @staticmethod
    def _entry(record: SentRecord, key: str) -> RecipientRecord | None:
        for entry in record.recipients:
            if entry.key == key:
                return entry
        return None

    def _resolve(
        self, record: SentRecord, sender_keys: list[str], rkey: str | None, okey: str | None
    ) -> tuple[str | None, str | None, tuple[RejectReason, str] | None]:
        """Find which recipient a notification is about: ``(target key, via key, rejection)``.

        The XML's ``recipient-uri`` and ``original-recipient-uri`` only say whom
        the notification is about; whether it may change that recipient's state
        depends on who sent it (RFC 5438 §7, §14: the notification's origin):
        the recipient itself, the list it was reached through, or an
        intermediary the message went through. A target with a via key and no
        entry yet is a list member to add.
        """
        known = {entry.key: entry for entry in record.recipients}
        intended = [entry.key for entry in record.recipients if entry.via is None]
        senders = set(sender_keys)
        hops = set(record.intermediaries)
        hop = next((key for key in sender_keys if key in hops), None)
        # An intermediary every message goes through (the outbound proxy) speaks for the
        # recipients we know, but never adds members: that takes this message's own list.
        proxy = next((key for key in sender_keys if key in self._trusted_hops), None)

        def speaks_for(key: str) -> bool:
            via = known[key].via
            if hop is not None or proxy is not None or key in senders:
                return True
            return via is not None and via in senders

        def not_origin(detail: str) -> tuple[None, None, tuple[RejectReason, str]]:
            return None, None, (RejectReason.NOT_A_RECIPIENT, detail)

        if rkey is not None and rkey in known:
            # A member already known keeps reporting through its list: the list's entry still
            # takes the first news of each type (a display after the delivery, say).
            if not speaks_for(rkey):
                return not_origin(
                    "recipient-uri names a recipient, but the sender is neither it nor its list"
                )
            return rkey, known[rkey].via, None
        if okey is not None and okey in known:
            if okey not in intended:
                # Original-To is the URI the sender addressed (RFC 5438 §6.4), never a member:
                # a member cannot vouch for further members.
                return not_origin("original-recipient-uri names a list member, not a recipient we addressed")
            if rkey is None:
                if not speaks_for(okey):
                    return not_origin("original-recipient-uri names a recipient, but the sender is not it")
                return okey, None, None
            # A member reached through a list we addressed (RFC 5438 §7.1.2). Members are learnt
            # from the list's own notifications (or an intermediary's); a member speaking for
            # itself only once the recipient is known to be a list (expect_members, or members
            # already reported through it). A third party naming a recipient as the list it
            # reached them through never makes a one-to-one message a list.
            known_list = okey in hops or any(entry.via == okey for entry in record.recipients)
            if hop is not None or okey in senders or (rkey in senders and known_list):
                return rkey, okey, None
            return not_origin("only the list itself may report members reached through it")
        for key in sender_keys:
            if key in known:
                return key, None, None
        if hop is not None and rkey is not None:
            return rkey, hop, None
        if hop is not None or proxy is not None:
            if rkey is None and len(intended) == 1:
                return intended[0], None, None
            if rkey is None:
                why = (RejectReason.AMBIGUOUS_RECIPIENT, "intermediary did not name the recipient")
                return None, None, why
            return not_origin("an intermediary of every message cannot add members to one")
        return not_origin("sender is no recipient of this message")

    def _apply_notification(
        self,
        record: SentRecord,
        key: str,
        kind: str,
        status: str,
        now: float,
        *,
        notification_id: str | None,
    ) -> tuple[SentRecord, bool]:
        entry = self._entry(record, key)
        assert entry is not None
        updated = _with_status(entry, kind, status)
        step = _NOTIFICATION_INPUTS.get((kind, status))
        new_state = TRANSITIONS.get((DispositionState(entry.state), step)) if step is not None else None
        if new_state is not None:
            updated = evolve(updated, state=new_state.value, updated_at=now)
        record = _replace_entry(record, updated)
        self._emit(
            NotificationAccepted(
                record.message_id, entry.uri, kind, status, notification_id, new_state is not None
            )
        )
        if new_state is not None:
            self._emit(
                DispositionChanged(
                    record.message_id,
                    entry.uri,
                    DispositionState(entry.state),
                    new_state,
                    kind,
                    status,
                    None,
                    now,
                )
            )
        return record, new_state is not None

    def _advance_all(
        self, record: SentRecord, step: SenderInput, now: float, *, sip_status: int | None, only_pending: bool
    ) -> SentRecord:
        for entry in record.recipients:
            state = DispositionState(entry.state)
            if only_pending and state is not _P:
                continue
            new_state = TRANSITIONS.get((state, step))
            if new_state is None:
                continue
            record = _replace_entry(record, evolve(entry, state=new_state.value, updated_at=now))
            self._emit(
                DispositionChanged(
                    record.message_id, entry.uri, state, new_state, None, None, sip_status, now
                )
            )
        return record

    def _can_change(self, record: SentRecord) -> bool:
        """Whether any notification could still change this message (processing counts as news)."""
        if record.sip_status is None or "processing" in record.requested or record.intermediaries:
            return True
        if record.sip_status < 300 and any(entry.via is not None for entry in record.recipients):
            # A recipient turned out to be a list: how many members it has is unknown
            # (RFC 5438 §7.1.4), so every member's news is awaited until the deadline.
            return True
        requested = set(record.requested)
        for entry in record.recipients:
            state = DispositionState(entry.state)
            if state in TERMINAL_STATES:
                continue
            if state is _DV and "display" not in requested:
                continue
            if state is _A and not requested:
                continue
            return True
        return False

    def _end_tracking(self, record: SentRecord, now: float, *, expire: bool) -> None:
        if expire:
            positive = bool(_POSITIVE.intersection(record.requested))
            for entry in record.recipients:
                state = DispositionState(entry.state)
                if state is _P or (state is _A and positive):
                    record = self._advance_one(record, entry, SenderInput.EXPIRE, now)
        self._emit(
            TrackingEnded(
                record.message_id,
                tuple((entry.uri, DispositionState(entry.state)) for entry in record.recipients),
            )
        )
        # The final state goes out before the Delete, even when tracking ends unchanged: a store
        # several workers share keeps it for readers elsewhere (the adapter turns the pair into
        # an ended record); any other store gets only the Delete (the writer keeps the last
        # operation on each record).
        self._writes.append(Put(record))
        self._delete(SentRecord.TABLE, record.message_id)

    def _advance_one(
        self, record: SentRecord, entry: RecipientRecord, step: SenderInput, now: float
    ) -> SentRecord:
        state = DispositionState(entry.state)
        new_state = TRANSITIONS.get((state, step))
        if new_state is None:
            return record
        self._emit(DispositionChanged(record.message_id, entry.uri, state, new_state, None, None, None, now))
        return _replace_entry(record, evolve(entry, state=new_state.value, updated_at=now))


def _replace_entry(record: SentRecord, entry: RecipientRecord) -> SentRecord:
    return evolve(record, recipients=tuple(entry if e.key == entry.key else e for e in record.recipients))


def _with_status(entry: RecipientRecord, kind: str, status: str) -> RecipientRecord:
    if kind == "delivery":
        return evolve(entry, delivery=status)
    if kind == "display":
        return evolve(entry, display=status)
    return evolve(entry, processing=status)
