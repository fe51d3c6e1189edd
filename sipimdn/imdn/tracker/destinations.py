"""Notification budgets per destination address, so we cannot be aimed at a third party.

RFC 5438 §14: a peer can make a recipient generate notifications, and
the destination of a notification is whatever the message's From says.
Forged messages whose From names a third party (a different user part
each time, so a per-user limit never trips) turn the recipient into a
reflector; a silent destination made it worse, each notification
running a whole SIP transaction (up to eleven UDP retransmissions, RFC
3261 §17.1.2.2) several times over. :class:`DestinationGuard` keeps, per
destination *address* (scheme, host and port of the notification's
Request-URI, never its user part):

- a **byte budget**: at most ``TrackerConfig.byte_budget`` bytes of
  notifications per ``rate_window`` (the count limit per destination is
  the tracker's ``rate_limit``);
- **proof of life**: a destination that has not answered anything yet
  has notifications in flight for one Request-URI at a time; those for
  other URIs at that address (a forger's fresh user parts) wait for its
  first answer (a live peer answers in milliseconds, so they hardly wait).
  Notifications for one URI go one transaction at a time anyway (RFC 3428
  §8), and the user agent holds back one whose turn comes while the
  destination is parked (:meth:`DestinationGuard.parked_until`);
- **parking**: a transaction that gets no answer at all (timeout,
  transport failure) parks the destination for ``park_base`` seconds,
  doubling on each silent probe up to ``park_cap``. Notifications already
  owed wait for the end of the parking and the answer to the one probe
  then (still counted against ``max_attempts``); new ones are declined
  while it lasts.

Everything refused here is counted in :attr:`DestinationGuard.suppressed`.
Pure bookkeeping: the caller passes ``now``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

__all__ = ["DestinationGuard", "address_key"]

#: Destinations remembered at most; the idle ones are forgotten first, then the oldest.
_MAX_DESTINATIONS = 65536
#: Notifications sent to one destination within this many seconds share one byte-budget entry.
_BUCKET = 1.0
#: The table is pruned of idle destinations once it holds this many (or twice what survived).
_PRUNE_MIN = 4096


def address_key(identity: str, uri: str) -> str:
    """The destination address of a notification's Request-URI ``uri`` whose identity key (ports
    not compared) is ``identity``: ``sip:user@host`` -> ``sip:host:port``. Only the port is read
    from ``uri`` (the identity key already normalised the host), with a cheap parse: this runs
    for every notification."""
    scheme, colon, rest = identity.partition(":")
    if not colon or scheme not in ("sip", "sips"):
        return identity
    secure = uri.lstrip("<").lstrip()[:5].lower() == "sips:" or "<sips:" in uri.lower()
    return f"{scheme}:{rest.rpartition('@')[2]}:{_port(uri) or ('5061' if secure else '5060')}"


def _port(uri: str) -> str:
    """The port of a SIP URI (or name-addr) as written, or "" (RFC 3261 §19.1.1 hostport)."""
    start = uri.find("<")
    if start >= 0:
        end = uri.find(">", start)
        uri = uri[start + 1 : end if end >= 0 else len(uri)]
    rest = uri.partition(":")[2]
    userinfo, at, hostpart = rest.partition("@")
    if not at:
        hostpart = userinfo
    for stop in (";", "?"):
        hostpart = hostpart.split(stop, 1)[0]
    if hostpart.startswith("["):
        hostpart = hostpart[hostpart.find("]") + 1 :]
    port = hostpart.rpartition(":")[2] if ":" in hostpart else ""
    return str(int(port)) if port.isdigit() and 0 < int(port) < 65536 else ""


class _Destination:
    __slots__ = ("answered", "in_flight", "parked_until", "sent", "sent_bytes", "silences", "waiting")

    def __init__(self) -> None:
        #: Whether it answered anything since it was last silent.
        self.answered = False
        #: Notification ids in flight to it, and the key of their Request-URI.
        self.in_flight: dict[str, str] = {}
        #: Notification ids waiting for its first answer or for the end of its parking, in
        #: arrival order (a dict as an ordered set: thousands wait behind a silent destination,
        #: and each admission, retry and settlement looks one up).
        self.waiting: dict[str, None] = {}
        #: Consecutive transactions it left unanswered.
        self.silences = 0
        self.parked_until = float("-inf")
        #: (time, bytes) of the notifications sent to it within the window, oldest first, one
        #: entry per second of sending at most.
        self.sent: deque[tuple[float, int]] = deque()
        #: The sum of the sizes in ``sent``.
        self.sent_bytes = 0

    def idle(self, now: float) -> bool:
        return not self.in_flight and not self.waiting and not self.sent and self.parked_until <= now


class DestinationGuard:
    """Per-destination byte budget, proof of life and parking (see the module docstring)."""

    def __init__(self, *, byte_budget: int, window: float, park_base: float, park_cap: float) -> None:
        self.byte_budget = byte_budget
        self.window = window
        self.park_base = park_base
        self.park_cap = park_cap
        #: Notifications declined or held back by this guard (declined on reception because the
        #: destination is parked or over its byte budget).
        self.suppressed = 0
        self._table: dict[str, _Destination] = {}
        self._prune_at = _PRUNE_MIN

    def __len__(self) -> int:
        """How many destinations are remembered."""
        return len(self._table)

    def parked_until(self, address: str, now: float) -> float | None:
        """When a parked destination may be tried again, or None if it is not parked."""
        entry = self._table.get(address)
        return entry.parked_until if entry is not None and entry.parked_until > now else None

    def over_budget(self, address: str, now: float) -> bool:
        """Whether the destination used its byte budget in the current window."""
        entry = self._table.get(address)
        if entry is None:
            return False
        self._expire(entry, now)
        return entry.sent_bytes >= self.byte_budget

    def admit(self, address: str, notification_id: str, target: str, now: float) -> float | None:
        """May this notification (to the Request-URI whose key is ``target``) go out now? None:
        yes (it is counted in flight); else the time to ask again (the caller parks it;
        :meth:`answered` releases it earlier)."""
        entry = self._entry(address, now)
        later: float | None = None
        if entry.parked_until > now:
            later = entry.parked_until
        elif not entry.answered and any(uri != target for uri in entry.in_flight.values()):
            later = now + self.park_cap  # a safety net: the answer or the silence releases it
        if later is not None:
            entry.waiting[notification_id] = None
            return later
        entry.waiting.pop(notification_id, None)
        entry.in_flight[notification_id] = target
        return None

    def charge(self, address: str, size: int, now: float) -> None:
        """Count ``size`` bytes sent to the destination."""
        entry = self._entry(address, now)
        self._expire(entry, now)
        sent = entry.sent
        if sent and sent[-1][0] > now - _BUCKET:
            # One entry per second of sending at most: memory bounded by the window, not by
            # the rate (a bucket leaves the window with its first notification, a little early).
            start, total = sent.pop()
            sent.append((start, total + size))
        else:
            sent.append((now, size))
        entry.sent_bytes += size

    def answered(self, address: str, notification_id: str) -> list[str]:
        """The destination answered (any status): it is alive. Returns the notifications
        waiting for it, to be tried now."""
        entry = self._table.get(address)
        if entry is None:
            return []
        entry.in_flight.pop(notification_id, None)
        entry.answered = True
        entry.silences = 0
        entry.parked_until = float("-inf")
        waiting, entry.waiting = list(entry.waiting), {}
        return waiting

    def silent(self, address: str, notification_id: str, now: float) -> float:
        """A transaction to the destination got no answer at all: park it. Returns when it may
        be tried again."""
        entry = self._entry(address, now)
        entry.in_flight.pop(notification_id, None)
        entry.answered = False
        entry.silences += 1
        delay = min(self.park_cap, self.park_base * 2 ** min(entry.silences - 1, 32))
        entry.parked_until = max(entry.parked_until, now + delay)
        return entry.parked_until

    def waiting(self, address: str) -> Iterator[str]:
        """The notifications waiting for the destination, oldest first (lazily: thousands may
        wait behind a silent destination and the caller usually needs the first)."""
        entry = self._table.get(address)
        return iter(entry.waiting) if entry is not None else iter(())

    def release(self, address: str, now: float) -> list[str]:
        """The notifications waiting for the destination, if nothing is in flight to it any more
        and it is not parked (the one in flight was settled otherwise, e.g. expired)."""
        entry = self._table.get(address)
        if entry is None or entry.in_flight or entry.parked_until > now:
            return []
        waiting, entry.waiting = list(entry.waiting), {}
        return waiting

    def forget(self, address: str, notification_id: str) -> None:
        """The notification is settled otherwise (given up, expired): it waits no more."""
        entry = self._table.get(address)
        if entry is None:
            return
        entry.in_flight.pop(notification_id, None)
        entry.waiting.pop(notification_id, None)

    def _expire(self, entry: _Destination, now: float) -> None:
        cutoff = now - self.window
        sent = entry.sent
        while sent and sent[0][0] <= cutoff:
            entry.sent_bytes -= sent.popleft()[1]

    def _entry(self, address: str, now: float) -> _Destination:
        entry = self._table.get(address)
        if entry is None:
            if len(self._table) >= self._prune_at:
                self._prune(now)
            entry = self._table[address] = _Destination()
        return entry

    def _prune(self, now: float) -> None:
        # Idle entries (nothing in flight or waiting, window and parking over) carry nothing
        # worth keeping but "answered" and the backoff count: a live peer proves itself again
        # with its next answer. Past the hard cap the oldest go first, parked or not (each
        # parked destination cost a forged message and one unanswered transaction).
        table = self._table
        for entry in table.values():
            self._expire(entry, now)
        for key in [k for k, e in table.items() if e.idle(now)]:
            del table[key]
        while len(table) >= _MAX_DESTINATIONS:
            del table[next(iter(table))]
        self._prune_at = max(_PRUNE_MIN, 2 * len(table))
