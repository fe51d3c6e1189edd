"""``UserAgent``: the asyncio façade applications embed.

Theory of operation. Three sans-IO or self-contained parts do the protocol
work; this module only wires them to asyncio and to each other:

- the :class:`~sipimdn.stack.SipStack` owns transports and transactions,
  retransmits, absorbs retransmissions and answers what we tell it to;
- the :class:`~sipimdn.imdn.tracker.DispositionTracker` knows what we sent
  and await, what we received and owe, and which IMDNs are genuine;
- the store keeps the tracker's state across restarts (written by one
  worker thread, :mod:`._persist`).

Every input (a request from the stack, an API call, the tracker's timer)
ends in :meth:`UserAgent._pump`: drain the tracker's events, hand its writes
to the store, re-arm the single timer (aioquic's ``_process_events();
transmit()``). Application callbacks run as tasks held in a set, whose
errors are logged (never aiosip's untracked ``ensure_future``), and they
never delay a SIP answer except where the application is *asked* to decide
one, bounded by ``handler_deadline``.

Cost per received MESSAGE (issue 9): decoding, dedup and tracking run
inline in the stack's callback; the handlers get one task, which answers
from its own step, and deadlines share one timer (:class:`DeadlineQueue`),
which skips the deadlines of messages already answered instead of waking
for each. An answer that must wait for the store is a callback of the
writer's group commit (``StoreWriter.when_written``), not a task.
At most one store write per message survives batching, and none for a
message owed no notification: its dedup entry (sender, Message-ID) lives in
memory for the tracker's dedup window, so only a resend that straddles a
restart of ours is handed up again. Messages owed a notification keep a
persistent dedup entry, because their notification survives the restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from .._gc import tune_for_throughput
from .._walltimer import WallClockTimer
from ..auth import Authenticator, challenge_header_for
from ..config import ListenEndpoint, UserAgentConfig
from ..errors import (
    AuthenticationFailed,
    CpimError,
    ImdnError,
    LocalProtocolError,
    RemoteProtocolError,
    SipParseError,
    TransactionTimeout,
    TransportError,
)
from ..events import DispositionEvent, NotificationEvent, NotificationSent, RegistrationEvent
from ..imdn import new_message_id
from ..imdn.tracker import (
    PEER_NO_CPIM,
    DispositionChanged,
    DispositionTracker,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationOwed,
    NotificationRejected,
    NotificationsDeclined,
    OwedNotification,
    TrackingEnded,
    was_requested,
)
from ..message import Request, Response
from ..registration import RegistrationClient, RegState
from ..stack import IncomingRequest, SipStack
from ..store import Delete, Put, SeenRecord, SqliteStore, Store, StoreOp
from ..transport.base import ConnectionCounters
from ..uri import Uri
from . import _wire
from ._deadline import DeadlineQueue, Decision, HandlerOutcome, outcome_of
from ._dedup import DuplicateCache
from ._pacing import DestinationKey, DestinationQueue
from ._persist import StoreWriter
from ._register import RegistrationDriver, contacts_for, settings_for
from .incoming import IncomingMessage
from .outgoing import SentMessage

__all__ = ["Registration", "UserAgent"]

_log = logging.getLogger("sipimdn.ua")

_E = TypeVar("_E")
MessageHandler = Callable[[IncomingMessage], Awaitable[object]]

#: Methods we answer; everything else gets 405 with this list (RFC 3261 §8.2.1).
ALLOW = "MESSAGE, OPTIONS"
#: Notification kinds an application may request on send_message.
_NOTIFY_KINDS = frozenset({"positive-delivery", "negative-delivery", "display", "processing"})
#: Resends of a message still being decided that wait for its answer (more get the deadline
#: status at once): a sender retries a few times, only a flood sends more.
_MAX_FOLLOWERS = 8


class Registration:
    """Returned by ``on_message``/``on_disposition``/``on_notification``; call it to unregister.

    Used as a decorator, the decorated name becomes this object.
    """

    def __init__(self, handlers: list[Any], handler: Any) -> None:
        self._handlers = handlers
        #: The registered callable.
        self.handler = handler

    def unregister(self) -> None:
        """Stop calling the handler (idempotent)."""
        if self.handler in self._handlers:
            self._handlers.remove(self.handler)

    def __call__(self) -> None:
        self.unregister()


class UserAgent:
    """Sends and receives instant messages with delivery and display notifications.

    Use as ``async with UserAgent(config) as ua:``; pass ``store=`` to plug
    in a :class:`~sipimdn.store.Store` of your own (the default is a
    :class:`~sipimdn.store.SqliteStore` on ``config.store_path``, closed
    with the user agent; a store passed in is left open). A store is used
    from one worker thread at a time, never from the event loop.
    """

    def __init__(self, config: UserAgentConfig, *, store: Store | None = None) -> None:
        self.config = config
        self._aor = Uri.parse(config.aor)
        self._aor_text: tuple[Uri | None, str] = (None, "")
        self._given_store = store
        self._message_handlers: list[MessageHandler] = []
        self._disposition_handlers: list[Callable[[DispositionEvent], Awaitable[None]]] = []
        self._notification_handlers: list[Callable[[NotificationEvent], Awaitable[None]]] = []
        self._registration_handlers: list[Callable[[RegistrationEvent], Awaitable[None]]] = []
        self._registrar: RegistrationDriver | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Protocol work (sends, IMDNs, answers being decided): given close_grace to finish.
        self._wire_tasks: set[asyncio.Task[Any]] = set()
        # Received messages whose answer is still being decided, keyed by (Message-ID,
        # sender): reports made meanwhile (mark_displayed...) are applied right after the
        # answer (RFC 5438 §7.2.1), and resends arriving meanwhile get the same answer.
        self._deciding: dict[tuple[str, str], _Pending] = {}
        # Weak: a handle the application dropped needs no updates (a message that
        # only asked for negative-delivery is tracked for days).
        self._handles: weakref.WeakValueDictionary[str, SentMessage] = weakref.WeakValueDictionary()
        self._queue = DestinationQueue()
        # Plain-text messages have no Message-ID: the tracker cannot dedup them,
        # so they are remembered here by transaction identity.
        self._dedup = DuplicateCache(config.dedup_capacity, config.dedup_ttl)
        self._writer = StoreWriter()
        self._auth = Authenticator(config.credentials) if config.credentials else None
        self._tracker: DispositionTracker | None = None
        self._stack: SipStack | None = None
        self._timer = WallClockTimer(self._on_timer)
        self._purge_timer: asyncio.TimerHandle | None = None
        # Handler deadlines of the messages being decided, under one shared timer.
        self._deadlines: DeadlineQueue[_Pending] | None = None
        # Dedup entries of messages being decided that are not to be written (see _persistable).
        self._volatile_seen: set[str] = set()
        # IMDNs owed for messages whose 2xx waits for the store (see _answer), by Message-ID:
        # held so the notification never overtakes the answer that made it owed.
        self._held_notifications: dict[str, list[OwedNotification]] = {}
        # Answers waiting for their records to reach the store (a writer callback each, no
        # task): protocol work that close() gives close_grace, like the wire tasks.
        self._durable_answers = 0
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, resume saved state, start listening and send what is owed."""
        if self._started:
            raise LocalProtocolError("user agent already started")
        self._started = True
        given = self._given_store
        path = self.config.store_path
        try:
            await self._writer.open(lambda: given if given is not None else SqliteStore(path))
            now = time.time()
            snapshot = await self._writer.load(now)
            self._tracker = DispositionTracker(_wire.tracker_config(self.config), snapshot=snapshot, now=now)
            self._stack = _wire.make_stack(self.config)
            self._stack.on_request(self._on_request)
            await self._stack.start()
            self._aor = _resolve_port_zero(self._aor, _wire.endpoints_of(self._stack))
            if self.config.registers:
                self._start_registration(self._stack)
        except BaseException:
            self._closed = True
            if self._stack is not None:
                await self._stack.close()
            await self._writer.close(close_store=self._given_store is None)
            raise
        self._purge_periodically()
        self._gc_release = tune_for_throughput(enabled=self.config.gc_tuning)  # undone in close()
        # After a restart the tracker has owed IMDNs due at once: send them.
        self._pump()

    def _purge_periodically(self) -> None:
        """Drop expired store entries now and then again every hour (or state_expiry, if shorter)."""
        if self._closed:
            return
        self._writer.purge(time.time())
        interval = min(3600.0, self.config.state_expiry)
        self._purge_timer = asyncio.get_running_loop().call_later(interval, self._purge_periodically)

    async def close(self) -> None:
        """Stop: cancel callbacks and sends in flight, flush the store, close transports."""
        if self._closed or not self._started:
            self._closed = True
            return
        # Let what is on the wire finish (an answer being decided, an IMDN in flight)
        # for a bounded time, so stopping right after mark_displayed still sends it.
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self.config.close_grace
        # Finishing one task can start another (an answer makes an IMDN due): loop.
        while loop.time() < grace_end:
            pending: list[asyncio.Future[Any]] = [t for t in self._wire_tasks if not t.done()]
            if self._durable_answers:
                stored: asyncio.Future[None] = loop.create_future()
                self._writer.when_written(functools.partial(_resolve, stored))
                pending.append(stored)
            if not pending:
                break
            await asyncio.wait(pending, timeout=grace_end - loop.time())
        if self._registrar is not None:
            # Remove our bindings (RFC 3261 §10.2.2) while the stack still runs; bounded.
            await self._registrar.stop(max(0.0, grace_end - loop.time()) or self.config.t1)
            await asyncio.sleep(0)  # let the Unregistered handlers start before tasks are cancelled
        self._closed = True
        self._timer.cancel()
        if self._purge_timer is not None:
            self._purge_timer.cancel()
            self._purge_timer = None
        if self._deadlines is not None:
            self._deadlines.close()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for handle in list(self._handles.values()):
            handle._set_failure(TransportError("user agent closed"))
        if self._stack is not None:
            await self._stack.close()
        if self._tracker is not None:
            self._writer.submit(self._tracker.writes_to_apply())
        # A store the application handed us stays open: it is theirs.
        await self._writer.close(close_store=self._given_store is None)
        self._gc_release()

    # -- public properties -------------------------------------------------------------------

    @property
    def aor(self) -> str:
        """Our address of record."""
        # Read for every request we build: formatted once per value of _aor.
        aor = self._aor
        if self._aor_text[0] is not aor:
            self._aor_text = (aor, str(aor))
        return self._aor_text[1]

    @property
    def endpoints(self) -> tuple[ListenEndpoint, ...]:
        """The endpoints actually listened on (port 0 replaced by the bound port)."""
        return _wire.endpoints_of(self._require_stack())

    @property
    def connection_counters(self) -> ConnectionCounters:
        """What the TCP/TLS connection limits refused and evicted so far."""
        return self._require_stack().transports.counters

    def contact_uri(self, transport: str = "udp") -> str:
        """A URI reaching this user agent directly: AOR user at a listen endpoint of ``transport``."""
        for endpoint in self.endpoints:
            if endpoint.transport == transport:
                host = f"[{endpoint.host}]" if endpoint.is_ipv6 else endpoint.host
                user = f"{self._aor.user}@" if self._aor.user else ""
                scheme = "sip"
                suffix = "" if transport == "udp" else f";transport={transport}"
                return f"{scheme}:{user}{host}:{endpoint.port}{suffix}"
        raise LocalProtocolError(f"not listening on {transport}")

    # -- registration ------------------------------------------------------------------------

    def on_message(self, handler: MessageHandler) -> Registration:
        """Call ``await handler(message)`` for every new instant message.

        The handler decides the final response: return None (200), 202, a
        4xx/5xx/6xx code or ``(code, reason)``. If it has not returned within
        ``config.handler_deadline`` seconds the stack answers
        ``config.deadline_status`` by itself and the handler keeps running.
        With several handlers the first refusal (in registration order) wins,
        then 202, then 200. Returns a :class:`Registration`.
        """
        self._message_handlers.append(handler)
        return Registration(self._message_handlers, handler)

    def on_disposition(self, handler: Callable[[DispositionEvent], Awaitable[None]]) -> Registration:
        """Call ``await handler(event)`` for every disposition event of messages we sent.

        Also for messages sent before a restart. Events: ``DispositionChanged``,
        ``NotificationAccepted``, ``NotificationRejected`` (unverified, not
        applied) and ``TrackingEnded``.
        """
        self._disposition_handlers.append(handler)
        return Registration(self._disposition_handlers, handler)

    def on_notification(self, handler: Callable[[NotificationEvent], Awaitable[None]]) -> Registration:
        """Call ``await handler(event)`` for what happens to notifications we owe."""
        self._notification_handlers.append(handler)
        return Registration(self._notification_handlers, handler)

    def on_registration(self, handler: Callable[[RegistrationEvent], Awaitable[None]]) -> Registration:
        """Call ``await handler(event)`` whenever our registration changes.

        Events (from :mod:`sipimdn.registration`): ``RegistrationSucceeded``
        (first registration and each refresh, with the granted expiry),
        ``RegistrationFailed`` (``retry_at`` None: given up, e.g. wrong
        password), ``RegistrationExpired`` and ``Unregistered`` (on close).
        """
        self._registration_handlers.append(handler)
        return Registration(self._registration_handlers, handler)

    @property
    def registration_state(self) -> RegState | None:
        """Where our registration stands; None when the configuration does not register."""
        return self._registrar.state if self._registrar is not None else None

    async def wait_registered(self, timeout: float | None = None) -> RegistrationEvent:
        """Wait until registered, or until registration failed for good; return that event.

        Returns at once with the last success while a binding is live. Raises
        :class:`TimeoutError` after ``timeout`` seconds (the client keeps
        trying) and :class:`~sipimdn.errors.LocalProtocolError` when the
        configuration does not register.
        """
        self._require_stack()
        if self._registrar is None:
            raise LocalProtocolError("this user agent does not register (set register=True or registrar)")
        return await self._registrar.wait_settled(timeout)

    def _start_registration(self, stack: SipStack) -> None:
        contacts = contacts_for(self._aor, self.config.listen, _wire.endpoints_of(stack))
        client = RegistrationClient(settings_for(self.config, self._aor, contacts), authenticator=self._auth)
        route = _wire.loose_route(self.config.outbound_proxy) if self.config.outbound_proxy else None
        self._registrar = RegistrationDriver(
            client,
            stack,
            route=route,
            user_agent=self.config.user_agent,
            emit=lambda event: self._fire(self._registration_handlers, event),
        )
        self._registrar.start()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the user agent tracks: its errors are logged, close() cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _spawn_wire(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.spawn(coro)
        self._wire_tasks.add(task)
        task.add_done_callback(self._wire_tasks.discard)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("callback task %s failed", task.get_name(), exc_info=task.exception())

    def _fire(self, handlers: Iterable[Callable[[_E], Awaitable[None]]], event: _E) -> None:
        for handler in list(handlers):
            self.spawn(_call(handler, event))

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
        self._writer.submit(self._persistable(tracker.writes_to_apply()))
        self._arm_timer(tracker.get_timer())

    def _persistable(self, ops: list[StoreOp]) -> list[StoreOp]:
        """The tracker's writes minus those a restart does not need (see _receive_im).

        Dropped: dedup entries (``seen``) of messages that requested no
        notification (kept in memory for the tracker's dedup window, never
        written), and every ``seen`` Delete: the tracker deletes those only
        when they expire, and an expired row is neither loaded nor kept (the
        store skips it on load and the periodic purge removes it).
        """
        if not ops:
            return ops
        volatile = self._volatile_seen
        return [op for op in ops if not _droppable(op, volatile)]

    def _arm_timer(self, at: float | None) -> None:
        if not self._closed:
            self._timer.arm(at)

    def _on_timer(self, now: float) -> None:
        if self._tracker is None or self._closed:
            return
        self._tracker.handle_timer(now)
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
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, NotificationRejected):
            _log.warning(
                "unverified IMDN not applied: %s (message %s, from %s)",
                event.reason,
                event.message_id,
                event.sender,
            )
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, TrackingEnded):
            self._handles.pop(event.message_id, None)
            self._fire(self._disposition_handlers, event)
        elif isinstance(event, NotificationOwed):
            held = self._held_notifications.get(event.notification.message_id)
            if held is not None:
                held.append(event.notification)
            elif not self._closed:
                self._spawn_wire(self._send_owed(event.notification))
        elif isinstance(event, NotificationAbandoned):
            _log.warning(
                "IMDN %s for %s abandoned: %s", event.notification_id, event.message_id, event.reason
            )
            self._fire(self._notification_handlers, event)
        elif isinstance(event, NotificationsDeclined):
            _log.info("IMDN(s) %s for %s not sent: %s", event.kinds, event.message_id, event.reason)
            self._fire(self._notification_handlers, event)
        else:  # pragma: no cover - a new tracker event this adapter does not know yet
            _log.debug("ignored tracker event %r", event)

    # -- receiving ---------------------------------------------------------------------------

    def _on_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        method = request.method
        if method == "ACK":
            # ACK for the 405 we gave an INVITE (RFC 3261 §17.2.1): absorbed.
            return
        verdict = _wire.request_uri_verdict(self.config, self._aor, self._require_stack(), request)
        if verdict.status is not None:  # RFC 3261 §8.2.2.1: nothing reaches the app
            _log.info("%s for %s from %s: %s", method, request.uri, incoming.flow.remote, verdict.reason)
            incoming.respond(verdict.status, verdict.reason)
            return
        required = [
            tag for value in request.headers.get_all("Require") for tag in value.split(",") if tag.strip()
        ]
        if required:
            # RFC 3261 §8.2.2.3: we support no extension that could be required.
            incoming.respond(420, None, [("Unsupported", ", ".join(t.strip() for t in required))])
            return
        if method == "MESSAGE":
            self._receive_message(incoming)
        elif method == "OPTIONS":
            incoming.respond(200, None, _wire.capability_headers(ALLOW))
        else:
            incoming.respond(405, None, [("Allow", ALLOW)])

    def _receive_message(self, incoming: IncomingRequest) -> None:
        # Runs inline in the stack's callback: decoding, dedup and tracking need no
        # task; only the application's handler gets one (see _decide).
        request = incoming.request
        try:
            inbound = _wire.decode_message(request, self.config)
        except (RemoteProtocolError, CpimError, ImdnError) as exc:
            _log.info("refused MESSAGE %s: %s", request.call_id, exc)
            headers = _wire.capability_headers(ALLOW) if exc.status_code == 415 else []
            incoming.respond(exc.status_code, _wire.reason_phrase(exc.reason), headers)
            return
        if inbound.notification is not None:
            self._receive_notification(incoming, inbound)
        else:
            self._receive_im(incoming, inbound)

    def _receive_notification(self, incoming: IncomingRequest, inbound: _wire.Inbound) -> None:
        # Always 200: whether the IMDN correlates is none of the sender's business
        # (no oracle for guessing Message-IDs, RFC 5438 §14).
        incoming.respond(200)
        assert inbound.notification is not None
        tracker = self._require_tracker()
        # An aggregated IMDN (RFC 5438 §8.3) carries several; each is checked on its own.
        notes = (inbound.notification, *inbound.more_notifications)
        for index, note in enumerate(notes):
            # The replay guard remembers notification ids; the parts of one
            # aggregated IMDN share its Message-ID, so each part gets its own.
            notification_id = inbound.message_id
            if notification_id is not None and len(notes) > 1:
                notification_id = f"{notification_id}#{index}"
            tracker.notification_received(
                message_id=note.message_id,
                kind=note.kind,
                status=note.status,
                now=time.time(),
                sender=inbound.cpim_from,
                sip_from=inbound.sip_from,
                recipient_uri=note.recipient_uri,
                original_recipient_uri=note.original_recipient_uri,
                notification_id=notification_id,
            )
        self._pump()

    def _receive_im(self, incoming: IncomingRequest, inbound: _wire.Inbound) -> None:
        request = incoming.request
        tracker = self._require_tracker()
        now = time.time()
        sender = inbound.cpim_from or inbound.sip_from
        tx_key: tuple[str, ...] | None = None
        volatile_key: str | None = None
        if inbound.message_id is not None:
            reception = tracker.record_received(
                message_id=inbound.message_id,
                sender=sender,
                now=now,
                requested=inbound.notify,
                sip_from=inbound.sip_from,
                recipient=inbound.cpim_to[0] if inbound.cpim_to else inbound.sip_to,
                original_recipient=inbound.original_to,
                datetime=inbound.datetime,
                subject=inbound.subject,
                imdn_route=inbound.imdn_route,
                route_trusted=self.config.trust_imdn_route,
                is_notification=False,
            )
            if reception.duplicate:
                self._pump()
                deciding = self._deciding.get((inbound.message_id, sender))
                if deciding is not None and len(deciding.followers) < _MAX_FOLLOWERS:
                    # A resend in a new transaction while the first copy is still being
                    # decided: not handed up again, and answered with the first copy's
                    # answer when it comes (the sender may only hear this one). Bounded:
                    # past a few, a flood of copies gets the deadline status at once.
                    deciding.followers.append(incoming)
                    return
                status = reception.previous_status or self.config.deadline_status
                _log.info("duplicate message %s from %s answered %d", inbound.message_id, sender, status)
                incoming.respond(status)
                return
            if not reception.requested:
                # Nothing owed to the sender: its dedup entry lives in memory only (the
                # tracker's dedup window, this run). Persisting it would cost a store write
                # per message to catch just one case: a resend, in a new transaction, that
                # straddles our restart, delivered once more. Entries of messages owed a
                # notification are written, since the notification itself survives restarts.
                volatile_key = self._keep_seen_in_memory(tracker, inbound.message_id)
            # The tracker's events and writes of this reception are pumped with the
            # answer (one pump and one write batch per message): nothing in between
            # can observe them, the handler's reports wait in _deciding anyway.
        else:
            tx_key = (
                "tx",
                inbound.sip_from,
                request.call_id,
                request.from_.tag or "",
                str(request.cseq.number),
            )
            if self._dedup.seen(tx_key, now):
                status = self._dedup.answer(tx_key) or self.config.deadline_status
                _log.info("duplicate plain message %s answered %d", request.call_id, status)
                incoming.respond(status)
                return
        pending = _Pending(incoming, inbound.message_id, sender, tx_key)
        pending.volatile_key = volatile_key
        if inbound.message_id is not None:
            self._deciding[(inbound.message_id, sender)] = pending
        message = _wire.incoming_message(inbound, incoming, self._report)
        self._decide(message, pending)

    def _keep_seen_in_memory(self, tracker: DispositionTracker, message_id: str) -> str | None:
        """Mark the dedup entry just made for ``message_id`` as not to be written; return its key."""
        ops = tracker.writes_to_apply()
        key: str | None = None
        for op in reversed(ops):  # the entry just made is the last of its kind
            record = op.record if isinstance(op, Put) else None
            if isinstance(record, SeenRecord) and record.message_id == message_id:
                key = record.key
                self._volatile_seen.add(key)
                break
        self._writer.submit(self._persistable(ops))
        return key

    def _answer(self, pending: _Pending, outcome: HandlerOutcome) -> None:
        """Send the final response chosen for a received IM and record it (once)."""
        if pending.answered:
            return
        pending.answered = True
        message_id, sender = pending.message_id, pending.sender
        if message_id is not None:
            self._deciding.pop((message_id, sender), None)
        status = outcome.decision.status
        reason = outcome.decision.reason
        if self._closed:
            pending.respond(status, reason)
            return
        if message_id is not None:
            tracker = self._require_tracker()
            tracker.message_answered(message_id, sender, status, time.time())
            for kind, reported in pending.early:
                self._apply_report(message_id, sender, kind, reported)
            if pending.volatile_key is None:
                # Notifications were requested: what we now owe must be on disk before the
                # answer commits us to it, or a crash right after the 2xx loses it for good
                # (robustness: test_crash_recovery). Write first, answer once durable; the
                # writer batches, so concurrent answers share one commit.
                self._writer.submit(self._persistable(tracker.writes_to_apply()))
                self._held_notifications.setdefault(message_id, [])
                self._durable_answers += 1
                self._writer.when_written(functools.partial(self._respond_durable, pending, status, reason))
                return
            pending.respond(status, reason)
            self._pump()
            # Its last write (the answered status) was just dropped; none follows.
            self._volatile_seen.discard(pending.volatile_key)
            return
        pending.respond(status, reason)
        if pending.tx_key is not None:
            if 200 <= status < 300 or status >= 600:
                self._dedup.set_answer(pending.tx_key, status)
            else:
                # Not delivered: a later resend is a fresh attempt for the application.
                self._dedup.forget(pending.tx_key)

    def _respond_durable(self, pending: _Pending, status: int, reason: str | None) -> None:
        """Answer a received IM now that the records behind that answer reached the store.

        Called by the store writer (``when_written``), with no task of its own. A write
        that failed counts as through: it was logged loudly by the writer, answering
        anyway keeps the peer's transaction from timing out, and what we owe lives on in
        memory for this run.
        """
        self._durable_answers -= 1
        pending.respond(status, reason)
        held = self._held_notifications.pop(pending.message_id, []) if pending.message_id else []
        for owed in held:
            if not self._closed:
                self._spawn_wire(self._send_owed(owed))
        self._pump()

    def _decide(self, message: IncomingMessage, pending: _Pending) -> None:
        """Run the handlers as one task; answer when they return or at the deadline."""
        handlers = list(self._message_handlers)
        if not handlers:
            # Nobody to deliver to: not delivered (RFC 3428 §7, 4xx = not delivered).
            self._answer(pending, HandlerOutcome(Decision(480, "No Application"), by_handler=False))
            return
        # Tracked like spawn()'s tasks, but the coroutine leaves both sets itself as it ends
        # (see _run_handlers): two done callbacks, each a loop callback, saved per message.
        task = asyncio.get_running_loop().create_task(self._run_handlers(handlers, message, pending))
        if task.done():  # pragma: no cover - only with an eager task factory (3.12+)
            return
        pending.task = task
        self._tasks.add(task)
        # An answer being decided is protocol work: close() gives it close_grace.
        self._wire_tasks.add(task)
        if self._deadlines is None:
            self._deadlines = DeadlineQueue(
                self.config.handler_deadline, self._deadline_passed, settled=_answered
            )
        self._deadlines.add(pending)

    async def _run_handlers(
        self, handlers: list[MessageHandler], message: IncomingMessage, pending: _Pending
    ) -> None:
        # The handler is awaited here, in the one task of this message, and the answer is
        # sent from the same step that sees its result: no task per handler, no
        # asyncio.wait and no per-message timer (the deadline is a DeadlineQueue entry).
        # The task leaves the tracking sets itself as it ends (no done callbacks, see _decide).
        try:
            try:
                if len(handlers) == 1:
                    result: object = await handlers[0](message)
                else:
                    results = await asyncio.gather(*(handler(message) for handler in handlers))
                    decisions = [_wire.as_decision(r) for r in results]
                    refusals = [d for d in decisions if not 200 <= d.status < 300]
                    result = (
                        refusals[0]
                        if refusals
                        else next((d for d in decisions if d.status == 202), decisions[0])
                    )
            except asyncio.CancelledError:
                if not self._closed:  # closing: the stack is going away, nothing more is answered
                    cancelled = HandlerOutcome(Decision(500, "Handler Cancelled"), by_handler=False)
                    self._answer(pending, cancelled)
                raise
            except Exception as exc:
                if pending.answered:
                    _log.error("on_message handler failed after its deadline", exc_info=exc)
                else:
                    self._answer(pending, outcome_of(None, exc))
                return
            except BaseException as exc:
                # What spawn()'s done callback logs for other tasks (a handler's SystemExit, say).
                _log.error("on_message handler task failed", exc_info=exc)
                raise
            if pending.answered:
                _log.info("on_message handler decided %r after its deadline; the stack had answered", result)
            else:
                self._answer(pending, outcome_of(result, None))
        finally:
            task = pending.task
            if task is not None:
                self._tasks.discard(task)
                self._wire_tasks.discard(task)

    def _deadline_passed(self, pending: _Pending) -> None:
        if pending.answered:
            return
        status = self.config.deadline_status
        _log.warning(
            "on_message handler missed its %.1fs deadline; answered %d for it",
            self.config.handler_deadline,
            status,
        )
        self._answer(pending, HandlerOutcome(Decision(status), by_handler=False))
        if pending.task is not None:
            # Answered: the handler keeps running as an ordinary callback, not protocol work.
            self._wire_tasks.discard(pending.task)

    async def _report(self, message_id: str, sender: str, kind: str, status: str) -> bool:
        deciding = self._deciding.get((message_id, sender))
        if deciding is not None:
            early = deciding.early
            # Not answered yet (the handler itself, or a task it started, is reporting):
            # applied right after the answer, and dropped if the answer is not a 2xx.
            early.append((kind, status))
            # The tracker's rule, the one applied after the answer (forbidden/error answer
            # either delivery request, RFC 5438 §7.2.1.1).
            received = self._require_tracker().received(message_id, sender)
            return received is not None and was_requested(received.requested, kind, status)
        tracker = self._require_tracker()
        owed = tracker.report_disposition(message_id, kind, status, time.time(), sender=sender)
        self._pump()
        return owed is not None

    def _apply_report(self, message_id: str, sender: str, kind: str, status: str) -> None:
        try:
            self._require_tracker().report_disposition(message_id, kind, status, time.time(), sender=sender)
        except LocalProtocolError as exc:
            # e.g. the answer was not a 2xx: no notification may follow it (IMDN-37).
            _log.info("early %s/%s report for %s dropped: %s", kind, status, message_id, exc)

    async def report_disposition(
        self, message_id: str, kind: str, status: str, sender: str | None = None
    ) -> bool:
        """Report what became of a received message, also one from an earlier run.

        ``kind`` ``"delivery"`` with ``"failed"``, ``"forbidden"`` or
        ``"error"`` (or ``"delivered"`` when ``auto_delivery`` is off), or
        ``"display"`` with ``"displayed"``, ``"forbidden"`` or ``"error"``.
        Returns True if a notification is now owed. Raises
        :class:`~sipimdn.errors.LocalProtocolError` where RFC 5438 forbids the
        report: after a non-2xx answer (IMDN-37), or a second, different
        notification of one kind (IMDN-32).
        """
        tracker = self._require_tracker()
        owed = tracker.report_disposition(message_id, kind, status, time.time(), sender=sender)
        self._pump()
        return owed is not None

    async def mark_displayed(self, message_id: str, sender: str | None = None) -> bool:
        """Send the display notification for a received message, also one from an earlier run.

        ``sender`` (the CPIM or SIP From of the message) disambiguates when two
        senders used the same Message-ID. Returns True if a notification is
        now owed (False: none requested, privacy setting, or unknown message).
        """
        tracker = self._require_tracker()
        owed = tracker.mark_displayed(message_id, time.time(), sender=sender)
        self._pump()
        return owed is not None

    # -- owed notifications ------------------------------------------------------------------

    async def _send_owed(self, owed: OwedNotification) -> None:
        status: int | None = None
        try:
            request = _wire.build_imdn_request(self, owed, now=time.time())
        except (LocalProtocolError, ValueError) as exc:
            # We cannot build it (bad stored data): retrying would fail the same way.
            _log.error("cannot build IMDN %s for %s: %s", owed.notification_id, owed.message_id, exc)
            self._require_tracker().notification_outcome(owed.notification_id, 400, time.time())
            self._pump()
            return
        try:
            response = await self._transact(Uri.parse(owed.request_uri), request, owed.request_uri)
            status = response.status_code
        except (TransactionTimeout, TransportError) as exc:
            _log.info("IMDN %s to %s failed: %s", owed.notification_id, owed.request_uri, exc)
        except _AuthRefused as refused:
            # A final 401/407: retrying the IMDN with the same credentials cannot help.
            status = refused.response.status_code
        if self._closed:
            return
        self._require_tracker().notification_outcome(owed.notification_id, status, time.time())
        self._pump()
        self._fire(
            self._notification_handlers,
            NotificationSent(
                notification_id=owed.notification_id,
                message_id=owed.message_id,
                kind=str(owed.kind),
                status=str(owed.status),
                to=owed.request_uri,
                sip_status=status,
                attempt=owed.attempt,
            ),
        )

    # -- sending -----------------------------------------------------------------------------

    async def send_message(
        self,
        to: str,
        body: str | bytes,
        *,
        content_type: str = "text/plain;charset=utf-8",
        notify: Iterable[str] = (),
        subject: str | None = None,
        cpim: bool | None = None,
        transport: str | None = None,
        to_list: bool = False,
    ) -> SentMessage:
        """Send one instant message to ``to``; return its :class:`SentMessage` handle at once.

        ``notify`` lists the notifications to request (``"positive-delivery"``,
        ``"negative-delivery"``, ``"display"``); requesting any needs CPIM.
        ``cpim`` forces CPIM on or off (default: ``config.use_cpim``, and
        off for a peer known to refuse it). ``transport`` (``"udp"``,
        ``"tcp"``, ``"tls"``) forces the transport to the first hop.
        ``to_list=True`` says ``to`` is a URI list (RFC 5365): every member's
        notification is awaited until the tracking deadline (RFC 5438 §7.1.4),
        even when the list's first report settles everything requested.
        """
        tracker = self._require_tracker()
        self._require_stack()
        try:
            target = Uri.parse(to)
        except SipParseError as exc:
            raise LocalProtocolError(f"cannot send to {to!r}: {exc.reason}") from None
        if target.scheme not in ("sip", "sips"):
            raise LocalProtocolError(f"cannot send to a {target.scheme}: URI; resolve it to a SIP URI first")
        wanted = frozenset(notify)
        unknown = wanted - _NOTIFY_KINDS
        if unknown:
            raise LocalProtocolError(f"unknown notification kind(s) {sorted(unknown)}")
        data = body.encode("utf-8") if isinstance(body, str) else body
        if cpim is None:
            use_cpim = self.config.use_cpim and PEER_NO_CPIM not in tracker.peer_flags(to)
            if not use_cpim and wanted:
                _log.info("%s refuses CPIM: sending text/plain without notification requests", to)
                wanted = frozenset()
        else:
            use_cpim = cpim
        if wanted and not use_cpim:
            raise LocalProtocolError("notifications can only be requested in message/cpim")
        message_id = new_message_id()  # 128 random bits, CPIM Token-safe (IMDN-12, IMDN-13)
        now = time.time()
        tracker.register_sent(
            message_id=message_id, recipients=[to], requested=set(wanted), now=now, expect_members=to_list
        )
        handle = SentMessage(message_id=message_id, to=to, notify=wanted)
        self._handles[message_id] = handle
        self._pump()
        outgoing = _wire.Outgoing(
            target=target,
            to=to,
            body=data,
            content_type=content_type,
            subject=subject,
            message_id=message_id,
            notify=wanted,
            sent_at=now,
            transport=transport,
        )
        self._spawn_wire(self._run_send(handle, outgoing, use_cpim))
        return handle

    async def _run_send(self, handle: SentMessage, outgoing: _wire.Outgoing, use_cpim: bool) -> None:
        tracker = self._require_tracker()
        # The sent record must be on disk before the MESSAGE leaves: a notification can come
        # back at once, and after a crash an unknown Message-ID would be refused for good.
        try:
            await self._writer.written()
        except Exception:
            _log.exception("store write before sending %s failed", outgoing.message_id)
        # A 2xx is recorded the moment the stack matches it (see _accepted), so an IMDN
        # read in the same loop turn, just behind it, finds the message accepted.
        accepted = functools.partial(self._accepted, handle.message_id)
        try:
            request = _wire.build_im_request(self, outgoing, use_cpim=use_cpim)
            response = await self._transact(
                outgoing.target, request, outgoing.to, outgoing.transport, on_final=accepted
            )
            if (
                response.status_code == 415
                and use_cpim
                and self.config.cpim_fallback
                and outgoing.content_type.lower().startswith("text/")
            ):
                _log.info("%s answered 415 to message/cpim: retrying once as text/plain", outgoing.to)
                tracker.set_peer_flag(outgoing.to, PEER_NO_CPIM, True, time.time())
                handle._set_notify(frozenset())
                self._pump()
                request = _wire.build_im_request(self, outgoing, use_cpim=False, previous=request)
                response = await self._transact(
                    outgoing.target, request, outgoing.to, outgoing.transport, on_final=accepted
                )
        except (TransactionTimeout, TransportError) as exc:
            if not self._closed:
                tracker.response_received(handle.message_id, exc.status_code, time.time())
                self._pump()
            handle._set_failure(exc)
            return
        except _AuthRefused as refused:
            # Not delivered (4xx): the tracker ends the message's tracking as failed.
            tracker.response_received(handle.message_id, refused.response.status_code, time.time())
            self._pump()
            handle._set_failure(refused.error)
            return
        # A 2xx was already recorded by _accepted (this second report is then a no-op).
        tracker.response_received(handle.message_id, response.status_code, time.time())
        self._pump()
        handle._set_response(response)

    def _accepted(self, message_id: str, response: Response) -> None:
        """A 2xx to an IM we sent, recorded inline in the stack's pump (``on_final``).

        The sending task only resumes on a later loop turn; a notification the peer
        sent right after its 2xx may be read before that (several datagrams per
        wake-up, or a fast TCP peer) and must find the message accepted, not pending.
        A 2xx ends the send (no retry follows one), so it is the final answer of the
        whole send; other answers are left to the task (415 fallback, 401/407 retry).
        """
        if 200 <= response.status_code < 300 and not self._closed and self._tracker is not None:
            self._tracker.response_received(message_id, response.status_code, time.time())
            self._pump()

    async def _transact(
        self,
        key: Uri,
        request: Request,
        to: str,
        transport: str | None = None,
        on_final: Callable[[Response], None] | None = None,
    ) -> Response:
        """One MESSAGE, never two transactions at once to the same URI (RFC 3428 §8).

        With credentials configured, a 401/407 is answered (RFC 3261 §22.2):
        the retry is a new transaction in the same turn, since the challenged
        one has completed. Realms answered before go authenticated up front.
        A challenge we cannot or must not answer again (our credentials were
        just rejected) raises :class:`_AuthRefused`: never a retry loop.
        """
        stack = self._require_stack()
        target = _wire.target_for(self.config, to, transport)
        queue = self._queue
        turn = DestinationKey(key)
        await queue.acquire(turn)
        try:
            # Inside the turn: a request queued behind a challenged one goes out with the
            # credentials that one just learned, instead of being challenged too.
            attempt = None
            if self._auth is not None:
                attempt = self._auth.start(request.method, str(request.uri), request.body)
                request = _wire.with_authorization(request, attempt.headers, next_cseq=False)
            while True:
                try:
                    response = await stack.send_request(request, target=target, on_final=on_final)
                except TransportError:
                    if self._registrar is not None and self.config.outbound_proxy:
                        # Our binding points at the flow to the proxy that just failed.
                        self._registrar.reregister()
                    raise
                if response.status_code not in (401, 407):
                    if attempt is not None and 200 <= response.status_code < 300:
                        attempt.handle_success(response.headers.get("Authentication-Info"))
                    return response
                if attempt is None:
                    error = AuthenticationFailed(
                        f"{request.method} to {request.uri} challenged ({response.status_code})"
                        " and no credentials are configured"
                    )
                    raise _AuthRefused(error, response)
                values = response.headers.get_all(challenge_header_for(response.status_code))
                try:
                    headers = attempt.handle_challenge(response.status_code, values)
                except AuthenticationFailed as exc:
                    # The message says which realm and why, never the password.
                    error = AuthenticationFailed(
                        f"{request.method} to {request.uri}: {exc} (final {response.status_code})"
                    )
                    _log.warning("%s", error)
                    raise _AuthRefused(error, response) from None
                request = _wire.with_authorization(request, headers, next_cseq=True)
        finally:
            queue.release(turn)


def _droppable(op: StoreOp, volatile: set[str]) -> bool:
    """True for a write a restart does not need (see ``UserAgent._persistable``)."""
    if type(op) is Put:
        record = op.record
        return type(record) is SeenRecord and record.key in volatile
    if isinstance(op, Delete):
        return op.table == "seen"
    record = op.record  # a Put subclass, should there ever be one
    return isinstance(record, SeenRecord) and record.key in volatile


class _Pending:
    """A received IM whose final response is being decided."""

    __slots__ = (
        "answered", "early", "followers", "incoming", "message_id", "sender", "task", "tx_key",
        "volatile_key",
    )

    def __init__(
        self,
        incoming: IncomingRequest,
        message_id: str | None,
        sender: str,
        tx_key: tuple[str, ...] | None,
    ) -> None:
        self.incoming = incoming
        self.message_id = message_id
        self.sender = sender
        self.tx_key = tx_key
        #: Reports made before the answer (mark_displayed in the handler), applied after it.
        self.early: list[tuple[str, str]] = []
        self.answered = False
        self.task: asyncio.Task[Any] | None = None
        #: Key of its dedup entry when that entry is kept in memory only (nothing owed).
        self.volatile_key: str | None = None
        #: Resends (same Message-ID, new transaction) received while deciding: same answer.
        self.followers: list[IncomingRequest] = []

    def respond(self, status: int, reason: str | None) -> None:
        """Send the final response to this message and to its resends."""
        self.incoming.respond(status, reason)
        for follower in self.followers:
            follower.respond(status, reason)


def _answered(pending: _Pending) -> bool:
    return pending.answered


class _AuthRefused(Exception):
    """Internal: a request ended in an authentication failure, with the final 401/407."""

    def __init__(self, error: AuthenticationFailed, response: Response) -> None:
        super().__init__(str(error))
        self.error = error
        self.response = response


def _resolve_port_zero(aor: Uri, endpoints: Iterable[ListenEndpoint]) -> Uri:
    """An AOR written with port 0 means "the port we are bound to" (loopback use without a registrar).

    The endpoint is the first one of the AOR's transport (``;transport=``,
    TLS for sips, else UDP), preferring one on the AOR's host.
    """
    if aor.port != 0:
        return aor
    transport = "tls" if aor.secure else (aor.transport or "udp")
    candidates = [e for e in endpoints if e.transport == transport]
    if not candidates:
        raise LocalProtocolError(f"AOR {aor} has port 0 but nothing listens on {transport}")
    same_host = [e for e in candidates if e.host == aor.host]
    return dataclasses.replace(aor, port=(same_host or candidates)[0].port)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _call(handler: Callable[[_E], Awaitable[None]], event: _E) -> None:
    await handler(event)
