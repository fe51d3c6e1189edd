"""A sans-IO REGISTER client (RFC 3261 §10, RFC 5626 instance-id and reg-id).

:class:`RegistrationClient` keeps one address-of-record bound to our contacts
at a registrar. It never sends anything itself; the driving code (the user
agent) does, in this loop::

    reg.register(now)                           # or reg.unregister(now)
    for request in reg.requests_to_send():      # RegisterRequest: URI + headers, no Via
        try:
            response = await stack.send_request(request.to_request(), target)
        except (TransactionTimeout, TransportError) as exc:
            reg.handle_failure(loop.time(), str(exc))
        else:                                   # the FINAL response only
            reg.handle_response_message(response, loop.time())
    # and: reg.handle_timer(now) once now >= reg.get_timer()
    while (event := reg.next_event()) is not None: ...

The client owns Call-ID (constant for the client's life), the From tag and the
CSeq (one higher on every REGISTER, retries included). Digest challenges are
answered through :class:`sipimdn.auth.Authenticator`; 423 raises the requested
expiry to the registrar's Min-Expires; a transport failure or 5xx is retried
with RFC 5626 §4.5 exponential backoff; the binding is refreshed before it
lapses. Responses are read through the SIP core's :class:`~sipimdn.message.Headers`
(compact forms, comma lists) and typed values (:class:`~sipimdn.headers.NameAddr`
for Contact, :class:`~sipimdn.headers.CSeq`); our contacts are recognised with
RFC 3261 §19.1.4 URI equality (§10.3 step 6) or by ``+sip.instance`` (RFC 5626).

Rule 1 (after h11): every state change goes through ``_TRANSITIONS``.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sipimdn._tokens import token_hex
from sipimdn.auth import AuthAttempt, Authenticator
from sipimdn.errors import AuthenticationFailed, LocalProtocolError, SipParseError
from sipimdn.headers import CSeq, NameAddr
from sipimdn.message import Headers, Request, Response
from sipimdn.uri import Uri, identity_key

__all__ = [
    "RegState",
    "RegisterRequest",
    "RegistrationClient",
    "RegistrationEvent",
    "RegistrationExpired",
    "RegistrationFailed",
    "RegistrationSettings",
    "RegistrationSucceeded",
    "Unregistered",
]


# ---------------------------------------------------------------------------
# Settings, requests, events
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationSettings:
    """What to register, and the timing policy."""

    aor: str
    """Address of record, e.g. ``"sip:alice@example.com"`` (To and From of REGISTER)."""
    contacts: tuple[str, ...]
    """Contact URIs to bind, one per listen endpoint (``"sip:alice@192.0.2.1:5070;transport=tcp"``)."""
    registrar_uri: str | None = None
    """Request-URI; None means the AOR's domain (RFC 3261 §10.2: user part and "@" dropped)."""
    expires: int = 3600
    """Requested binding lifetime in seconds."""
    instance_id: str | None = None
    """RFC 5626 instance, a URN such as ``"urn:uuid:..."``: sent as ``+sip.instance``."""
    outbound: bool = False
    """RFC 5626: give each contact a ``reg-id`` (1, 2, ...) and send ``Supported: outbound``."""
    display_name: str | None = None
    """Display name for To/From."""
    refresh_margin: float = 32.0
    """Refresh this long before expiry (at most half the granted time); covers Timer F."""
    retry_base: float = 30.0
    """RFC 5626 §4.5 base-time of the backoff after a failure."""
    retry_max: float = 1800.0
    """RFC 5626 §4.5 max-time of the backoff."""

    def __post_init__(self) -> None:
        if not self.contacts:
            raise LocalProtocolError("registration needs at least one contact")
        if self.expires <= 0:
            raise LocalProtocolError("expires must be positive (use unregister() to remove bindings)")
        if self.outbound and self.instance_id is None:
            raise LocalProtocolError("reg-id requires an instance_id (RFC 5626 §4.2.1)")
        for text in (self.aor, self.registrar_uri or "", self.instance_id or "", *self.contacts):
            if _UNSAFE_RE.search(text):
                raise LocalProtocolError("control character in registration settings")
        for contact in self.contacts:
            try:
                Uri.parse(contact)
            except SipParseError as exc:
                raise LocalProtocolError(f"bad contact URI: {exc.reason}") from None


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """One REGISTER to send: the caller adds Via (a new branch) and serialises it."""

    request_uri: str
    """The Request-URI."""
    headers: tuple[tuple[str, str], ...]
    """To, From, Call-ID, CSeq, Max-Forwards, Contact(s), Expires and any auth headers, in order."""
    call_id: str
    """The Call-ID (also in ``headers``)."""
    cseq: int
    """The CSeq number (also in ``headers``)."""
    expires: int
    """The expiry asked for; 0 for an unregistration."""

    method = "REGISTER"

    def to_request(self) -> Request:
        """This REGISTER as a :class:`sipimdn.message.Request` (no Via yet: the stack stamps it)."""
        return Request("REGISTER", self.request_uri, self.headers)


@dataclass(frozen=True, slots=True)
class RegistrationSucceeded:
    """The registrar accepted our bindings (first registration or a refresh)."""

    aor: str
    """The address of record."""
    expires: int
    """Seconds granted (the smallest over our contacts)."""
    refresh_at: float
    """When the client will refresh: the clock of the ``now`` values given to the client;
    from a :class:`~sipimdn.ua.UserAgent`, wall-clock seconds (:func:`time.time`)."""
    refreshed: bool
    """True for a refresh of a binding that was still live."""


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """A REGISTER failed; ``retry_at`` None means the client gave up (state FAILED)."""

    aor: str
    """The address of record."""
    status_code: int | None
    """The final status, or None for a timeout / transport failure."""
    reason: str
    """What went wrong (never contains secrets)."""
    retry_at: float | None
    """When the client will try again (the clock as ``refresh_at``); None when the failure is permanent."""


@dataclass(frozen=True, slots=True)
class RegistrationExpired:
    """The binding lapsed before a refresh succeeded: we are no longer reachable."""

    aor: str
    """The address of record."""


@dataclass(frozen=True, slots=True)
class Unregistered:
    """Unregistration finished; ``confirmed`` is False if the registrar never said 2xx."""

    aor: str
    """The address of record."""
    confirmed: bool
    """True when the registrar answered 2xx to the expires=0 REGISTER."""


#: What :meth:`RegistrationClient.next_event` returns and ``ua.on_registration`` handlers receive.
RegistrationEvent = RegistrationSucceeded | RegistrationFailed | RegistrationExpired | Unregistered


# ---------------------------------------------------------------------------
# State table
# ---------------------------------------------------------------------------


class RegState(Enum):
    """Where the registration stands."""

    #: Nothing bound, nothing in flight (initial, or after unregistering).
    IDLE = "idle"
    #: A REGISTER in flight; no live binding.
    REGISTERING = "registering"
    #: Bound; waiting for the refresh time.
    REGISTERED = "registered"
    #: Bound; a refresh REGISTER in flight.
    REFRESHING = "refreshing"
    #: A REGISTER failed transiently; waiting for the backoff timer (maybe still bound).
    BACKOFF = "backoff"
    #: An expires=0 REGISTER in flight.
    UNREGISTERING = "unregistering"
    #: Gave up (auth failed, 4xx/6xx); ``register()`` starts again.
    FAILED = "failed"


class _Input(Enum):
    REGISTER = "register()"
    UNREGISTER = "unregister()"
    OK = "2xx"
    RETRY_NOW = "401/407/423 answered"
    TRANSIENT = "timeout, transport error, 408/480/5xx"
    PERMANENT = "other failure"
    REFRESH_DUE = "refresh timer"
    RETRY_DUE = "backoff timer"
    EXPIRED = "binding lapsed"


_S, _I = RegState, _Input
# (state, input) -> next state. Pairs not listed are refused (API calls) or
# ignored (stray timers); what each transition does is in the handlers below.
_TRANSITIONS: dict[tuple[RegState, _Input], RegState] = {
    (_S.IDLE, _I.REGISTER): _S.REGISTERING,
    (_S.FAILED, _I.REGISTER): _S.REGISTERING,
    (_S.REGISTERING, _I.OK): _S.REGISTERED,
    (_S.REGISTERING, _I.RETRY_NOW): _S.REGISTERING,
    (_S.REGISTERING, _I.TRANSIENT): _S.BACKOFF,
    (_S.REGISTERING, _I.PERMANENT): _S.FAILED,
    (_S.REGISTERED, _I.REFRESH_DUE): _S.REFRESHING,
    (_S.REGISTERED, _I.REGISTER): _S.REFRESHING,
    (_S.REFRESHING, _I.OK): _S.REGISTERED,
    (_S.REFRESHING, _I.RETRY_NOW): _S.REFRESHING,
    (_S.REFRESHING, _I.TRANSIENT): _S.BACKOFF,
    (_S.REFRESHING, _I.PERMANENT): _S.FAILED,
    (_S.REFRESHING, _I.EXPIRED): _S.REGISTERING,
    (_S.BACKOFF, _I.RETRY_DUE): _S.REGISTERING,
    (_S.BACKOFF, _I.REGISTER): _S.REGISTERING,
    (_S.BACKOFF, _I.EXPIRED): _S.BACKOFF,
    (_S.REGISTERED, _I.UNREGISTER): _S.UNREGISTERING,
    (_S.REFRESHING, _I.UNREGISTER): _S.UNREGISTERING,
    (_S.REGISTERING, _I.UNREGISTER): _S.UNREGISTERING,
    (_S.BACKOFF, _I.UNREGISTER): _S.UNREGISTERING,
    (_S.UNREGISTERING, _I.OK): _S.IDLE,
    (_S.UNREGISTERING, _I.RETRY_NOW): _S.UNREGISTERING,
    (_S.UNREGISTERING, _I.TRANSIENT): _S.IDLE,
    (_S.UNREGISTERING, _I.PERMANENT): _S.IDLE,
}

# Failures worth retrying later rather than giving up (RFC 5626 §4.5 treats
# flow failures this way; 408/480/5xx say "not now" rather than "never").
_TRANSIENT_STATUS = {408, 480}

_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_EXPIRES = 2**31 - 1  # RFC 3261 §20.19: delta-seconds up to 2**32-1; keep it signed
_MAX_TOO_BRIEF = 3  # 423 rounds in a row before giving up (each must raise Min-Expires)


_DELTA_SECONDS_RE = re.compile(r"[0-9]{1,12}")  # delta-seconds = 1*DIGIT (ASCII digits only)


def _int_or_none(text: str | None) -> int | None:
    if text is None or _DELTA_SECONDS_RE.fullmatch(text.strip()) is None:
        return None
    return min(int(text.strip()), _MAX_EXPIRES)


def _domain_of(aor: str) -> str:
    scheme, _, rest = aor.partition(":")
    hostport = rest.split(";", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}:{hostport}"


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class RegistrationClient:
    """Keeps ``settings.aor`` bound to ``settings.contacts`` at a registrar (sans-IO)."""

    def __init__(
        self,
        settings: RegistrationSettings,
        *,
        authenticator: Authenticator | None = None,
        call_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._contact_uris = tuple(Uri.parse(contact) for contact in settings.contacts)
        self._contact_identities = frozenset(
            key for contact in settings.contacts if (key := identity_key(contact, compare_ports=True))
        )
        self._auth = authenticator
        self.call_id = call_id or token_hex(12)
        """Constant across refreshes (RFC 3261 §10.2: the same Call-ID for the whole boot cycle)."""
        self.from_tag = token_hex(6)
        self._rng = rng or random.Random()
        self._cseq = 0
        self._expires = settings.expires
        self.state = RegState.IDLE
        """The current :class:`RegState`."""
        self._outstanding: RegisterRequest | None = None
        self._attempt: AuthAttempt | None = None
        self._too_brief_rounds = 0
        self._sent_at = 0.0
        self._to_send: deque[RegisterRequest] = deque()
        self._events: deque[RegistrationEvent] = deque()
        self._refresh_at: float | None = None
        self._retry_at: float | None = None
        self._bound_until: float | None = None
        self._failures = 0
        self.granted: int | None = None
        """Seconds the registrar granted last time, None when not bound."""

    # -- outputs ----------------------------------------------------------------

    def requests_to_send(self) -> list[RegisterRequest]:
        """REGISTER requests to send now, oldest first (drains the queue)."""
        out = list(self._to_send)
        self._to_send.clear()
        return out

    def next_event(self) -> RegistrationEvent | None:
        """The next state-change event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline (refresh, retry, or binding expiry), or None."""
        deadlines = [t for t in (self._refresh_at, self._retry_at, self._bound_until) if t is not None]
        return min(deadlines) if deadlines else None

    @property
    def registered(self) -> bool:
        """True while a binding is believed live."""
        return self._bound_until is not None

    @property
    def expires(self) -> int:
        """The expiry the next REGISTER asks for (raised by 423 responses)."""
        return self._expires

    # -- inputs -------------------------------------------------------------------

    def register(self, now: float) -> None:
        """Register (or, when registered, refresh right away). Refused while unregistering."""
        self._transition(_I.REGISTER, api=True)
        self._failures = 0
        self._retry_at = None
        self._send_register(now, self._expires)

    def unregister(self, now: float) -> None:
        """Remove our bindings (expires=0); idempotent. With nothing registered: IDLE at once."""
        if self.state == RegState.UNREGISTERING:
            return  # already under way
        if self.state in (RegState.IDLE, RegState.FAILED):
            self.state = RegState.IDLE
            self._clear_deadlines()
            self._events.append(Unregistered(self.settings.aor, confirmed=False))
            return
        self._transition(_I.UNREGISTER, api=True)
        self._clear_deadlines()
        self._send_register(now, 0)

    def handle_response(self, status_code: int, headers: Sequence[tuple[str, str]], now: float) -> None:
        """Consume the final response to the outstanding REGISTER, given as (name, value) pairs.

        A response whose CSeq/Call-ID does not match the outstanding request is
        ignored (it belongs to an abandoned transaction), as are provisional
        responses. A pair that could not be a header row (a bad name, a line
        break in the value) raises :class:`~sipimdn.errors.LocalProtocolError`.
        """
        self._handle(status_code, Headers(headers), now)

    def handle_response_message(self, response: Response, now: float) -> None:
        """:meth:`handle_response` for a :class:`sipimdn.message.Response`."""
        self._handle(response.status_code, response.headers, now)

    def _handle(self, status_code: int, headers: Headers, now: float) -> None:
        request = self._outstanding
        if request is None or status_code < 200:
            return
        if not self._matches(request, headers):
            return
        self._outstanding = None
        if 200 <= status_code < 300:
            self._on_success(request, headers, now)
        elif status_code in (401, 407):
            self._on_challenge(request, status_code, headers, now)
        elif status_code == 423:
            self._on_too_brief(request, headers, now)
        elif status_code in _TRANSIENT_STATUS or 500 <= status_code < 600:
            retry_after = _int_or_none(headers.get("Retry-After"))
            self._on_transient(now, status_code, f"{status_code} from registrar", retry_after)
        else:
            self._on_permanent(status_code, f"{status_code} from registrar")

    def handle_failure(self, now: float, reason: str = "transport failure") -> None:
        """The outstanding REGISTER got no response (Timer F) or could not be sent."""
        if self._outstanding is None:
            return
        self._outstanding = None
        self._on_transient(now, None, reason, None)

    def handle_timer(self, now: float) -> None:
        """Act on whichever deadlines have passed."""
        if self._bound_until is not None and now >= self._bound_until:
            self._bound_until = None
            self.granted = None
            self._refresh_at = None
            self._events.append(RegistrationExpired(self.settings.aor))
            if self.state == RegState.REGISTERED:
                # A refresh should have been under way (the clock jumped); start one now.
                self._transition(_I.REFRESH_DUE)
                self._send_register(now, self._expires)
            if self.state == RegState.REFRESHING:
                self._transition(_I.EXPIRED)
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            if self.state == RegState.REGISTERED:
                self._transition(_I.REFRESH_DUE)
                self._send_register(now, self._expires)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            if self.state == RegState.BACKOFF:
                self._transition(_I.RETRY_DUE)
                self._send_register(now, self._expires)

    # -- handlers -------------------------------------------------------------------

    def _on_success(self, request: RegisterRequest, headers: Headers, now: float) -> None:
        if self._attempt is not None:
            self._attempt.handle_success(headers.get("Authentication-Info"))
        self._attempt = None
        self._too_brief_rounds = 0
        if request.expires == 0:
            self._transition(_I.OK)
            self._clear_deadlines()
            self.granted = None
            self._events.append(Unregistered(self.settings.aor, confirmed=True))
            return
        granted = self._granted(headers, request.expires)
        if granted <= 0:
            # The registrar listed none of our contacts as bound: treat as a refusal.
            self._on_permanent(200, "registrar did not bind our contact")
            return
        refreshed = self._bound_until is not None
        self._transition(_I.OK)
        self._failures = 0
        self.granted = granted
        self._bound_until = self._sent_at + granted
        margin = min(granted / 2, self.settings.refresh_margin)
        self._refresh_at = self._sent_at + granted - margin
        self._retry_at = None
        self._events.append(
            RegistrationSucceeded(self.settings.aor, granted, self._refresh_at, refreshed=refreshed)
        )

    def _on_challenge(
        self, request: RegisterRequest, status_code: int, headers: Headers, now: float
    ) -> None:
        if self._auth is None or self._attempt is None:
            self._on_permanent(status_code, f"{status_code}: registrar wants credentials and none are set")
            return
        header = "WWW-Authenticate" if status_code == 401 else "Proxy-Authenticate"
        try:
            self._attempt.handle_challenge(status_code, headers.get_all(header))
        except AuthenticationFailed as exc:
            self._on_permanent(status_code, str(exc))
            return
        self._transition(_I.RETRY_NOW)
        self._send_register(now, request.expires, keep_attempt=True)

    def _on_too_brief(self, request: RegisterRequest, headers: Headers, now: float) -> None:
        minimum = _int_or_none(headers.get("Min-Expires"))
        self._too_brief_rounds += 1
        if (
            minimum is None
            or minimum <= request.expires
            or request.expires == 0
            or self._too_brief_rounds > _MAX_TOO_BRIEF
        ):
            # RFC 3261 §10.3 step 7 requires Min-Expires; without a larger one, retrying would loop.
            self._too_brief_rounds = 0
            self._on_permanent(423, "423 Interval Too Brief without a usable Min-Expires")
            return
        self._expires = minimum
        self._transition(_I.RETRY_NOW)
        self._send_register(now, minimum)

    def _on_transient(
        self, now: float, status_code: int | None, reason: str, retry_after: int | None
    ) -> None:
        self._attempt = None
        if self.state == RegState.UNREGISTERING:
            self._transition(_I.TRANSIENT)
            self._bound_until = None
            self.granted = None
            self._events.append(Unregistered(self.settings.aor, confirmed=False))
            return
        self._transition(_I.TRANSIENT)
        # RFC 5626 §4.5: W = min(max-time, base-time * 2^failures) * uniform(0.5, 1).
        wait = min(self.settings.retry_max, self.settings.retry_base * 2**self._failures)
        wait *= self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, float(retry_after))
        self._failures += 1
        self._retry_at = now + wait
        self._refresh_at = None
        self._events.append(RegistrationFailed(self.settings.aor, status_code, reason, self._retry_at))

    def _on_permanent(self, status_code: int, reason: str) -> None:
        self._attempt = None
        if self.state == RegState.UNREGISTERING:
            self._transition(_I.PERMANENT)
            self._bound_until = None
            self.granted = None
            self._events.append(Unregistered(self.settings.aor, confirmed=False))
            return
        self._transition(_I.PERMANENT)
        self._clear_deadlines()
        self.granted = None
        self._events.append(RegistrationFailed(self.settings.aor, status_code, reason, None))

    # -- helpers ----------------------------------------------------------------------

    def _transition(self, event: _Input, *, api: bool = False) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            if api:
                raise LocalProtocolError(f"cannot {event.value} in state {self.state.value}") from None
            raise LocalProtocolError(  # pragma: no cover - a handler bug, not a peer's doing
                f"registration: no transition for {event.value} in state {self.state.value}"
            ) from None

    def _clear_deadlines(self) -> None:
        self._refresh_at = None
        self._retry_at = None
        self._bound_until = None

    def _matches(self, request: RegisterRequest, headers: Headers) -> bool:
        cseq_text = headers.get("CSeq")
        if cseq_text is not None:
            try:
                cseq = CSeq.parse(cseq_text)
            except SipParseError:
                return False
            if cseq.number != request.cseq or cseq.method.upper() != "REGISTER":
                return False
        call_id = headers.get("Call-ID")
        return call_id is None or call_id.strip() == request.call_id

    def _contact_values(self, expires: int) -> list[str]:
        values = []
        for index, uri in enumerate(self.settings.contacts):
            value = f"<{uri}>"
            if self.settings.instance_id is not None:
                value += f';+sip.instance="<{self.settings.instance_id}>"'
            if self.settings.outbound:
                value += f";reg-id={index + 1}"
            if expires == 0:
                value += ";expires=0"
            values.append(value)
        return values

    def _granted(self, headers: Headers, asked: int) -> int:
        """Seconds granted: our Contacts' ``expires``, else Expires, else what we asked."""
        instance = self.settings.instance_id
        found: list[int] = []
        listed_any = False
        for item in headers.get_all("Contact"):
            listed_any = True
            try:
                contact = NameAddr.parse(item)
            except SipParseError:
                # A binding whose parameters we cannot read (say ``expires=`` with non-ASCII
                # digits): if its address is one of ours, the header Expires tells the time.
                if identity_key(item, compare_ports=True) in self._contact_identities:
                    found.append(-1)
                continue
            same_instance = (
                instance is not None and (contact.params.get("+sip.instance") or "").strip("<>") == instance
            )
            if same_instance or contact.uri in self._contact_uris:
                expires = _int_or_none(contact.params.get("expires"))
                found.append(expires if expires is not None else -1)
        header = _int_or_none(headers.get("Expires"))
        fallback = header if header is not None else asked
        if found:
            return min(value if value >= 0 else fallback for value in found)
        if listed_any:
            return 0  # the registrar listed bindings, none of them ours
        return fallback

    def _send_register(self, now: float, expires: int, *, keep_attempt: bool = False) -> None:
        self._cseq += 1
        request_uri = self.settings.registrar_uri or _domain_of(self.settings.aor)
        if not keep_attempt or self._attempt is None:
            self._attempt = self._auth.start("REGISTER", request_uri) if self._auth is not None else None
        name = self.settings.display_name
        aor = f'"{name}" <{self.settings.aor}>' if name else f"<{self.settings.aor}>"
        headers: list[tuple[str, str]] = [
            ("To", aor),
            ("From", f"{aor};tag={self.from_tag}"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
            ("Max-Forwards", "70"),
        ]
        headers += [("Contact", value) for value in self._contact_values(expires)]
        headers.append(("Expires", str(expires)))
        if self.settings.outbound:
            headers.append(("Supported", "outbound, path"))
        if self._attempt is not None:
            headers += self._attempt.headers
        request = RegisterRequest(request_uri, tuple(headers), self.call_id, self._cseq, expires)
        self._outstanding = request
        self._sent_at = now
        self._to_send.append(request)

