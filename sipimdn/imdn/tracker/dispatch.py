"""The dispatch side of the tracker: the notifications we owe, from owing to settled (RFC 5438 §7.2, §14).

:mod:`.receiver` decides *what* is owed (a report, the automatic
``delivered``, display ``forbidden`` by policy); this module owns each
owed notification from then on:

- **owing or declining** (``_new_owed``): a notification
  to a peer that refused IMDNs (415/488) is not owed; nor, so that we are no
  reflector (RFC 5438 §14), is one to a parked (silent) destination, one
  past the count limit of its originator or address (``rate_limit`` per
  ``rate_window``) or one past its destination's byte budget. Each refusal
  is a :class:`~.events.NotificationsDeclined` event; the budgets' refusals
  are counted in :attr:`~DispatchSide.notifications_suppressed`.
- **handing out** (``_dispatch``): an owed notification
  becomes an :class:`~sipimdn.store.base.OwedRecord`, handed out as
  :class:`~.events.NotificationOwed`, unless its destination is parked or
  not yet proven alive with one in flight (see :mod:`.destinations`): then
  it waits, its attempts unchanged.
- **outcome** (:meth:`~DispatchSide.notification_outcome`): a 2xx settles
  it; 415/488 marks the peer as refusing IMDNs and abandons all owed to it;
  408 and 5xx are retried with exponential backoff until ``max_attempts``;
  another final answer abandons it; no answer at all parks its destination
  (the notification is retried as the one probe when the parking ends).
  Any answer proves the destination alive and hands out those waiting.
- **giving up** (``_abandon``): attempts exhausted,
  ``owed_ttl`` passed or a refusal, reported as
  :class:`~.events.NotificationAbandoned`.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Callable

from ..._fastinit import keyword_maker
from ..vocabulary import Kind
from ._base import PEER_NO_IMDN, TrackerCore
from .destinations import address_key
from .events import (
    DeclineReason,
    NotificationAbandoned,
    NotificationsDeclined,
)
from .identity import identity_key
from .records import OwedRecord, ReceivedRecord, evolve

__all__ = ["DispatchSide"]

#: ``OwedRecord(...)`` (keywords) without the frozen dataclass ``__init__``: one per notification
#: owed (see sipimdn._fastinit).
_owed_record: Callable[..., OwedRecord] = keyword_maker(OwedRecord)

#: The rate limiter drops idle originators once it holds more than this many (or twice what
#: survived the last pruning).
_RATE_PRUNE_MIN = 4 * 4096
#: Times kept in a list per originator at most; a longer window is a :class:`LongWindow`.
_LONG_WINDOW = 64


class LongWindow:
    """An originator's notification times in the rate window, oldest first, when there are more
    than :data:`_LONG_WINDOW`: a queue of floats in an ``array`` read from ``head``.

    Not a deque: a deque is a container the cyclic collector walks entry by entry (a float
    object each), and with a high rate limit one busy address (a proxy relaying everyone's
    messages) keeps up to ``rate_limit`` times, every one of them read again by each
    collection. An array holds the numbers themselves, nothing the collector visits. Times
    leave from the front by moving ``head``; the array drops them once they are half of it
    (amortised O(1) per time)."""

    __slots__ = ("head", "times")

    def __init__(self, times: list[float]) -> None:
        self.times = array("d", times)
        self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def expire(self, cutoff: float) -> None:
        """Drop the times at or before ``cutoff`` from the front."""
        times = self.times
        head = self.head
        end = len(times)
        while head < end and times[head] <= cutoff:
            head += 1
        if head > _LONG_WINDOW and 2 * head > end:
            del times[:head]
            head = 0
        self.head = head

    def append(self, now: float) -> None:
        self.times.append(now)

    def latest(self) -> float:
        """The latest time (minus infinity once empty)."""
        return self.times[-1] if len(self.times) > self.head else float("-inf")


class DispatchSide(TrackerCore):
    """Owe or decline, hand out, retry, park and abandon the notifications we owe
    (see the module docstring)."""

    # --- owed notifications --------------------------------------------------------------------

    def notification_outcome(self, notification_id: str, status_code: int | None, now: float) -> None:
        """Report how the IMDN MESSAGE we sent was answered (None: timeout or transport failure).

        Any answer proves the destination alive (notifications waiting for it are
        handed out now); none at all parks it (see :mod:`.destinations`).
        """
        owed = self._owed.get(notification_id)
        if owed is None or not owed.in_flight:
            return  # late outcome of something already settled or given up
        if status_code is not None and status_code < 200:
            return
        address = self._address(owed.request_uri)
        if status_code is None:
            self._silent(owed, now)
            return
        for waiting in self._guard.answered(address, notification_id):
            other = self._owed.get(waiting)
            if other is not None and not other.in_flight and waiting != notification_id:
                self._dispatch(other, now)
        if 200 <= status_code < 300:
            self._delete(OwedRecord.TABLE, notification_id)
            self._bound_working_set(now)  # its message may be idle now
        elif status_code in (415, 488):
            self.set_peer_flag(owed.request_uri, PEER_NO_IMDN, True, now)
            for other in [o for o in self._owed.values() if o.peer_key == owed.peer_key]:
                self._abandon(other, DeclineReason.PEER_REFUSES_IMDN.value)
        elif status_code == 408 or 500 <= status_code < 600:
            self._retry_or_abandon(owed, now)
        else:
            self._abandon(owed, f"rejected-{status_code}")

    def notification_sent(self, notification_id: str, size: int, now: float) -> None:
        """Count the bytes of an IMDN MESSAGE handed to the transport against its
        destination's byte budget (``TrackerConfig.byte_budget``)."""
        owed = self._owed.get(notification_id)
        if owed is not None:
            self._guard.charge(self._address(owed.request_uri), size, now)

    @property
    def notifications_suppressed(self) -> int:
        """Notifications declined so far by a rate limit, a byte budget or a parked destination
        (RFC 5438 §14: we are no reflector); each is also a
        :class:`~.events.NotificationsDeclined` event."""
        return self._suppressed

    def destination_parked_until(self, uri: str, now: float) -> float | None:
        """When notifications to the address of ``uri`` may go out again, or None if not parked."""
        return self._guard.parked_until(self._address(uri), now)

    def notification_held(self, notification_id: str, now: float) -> bool:
        """The adapter did not send a handed-out notification because its destination is parked
        (its turn came after the hand-out, see :meth:`destination_parked_until`). The attempt
        does not count; the notification waits for the end of the parking. Returns False if it
        is not parked (then send it)."""
        owed = self._owed.get(notification_id)
        if owed is None or not owed.in_flight:
            return True  # settled meanwhile: nothing to send
        address = self._address(owed.request_uri)
        parked = self._guard.parked_until(address, now)
        if parked is None:
            return False
        self._guard.forget(address, notification_id)
        self._put(evolve(owed, attempts=max(0, owed.attempts - 1), in_flight=False, next_attempt_at=parked))
        return True

    def owed(self) -> tuple[OwedRecord, ...]:
        """Every notification currently owed (queued or in flight)."""
        return tuple(self._owed.values())

    # --- internals -----------------------------------------------------------------------------

    def _rate_allows(self, peer_key: str, now: float) -> bool:
        cutoff = now - self.config.rate_window
        rate = self._rate
        window = rate.get(peer_key)
        # An originator's times in the window, oldest first: a bare number while there is one
        # (the usual case: many originators with one message each awaiting notifications would
        # otherwise cost a container each), a list from the second on, a LongWindow past
        # _LONG_WINDOW (a list's front deletion moves all the rest: with a high limit, one
        # busy address makes it thousands of times long). Times at or before the cutoff leave
        # from the front, as they came.
        if isinstance(window, list):
            stale = 0
            while stale < len(window) and window[stale] <= cutoff:
                stale += 1
            del window[:stale]
            if len(window) >= self.config.rate_limit:
                return False
            window.append(now)
            if len(window) > _LONG_WINDOW:
                rate[peer_key] = LongWindow(window)
        elif isinstance(window, LongWindow):
            window.expire(cutoff)
            if len(window) >= self.config.rate_limit:
                return False
            window.append(now)
        elif window is not None and window > cutoff:
            if self.config.rate_limit <= 1:
                return False
            rate[peer_key] = [window, now]
        else:
            rate[peer_key] = now
        if len(rate) > self._rate_prune_at:
            # Keep the limiter's memory bounded by the originators active in one window. The
            # threshold grows with what survives, so many active originators (distinct forged
            # Froms) cost an amortised O(1) per call, not a full scan each time.
            for key in [k for k, w in rate.items() if _latest(w) <= cutoff]:
                del rate[key]
            self._rate_prune_at = max(_RATE_PRUNE_MIN, 2 * len(rate))
        return True

    def _address(self, uri: str) -> str:
        """The destination address of a notification's Request-URI (see :mod:`.destinations`)."""
        return _address_of(uri)

    def _new_owed(
        self,
        record: ReceivedRecord,
        kind: str,
        status: str,
        now: float,
        *,
        hand_out: bool = False,
    ) -> OwedRecord | None:
        """The notification to owe, or None (declined: peer refuses IMDNs, a budget, a parked
        destination). ``hand_out``: owe it now, as :meth:`_dispatch` of the record returned
        would (the record is born with its first attempt, not replaced at once by it)."""
        request_uri = record.imdn_route[0] if record.imdn_route else (record.sip_from or record.sender)
        peer_key = self._key(request_uri) or request_uri
        address = self._address(request_uri)
        reason: DeclineReason | None = None
        if self._peer_refuses_imdn(request_uri):
            reason = DeclineReason.PEER_REFUSES_IMDN
        elif self._guard.parked_until(address, now) is not None:
            reason = DeclineReason.DESTINATION_SILENT
        elif not self._rate_allows(self._rate_key(record, address), now):
            reason = DeclineReason.RATE_LIMITED
        elif self._guard.over_budget(address, now):
            reason = DeclineReason.BYTE_BUDGET
        if reason is not None:
            if reason is not DeclineReason.PEER_REFUSES_IMDN:
                self._suppressed += 1
            request = "display" if kind == Kind.DISPLAY else "positive-delivery"
            if kind == Kind.DELIVERY and status != "delivered":
                request = "negative-delivery"
            self._emit(NotificationsDeclined(record.message_id, record.sender, (request,), reason))
            return None
        notification_id = self._new_id()
        attempts, in_flight, next_attempt_at = 0, False, now
        if hand_out:
            later = self._guard.admit(address, notification_id, peer_key, now)
            if later is None:
                attempts, in_flight, next_attempt_at = 1, True, now + self.config.in_flight_timeout
            else:
                next_attempt_at = later
        owed = _owed_record(
            notification_id=notification_id,
            message_id=record.message_id,
            sender_key=record.sender_key,
            kind=str(kind),
            status=status,
            request_uri=request_uri,
            sip_to=record.sip_from or record.sender,
            cpim_to=record.sender,
            cpim_from=record.recipient,
            recipient_uri=record.recipient,
            original_recipient_uri=record.original_recipient,
            datetime=record.datetime,
            subject=record.subject,
            imdn_route=record.imdn_route,
            peer_key=peer_key,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            in_flight=in_flight,
            created_at=now,
            expires_at=now + self.config.owed_ttl,
        )
        if in_flight:
            self._hand_out(owed)
        elif hand_out:
            self._put(owed)  # waits for its destination (see _dispatch)
        return owed

    def _rate_key(self, record: ReceivedRecord, address: str) -> str:
        """What the count limit is kept per (see ``TrackerConfig.rate_limit``)."""
        if record.imdn_route:
            # A trusted relay (list server, store-and-forward) sends on for many senders: one
            # budget per originator of the IM, its SIP From (RCS may put a shared anonymous
            # identity in the CPIM From), else its CPIM From.
            originator = record.sip_from or record.sender
            return self._key(originator) or originator
        # Otherwise the notification goes to the originator's address, which a forger names at
        # will with a fresh user part each time: one budget per address.
        return address

    def _dispatch(self, owed: OwedRecord, now: float) -> None:
        # A parked destination, or one not yet proven alive with a notification in flight, gets
        # nothing now: the owed record waits (its attempts unchanged) until the guard's time, or
        # until the destination answers (notification_outcome hands it out then).
        later = self._guard.admit(self._address(owed.request_uri), owed.notification_id, owed.peer_key, now)
        if later is None:
            super()._dispatch(owed, now)
        else:
            self._put(evolve(owed, in_flight=False, next_attempt_at=later))

    def _owed_due(self, owed: OwedRecord, now: float) -> None:
        if now >= owed.expires_at:
            self._abandon(owed, "expired")
            address = self._address(owed.request_uri)
            parked = self._guard.parked_until(address, now)
            if parked is not None:
                if owed.next_attempt_at <= parked:  # it was to probe the end of the parking
                    self._next_probe(address, parked)
                return
            # If it was the one in flight, those waiting behind it go now.
            for waiting in self._guard.release(address, now):
                other = self._owed.get(waiting)
                if other is not None and not other.in_flight:
                    self._dispatch(other, now)
        elif owed.in_flight:
            self._silent(owed, now)  # the outcome never came: count it as a timeout
        else:
            self._dispatch(owed, now)

    def _silent(self, owed: OwedRecord, now: float) -> None:
        """No answer at all to ``owed``: park its destination. ``owed`` itself is retried when
        the parking ends, as the one probe; those waiting stay as they are (for the probe's
        answer, which hands them out, or for their own time) instead of each being rescheduled
        and rewritten to the store: behind a silent destination thousands may wait, and every
        message answered meanwhile waits for the store batch holding those rewrites."""
        address = self._address(owed.request_uri)
        parked = self._guard.silent(address, owed.notification_id, now)
        if owed.attempts >= self.config.max_attempts:
            self._abandon(owed, "attempts-exhausted")
            self._next_probe(address, parked)
            return
        self._retry_or_abandon(owed, now, not_before=parked)

    def _next_probe(self, address: str, parked: float) -> None:
        """The probe of a parked destination is gone: the oldest notification waiting for it
        goes when the parking ends instead (one record rescheduled, not all of them)."""
        for waiting in self._guard.waiting(address):
            other = self._owed.get(waiting)
            if other is not None and not other.in_flight:
                if other.next_attempt_at > parked:
                    self._put(evolve(other, next_attempt_at=parked))
                return

    def _retry_or_abandon(self, owed: OwedRecord, now: float, *, not_before: float = 0.0) -> None:
        if owed.attempts >= self.config.max_attempts:
            self._abandon(owed, "attempts-exhausted")
            return
        delay = min(self.config.retry_cap, self.config.retry_base * 2 ** (owed.attempts - 1))
        self._put(evolve(owed, in_flight=False, next_attempt_at=max(now + delay, not_before)))

    def _abandon(self, owed: OwedRecord, reason: str) -> None:
        self._guard.forget(self._address(owed.request_uri), owed.notification_id)
        self._delete(OwedRecord.TABLE, owed.notification_id)
        self._emit(NotificationAbandoned(owed.notification_id, owed.message_id, reason))


@functools.lru_cache(maxsize=4096)  # pure; asked four times per notification (owe, send, outcome)
def _address_of(uri: str) -> str:
    key = identity_key(uri)  # the peer key's cache entry: one parse per URI
    return address_key(key, uri) if key is not None else uri


def _latest(window: float | list[float] | LongWindow) -> float:
    """The latest time in a rate-limit window (an emptied list counts as long expired)."""
    if isinstance(window, list):
        return window[-1] if window else float("-inf")
    if isinstance(window, LongWindow):
        return window.latest()
    return window
