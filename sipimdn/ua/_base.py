"""The user agent's shared state and plumbing: the pump, the tracker's events, tracked tasks.

Every input (a request from the stack, an API call, the tracker's timer)
ends in :meth:`AgentCore._pump`: drain the tracker's events and do what they
say, hand its writes to the store, re-arm the single timer (aioquic's
``_process_events(); transmit()``). Application callbacks run as tasks held
in a set, whose errors are logged, and they never delay a SIP answer except
where the application is *asked* to decide one, bounded by ``handler_deadline``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .._coretimer import CoreTimer
from .._pacing import DestinationQueue
from .._ratelog import RateLimitedLog
from ..auth import Authenticator
from ..config import UserAgentConfig
from ..errors import (
    LocalProtocolError,
)
from ..events import DispositionEvent, NotificationEvent, RegistrationEvent
from ..headers import AssertedIdentity
from ..imdn.tracker import (
    DeclineReason,
    DispositionChanged,
    DispositionTracker,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationOwed,
    NotificationRejected,
    NotificationsDeclined,
    OwedNotification,
    TrackingEnded,
)
from ..iscomposing import ComposingReceiver, ComposingStateChanged, IsComposing
from ..stack import IncomingRequest, SipStack
from ..store import SeenRecord, SharedStore, Store, StoreOp
from ..trust import TrustedAsserters, asserted_identity
from ..uri import Uri
from ._deadline import DeadlineQueue, HandlerResult
from ._persist import StoreWriter
from ._register import RegistrationDriver
from .incoming import IncomingMessage
from .outgoing import SentMessage
from .stats import Counters

if TYPE_CHECKING:
    from ._composing import Composer
    from ._receive import Pending

__all__ = ["ALLOW", "AgentCore", "MessageHandler", "callable_name", "require_async"]

_log = logging.getLogger("sipimdn.ua")

_E = TypeVar("_E")
#: An ``on_message`` handler: ``async def handler(message) -> HandlerResult``.
MessageHandler = Callable[[IncomingMessage], Awaitable[HandlerResult]]

#: Methods we answer; everything else gets 405 with this list (RFC 3261 §8.2.1).
ALLOW = "MESSAGE, OPTIONS"


class AgentCore:
    """The state every part of the user agent shares, declared in one place."""

    def __init__(self, config: UserAgentConfig, *, store: Store | None = None) -> None:
        self.config = config
        self._aor = Uri.parse(config.aor)
        self._aor_text: tuple[Uri | None, str] = (None, "")
        self._given_store = store
        self._message_handlers: list[MessageHandler] = []
        self._disposition_handlers: list[Callable[[DispositionEvent], Awaitable[None]]] = []
        self._notification_handlers: list[Callable[[NotificationEvent], Awaitable[None]]] = []
        self._registration_handlers: list[Callable[[RegistrationEvent], Awaitable[None]]] = []
        self._composing_handlers: list[Callable[[ComposingStateChanged], Awaitable[None]]] = []
        # Composition indications (RFC 3994): every sender's state as we see it, and our
        # composers by peer (weak: the application holds them; the active ones are also
        # held here so that their idle indication still goes out).
        self._composing_rx = ComposingReceiver(grace=config.composing_grace)
        self._composers: weakref.WeakValueDictionary[str, Composer] = weakref.WeakValueDictionary()
        self._active_composers: dict[str, Composer] = {}
        # OPTIONS probes in flight by peer URI (``probe_options``), shared by the messages
        # waiting for the same answer.
        self._probes: dict[str, asyncio.Task[Any]] = {}
        # Peers that sent us message/cpim, by SIP From: when that stops proving they take it.
        self._sent_us_cpim: dict[str, float] = {}
        self._registrar: RegistrationDriver | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Protocol work (sends, IMDNs, answers being decided): given close_grace to finish. Tasks,
        # and the response futures of the IMDNs started without one (see SendPath._start_owed).
        self._wire_tasks: set[asyncio.Future[Any]] = set()
        # The application's spawn() tasks: given close_grace too (a reply being written).
        self._app_tasks: set[asyncio.Task[Any]] = set()
        # Weak: a handle the application dropped needs no updates (a message that
        # only asked for negative-delivery is tracked for days).
        self._handles: weakref.WeakValueDictionary[str, SentMessage] = weakref.WeakValueDictionary()
        self._queue = DestinationQueue()
        self._writer = StoreWriter()
        self._auth = Authenticator(config.credentials) if config.credentials else None
        self._tracker: DispositionTracker | None = None
        self._stack: SipStack | None = None
        # The tracker's deadlines (retries, expiries, parked destinations) are seconds apart
        # and move with every record: lazy (a deadline that moved later keeps the armed
        # handle) and 10 ms slots (deadlines close together share a wake-up) re-arm the loop
        # timer about once per 100 messages instead of once per message.
        self._timer = CoreTimer(self._on_timer, slot=0.01, lazy=True)
        # When the earliest deadline of the sent records the tracker left to the store passes
        # (whole seconds: one read serves the deadlines of a second), and the read in progress.
        self._sweep_timer = CoreTimer(self._on_sweep_timer, slot=1.0)
        self._sweeping: asyncio.Task[Any] | None = None
        self._purge_timer: asyncio.TimerHandle | None = None
        # Handler deadlines of the messages being decided, under one shared timer.
        self._deadlines: DeadlineQueue[Pending] | None = None
        # Messages (by Message-ID and sender) whose answer is being decided, for the resends
        # that arrive meanwhile: the tracker says they are duplicates; these wait for the
        # first copy's answer (the transactions to answer are ours, the state the tracker's).
        self._deciding: dict[tuple[str, str], Pending] = {}
        # The report and reply callbacks every received IncomingMessage holds, bound once (on
        # the first message): a bound method made per message is one more object for the
        # collector per message in flight, two here. None until then.
        self._message_callbacks: tuple[Any, Any] | None = None
        # Answers waiting for their records to reach the store (a writer callback each, no
        # task): protocol work that close() gives close_grace, like the wire tasks.
        self._durable_answers = 0
        # Several workers sharing the store (see _shared): the store when it is really shared,
        # the lease ticks, the unsubscriber of its wake-ups, the forwarded-notification reader
        # and whether it must run again, and who waits on which Message-ID from another worker.
        self._shared: SharedStore | None = None
        self._lease_task: asyncio.Task[Any] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._forwarding: asyncio.Task[Any] | None = None
        self._forwarded_due = False
        self._sent_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # Dedup claims of refused messages to release in the shared store (retried until done).
        self._unreleased: set[str] = set()
        # Until when (time.monotonic()) this worker is sure its leases hold: no other worker can
        # have taken its records over before then (see _shared, "Fencing").
        self._lease_sure_until = float("inf")
        # Dedup claims waiting for the next batch to the shared store, and whether one is out.
        self._claim_queue: list[tuple[SeenRecord, asyncio.Future[SeenRecord | None]]] = []
        self._claiming = False
        self._started = False
        self._closed = False
        #: Plain-int counters behind ``stats()``.
        self._counters = Counters()
        # Forged or refused notifications are a peer's choice: at most one log line per period
        # each (the counters above count every one).
        self._log_rejected = RateLimitedLog(_log, logging.WARNING)
        self._log_declined = RateLimitedLog(_log, logging.INFO)
        #: Whose P-Asserted-Identity is believed (host names resolved by start()); None: nobody's.
        self._asserters: TrustedAsserters | None = TrustedAsserters.parse(config.trusted_asserters) or None

    def _asserted_identity(self, incoming: IncomingRequest) -> AssertedIdentity | None:
        """The sender's identity as a trusted proxy asserted it (RFC 3325 §9.1), judged by the
        request's transport source (see :mod:`sipimdn.trust`); None unless believed."""
        asserters = self._asserters
        if asserters is None:
            return None
        return asserted_identity(incoming.request, incoming.flow.remote[0], asserters)

    async def _resolve_asserters(self) -> None:
        """Turn the host names among ``trusted_asserters`` into the addresses they have now.

        A name that does not resolve is logged and trusts nothing: its assertions are then
        ignored (today's rule, the safe side), never believed from an unknown address.
        """
        asserters = self._asserters
        if asserters is None or not asserters.names:
            return
        loop = asyncio.get_running_loop()
        addresses: list[str] = []
        for name in asserters.names:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
            except OSError as exc:
                _log.error("trusted_asserters: %s does not resolve (%s): its P-Asserted-Identity "
                           "is not believed until the user agent restarts", name, exc)
                continue
            found = sorted({str(info[4][0]) for info in infos})
            _log.info("trusted_asserters: %s is %s", name, ", ".join(found))
            addresses.extend(found)
        self._asserters = asserters.with_addresses(addresses) or None

    if TYPE_CHECKING:  # UserAgent.aor; the request builders read it

        @property
        def aor(self) -> str: ...

    def _send_owed(self, owed: OwedNotification) -> None:
        """Send one owed IMDN (the send path): started at once, finished by a callback or a task."""
        raise NotImplementedError

    def _composing_deadline(self) -> float | None:
        """The earliest deadline of the composition indications (see :mod:`._composing`)."""
        raise NotImplementedError

    def _composing_timer(self, now: float) -> None:
        """Act on the composition indications' deadlines that passed."""
        raise NotImplementedError

    def _composing_received(self, sender: str, indication: IsComposing) -> None:
        """Feed the composing receiver with an indication answered 200."""
        raise NotImplementedError

    def _composing_message_from(self, sender: str) -> None:
        """A content message from ``sender``: no longer composing (RFC 3994 §3.3)."""
        raise NotImplementedError

    def _composing_message_sent(self, to: str) -> None:
        """A message to ``to`` leaves: our composer for it goes idle silently (RFC 3994 §3.2)."""
        raise NotImplementedError

    def _start_send(
        self,
        to: str,
        body: str | bytes,
        *,
        content_type: str,
        notify: Iterable[str],
        subject: str | None,
        cpim: bool | None,
        transport: str | None,
        to_list: bool,
    ) -> SentMessage:
        """Start sending one instant message (the send path)."""
        raise NotImplementedError

    async def _reply(  # noqa: PLR0917 - called positionally through IncomingMessage's Callable type
        self,
        to: str,
        body: str | bytes,
        content_type: str,
        notify: frozenset[str],
        subject: str | None,
        transport: str | None,
    ) -> SentMessage:
        # IncomingMessage.reply: a new message to the sender, as send_message would send it.
        return self._start_send(
            to,
            body,
            content_type=content_type,
            notify=notify,
            subject=subject,
            cpim=None,
            transport=transport,
            to_list=False,
        )

    def _may_send_owed(self, notification_id: str) -> bool:
        """Whether this worker may send an owed notification now (see ``_shared``)."""
        raise NotImplementedError

    def _shared_writes(self, ops: list[StoreOp]) -> list[StoreOp]:
        """The tracker's writes as a shared store keeps them (see ``_shared``)."""
        raise NotImplementedError

    def _drain_writes(self, tracker: DispositionTracker) -> list[StoreOp]:
        """The tracker's writes since the last call, for the store writer."""
        return self._shared_writes(tracker.writes_to_apply())

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        # Named after the coroutine (or what it serves), so a failure or a cancellation
        # at close says which piece of code it was.
        task = asyncio.get_running_loop().create_task(coro, name=name or _coro_name(coro))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _spawn_wire(self, coro: Coroutine[Any, Any, Any]) -> None:
        # As _spawn, with one done callback for both sets (one loop callback per send or IMDN).
        task = asyncio.get_running_loop().create_task(coro, name=_coro_name(coro))
        self._tasks.add(task)
        self._wire_tasks.add(task)
        task.add_done_callback(self._wire_task_done)

    def _wire_task_done(self, task: asyncio.Task[Any]) -> None:
        self._wire_tasks.discard(task)
        self._task_done(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _fire(self, handlers: Iterable[Callable[[_E], Awaitable[None]]], event: _E) -> None:
        for handler in list(handlers):
            self._spawn(_call(handler, event), name=f"{callable_name(handler)}({type(event).__name__})")

    # -- the pump ----------------------------------------------------------------------------

    def _require_stack(self) -> SipStack:
        if self._stack is None or self._closed:
            raise LocalProtocolError("user agent is not running (use `async with UserAgent(...)`)")
        return self._stack

    def _require_tracker(self) -> DispositionTracker:
        if self._tracker is None or self._closed:
            raise LocalProtocolError("user agent is not running (use `async with UserAgent(...)`)")
        return self._tracker

    def _pump(self) -> None:
        tracker = self._tracker
        if tracker is None or self._closed:
            # After close, what the tracker still queues is written by close() itself.
            return
        while (event := tracker.next_event()) is not None:
            self._dispatch(event)
        self._writer.submit(self._drain_writes(tracker))
        at = tracker.get_timer()
        composing = self._composing_deadline()
        if composing is not None and (at is None or composing < at):
            at = composing
        self._arm_timer(at)
        due = tracker.evicted_sent_due
        if due is not None:
            self._arm_sweep(due)

    def _arm_sweep(self, due: float) -> None:
        """Read back the evicted sent records due at ``due`` then (see ``_workingset``)."""
        raise NotImplementedError

    def _on_sweep_timer(self, now: float) -> None:
        raise NotImplementedError

    def _arm_timer(self, at: float | None) -> None:
        if not self._closed:
            self._timer.arm(at)

    def _on_timer(self, now: float) -> None:
        if self._tracker is None or self._closed:
            return
        self._tracker.handle_timer(now)
        self._composing_timer(now)
        self._pump()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, DispositionChanged):
            handle = self._handles.get(event.message_id)
            # The handle follows the target only: a list member's news (its own URI as
            # ``recipient``) reaches the disposition handlers, never the handle's state,
            # which would otherwise move backwards (the list's entry is monotonic).
            if handle is not None and event.recipient == handle.to:
                handle._set_state(event.state)
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, NotificationAccepted):
            self._counters.notifications_accepted += 1
            _log.info(
                "accepted %s notification '%s' for message %s from %s%s",
                event.kind,
                event.status,
                event.message_id,
                event.recipient,
                "" if event.changed else " (state unchanged)",
            )
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, NotificationRejected):
            self._counters.notifications_rejected += 1
            self._log_rejected(
                time.monotonic(),
                "unverified IMDN not applied: %s (message %s, from %s)",
                event.reason,
                event.message_id,
                event.sender,
            )
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, TrackingEnded):
            ended = self._handles.pop(event.message_id, None)
            if ended is not None:
                ended._set_ended()
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, NotificationOwed):
            if not self._closed:
                self._send_owed(event.notification)
        elif isinstance(event, NotificationAbandoned):
            _log.warning(
                "IMDN %s for %s abandoned: %s", event.notification_id, event.message_id, event.reason
            )
            self._fire(self._notification_handlers, event)
        elif isinstance(event, NotificationsDeclined):
            if event.reason in (DeclineReason.ROUTE_UNTRUSTED, DeclineReason.ROUTE_TOO_LONG):
                self._log_declined(
                    time.monotonic(),
                    "IMDN(s) %s for %s sent to the sender, not along the IMDN route: %s",
                    event.kinds,
                    event.message_id,
                    event.reason,
                )
            else:
                self._log_declined(
                    time.monotonic(),
                    "IMDN(s) %s for %s not sent: %s",
                    event.kinds,
                    event.message_id,
                    event.reason,
                )
            self._fire(self._notification_handlers, event)
        else:  # pragma: no cover - a new tracker event this adapter does not know yet
            _log.debug("ignored tracker event %r", event)


async def _call(handler: Callable[[_E], Awaitable[None]], event: _E) -> None:
    try:
        await handler(event)
    except Exception:
        # Logged here, where both are known: the callback by name and the event it was given.
        _log.exception("callback %s failed on %r", callable_name(handler), event)


def callable_name(function: object) -> str:
    """``module.qualname`` of a function (or of the class of a callable object), for log lines."""
    target = function
    while isinstance(target, functools.partial):
        target = target.func
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{qualname}" if module and module != "builtins" else str(qualname)


def _coro_name(coro: Coroutine[Any, Any, Any]) -> str:
    return str(getattr(coro, "__qualname__", None) or type(coro).__qualname__)


def require_async(handler: object, where: str) -> None:
    """Refuse, with a TypeError, a handler that is not a coroutine function.

    Handlers are awaited on the event loop: a plain function would either block
    the loop (and with it every SIP timer) or return something that is not
    awaitable, which used to fail every message with 500, one at a time.
    """
    if not callable(handler):
        raise TypeError(f"{where} takes a callable, not {handler!r}")
    call = getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
        return
    raise TypeError(
        f"{where} handler {callable_name(handler)} is not a coroutine function: declare it with"
        " `async def` (the user agent awaits it on the event loop; a blocking function would stall"
        " every SIP timer, so run blocking work with asyncio.to_thread inside an async handler)"
    )
