"""Non-INVITE client and server transactions (RFC 3261 §17.1.2, §17.2.2; RFC 4320), sans-IO.

Theory of operation
-------------------
Rule 1: everything that decides what a transaction does next lives in the two tables at the bottom
of this module, ``CLIENT_TRANSITIONS`` and ``SERVER_TRANSITIONS``. Each maps ``(state, input)`` to
``(side effect, next state)``; a pair missing from a table is our own bug and raises
``LocalProtocolError``. Rule 2: a transaction knows nothing about SIP syntax. Messages are opaque
values; the only thing it ever asks of a response is its ``status_code`` (1xx or final).

Each transaction keeps at most two deadlines (the PJSIP shape): a *retransmit* deadline and a
*timeout* deadline.

client  retransmit = Timer E (unset on reliable transports)
        timeout    = Timer F while waiting for a final response, then Timer K in Completed
server  retransmit = the RFC 4320 "100 Trying" deadline while in Trying
        timeout    = the give-up deadline while waiting for the TU, then Timer J in Completed

Inputs carry ``now``; ``get_timer()`` reports the earliest deadline and ``handle_timer(now)`` fires
whatever is due. Side effects are returned as a list of ``Action`` values (``Send``, ``Deliver``,
``Fail``) for the layer above to carry out, so this module never touches a socket or a clock.

RFC 4320 changes to the server side (applied here, not left to the application):

* the only provisional response ever sent is "100 Trying", and only by this module, once the
  transaction has waited as long as a client's Timer E takes to reach T2 (3.5 s with the defaults;
  RFC 4320 §4.1 forbids sending it earlier over UDP and requires it after that without an answer);
* no 408 is ever sent (§4.2): a server transaction whose TU never answers ends silently after
  64*T1, by which time the client's Timer F has fired anyway. That give-up deadline is our own
  addition; RFC 3261 leaves such a transaction in Trying forever.

Zero-length timers on reliable transports (K and J) fire on entry to Completed instead of being
scheduled, so a TCP transaction ends in the same call that completed it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeAlias, TypeVar

from .._fastinit import maker
from ..errors import LocalProtocolError

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "Action",
    "ClientTransaction",
    "Deliver",
    "Fail",
    "Failure",
    "Send",
    "ServerTransaction",
    "TimerConfig",
    "TxInput",
    "TxState",
]


class _HasStatus(Protocol):
    @property
    def status_code(self) -> int: ...


ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT", bound=_HasStatus)
MsgT = TypeVar("MsgT")


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """The RFC 3261 timer base values, in seconds (Appendix A)."""

    #: Round-trip time estimate; E starts here and F, J are 64 times this.
    t1: float = 0.5
    #: Cap on the retransmit interval of non-INVITE requests.
    t2: float = 4.0
    #: Longest time a message lingers in the network; Timer K on unreliable transports.
    t4: float = 5.0

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 < 0:
            raise LocalProtocolError(f"bad timer values t1={self.t1} t2={self.t2} t4={self.t4}")

    @property
    def timer_f(self) -> float:
        """Client transaction timeout, 64*T1."""
        return 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        """How long a completed client transaction absorbs response retransmissions."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """How long a completed server transaction absorbs request retransmissions."""
        return 0.0 if reliable else 64 * self.t1

    @property
    def trying_delay(self) -> float:
        """Time a client's Timer E takes to reach T2 (RFC 4320 §4.1): 0.5+1+2 = 3.5 s by default.

        Until then a server MUST NOT send 100 Trying over UDP; after it, it MUST.
        """
        return _trying_delay(self.t1, self.t2)


@functools.lru_cache(maxsize=64)
def _trying_delay(t1: float, t2: float) -> float:
    # Asked once per server transaction: cached, as the sum is the same for every one.
    elapsed, interval = 0.0, t1
    while interval < t2:
        elapsed += interval
        interval = min(2 * interval, t2)
    return elapsed


class TxState(enum.Enum):
    """States shared by both non-INVITE machines (RFC 3261 Figures 6 and 8)."""

    # Members are singletons compared by identity: hash them in C, not through Enum.__hash__ in
    # Python, as every input looks one (state, input) pair up in a table.
    __hash__ = object.__hash__

    #: Request sent (client) or received (server); no response yet.
    TRYING = "Trying"
    #: A provisional response went by.
    PROCEEDING = "Proceeding"
    #: A final response went by; absorbing retransmissions until K or J.
    COMPLETED = "Completed"
    #: Finished; the layer forgets the transaction.
    TERMINATED = "Terminated"


class TxInput(enum.Enum):
    """Everything that can happen to a transaction; each table accepts a subset."""

    __hash__ = object.__hash__  # see TxState

    #: Client: a provisional response arrived.
    RECV_1XX = "recv 1xx"
    #: Client: a final (200-699) response arrived.
    RECV_FINAL = "recv final"
    #: Server: the request arrived again (a retransmission).
    RECV_REQUEST = "recv request"
    #: Server: the TU handed down a final response.
    SEND_FINAL = "send final"
    #: Client: retransmit the request.
    TIMER_E = "timer E"
    #: Client: give up waiting for a final response.
    TIMER_F = "timer F"
    #: Client: stop absorbing response retransmissions.
    TIMER_K = "timer K"
    #: Server: the RFC 4320 delay has passed without a final response; send 100 Trying.
    TIMER_TRYING = "timer 100"
    #: Server: the TU never answered; end silently (RFC 4320 §4.2, no 408).
    TIMER_GIVE_UP = "timer give-up"
    #: Server: stop absorbing request retransmissions.
    TIMER_J = "timer J"
    #: The transport could not deliver what we sent.
    TRANSPORT_ERROR = "transport error"


class Failure(enum.Enum):
    """Why a transaction ended without a final response."""

    #: Timer F fired (treat as 408, RFC 3261 §8.1.3.1).
    TIMEOUT = "timeout"
    #: The transport reported an error (treat as 503).
    TRANSPORT = "transport"


@dataclass(frozen=True, slots=True)
class Send(Generic[MsgT]):
    """Hand ``message`` to the transport (a request retransmission or a response)."""

    #: What to send.
    message: MsgT


@dataclass(frozen=True, slots=True)
class Deliver(Generic[MsgT]):
    """Pass a received response up to the transaction user."""

    #: The response; at most one final response is ever delivered.
    message: MsgT


@dataclass(frozen=True, slots=True)
class Fail:
    """The transaction ended badly; tell the transaction user."""

    #: What went wrong.
    failure: Failure


Action: TypeAlias = Send[MsgT] | Deliver[MsgT] | Fail

# Send(message) and Deliver(message) without the frozen dataclass __init__: one per response
# sent and one per response received, on the hot path (see sipimdn._fastinit).
_send: Callable[[MsgT], Send[MsgT]] = maker(Send)
_deliver: Callable[[MsgT], Deliver[MsgT]] = maker(Deliver)


class ClientTransaction(Generic[ReqT, RespT]):
    """A non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6).

    Creating one sends the request: the first ``pop_actions()`` holds ``Send(request)``. Feed it
    responses with ``receive_response``, transport trouble with ``transport_error`` and time with
    ``handle_timer``; collect side effects with ``pop_actions``.
    """

    __slots__ = ("_actions", "_interval", "config", "reliable", "request", "retransmissions", "retransmit_at",
                 "state", "timeout_at")

    def __init__(self, request: ReqT, *, reliable: bool, now: float, config: TimerConfig) -> None:
        #: The request, until a final response completes the transaction: Timer K (5 s on UDP)
        #: only absorbs response retransmissions, so the request is let go then (a held
        #: request, its headers and Via are objects the garbage collector walks meanwhile).
        self.request: ReqT | None = request
        self.reliable = reliable
        self.config = config
        self.state = TxState.TRYING
        #: Timer E deadline (None on reliable transports and once completed).
        self.retransmit_at: float | None = None
        #: Timer F, then Timer K.
        self.timeout_at: float | None = now + config.timer_f
        self._interval = config.t1
        #: Timer E retransmissions so far.
        self.retransmissions = 0
        self._actions: list[Action[ReqT | RespT]] = [_send(request)]
        if not reliable:
            self.retransmit_at = now + config.t1

    @classmethod
    def completed(cls, *, timeout_at: float, reliable: bool, config: TimerConfig,
                  retransmissions: int = 0) -> Self:
        """The transaction in Completed exactly as its final response left it: Timer K due at
        ``timeout_at``, after ``retransmissions`` Timer E retransmissions.

        On entry to Completed a transaction lets go of its request (see ``request``) and its
        retransmit deadline, so its Timer K deadline describes it whole. A layer that holds
        thousands of completed transactions for Timer K (5 s on UDP) may therefore keep only
        that, in a form the garbage collector does not walk, and rebuild the transaction with
        this for each input that reaches one (a retransmitted response, a transport error,
        Timer K): the rules stay here, in ``CLIENT_TRANSITIONS``.
        """
        tx = cls.__new__(cls)
        tx.request = None
        tx.reliable = reliable
        tx.config = config
        tx.state = TxState.COMPLETED
        tx.retransmit_at = None
        tx.timeout_at = timeout_at
        tx._interval = config.t2
        tx.retransmissions = retransmissions
        tx._actions = _NO_ACTIONS
        return tx

    # -- inputs -------------------------------------------------------------------------------

    def receive_response(self, response: RespT, now: float) -> None:
        """Feed a response that matched this transaction (§17.1.3)."""
        kind = TxInput.RECV_1XX if response.status_code < 200 else TxInput.RECV_FINAL
        self._fire(kind, now, response)

    def transport_error(self, now: float) -> None:
        """The transport failed to send the request (connection refused, ICMP error, ...)."""
        self._fire(TxInput.TRANSPORT_ERROR, now, None)

    def get_timer(self) -> float | None:
        """The earliest pending deadline, or None."""
        return _earliest(self.retransmit_at, self.timeout_at)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first."""
        for _ in range(4):  # at most E, then F or K; bounded so a bug cannot spin
            due = self.get_timer()
            if due is None or due > now:
                return
            if self.timeout_at is not None and self.timeout_at <= due:
                self._fire(TxInput.TIMER_F if self.state is not TxState.COMPLETED else TxInput.TIMER_K,
                           now, None)
            else:
                self._fire(TxInput.TIMER_E, now, None)

    def pop_actions(self) -> list[Action[ReqT | RespT]]:
        """Side effects produced since the last call, in order."""
        actions = self._actions
        if actions is _NO_ACTIONS:
            return []
        # No list of its own while there is nothing to do: a completed transaction lingers for
        # Timer K (5 s on UDP), and every container it holds is one more for the collector.
        self._actions = _NO_ACTIONS
        return actions

    @property
    def terminated(self) -> bool:
        """True once the transaction is over and can be forgotten."""
        return self.state is TxState.TERMINATED

    # -- the machine ----------------------------------------------------------------------------

    def _emit(self, action: Action[ReqT | RespT]) -> None:
        if self._actions is _NO_ACTIONS:
            self._actions = [action]
        else:
            self._actions.append(action)

    def _fire(self, kind: TxInput, now: float, message: RespT | None) -> None:
        try:
            effect, next_state = CLIENT_TRANSITIONS[(self.state, kind)]
        except KeyError:
            raise LocalProtocolError(f"client transaction cannot take {kind.value!r} in {self.state.value}") \
                from None
        effect(self, now, message)
        self._enter(next_state, now)

    def _enter(self, state: TxState, now: float) -> None:
        if state is self.state:
            return
        self.state = state
        if state is TxState.COMPLETED:
            self.retransmit_at = None
            self.request = None  # see ``request``
            k = self.config.timer_k(self.reliable)
            self.timeout_at = now + k
            if k == 0:
                self._fire(TxInput.TIMER_K, now, None)
        elif state is TxState.TERMINATED:
            self.retransmit_at = self.timeout_at = None

    # side effects; each takes (self, now, message)

    def _nothing(self, now: float, message: RespT | None) -> None:
        pass

    def _retransmit(self, now: float, message: RespT | None) -> None:
        assert self.request is not None  # only in Trying and Proceeding
        self._emit(_send(self.request))
        self.retransmissions += 1
        if self.state is TxState.TRYING:
            self._interval = min(2 * self._interval, self.config.t2)
        else:
            self._interval = self.config.t2  # §17.1.2.2: in Proceeding E is reset to T2
        # Count from when E was due, not from a slightly late wake-up, so loop jitter does not
        # stretch the schedule; after a real stall (a whole interval late) count from now instead
        # of bursting several copies at once.
        due = self.retransmit_at if self.retransmit_at is not None else now
        nxt = due + self._interval
        self.retransmit_at = nxt if nxt > now else now + self._interval

    def _deliver(self, now: float, message: RespT | None) -> None:
        assert message is not None
        self._emit(_deliver(message))

    def _time_out(self, now: float, message: RespT | None) -> None:
        self._emit(Fail(Failure.TIMEOUT))

    def _transport_failed(self, now: float, message: RespT | None) -> None:
        self._emit(Fail(Failure.TRANSPORT))


class ServerTransaction(Generic[ReqT, RespT]):
    """A non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8, with RFC 4320).

    Created when a new request arrives (the layer reports it to the TU). Retransmissions of the
    request go to ``receive_request`` and never reach the TU; the TU's final answer goes to
    ``respond``. ``make_trying(request)`` builds the "100 Trying" this transaction sends by itself
    if the TU has not answered within ``TimerConfig.trying_delay``.
    """

    # Slots, and no list of actions while there are none: a completed UDP transaction lingers
    # for Timer J (32 s) with only its state, deadline and last response, and at thousands of
    # requests a second every object and dict it keeps is walked by the garbage collector.
    __slots__ = ("_actions", "_make_trying", "_pending", "config", "last_response", "reliable", "request",
                 "retransmit_at", "state", "timeout_at")

    def __init__(self, request: ReqT, *, reliable: bool, now: float, config: TimerConfig,
                 make_trying: Callable[[ReqT], RespT]) -> None:
        #: The request, until the transaction completes: from then on only ``last_response`` is
        #: needed (to answer retransmissions for Timer J, 32 s on UDP), so the request and its
        #: body are let go rather than held by every completed transaction.
        self.request: ReqT | None = request
        self.reliable = reliable
        self.config = config
        self.state = TxState.TRYING
        self.last_response: RespT | None = None
        #: When 100 Trying becomes due (only in Trying).
        self.retransmit_at: float | None = now + config.trying_delay
        #: Give-up deadline, then Timer J.
        self.timeout_at: float | None = now + config.timer_f
        self._make_trying: Callable[[ReqT], RespT] | None = make_trying
        self._pending: RespT | None = None
        self._actions: list[Action[ReqT | RespT]] = _NO_ACTIONS

    @classmethod
    def completed(cls, last_response: RespT, *, timeout_at: float, reliable: bool,
                  config: TimerConfig) -> Self:
        """The transaction in Completed exactly as ``respond`` left it: ``last_response`` sent,
        Timer J due at ``timeout_at``.

        On entry to Completed a transaction lets go of everything but its final response and its
        Timer J deadline (see ``request``), so those two values describe it whole. A layer that
        holds thousands of completed transactions for Timer J (32 s on UDP) may therefore keep
        only them, in a form the garbage collector does not walk, and rebuild the transaction
        with this for each input that reaches one (a retransmitted request, a late answer, a
        transport error, Timer J): the rules stay here, in ``SERVER_TRANSITIONS``.
        """
        tx = cls.__new__(cls)
        tx.request = None
        tx.reliable = reliable
        tx.config = config
        tx.state = TxState.COMPLETED
        tx.last_response = last_response
        tx.retransmit_at = None
        tx.timeout_at = timeout_at
        tx._make_trying = None
        tx._pending = None
        tx._actions = _NO_ACTIONS
        return tx

    # -- inputs -------------------------------------------------------------------------------

    def receive_request(self, now: float) -> None:
        """The request arrived again: absorb it, re-sending the last response if there is one."""
        self._fire(TxInput.RECV_REQUEST, now)

    def respond(self, response: RespT, now: float) -> None:
        """The TU's final response (200-699). Provisional ones are this module's business only."""
        if response.status_code < 200:
            raise LocalProtocolError("RFC 4320: only the transaction layer sends 1xx to a non-INVITE request")
        if response.status_code == 408:
            raise LocalProtocolError("RFC 4320 §4.2: no 408 to a non-INVITE request from a stateful element")
        self._pending = response
        self._fire(TxInput.SEND_FINAL, now)

    def transport_error(self, now: float) -> None:
        """The transport failed to send our response."""
        self._fire(TxInput.TRANSPORT_ERROR, now)

    def get_timer(self) -> float | None:
        """The earliest pending deadline, or None."""
        return _earliest(self.retransmit_at, self.timeout_at)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first."""
        for _ in range(4):
            due = self.get_timer()
            if due is None or due > now:
                return
            if self.timeout_at is not None and self.timeout_at <= due:
                self._fire(TxInput.TIMER_J if self.state is TxState.COMPLETED else TxInput.TIMER_GIVE_UP, now)
            else:
                self._fire(TxInput.TIMER_TRYING, now)

    def pop_actions(self) -> list[Action[ReqT | RespT]]:
        """Side effects produced since the last call, in order."""
        actions = self._actions
        if actions is _NO_ACTIONS:
            return []
        self._actions = _NO_ACTIONS
        return actions

    @property
    def terminated(self) -> bool:
        """True once the transaction is over and can be forgotten."""
        return self.state is TxState.TERMINATED

    # -- the machine ----------------------------------------------------------------------------

    def _emit(self, action: Action[ReqT | RespT]) -> None:
        if self._actions is _NO_ACTIONS:
            self._actions = [action]
        else:
            self._actions.append(action)

    def _fire(self, kind: TxInput, now: float) -> None:
        try:
            effect, next_state = SERVER_TRANSITIONS[(self.state, kind)]
        except KeyError:
            raise LocalProtocolError(f"server transaction cannot take {kind.value!r} in {self.state.value}") \
                from None
        effect(self, now)
        self._enter(next_state, now)

    def _enter(self, state: TxState, now: float) -> None:
        if state is self.state:
            return
        self.state = state
        self.retransmit_at = None  # the 100 deadline only lives in Trying
        if state is TxState.COMPLETED:
            self.request = self._make_trying = None  # see ``request``
            j = self.config.timer_j(self.reliable)
            self.timeout_at = now + j
            if j == 0:
                self._fire(TxInput.TIMER_J, now)
        elif state is TxState.TERMINATED:
            self.timeout_at = None

    # side effects; each takes (self, now)

    def _nothing(self, now: float) -> None:
        pass

    def _send_trying(self, now: float) -> None:
        assert self._make_trying is not None and self.request is not None  # only called in Trying
        self.last_response = self._make_trying(self.request)
        self._emit(_send(self.last_response))

    def _send_final(self, now: float) -> None:
        assert self._pending is not None
        self.last_response, self._pending = self._pending, None
        self._emit(_send(self.last_response))

    def _discard_final(self, now: float) -> None:
        self._pending = None  # §17.2.2: later finals from the TU are discarded

    def _resend_last(self, now: float) -> None:
        assert self.last_response is not None
        self._emit(_send(self.last_response))

    def _transport_failed(self, now: float) -> None:
        self._emit(Fail(Failure.TRANSPORT))


#: A transaction's actions while it has none (shared, never appended to: see ``_emit``).
_NO_ACTIONS: list[Any] = []


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


_S = TxState
_I = TxInput
_C = ClientTransaction
_V = ServerTransaction

#: RFC 3261 Figure 6 as data. (state, input) -> (side effect, next state).
CLIENT_TRANSITIONS: dict[tuple[TxState, TxInput], tuple[Callable[..., None], TxState]] = {
    (_S.TRYING, _I.TIMER_E): (_C._retransmit, _S.TRYING),
    (_S.TRYING, _I.RECV_1XX): (_C._deliver, _S.PROCEEDING),
    (_S.TRYING, _I.RECV_FINAL): (_C._deliver, _S.COMPLETED),
    (_S.TRYING, _I.TIMER_F): (_C._time_out, _S.TERMINATED),
    (_S.TRYING, _I.TRANSPORT_ERROR): (_C._transport_failed, _S.TERMINATED),
    (_S.PROCEEDING, _I.TIMER_E): (_C._retransmit, _S.PROCEEDING),
    (_S.PROCEEDING, _I.RECV_1XX): (_C._deliver, _S.PROCEEDING),
    (_S.PROCEEDING, _I.RECV_FINAL): (_C._deliver, _S.COMPLETED),
    (_S.PROCEEDING, _I.TIMER_F): (_C._time_out, _S.TERMINATED),
    (_S.PROCEEDING, _I.TRANSPORT_ERROR): (_C._transport_failed, _S.TERMINATED),
    # Completed: response retransmissions are absorbed, only one final reaches the TU (§17.1.2.1).
    (_S.COMPLETED, _I.RECV_1XX): (_C._nothing, _S.COMPLETED),
    (_S.COMPLETED, _I.RECV_FINAL): (_C._nothing, _S.COMPLETED),
    (_S.COMPLETED, _I.TRANSPORT_ERROR): (_C._nothing, _S.COMPLETED),
    (_S.COMPLETED, _I.TIMER_K): (_C._nothing, _S.TERMINATED),
    # Terminated: anything late is ignored.
    (_S.TERMINATED, _I.RECV_1XX): (_C._nothing, _S.TERMINATED),
    (_S.TERMINATED, _I.RECV_FINAL): (_C._nothing, _S.TERMINATED),
    (_S.TERMINATED, _I.TRANSPORT_ERROR): (_C._nothing, _S.TERMINATED),
}

#: RFC 3261 Figure 8 with RFC 4320 as data. (state, input) -> (side effect, next state).
SERVER_TRANSITIONS: dict[tuple[TxState, TxInput], tuple[Callable[..., None], TxState]] = {
    (_S.TRYING, _I.RECV_REQUEST): (_V._nothing, _S.TRYING),
    (_S.TRYING, _I.SEND_FINAL): (_V._send_final, _S.COMPLETED),
    (_S.TRYING, _I.TIMER_TRYING): (_V._send_trying, _S.PROCEEDING),
    (_S.TRYING, _I.TIMER_GIVE_UP): (_V._nothing, _S.TERMINATED),
    (_S.PROCEEDING, _I.RECV_REQUEST): (_V._resend_last, _S.PROCEEDING),
    (_S.PROCEEDING, _I.SEND_FINAL): (_V._send_final, _S.COMPLETED),
    (_S.PROCEEDING, _I.TIMER_GIVE_UP): (_V._nothing, _S.TERMINATED),
    (_S.PROCEEDING, _I.TRANSPORT_ERROR): (_V._transport_failed, _S.TERMINATED),
    (_S.COMPLETED, _I.RECV_REQUEST): (_V._resend_last, _S.COMPLETED),
    (_S.COMPLETED, _I.SEND_FINAL): (_V._discard_final, _S.COMPLETED),
    (_S.COMPLETED, _I.TIMER_J): (_V._nothing, _S.TERMINATED),
    (_S.COMPLETED, _I.TRANSPORT_ERROR): (_V._transport_failed, _S.TERMINATED),
    # Terminated: a TU answering after the give-up deadline is discarded, nothing is sent.
    (_S.TERMINATED, _I.SEND_FINAL): (_V._discard_final, _S.TERMINATED),
    (_S.TERMINATED, _I.RECV_REQUEST): (_V._nothing, _S.TERMINATED),
    (_S.TERMINATED, _I.TRANSPORT_ERROR): (_V._nothing, _S.TERMINATED),
}
