"""Sans-IO disposition tracker: what we sent and await, what we received and owe (RFC 5438).

Theory of operation
-------------------
Rule 1: every decision about notification state lives here; the asyncio user
agent only feeds inputs (API calls, SIP outcomes, decoded notifications,
``handle_timer(now)``) and drains outputs (:meth:`DispositionTracker.next_event`,
:meth:`DispositionTracker.writes_to_apply`). Rule 2: nothing here does I/O,
reads a clock or knows the wire format; peers' values arrive as plain
strings, so this module does not depend on the codecs.

**Sender side.** A message registered with :meth:`~DispositionTracker.register_sent`
has one :class:`~sipimdn.store.base.RecipientRecord` per intended recipient
whose main state follows :data:`TRANSITIONS`: ``pending -> accepted ->
delivered -> displayed`` or one of the terminal ``failed / forbidden / error
/ expired``. The table only ever moves forward; a missing ``(state, input)``
pair means "no change" (a late ``delivered`` after ``displayed`` is recorded
in ``.delivery`` and changes nothing). The final SIP response moves only
recipients still ``pending``, so a notification that overtook the response
(liblinphone sends its IMDN before its 200) still counts.

**Lists.** A recipient may be a URI list (RFC 5365) or another fan-out
point whose members we never learn in advance. A notification whose
``original-recipient-uri`` is an intended recipient and whose
``recipient-uri`` is someone else adds that member as its own entry (``via``
the list), with its own monotonic state and its own one-per-type guard; the
list's entry takes the first news of each type. From then on the message
stays tracked until its deadline (RFC 5438 §7.1.4: be ready for several
IMDNs), because nothing tells us how many members are still to report;
``register_sent(..., expect_members=True)`` says so from the start. The
members of one message are capped by ``TrackerConfig.max_recipients``
(``too-many-recipients`` beyond it), so a forged flood of members cannot
grow one record without bound.

**Correlation and safety (imdn.md C1..C3, RFC 5438 §14.1).** A notification
is applied only when, in this order: its kind and status are valid together;
its Message-ID is one we sent (C1); its SIP From / CPIM From, or its
``recipient-uri`` / ``original-recipient-uri``, is an intended recipient or a
known intermediary of that message (C2); its type was requested (C3); it is
not a replay (same notification Message-ID) nor a second notification of the
same type for the same recipient (C3, IMDN-32); and it is not a negative
delivery after we saw a non-2xx final response (IMDN-37). Anything else
becomes a :class:`NotificationRejected` event and changes nothing; the user
agent answers 200 anyway, so a prober learns nothing (no oracle). The only
real secret is the unpredictable Message-ID (IMDN-12/13): every identity in
a notification is the peer's claim (C10: IMDNs prove nothing).

**Receiver side.** :meth:`~DispositionTracker.record_received` remembers a
message whose sender asked for notifications and deduplicates on (sender,
Message-ID). After :meth:`~DispositionTracker.message_answered` with a 2xx,
the notifications the policy allows become :class:`~sipimdn.store.base.OwedRecord`
entries, handed out as :class:`NotificationOwed` events and retried with
exponential backoff on timeout, 408 and 5xx until acknowledged or given up.
A non-2xx answer means nothing is ever owed (IMDN-37). Loop guard (C4),
IMDN-Record-Route trust and cap (C5), a rate limit per originator of the IM
(its SIP From, else CPIM From; never the relay it came through), anonymous
senders (C6, IMDN-42) and display privacy (C7) are enforced here and
reported as :class:`NotificationsDeclined`.

**Persistence: write-behind operations.** The tracker keeps its state in
memory and is authoritative while running. Every change also appends a
whole-record :class:`~sipimdn.store.base.Put` or a
:class:`~sipimdn.store.base.Delete` to a queue drained with
:meth:`~DispositionTracker.writes_to_apply`; the adapter applies each batch,
in order, with :meth:`Store.apply <sipimdn.store.base.Store.apply>` (one
worker thread keeps the order). We chose this over calling the store from the
tracker because the tracker must stay sans-IO and fast on the event loop,
and because whole-record upserts are idempotent: replaying a batch is
harmless and the store never holds half a record. The price is that a crash
loses the batches not yet applied; the adapter narrows that window by
applying the writes before it sends the notifications the same input
produced. After a restart, ``DispositionTracker(config, snapshot=store.load(now),
now=now)`` rebuilds everything: owed notifications (also those handed out but
never acknowledged: the peer dedups on their stable Message-ID) are due again
at once, sent messages still correlate, received messages can still be
marked displayed, dedup entries and peer flags survive.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import ipaddress
import itertools
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import unquote

from ..errors import LocalProtocolError
from ..store.base import (
    AnyRecord,
    Delete,
    OwedRecord,
    PeerRecord,
    Put,
    ReceivedRecord,
    RecipientRecord,
    SeenRecord,
    SentRecord,
    Snapshot,
    StoreOp,
    received_key,
)

__all__ = [
    "ALLOWED_STATUSES",
    "PEER_NO_CPIM",
    "PEER_NO_IMDN",
    "REQUEST_KINDS",
    "TRANSITIONS",
    "DeclineReason",
    "DisplayPolicy",
    "DispositionChanged",
    "DispositionState",
    "DispositionTracker",
    "NotificationAbandoned",
    "NotificationAccepted",
    "NotificationOwed",
    "NotificationRejected",
    "NotificationsDeclined",
    "OwedNotification",
    "Reception",
    "RejectReason",
    "TrackerConfig",
    "TrackerEvent",
    "TrackingEnded",
    "identity_key",
    "is_anonymous",
    "was_requested",
]

# --- vocabulary ----------------------------------------------------------------------------------

#: ``Disposition-Notification`` request tokens (RFC 5438 §6.2).
REQUEST_KINDS = frozenset({"positive-delivery", "negative-delivery", "display", "processing"})

#: Status values allowed per notification kind (RFC 5438 §5, §11.1.7; imdn.md section 2).
ALLOWED_STATUSES: Mapping[str, frozenset[str]] = {
    "delivery": frozenset({"delivered", "failed", "forbidden", "error"}),
    "display": frozenset({"displayed", "forbidden", "error"}),
    "processing": frozenset({"processed", "stored", "forbidden", "error"}),
}

#: Peer flag: the peer answered 415 (or 488) to an IMDN; send it no more.
PEER_NO_IMDN = "no-imdn"
#: Peer flag: the peer answered 415 to message/cpim (kept for the UA's text/plain fallback).
PEER_NO_CPIM = "no-cpim"


class DispositionState(StrEnum):
    """Main disposition state of one recipient of a sent message."""

    #: Sent, no final SIP response and no notification yet.
    PENDING = "pending"
    #: A 2xx final response arrived (202 included: relayed, not delivered; IMDN-93).
    ACCEPTED = "accepted"
    #: A ``delivered`` delivery notification arrived.
    DELIVERED = "delivered"
    #: A ``displayed`` display notification arrived (terminal).
    DISPLAYED = "displayed"
    #: A non-2xx final response, or a ``failed`` delivery notification (terminal).
    FAILED = "failed"
    #: A ``forbidden`` delivery or display notification (terminal).
    FORBIDDEN = "forbidden"
    #: An ``error`` delivery or display notification (terminal).
    ERROR = "error"
    #: Tracking ended with no positive news (terminal).
    EXPIRED = "expired"


TERMINAL_STATES = frozenset(
    {
        DispositionState.DISPLAYED,
        DispositionState.FAILED,
        DispositionState.FORBIDDEN,
        DispositionState.ERROR,
        DispositionState.EXPIRED,
    }
)

#: Progress rank: a state change never lowers it (terminal failures rank highest).
STATE_RANK: Mapping[DispositionState, int] = {
    DispositionState.PENDING: 0,
    DispositionState.ACCEPTED: 1,
    DispositionState.DELIVERED: 2,
    DispositionState.DISPLAYED: 3,
    DispositionState.FAILED: 4,
    DispositionState.FORBIDDEN: 4,
    DispositionState.ERROR: 4,
    DispositionState.EXPIRED: 4,
}


class _Input(Enum):
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


_P, _A, _DV, _DS = (
    DispositionState.PENDING,
    DispositionState.ACCEPTED,
    DispositionState.DELIVERED,
    DispositionState.DISPLAYED,
)
_F, _FB, _E, _X = (
    DispositionState.FAILED,
    DispositionState.FORBIDDEN,
    DispositionState.ERROR,
    DispositionState.EXPIRED,
)

#: The whole sender-side state machine: ``(state, input) -> next state``.
#: A pair that is not listed changes nothing. Terminal states list nothing.
#: Display ``forbidden``/``error`` end the recipient even after ``delivered``:
#: the delivery outcome stays readable in ``RecipientRecord.delivery``.
TRANSITIONS: Mapping[tuple[DispositionState, _Input], DispositionState] = {
    (_P, _Input.SIP_OK): _A,
    (_P, _Input.SIP_FAIL): _F,
    (_P, _Input.DELIVERED): _DV,
    (_P, _Input.DELIVERY_FAILED): _F,
    (_P, _Input.DELIVERY_FORBIDDEN): _FB,
    (_P, _Input.DELIVERY_ERROR): _E,
    (_P, _Input.DISPLAYED): _DS,
    (_P, _Input.DISPLAY_FORBIDDEN): _FB,
    (_P, _Input.DISPLAY_ERROR): _E,
    (_P, _Input.EXPIRE): _X,
    (_A, _Input.DELIVERED): _DV,
    (_A, _Input.DELIVERY_FAILED): _F,
    (_A, _Input.DELIVERY_FORBIDDEN): _FB,
    (_A, _Input.DELIVERY_ERROR): _E,
    (_A, _Input.DISPLAYED): _DS,
    (_A, _Input.DISPLAY_FORBIDDEN): _FB,
    (_A, _Input.DISPLAY_ERROR): _E,
    (_A, _Input.EXPIRE): _X,
    (_DV, _Input.DISPLAYED): _DS,
    (_DV, _Input.DISPLAY_FORBIDDEN): _FB,
    (_DV, _Input.DISPLAY_ERROR): _E,
}

_NOTIFICATION_INPUTS: Mapping[tuple[str, str], _Input] = {
    member.value: member for member in _Input if isinstance(member.value, tuple)
}


class DisplayPolicy(StrEnum):
    """What we do with a request for a display notification (imdn.md C7, RFC 5438 §14.2).

    The values equal those of :class:`sipimdn.config.DisplayPrivacy`.
    """

    #: Send ``displayed`` when the application marks the message displayed.
    SEND = "send"
    #: Answer every display request with ``forbidden`` as soon as we answer 2xx.
    FORBIDDEN = "forbidden"
    #: Never send a display notification (RFC 5438 §7.2.1.2 allows silence).
    SILENT = "silent"


class RejectReason(StrEnum):
    """Why a received notification was not applied."""

    #: C1: its Message-ID is not one we sent (or tracking ended: IMDN-81).
    UNKNOWN_MESSAGE = "unknown-message"
    #: C2: neither its sender nor its recipient URIs are a recipient or intermediary of the message.
    NOT_A_RECIPIENT = "not-a-recipient"
    #: C3: that type of notification was not requested.
    NOT_REQUESTED = "not-requested"
    #: C3 / IMDN-32: a replay, or a second notification of one type for one recipient.
    DUPLICATE = "duplicate"
    #: The status does not belong to the notification kind (RFC 5438 §5).
    INVALID_STATUS = "invalid-status"
    #: The notification kind is none of delivery, display, processing.
    UNKNOWN_KIND = "unknown-kind"
    #: Verified through an intermediary but it does not say which recipient it is about.
    AMBIGUOUS_RECIPIENT = "ambiguous-recipient"
    #: IMDN-37: a negative delivery notification after a non-2xx final response.
    AFTER_SIP_FAILURE = "after-sip-failure"
    #: The message already tracks as many list members as the configuration allows.
    TOO_MANY_RECIPIENTS = "too-many-recipients"


class DeclineReason(StrEnum):
    """Why a requested notification will not be sent."""

    #: C4: the message is itself a notification; never notify a notification (IMDN-53).
    LOOP_GUARD = "loop-guard"
    #: IMDN-42: the sender is anonymous.
    ANONYMOUS = "anonymous"
    #: The peer answered 415/488 to an earlier IMDN.
    PEER_REFUSES_IMDN = "peer-refuses-imdn"
    #: C6: too many notifications generated for this originator (SIP From, else CPIM From) recently.
    RATE_LIMITED = "rate-limited"
    #: C7: display policy ``silent``.
    PRIVACY = "privacy"
    #: C5: IMDN-Record-Route not honoured because the path is not trusted; the IMDN goes to the sender.
    ROUTE_UNTRUSTED = "route-untrusted"
    #: C5: more IMDN-Record-Route entries than allowed; the IMDN goes to the sender.
    ROUTE_TOO_LONG = "route-too-long"


#: An owed notification as handed to the adapter (the stored record itself).
OwedNotification = OwedRecord

# --- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DispositionChanged:
    """The main state of one recipient of a sent message moved forward."""

    #: Message-ID of the message we sent.
    message_id: str
    #: The recipient's URI (as registered, or as the list member was reported).
    recipient: str
    #: The state before the change.
    previous: DispositionState
    #: The state now.
    state: DispositionState
    #: Notification kind that caused it (``delivery``/``display``), if a notification did.
    kind: str | None
    #: Notification status that caused it, if a notification did.
    status: str | None
    #: Final SIP status that caused it, if the response did.
    sip_status: int | None
    #: Tracker time of the change.
    at: float


@dataclass(frozen=True, slots=True)
class NotificationAccepted:
    """A verified notification was recorded (``processing`` ones arrive only as this)."""

    #: Message-ID of the message we sent.
    message_id: str
    #: The recipient it was applied to.
    recipient: str
    #: ``delivery``, ``display`` or ``processing``.
    kind: str
    #: Its status value.
    status: str
    #: The notification's own Message-ID, if it had one.
    notification_id: str | None
    #: Whether it moved the main state (a :class:`DispositionChanged` follows if so).
    changed: bool


@dataclass(frozen=True, slots=True)
class NotificationRejected:
    """A received notification failed a check and was not applied (log it; answer 200 anyway)."""

    #: The Message-ID it named (possibly one we never sent).
    message_id: str
    #: Which check failed.
    reason: RejectReason
    #: The kind and status as received (unnormalised, for the log).
    kind: str
    status: str
    #: The sender it claimed (CPIM From, else SIP From), for the log.
    sender: str | None
    #: Human explanation.
    detail: str


@dataclass(frozen=True, slots=True)
class TrackingEnded:
    """No further notification is awaited for a sent message; its record is dropped."""

    #: Message-ID of the message we sent.
    message_id: str
    #: Final ``(recipient URI, state)`` of every recipient.
    states: tuple[tuple[str, DispositionState], ...]


@dataclass(frozen=True, slots=True)
class NotificationOwed:
    """Send this IMDN now, then report with :meth:`DispositionTracker.notification_outcome`."""

    #: Everything needed to build, route and identify the IMDN.
    notification: OwedRecord


@dataclass(frozen=True, slots=True)
class NotificationAbandoned:
    """An owed notification was given up."""

    #: The IMDN's own Message-ID.
    notification_id: str
    #: Message-ID of the received message it was about.
    message_id: str
    #: ``attempts-exhausted``, ``peer-refuses-imdn``, ``rejected-<status>`` or ``expired``.
    reason: str


@dataclass(frozen=True, slots=True)
class NotificationsDeclined:
    """Requested notifications we will not send (or route differently), and why."""

    #: Message-ID of the received message.
    message_id: str
    #: Its sender, as given to :meth:`DispositionTracker.record_received`.
    sender: str
    #: The affected kinds (request tokens).
    kinds: tuple[str, ...]
    #: Why.
    reason: DeclineReason


TrackerEvent = (
    DispositionChanged
    | NotificationAccepted
    | NotificationRejected
    | TrackingEnded
    | NotificationOwed
    | NotificationAbandoned
    | NotificationsDeclined
)


@dataclass(frozen=True, slots=True)
class Reception:
    """What :meth:`DispositionTracker.record_received` found out about a received message."""

    #: The same (sender, Message-ID) was received before: answer it, do not hand it up again.
    duplicate: bool
    #: The final status answered to the first copy, if it was decided.
    previous_status: int | None
    #: The notification kinds we may still honour for it (after policy).
    requested: tuple[str, ...]


# --- configuration ---------------------------------------------------------------------------------

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
    #: Owe a positive delivery notification automatically after a 2xx (RFC 5438 §7.2, IMDN-35).
    auto_delivered: bool = True
    #: Default display policy (C7).
    display_policy: DisplayPolicy = DisplayPolicy.SEND
    #: A sent message stays in the store this long after its deadline, so an expiry that fell
    #: while the UA was down is still reported after a restart.
    expiry_report_grace: float = 7 * _DAY
    #: Compare ports when matching identities (off: AORs have none and liblinphone drops them).
    compare_ports: bool = False
    #: Most IMDN-Record-Route entries honoured (C5).
    max_imdn_route: int = 4
    #: Whether IMDN-Record-Route is honoured by default (C5: only from trusted paths).
    trust_imdn_route: bool = False
    #: Most recipients (intended plus list members learnt from notifications) per sent message;
    #: a notification naming one more member is rejected as ``too-many-recipients``.
    max_recipients: int = 256
    #: Replay guard: notification Message-IDs remembered per sent message.
    max_notification_ids: int = 64
    #: How long peer flags (``no-imdn``...) are remembered, so an upgraded peer gets another chance.
    peer_flag_ttl: float = 30 * _DAY
    #: C6: at most this many notifications generated for the messages of one originator (the
    #: IM's SIP From, else its CPIM From; not the IMDN-Route hop) within ``rate_window`` seconds.
    rate_limit: int = 120
    rate_window: float = 60.0
    #: IMDN-42: ignore notification requests from anonymous senders.
    decline_anonymous: bool = True

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
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_attempts", "max_recipients", "rate_limit", "max_notification_ids"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_imdn_route < 0:
            raise ValueError("max_imdn_route must not be negative")
        object.__setattr__(self, "display_policy", DisplayPolicy(str(self.display_policy)))


# --- identities ------------------------------------------------------------------------------------

# sip, sips, im and pres URIs name the same kind of identity (an AOR); CPIM
# From/To often use im: where SIP uses sip:, so they compare equal.
_SIP_FAMILY = {"sip": 5060, "sips": 5061, "im": 5060, "pres": 5060}
_TEL_VISUAL = str.maketrans("", "", "-.()")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


@functools.lru_cache(maxsize=4096)  # pure, and the same few peers come back all the time
def identity_key(uri: str | None, *, compare_ports: bool = False) -> str | None:
    """Normalise a URI (or ``name-addr``) to a string that is equal for the same identity.

    SIP-like URIs (sip, sips, im, pres) become ``sip:user@host`` with the user
    unescaped (case kept), the host lower-case (IP addresses in canonical
    form), URI parameters, headers and password dropped; with
    ``compare_ports`` a ``:port`` is kept, defaulted to 5060 (5061 for sips).
    ``tel:`` keeps the number without visual separators. Other schemes keep
    their text lower-cased without parameters. Returns None for text that is
    not a URI, which then matches nothing.
    """
    key = _identity(uri, compare_ports)
    # A URI already in normal form (the common case) gives back the caller's own string, so a
    # record that keeps both the URI and its key (a received message's sender) holds one object.
    return uri if key == uri and type(uri) is str else key


def _identity(uri: str | None, compare_ports: bool) -> str | None:
    if uri is None:
        return None
    text = uri.strip()
    if "<" in text:
        start = text.index("<")
        end = text.find(">", start)
        if end < 0:
            return None
        text = text[start + 1 : end].strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    # RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    if not colon or not rest or not _SCHEME.fullmatch(scheme):
        return None
    if scheme in _SIP_FAMILY:
        return _sip_identity(scheme, rest, compare_ports)
    if scheme == "tel":
        number = rest.split(";", 1)[0].translate(_TEL_VISUAL).lower()
        return f"tel:{number}" if number else None
    return f"{scheme}:{rest.split(';', 1)[0].lower()}"


def _sip_identity(scheme: str, rest: str, compare_ports: bool) -> str | None:
    # The user part may not contain an unescaped "@" (RFC 3261 §25.1), so the
    # first "@" ends the userinfo.
    user: str | None = None
    userinfo, at, hostpart = rest.partition("@")
    if at:
        user = unquote(userinfo.split(":", 1)[0])
        if not user:
            return None
    else:
        hostpart = rest
    for stop in (";", "?"):
        hostpart = hostpart.split(stop, 1)[0]
    port_text = ""
    if hostpart.startswith("["):
        close = hostpart.find("]")
        if close < 0:
            return None
        host, port_text = hostpart[1:close], hostpart[close + 1 :]
        if port_text and not port_text.startswith(":"):
            return None
        port_text = port_text[1:]
    else:
        host, _, port_text = hostpart.partition(":")
    host = host.lower().rstrip(".")
    if not host:
        return None
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed
    if ":" in host:
        host = f"[{host}]"
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    who = f"{user}@" if user is not None else ""
    if compare_ports:
        return f"sip:{who}{host}:{port or _SIP_FAMILY[scheme]}"
    return f"sip:{who}{host}"


def is_anonymous(uri: str | None) -> bool:
    """True for RFC 3323 style anonymous identities (``anonymous@anonymous.invalid``) and non-URIs."""
    key = identity_key(uri)
    if key is None:
        return True
    user, _, host = key.partition(":")[2].rpartition("@")
    return user.lower() == "anonymous" or host.endswith(".invalid") or host == "invalid"


def _token(value: object) -> str:
    """Accept plain strings and StrEnum/Enum members alike."""
    raw = getattr(value, "value", value)
    return str(raw)


def _notification_kind(kind: object) -> str | None:
    text = _token(kind).strip().lower()
    text = text.removesuffix("-notification")
    return text if text in ALLOWED_STATUSES else None


# --- the tracker -----------------------------------------------------------------------------------

_SENT, _OWED, _RECEIVED, _SEEN, _PEER = "sent", "owed", "received", "seen", "peer"
_DECLINED = "declined"
_POSITIVE = frozenset({"positive-delivery", "display"})
#: Every sorted combination of request tokens, each one tuple object: a record keeps its
#: requested kinds by reference to one of these instead of a tuple of its own (memory per
#: tracked message; see :func:`_shared_kinds`).
_KIND_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {
    combo: combo
    for size in range(len(REQUEST_KINDS) + 1)
    for combo in itertools.combinations(sorted(REQUEST_KINDS), size)
}
#: The C6 limiter drops idle originators once it holds more than this many (or twice what
#: survived the last pruning).
_RATE_PRUNE_MIN = 4 * 4096
#: The timer heap is never swept of stale entries while it holds at most this many.
_HEAP_SWEEP_MIN = 4096
#: Most distinct CPIM To / Original-To strings kept for sharing between received records.
_COMMON_TEXTS_MAX = 256
#: Dedup entries and received records share one key space (and usually one deadline).
_RECEIVED_SPACE = (_SEEN, _RECEIVED)

#: In memory, dedup entries and received records are keyed by ``(sender key, Message-ID)``: a
#: pair of the strings the records hold anyway, where their store key (:func:`received_key`)
#: would be a third string per message. Every other table uses its store key.
_MemKey = str | tuple[str, str]


def _store_key(key: _MemKey) -> str:
    return key if isinstance(key, str) else received_key(*key)


class DispositionTracker:
    """Sans-IO state of sent and received messages' notifications (see the module docstring).

    ``snapshot`` (from :meth:`Store.load <sipimdn.store.base.Store.load>`)
    resumes a previous run at time ``now``. ``id_factory`` makes the
    Message-IDs of the notifications we send (default: 128 random bits in
    hex, a valid CPIM Token; IMDN-12/13).
    """

    def __init__(
        self,
        config: TrackerConfig | None = None,
        *,
        snapshot: Snapshot | None = None,
        now: float = 0.0,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.config = config or TrackerConfig()
        self._new_id = id_factory or (lambda: secrets.token_hex(16))
        self._sent: dict[str, SentRecord] = {}
        self._owed: dict[str, OwedRecord] = {}
        self._received: dict[tuple[str, str], ReceivedRecord] = {}
        # Message-ID -> received key, or a list of them: almost always one sender per
        # Message-ID, so the key itself (no container per tracked message).
        self._received_by_id: dict[str, tuple[str, str] | list[tuple[str, str]]] = {}
        self._seen: dict[tuple[str, str], SeenRecord] = {}
        self._peers: dict[str, PeerRecord] = {}
        self._events: deque[TrackerEvent] = deque()
        self._writes: list[StoreOp] = []
        # Timers: (deadline, seq, table, key). An entry goes stale (is skipped) when its record is
        # deleted or gets another deadline; stale entries are dropped when they reach the top
        # and, in bulk, once they may be a quarter of the heap (_push). _unswept counts what
        # may have made an entry stale since the last sweep (an upper bound on stale entries).
        self._heap: list[tuple[float, int, str, _MemKey]] = []
        self._unswept = 0
        self._seq = 0
        # C6: originator key -> times of the notifications generated for it within the window.
        self._rate: dict[str, float | list[float]] = {}
        # Received messages' CPIM To / Original-To values, one object each (_common_text).
        self._common: dict[str, str] = {}
        self._rate_prune_at = _RATE_PRUNE_MIN
        self._tables: dict[str, dict[Any, Any]] = {
            _SENT: self._sent,
            _OWED: self._owed,
            _RECEIVED: self._received,
            _SEEN: self._seen,
            _PEER: self._peers,
        }
        if snapshot is not None:
            self._restore(snapshot, now)

    # --- outputs -------------------------------------------------------------------------------

    def next_event(self) -> TrackerEvent | None:
        """The next event, in the order their causes happened, or None."""
        return self._events.popleft() if self._events else None

    def writes_to_apply(self) -> list[StoreOp]:
        """Store operations produced since the last call; apply them in this order."""
        writes, self._writes = self._writes, []
        return writes

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        heap = self._heap
        while heap and not self._live(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Run everything due at or before ``now``: expiries, retries, give-ups, housekeeping."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, seq, table, key = heapq.heappop(heap)
            if not self._live(when, seq, table, key):
                continue
            if isinstance(key, tuple):
                # The received space. One entry may serve a dedup entry and a received record
                # with this deadline: its own table first (the order the two entries had before
                # they were merged).
                for name in (table, _RECEIVED if table == _SEEN else _SEEN):
                    if self._deadline(name, key) == when:
                        self._delete(name, key)
            elif table == _SENT:
                self._end_tracking(self._sent[key], now, expire=True)
            elif table == _OWED:
                self._owed_due(self._owed[key], now)
            else:
                self._delete(table, key)

    # --- sender side ---------------------------------------------------------------------------

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
        kinds = {_token(kind) for kind in requested}
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
            requested=_shared_kinds(kinds),
            intermediaries=hops,
            created_at=now,
            deadline=deadline,
            expires_at=deadline + self.config.expiry_report_grace,
            metadata=tuple(sorted((metadata or {}).items())),
        )
        self._put(record)
        return record

    def response_received(
        self, message_id: str, status_code: int, now: float, *, imdn_dropped: bool = False
    ) -> bool:
        """Apply the final SIP response to a sent message (408 for a timeout, 503 for transport loss).

        Report the outcome of the whole send once (after any 415 -> text/plain
        fallback); ``imdn_dropped=True`` says the message finally went out
        without CPIM, so no notification can come and tracking ends now.
        Returns False for an unknown Message-ID or a second final response.
        """
        record = self._sent.get(message_id)
        if record is None or record.sip_status is not None:
            return False
        if status_code < 200:
            return True
        step = _Input.SIP_OK if 200 <= status_code < 300 else _Input.SIP_FAIL
        record = replace(record, sip_status=status_code)
        record = self._advance_all(record, step, now, sip_status=status_code, only_pending=True)
        self._put(record)
        if imdn_dropped or not self._can_change(record):
            self._end_tracking(record, now, expire=False)
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
    ) -> bool:
        """Check and apply a received notification; True iff it was verified and recorded.

        ``sender`` is the IMDN's CPIM From, ``sip_from`` its SIP From URI,
        ``notification_id`` its own ``imdn.Message-ID``. Never raises for
        peer data: a refusal is a :class:`NotificationRejected` event.
        """
        kind_text, status_text = _token(kind), _token(status)
        claimed = sender or sip_from

        def reject(reason: RejectReason, detail: str) -> bool:
            self._emit(NotificationRejected(message_id, reason, kind_text, status_text, claimed, detail))
            return False

        norm_kind = _notification_kind(kind)
        if norm_kind is None:
            return reject(RejectReason.UNKNOWN_KIND, f"unknown notification kind {kind_text!r}")
        if status_text not in ALLOWED_STATUSES[norm_kind]:
            return reject(RejectReason.INVALID_STATUS, f"{status_text!r} is not a {norm_kind} status")
        record = self._sent.get(message_id)
        if record is None:
            return reject(RejectReason.UNKNOWN_MESSAGE, "no message with this Message-ID is awaited")
        sender_keys = [k for k in (self._key(sender), self._key(sip_from)) if k is not None]
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
            record = replace(record, recipients=(*record.recipients, entry))
        if notification_id is not None:
            ids = (*record.notification_ids, notification_id)[-self.config.max_notification_ids :]
            record = replace(record, notification_ids=ids)
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
        return True

    def sent(self, message_id: str) -> SentRecord | None:
        """The tracked state of a sent message, or None once tracking ended."""
        return self._sent.get(message_id)

    # --- receiver side -------------------------------------------------------------------------

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
        ignored, IMDN-30), ``imdn_route`` its IMDN-Record-Route values in
        order, ``recipient`` its CPIM To, ``datetime`` its raw DateTime.
        ``is_notification`` marks an IMDN (never owed anything, C4). The same
        ``sender`` string names the message in later calls
        (:meth:`message_answered`, :meth:`mark_displayed`, :meth:`report_disposition`).
        """
        sender_key = self._sender_key(sender)
        key = (sender_key, message_id)
        seen = self._seen.get(key)
        if seen is not None:
            return Reception(duplicate=True, previous_status=seen.status, requested=())
        dedup_expiry = now + self.config.dedup_ttl
        # The key is made once here and shared by the dedup entry, the received record's table
        # slot, the Message-ID index and their timer (memory per tracked message).
        self._put(SeenRecord(sender_key, message_id, None, dedup_expiry), key=key)
        kinds = sorted({_token(k) for k in requested} & {"positive-delivery", "negative-delivery", "display"})
        if not kinds:
            return Reception(duplicate=False, previous_status=None, requested=())

        def decline(which: Sequence[str], reason: DeclineReason) -> None:
            self._emit(NotificationsDeclined(message_id, sender, tuple(which), reason))

        if is_notification:
            decline(kinds, DeclineReason.LOOP_GUARD)
            return Reception(duplicate=False, previous_status=None, requested=())
        # RCS clients put an anonymous CPIM From on messages whose SIP From is real (peers.md):
        # the SIP identity decides, and it is also where the IMDN is routed.
        if self.config.decline_anonymous and is_anonymous(sip_from if sip_from else sender):
            decline(kinds, DeclineReason.ANONYMOUS)
            return Reception(duplicate=False, previous_status=None, requested=())
        route = tuple(imdn_route)
        trusted = self.config.trust_imdn_route if route_trusted is None else route_trusted
        if route and not trusted:
            decline(kinds, DeclineReason.ROUTE_UNTRUSTED)
            route = ()
        elif len(route) > self.config.max_imdn_route:
            decline(kinds, DeclineReason.ROUTE_TOO_LONG)
            route = ()
        target = route[0] if route else (sip_from or sender)
        if PEER_NO_IMDN in self.peer_flags(target):
            decline(kinds, DeclineReason.PEER_REFUSES_IMDN)
            return Reception(duplicate=False, previous_status=None, requested=())
        policy = DisplayPolicy(_token(display_policy)) if display_policy is not None else None
        policy = policy or self.config.display_policy
        if "display" in kinds and policy is DisplayPolicy.SILENT:
            decline(["display"], DeclineReason.PRIVACY)
            kinds.remove("display")
            if not kinds:
                return Reception(duplicate=False, previous_status=None, requested=())
        requested_kinds = _shared_kinds(kinds)
        # With the default TTLs both entries expire together: one float object, and one timer
        # entry serves both (see _put).
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
        self._put(
            ReceivedRecord(
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
                display_policy=policy.value,
                received_at=now,
                expires_at=received_expiry,
            ),
            key=key,
        )
        return Reception(duplicate=False, previous_status=None, requested=requested_kinds)

    def message_answered(self, message_id: str, sender: str, status_code: int, now: float) -> None:
        """Record the final status we answered; a 2xx creates the notifications owed at once.

        ``sender`` is the same value given to :meth:`record_received`. Raises
        :class:`~sipimdn.errors.LocalProtocolError` for a provisional status.
        """
        if status_code < 200:
            raise LocalProtocolError(f"{status_code} is not a final status")
        sender_key = self._sender_key(sender)
        key = (sender_key, message_id)
        seen = self._seen.get(key)
        if seen is not None and seen.status is None:
            self._put(replace(seen, status=status_code), key=key)
        record = self._received.get(key)
        if record is None or record.answered_status is not None:
            return
        if status_code >= 300:
            # IMDN-37: after a non-2xx answer no delivery notification of any kind is sent.
            self._delete(_RECEIVED, key)
            return
        record = replace(record, answered_status=status_code)
        if "positive-delivery" in record.requested and self.config.auto_delivered:
            record = self._owe(record, "delivery", "delivered", now)
        if "display" in record.requested and record.display_policy == DisplayPolicy.FORBIDDEN:
            record = self._owe(record, "display", "forbidden", now)
        self._settle_received(record)

    def mark_displayed(self, message_id: str, now: float, sender: str | None = None) -> OwedRecord | None:
        """The application showed the message: owe ``displayed`` if requested and the policy allows.

        Returns the owed notification, or None when nothing is owed (not
        requested, already owed, policy). Raises
        :class:`~sipimdn.errors.LocalProtocolError` if the message has not been
        answered yet (IMDN-38) or ``sender`` is needed to tell two messages apart.
        """
        record = self._find_received(message_id, sender)
        if record is None or "display" not in record.requested or record.display_owed is not None:
            return None
        if record.answered_status is None:
            raise LocalProtocolError("answer the message before marking it displayed (IMDN-38)")
        if record.display_policy != DisplayPolicy.SEND:
            return None
        record = self._owe(record, "display", "displayed", now)
        self._settle_received(record)
        return self._last_owed(record, "display")

    def report_disposition(
        self, message_id: str, kind: object, status: object, now: float, sender: str | None = None
    ) -> OwedRecord | None:
        """The application reports an outcome: owe the matching notification if it was requested.

        ``kind`` is ``delivery`` (``delivered``, ``failed``, ``forbidden``,
        ``error``) or ``display`` (``displayed``, ``forbidden``, ``error``).
        Returns None when that notification was not requested (or display
        policy ``silent``). Raises :class:`~sipimdn.errors.LocalProtocolError`
        for a bad kind or status, a message answered non-2xx (IMDN-37) or not
        yet answered, or a second, different notification of one type (IMDN-32).
        """
        norm_kind = _notification_kind(kind)
        status_text = _token(status)
        if norm_kind is None or norm_kind == "processing":
            raise LocalProtocolError(f"a recipient cannot send {_token(kind)!r} notifications (IMDN-34)")
        if status_text not in ALLOWED_STATUSES[norm_kind]:
            raise LocalProtocolError(f"{status_text!r} is not a {norm_kind} status")
        record = self._find_received(message_id, sender)
        if record is None:
            if self._answered_non_2xx(message_id, sender):
                raise LocalProtocolError("the message was answered with a non-2xx status (IMDN-37)")
            return None
        if record.answered_status is None:
            raise LocalProtocolError("answer the message before reporting its disposition")
        if not was_requested(record.requested, norm_kind, status_text):
            return None
        already = record.delivery_owed if norm_kind == "delivery" else record.display_owed
        if already in {status_text, _DECLINED}:
            return None
        if already is not None:
            raise LocalProtocolError(f"a {norm_kind} notification ({already}) is already owed (IMDN-32)")
        if norm_kind == "display" and record.display_policy == DisplayPolicy.SILENT:
            return None
        record = self._owe(record, norm_kind, status_text, now)
        self._settle_received(record)
        return self._last_owed(record, norm_kind)

    def notification_outcome(self, notification_id: str, status_code: int | None, now: float) -> None:
        """Report how the IMDN MESSAGE we sent was answered (None: timeout or transport failure)."""
        owed = self._owed.get(notification_id)
        if owed is None or not owed.in_flight:
            return  # late outcome of something already settled or given up
        if status_code is not None and status_code < 200:
            return
        if status_code is not None and 200 <= status_code < 300:
            self._delete(_OWED, notification_id)
        elif status_code in (415, 488):
            self.set_peer_flag(owed.request_uri, PEER_NO_IMDN, True, now)
            for other in [o for o in self._owed.values() if o.peer_key == owed.peer_key]:
                self._abandon(other, DeclineReason.PEER_REFUSES_IMDN.value)
        elif status_code is None or status_code == 408 or 500 <= status_code < 600:
            self._retry_or_abandon(owed, now)
        else:
            self._abandon(owed, f"rejected-{status_code}")

    def received(self, message_id: str, sender: str | None = None) -> ReceivedRecord | None:
        """A received message that may still be owed a notification, or None."""
        try:
            return self._find_received(message_id, sender)
        except LocalProtocolError:
            return None

    def owed(self) -> tuple[OwedRecord, ...]:
        """Every notification currently owed (queued or in flight)."""
        return tuple(self._owed.values())

    def snapshot(self) -> Snapshot:
        """Everything the tracker holds, as the store would return it (for checks and exports)."""
        return Snapshot(
            sent=tuple(self._sent.values()),
            owed=tuple(self._owed.values()),
            received=tuple(self._received.values()),
            seen=tuple(self._seen.values()),
            peers=tuple(self._peers.values()),
        )

    def is_duplicate(self, message_id: str, sender: str) -> bool:
        """Whether (sender, Message-ID) was already received (without recording anything)."""
        return (self._sender_key(sender), message_id) in self._seen

    # --- peers ---------------------------------------------------------------------------------

    def peer_flags(self, uri: str) -> frozenset[str]:
        """Flags remembered for the peer at ``uri`` (empty if none)."""
        record = self._peers.get(self._key(uri) or uri)
        return frozenset(record.flags) if record is not None else frozenset()

    def set_peer_flag(self, uri: str, flag: str, on: bool, now: float) -> None:
        """Remember (or forget) a capability flag of the peer at ``uri``."""
        key = self._key(uri) or uri
        flags = set(self.peer_flags(uri))
        flags.add(flag) if on else flags.discard(flag)
        if flags:
            self._put(PeerRecord(key, tuple(sorted(flags)), now, now + self.config.peer_flag_ttl))
        elif key in self._peers:
            self._delete(_PEER, key)

    # --- internals: sender side ----------------------------------------------------------------

    def _key(self, uri: str | None) -> str | None:
        key = identity_key(uri, compare_ports=self.config.compare_ports)
        # The cache hands back the first equal string it was given, maybe another message's
        # that is gone by now; the caller's own (kept in its record) is the one to share.
        return uri if key is not uri and key == uri and type(uri) is str else key

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

        A target with a via key and no entry yet is a list member to add.
        """
        known = {entry.key: entry for entry in record.recipients}
        intended = [entry.key for entry in record.recipients if entry.via is None]
        if rkey is not None and rkey in known:
            # A member already known keeps reporting through its list: the list's entry still
            # takes the first news of each type (a display after the delivery, say).
            return rkey, known[rkey].via, None
        if okey is not None and okey in known:
            if rkey is None:
                return okey, None, None
            if okey in intended:
                return rkey, okey, None  # a member reached through a list we addressed
            # Original-To is the URI the sender addressed (RFC 5438 §6.4), never a member:
            # a member cannot vouch for further members.
            return (
                None,
                None,
                (
                    RejectReason.NOT_A_RECIPIENT,
                    "original-recipient-uri names a list member, not a recipient we addressed",
                ),
            )
        for key in sender_keys:
            if key in known:
                return key, None, None
        hops = set(record.intermediaries)
        if hops.intersection(sender_keys) or (okey is not None and okey in hops):
            via = next(k for k in (*sender_keys, okey) if k is not None and k in hops)
            if rkey is not None:
                return rkey, via, None
            if len(intended) == 1:
                return intended[0], None, None
            return None, None, (RejectReason.AMBIGUOUS_RECIPIENT, "intermediary did not name the recipient")
        return None, None, (RejectReason.NOT_A_RECIPIENT, "sender is no recipient of this message")

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
            updated = replace(updated, state=new_state.value, updated_at=now)
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
        self, record: SentRecord, step: _Input, now: float, *, sip_status: int | None, only_pending: bool
    ) -> SentRecord:
        for entry in record.recipients:
            state = DispositionState(entry.state)
            if only_pending and state is not _P:
                continue
            new_state = TRANSITIONS.get((state, step))
            if new_state is None:
                continue
            record = _replace_entry(record, replace(entry, state=new_state.value, updated_at=now))
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
            # (RFC 5438 §7.1.4, IMDN-21), so every member's news is awaited until the deadline.
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
                    record = self._advance_one(record, entry, _Input.EXPIRE, now)
        self._emit(
            TrackingEnded(
                record.message_id,
                tuple((entry.uri, DispositionState(entry.state)) for entry in record.recipients),
            )
        )
        self._delete(_SENT, record.message_id)

    def _advance_one(
        self, record: SentRecord, entry: RecipientRecord, step: _Input, now: float
    ) -> SentRecord:
        state = DispositionState(entry.state)
        new_state = TRANSITIONS.get((state, step))
        if new_state is None:
            return record
        self._emit(DispositionChanged(record.message_id, entry.uri, state, new_state, None, None, None, now))
        return _replace_entry(record, replace(entry, state=new_state.value, updated_at=now))

    # --- internals: receiver side --------------------------------------------------------------

    def _sender_key(self, sender: str) -> str:
        # From ``sender`` alone, so every later call naming the same sender finds the record.
        # A key holds no space, so the (sender key, Message-ID) pair stays unambiguous.
        raw = sender.strip().replace("%", "%25").replace(" ", "%20")
        return self._key(sender) or f"raw:{raw}"

    def _find_received(self, message_id: str, sender: str | None) -> ReceivedRecord | None:
        if sender is not None:
            return self._received.get((self._sender_key(sender), message_id))
        keys = self._received_keys(message_id)
        if len(keys) > 1:
            raise LocalProtocolError(f"several senders used Message-ID {message_id!r}: name the sender")
        return self._received[keys[0]] if keys else None

    def _answered_non_2xx(self, message_id: str, sender: str | None) -> bool:
        if sender is not None:
            seen = self._seen.get((self._sender_key(sender), message_id))
            return seen is not None and seen.status is not None and seen.status >= 300
        return any(
            s.message_id == message_id and s.status is not None and s.status >= 300
            for s in self._seen.values()
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

    def _rate_allows(self, peer_key: str, now: float) -> bool:
        cutoff = now - self.config.rate_window
        rate = self._rate
        window = rate.get(peer_key)
        # An originator's times in the window, oldest first: a bare number while there is one
        # (the usual case: many originators with one message each awaiting notifications would
        # otherwise cost a container each), a list from the second on. Times at or before the
        # cutoff leave from the front, as they came.
        if isinstance(window, list):
            stale = 0
            while stale < len(window) and window[stale] <= cutoff:
                stale += 1
            del window[:stale]
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

    def _owe(self, record: ReceivedRecord, kind: str, status: str, now: float) -> ReceivedRecord:
        """Create one owed notification (or decline it by rate limit) and mark its type used."""
        request_uri = record.imdn_route[0] if record.imdn_route else (record.sip_from or record.sender)
        peer_key = self._key(request_uri) or request_uri
        refused = PEER_NO_IMDN in self.peer_flags(request_uri)
        # C6: limited per originator of the IM, its SIP From (RCS may put a shared anonymous
        # identity in the CPIM From), else its CPIM From. Not per destination: the top
        # IMDN-Route is a list server or store-and-forward relaying for many senders, and one
        # budget for all of them would decline the IMDNs of every sender behind a busy relay.
        # Without a route the destination is that same originator, so a flood still cannot
        # aim more than rate_limit IMDNs per window at one address.
        originator = record.sip_from or record.sender
        rate_key = self._key(originator) or originator
        if refused or not self._rate_allows(rate_key, now):
            token = "display" if kind == "display" else "positive-delivery"
            if kind == "delivery" and status != "delivered":
                token = "negative-delivery"
            reason = DeclineReason.PEER_REFUSES_IMDN if refused else DeclineReason.RATE_LIMITED
            self._emit(NotificationsDeclined(record.message_id, record.sender, (token,), reason))
            return _with_owed(record, kind, _DECLINED)
        owed = OwedRecord(
            notification_id=self._new_id(),
            message_id=record.message_id,
            sender_key=record.sender_key,
            kind=kind,
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
            attempts=0,
            next_attempt_at=now,
            in_flight=False,
            created_at=now,
            expires_at=now + self.config.owed_ttl,
        )
        self._dispatch(owed, now)
        return _with_owed(record, kind, status)

    def _last_owed(self, record: ReceivedRecord, kind: str) -> OwedRecord | None:
        for owed in reversed(self._owed.values()):
            if (
                owed.message_id == record.message_id
                and owed.sender_key == record.sender_key
                and owed.kind == kind
            ):
                return owed
        return None

    def _settle_received(self, record: ReceivedRecord) -> None:
        """Keep a received record while a notification may still be owed for it."""
        requested = set(record.requested)
        delivery_open = (
            bool(requested & {"positive-delivery", "negative-delivery"}) and record.delivery_owed is None
        )
        display_open = "display" in requested and record.display_owed is None
        if delivery_open or display_open:
            self._put(record)
        else:
            self._delete(_RECEIVED, (record.sender_key, record.message_id))

    def _dispatch(self, owed: OwedRecord, now: float) -> None:
        """Hand out the next attempt of an owed notification."""
        owed = replace(
            owed,
            attempts=owed.attempts + 1,
            in_flight=True,
            next_attempt_at=now + self.config.in_flight_timeout,
        )
        self._put(owed)
        self._emit(NotificationOwed(owed))

    def _owed_due(self, owed: OwedRecord, now: float) -> None:
        if now >= owed.expires_at:
            self._abandon(owed, "expired")
        elif owed.in_flight:
            self._retry_or_abandon(owed, now)  # the outcome never came: count it as a timeout
        else:
            self._dispatch(owed, now)

    def _retry_or_abandon(self, owed: OwedRecord, now: float) -> None:
        if owed.attempts >= self.config.max_attempts:
            self._abandon(owed, "attempts-exhausted")
            return
        delay = min(self.config.retry_cap, self.config.retry_base * 2 ** (owed.attempts - 1))
        self._put(replace(owed, in_flight=False, next_attempt_at=now + delay))

    def _abandon(self, owed: OwedRecord, reason: str) -> None:
        self._delete(_OWED, owed.notification_id)
        self._emit(NotificationAbandoned(owed.notification_id, owed.message_id, reason))

    # --- internals: bookkeeping ----------------------------------------------------------------

    def _emit(self, event: TrackerEvent) -> None:
        self._events.append(event)

    def _deadline(self, table: str, key: _MemKey) -> float | None:
        record = self._tables[table].get(key)
        return None if record is None else _deadline_of(record)

    def _live(self, when: float, seq: int, table: str, key: _MemKey) -> bool:
        """Whether a timer entry still stands for a record (else it is stale and skipped)."""
        if self._deadline(table, key) == when:
            return True
        # A dedup entry and a received record of one key and deadline share one entry.
        return (
            table in _RECEIVED_SPACE and self._deadline(_RECEIVED if table == _SEEN else _SEEN, key) == when
        )

    def _put(self, record: AnyRecord, *, write: bool = True, key: _MemKey | None = None) -> None:
        """Store ``record`` in its table; ``key`` (equal to its memory key) shares that key."""
        name = record.TABLE
        table = self._tables[name]
        if key is None:
            key = _mem_key(record)
        old = table.get(key)
        table[key] = record
        if isinstance(record, ReceivedRecord) and old is None and isinstance(key, tuple):
            self._index_received(record.message_id, key)
        if write:
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

    def _push(self, deadline: float, table: str, key: _MemKey) -> None:
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, table, key))
        if self._unswept * 4 > len(heap) > _HEAP_SWEEP_MIN:
            # Entries of records deleted or rescheduled long before their deadline (notifications
            # acknowledged at once, messages settled early) would otherwise stay until then. The
            # sweep keeps the live ones, whose (deadline, seq) order is unchanged. It runs after
            # at least a quarter of the heap's length in deletions and reschedules since the
            # last one (never during a restore, which deletes nothing): amortised O(1) each.
            heap[:] = [entry for entry in heap if self._live(*entry)]
            heapq.heapify(heap)
            self._unswept = 0

    def _index_received(self, message_id: str, key: tuple[str, str]) -> None:
        index = self._received_by_id
        keys = index.get(message_id)
        if keys is None:
            index[message_id] = key
        elif isinstance(keys, tuple):
            if keys != key:
                index[message_id] = [keys, key]
        elif key not in keys:
            keys.append(key)

    def _received_keys(self, message_id: str) -> list[tuple[str, str]]:
        keys = self._received_by_id.get(message_id)
        if keys is None:
            return []
        return [keys] if isinstance(keys, tuple) else list(keys)

    def _delete(self, table: str, key: _MemKey) -> None:
        record = self._tables[table].pop(key, None)
        if record is None:
            return
        self._unswept += 1
        if isinstance(record, ReceivedRecord):
            rest = [k for k in self._received_keys(record.message_id) if k != key]
            if len(rest) > 1:
                self._received_by_id[record.message_id] = rest
            elif rest:
                self._received_by_id[record.message_id] = rest[0]
            else:
                self._received_by_id.pop(record.message_id, None)
        self._writes.append(Delete(table, _store_key(key)))

    def _restore(self, snapshot: Snapshot, now: float) -> None:
        records: list[AnyRecord] = [*snapshot.sent, *snapshot.received, *snapshot.seen, *snapshot.peers]
        # A message's received record and dedup entry have equal keys: one object for both (the
        # table slots, the Message-ID index and the timer entry all hold it).
        keys: dict[_MemKey, _MemKey] = {}
        for record in records:
            key = _mem_key(record)
            self._put(record, write=False, key=keys.setdefault(key, key))
        for stored in sorted(snapshot.owed, key=lambda o: o.created_at):
            # Handed out before the restart but never acknowledged: due again now. The peer
            # recognises the resend by its unchanged Message-ID.
            owed = replace(stored, in_flight=False, next_attempt_at=now) if stored.in_flight else stored
            if owed.next_attempt_at <= now < owed.expires_at:
                self._dispatch(owed, now)
            else:
                self._put(owed, write=False)


def _mem_key(record: AnyRecord) -> _MemKey:
    """The key of ``record`` in the tracker's tables (see :data:`_MemKey`)."""
    if isinstance(record, (ReceivedRecord, SeenRecord)):
        return (record.sender_key, record.message_id)
    return record.key


def _deadline_of(record: AnyRecord) -> float:
    if isinstance(record, OwedRecord):
        return min(record.next_attempt_at, record.expires_at)
    if isinstance(record, SentRecord):
        return record.deadline
    return record.expires_at


def _replace_entry(record: SentRecord, entry: RecipientRecord) -> SentRecord:
    return replace(record, recipients=tuple(entry if e.key == entry.key else e for e in record.recipients))


def was_requested(requested: Sequence[str], kind: str, status: str) -> bool:
    """C3: was this notification asked for? (delivered needs positive, failed needs negative)."""
    if kind == "display":
        return "display" in requested
    if kind == "processing":
        return "processing" in requested
    if status == "delivered":
        return "positive-delivery" in requested
    if status == "failed":
        return "negative-delivery" in requested
    # forbidden / error answer either request
    return "positive-delivery" in requested or "negative-delivery" in requested


def _latest(window: float | list[float]) -> float:
    """The latest time in a C6 window (an emptied list counts as long expired)."""
    if isinstance(window, list):
        return window[-1] if window else float("-inf")
    return window


def _shared_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """``kinds`` sorted, as the shared tuple of :data:`_KIND_TUPLES` when there is one."""
    combo = tuple(sorted(kinds))
    return _KIND_TUPLES.get(combo, combo)


def _with_status(entry: RecipientRecord, kind: str, status: str) -> RecipientRecord:
    if kind == "delivery":
        return replace(entry, delivery=status)
    if kind == "display":
        return replace(entry, display=status)
    return replace(entry, processing=status)


def _with_owed(record: ReceivedRecord, kind: str, status: str) -> ReceivedRecord:
    if kind == "delivery":
        return replace(record, delivery_owed=status)
    return replace(record, display_owed=status)
