"""What a user agent has done so far: counters kept as plain integers, read as one snapshot.

``ua.stats()`` returns a :class:`UserAgentStats`, a frozen copy: cheap to
take (no lock, no I/O), safe to keep. Counters only grow over the user
agent's life; gauges (``open_connections``, ``tracked_messages``...) say how
things stand at the moment of the snapshot. :mod:`sipimdn.metrics` exports
the same numbers to Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters", "UserAgentStats"]


class Counters:
    """The user agent's own counters, bumped in place (``counters.messages_sent += 1``)."""

    __slots__ = (
        "duplicates_received",
        "messages_received",
        "messages_sent",
        "notifications_accepted",
        "notifications_received",
        "notifications_rejected",
        "notifications_sent",
        "records_lost",
        "working_set_reads",
    )

    def __init__(self) -> None:
        self.messages_sent = 0
        self.messages_received = 0
        self.duplicates_received = 0
        self.notifications_sent = 0
        self.notifications_received = 0
        self.notifications_accepted = 0
        self.notifications_rejected = 0
        self.records_lost = 0
        self.working_set_reads = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UserAgentStats:
    """A snapshot of one user agent's counters and gauges (see ``UserAgent.stats``)."""

    #: Instant messages we started sending (``send_message`` and ``reply`` calls).
    messages_sent: int
    #: New instant messages received and handed to the application (resends not counted).
    messages_received: int
    #: Copies of a message received again (same Message-ID, or same transaction for plain text).
    duplicates_received: int
    #: Notification (IMDN) MESSAGEs we sent, each attempt counted.
    notifications_sent: int
    #: Notifications received (each part of an aggregated IMDN counted).
    notifications_received: int
    #: Received notifications that passed the correlation and anti-forgery checks.
    notifications_accepted: int
    #: Received notifications refused by those checks (RFC 5438 §7.1.2, §14.1) and not applied.
    notifications_rejected: int
    #: Requests the stack sent again for lack of an answer (Timer E, RFC 3261 §17.1.2.2).
    retransmissions: int
    #: Client transactions that ended with no final response (Timer F).
    timeouts: int
    #: Transactions that ended on a transport failure (connect refused, ICMP, connection lost).
    transport_errors: int
    #: TCP and TLS connections open (or opening) now; a gauge.
    open_connections: int
    #: Messages we sent still tracked for their notifications and held in memory now (the
    #: working set: at most ``working_set_max``, the others in the store); a gauge.
    tracked_messages: int
    #: Received messages remembered for the notifications they may be owed, held in memory now
    #: (at most ``working_set_max``, the others in the store); a gauge.
    tracked_received: int
    #: Notifications owed and not yet sent (or being retried) now; a gauge.
    owed_notifications: int
    #: Awaited messages and owed notifications another worker sharing the store took over
    #: while this one's lease had run out (it was cut off from the database, or paused), and
    #: that this one therefore stopped tracking and sending (each logged as a warning).
    records_lost: int
    #: Sent and received records that left memory for the store (``working_set_max``).
    working_set_evictions: int
    #: Store reads of a record not in memory (``mark_displayed``, a notification, a deadline).
    working_set_reads: int
    #: Store write batches applied so far.
    store_writes: int
    #: Store write batches that failed (each was logged).
    store_failures: int
    #: Seconds spent in store writes so far (in the store's worker thread).
    store_write_seconds: float
    #: The slowest store write batch so far, in seconds.
    store_write_max_seconds: float

    @property
    def store_write_mean_seconds(self) -> float:
        """Mean seconds per store write batch (0.0 before the first)."""
        return self.store_write_seconds / self.store_writes if self.store_writes else 0.0
