"""The tracker's tunables: :class:`TrackerConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from ..vocabulary import DisplayPolicy

__all__ = ["TrackerConfig"]

_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Tunables of the tracker; defaults suit a chat client."""

    #: How long a sent message's notifications are awaited when no ``expires_at`` is given.
    tracking_ttl: float = 7 * _DAY
    #: How long a received message can still be owed a notification (mark_displayed window).
    received_ttl: float = 7 * _DAY
    #: How long a (sender, Message-ID) pair is remembered for dedup.
    dedup_ttl: float = 7 * _DAY
    #: Most (sender, Message-ID) pairs remembered for dedup, in memory and in the store; past
    #: it the oldest are forgotten first. The trade-off: a copy of a message older than the
    #: window (``dedup_ttl``, or the last ``dedup_max`` messages if they came faster) reaches
    #: the application again. Without a cap a peer sending fresh Message-IDs grows memory
    #: without bound. 100,000 entries cost about 37 MB (about 320 bytes each, measured with
    #: tracemalloc in tests/test_tracker_dedup_cap.py, and about 50 more for the tables' order,
    #: which keeps forgetting the oldest O(1)) and, at ten messages a second, still
    #: cover almost three hours: far longer than any resend (a transaction lasts 32 s, a
    #: restarted sender resends within minutes).
    dedup_max: int = 100_000
    #: Most received records (messages that may still be owed a notification: the display
    #: notification of a message the application has not marked displayed yet, for days) and,
    #: separately, most sent records (messages awaiting notifications) kept in memory; the
    #: store holds them all. Past it the least recently used *idle* ones leave memory (a
    #: received message answered, with no notification pending, held or being retried; a sent
    #: message whose final SIP response came) and are read back from the store when needed
    #: (``mark_displayed``, a notification about it, its tracking deadline): see
    #: :mod:`sipimdn.imdn.tracker.workingset`. None keeps everything in memory (a store that
    #: cannot read records back). 10,000 cost about 5 MB for received messages (about 500
    #: bytes each beside its dedup entry, which ``dedup_max`` bounds) and 7 MB for sent ones
    #: (about 700 bytes each, one recipient; measured with bench/micro_memory.py), and at ten
    #: messages a second still hold the last quarter of an hour, when most messages are read;
    #: an older one costs one store read (about 0.2 ms with SQLite, bench/working_set.py).
    working_set_max: int | None = 10_000
    #: Whether sent records leave memory past ``working_set_max`` too. The user agent turns it
    #: off for a store that reads single records back but cannot list the sent records that
    #: fall due (``WorkingSetStore.load_sent_due``): their deadlines would pass unnoticed.
    evict_sent: bool = True
    #: How long an owed notification is retried at most, whatever the attempt count.
    owed_ttl: float = _DAY
    #: Attempts (the first send included) before an owed notification is given up.
    max_attempts: int = 4
    #: First backoff before a retry; doubles each time.
    retry_base: float = 1.0
    #: Longest backoff between two attempts.
    retry_cap: float = 30.0
    #: Give up waiting for the outcome of an attempt after this long (safety net: the SIP
    #: transaction normally reports within 64*T1) and treat it as a timeout.
    in_flight_timeout: float = 64.0
    #: Owe a positive delivery notification automatically after a 2xx (RFC 5438 §7.2.1.1).
    auto_delivered: bool = True
    #: Default display policy (RFC 5438 §14.2: display status is private).
    display_policy: DisplayPolicy = DisplayPolicy.SEND
    #: A sent message stays in the store this long after its deadline, so an expiry that fell
    #: while the UA was down is still reported after a restart.
    expiry_report_grace: float = 7 * _DAY
    #: Compare ports when matching identities (off: AORs have none and liblinphone drops them).
    compare_ports: bool = False
    #: Most IMDN-Record-Route entries honoured (RFC 5438 §14.1: a forged route makes us a flood source).
    max_imdn_route: int = 4
    #: Whether IMDN-Record-Route is honoured by default (RFC 5438 §14.1: only from trusted paths).
    trust_imdn_route: bool = False
    #: Intermediaries every message we send goes through (the outbound proxy, a store-and-forward
    #: server): their notifications may report for any intended recipient of any message
    #: (RFC 5438 §7: an intermediary the message went through), as the recipient itself may.
    trusted_intermediaries: tuple[str, ...] = ()
    #: Most recipients (intended plus list members learnt from notifications) per sent message;
    #: a notification naming one more member is rejected as ``too-many-recipients``.
    max_recipients: int = 256
    #: Replay guard: notification Message-IDs remembered per sent message.
    max_notification_ids: int = 64
    #: How long peer flags (``no-imdn``...) are remembered, so an upgraded peer gets another chance.
    peer_flag_ttl: float = 30 * _DAY
    #: Rate limit (RFC 5438 §14): at most this many notifications generated towards one
    #: destination address (scheme, host and port of the notification's Request-URI, never its
    #: user part, which a forger varies at will) within ``rate_window`` seconds. A notification
    #: routed through a trusted IMDN-Record-Route hop (a list server or store-and-forward
    #: relaying for many senders) is counted per originator of the IM instead (its SIP From,
    #: else CPIM From), so one busy relay does not starve everyone behind it. 120 a minute
    #: (two a second) is more than a person chats with one domain and bounds what a flood of
    #: forged messages can aim at one address to one notification per forged message.
    rate_limit: int = 120
    rate_window: float = 60.0
    #: Bytes of notifications sent to one destination address per ``rate_window`` at most
    #: (RFC 5438 §14); beyond it new notification requests are declined. 128 KiB a minute is
    #: about 150 notifications of a typical 0.8 KiB: above ``rate_limit`` for ordinary ones,
    #: so it binds only when forged messages make each notification large (long Subjects,
    #: echoed URIs).
    byte_budget: int = 128 * 1024
    #: A destination that left a notification transaction wholly unanswered is parked this
    #: long (doubling per further silent probe, up to ``park_cap``): nothing more is sent to
    #: it meanwhile, owed notifications wait, new requests are declined. A minute is long
    #: against the seconds a reachable peer needs and short against the day an owed
    #: notification is kept; an hour's cap still retries a peer that comes back.
    park_base: float = 60.0
    park_cap: float = 3600.0
    #: Ignore notification requests from anonymous senders (RFC 5438 §12.1.1, §14).
    decline_anonymous: bool = True

    #: Plain-text messages (no Message-ID) remembered for dedup, at most, and for how long.
    plain_dedup_capacity: int = 4096
    plain_dedup_ttl: float = 3600.0

    def __post_init__(self) -> None:
        for name in (
            "tracking_ttl",
            "expiry_report_grace",
            "received_ttl",
            "dedup_ttl",
            "owed_ttl",
            "retry_base",
            "retry_cap",
            "in_flight_timeout",
            "peer_flag_ttl",
            "rate_window",
            "plain_dedup_ttl",
            "park_base",
            "park_cap",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "max_attempts",
            "max_recipients",
            "rate_limit",
            "max_notification_ids",
            "plain_dedup_capacity",
            "byte_budget",
            "dedup_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.working_set_max is not None and self.working_set_max < 1:
            raise ValueError("working_set_max must be at least 1 (None: no bound)")
        if self.max_imdn_route < 0:
            raise ValueError("max_imdn_route must not be negative")
        object.__setattr__(self, "display_policy", DisplayPolicy(str(self.display_policy)))
        object.__setattr__(self, "trusted_intermediaries", tuple(self.trusted_intermediaries))
