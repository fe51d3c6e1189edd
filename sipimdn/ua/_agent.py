"""``UserAgent``: the asyncio façade applications embed: lifecycle and handler registry.

Three sans-IO or self-contained parts do the protocol work; the user agent
only wires them to asyncio and to each other:

- the :class:`~sipimdn.stack.SipStack` owns transports and transactions,
  retransmits, absorbs retransmissions and answers what we tell it to;
- the :class:`~sipimdn.imdn.tracker.DispositionTracker` knows what we sent
  and await, what we received and owe, and which IMDNs are genuine;
- the store keeps the tracker's state across restarts (written by one
  worker thread, :mod:`._persist`).

By job: :mod:`._base` (shared state, the pump, tracked tasks),
:mod:`._receive` (receive path), :mod:`._send` (send path), this module
(start, close, handler registration, public properties); the public value
objects are in :mod:`.incoming`, :mod:`.outgoing` and :mod:`._deadline`
(:class:`Decision`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from .._gc import tune_for_throughput
from ..config import ListenEndpoint
from ..errors import (
    LocalProtocolError,
    TransportError,
)
from ..events import DispositionEvent, NotificationEvent, RegistrationEvent
from ..imdn.tracker import (
    DispositionTracker,
)
from ..imdn.vocabulary import (
    DispositionRequest,
    DispositionState,
    Kind,
    KindName,
    NotifyName,
    Status,
    StatusName,
)
from ..iscomposing import DEFAULT_IDLE_TIMEOUT, DEFAULT_REFRESH, ComposingStateChanged
from ..registration import RegistrationClient, RegState
from ..stack import SipStack
from ..store import open_store
from ..transport.base import ConnectionCounters
from ..uri import Uri
from . import _wire
from ._base import MessageHandler, callable_name, require_async
from ._composing import Composer, ComposingPath
from ._receive import ReceivePath
from ._register import RegistrationDriver, contacts_for, settings_for
from ._send import SendPath
from ._shared import shared_store
from ._workingset import working_set_config
from .outgoing import SentMessage
from .stats import UserAgentStats

_log = logging.getLogger("sipimdn.ua")

_MessageH = TypeVar("_MessageH", bound=MessageHandler)
_DispositionH = TypeVar("_DispositionH", bound=Callable[[DispositionEvent], Awaitable[None]])
_NotificationH = TypeVar("_NotificationH", bound=Callable[[NotificationEvent], Awaitable[None]])
_RegistrationH = TypeVar("_RegistrationH", bound=Callable[[RegistrationEvent], Awaitable[None]])
_ComposingH = TypeVar("_ComposingH", bound=Callable[[ComposingStateChanged], Awaitable[None]])

__all__ = ["UserAgent"]


class UserAgent(ReceivePath, ComposingPath, SendPath):
    """Sends and receives instant messages with delivery and display notifications.

    Use as ``async with UserAgent(config) as ua:``; pass ``store=`` to plug
    in a :class:`~sipimdn.store.Store` of your own (the default is the store
    ``config.store_path`` names, see :func:`~sipimdn.store.open_store`, closed
    with the user agent; a store passed in is left open). A store other
    processes share (PostgreSQL) makes this user agent one of several workers
    with one state (see ``sipimdn.ua._shared``). A store is used
    from one worker thread at a time, never from the event loop.
    """

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
        config = self.config
        try:
            # Before the store: a slow name lookup must not sit between renewing leases and listening.
            await self._resolve_asserters()
            await self._writer.open(
                lambda: (
                    given
                    if given is not None
                    else open_store(config.store_path, worker_id=config.worker_id, lease=config.worker_lease)
                )
            )
            shared = shared_store(self._writer.store)
            now = time.time()
            tracker_config = working_set_config(_wire.tracker_config(self.config), self._writer.store, shared)
            # A worker resumes its own records only; another's are taken over once its lease ends.
            # Renewed first: what is still its own then stays so while it resumes (see _shared).
            renewed_at = time.monotonic()
            if shared is not None:
                await asyncio.to_thread(shared.renew_leases)
            # The working set only (the rest is read back when needed).
            snapshot, partial = await self._load_working_set(tracker_config, now, shared)
            self._tracker = DispositionTracker(tracker_config, snapshot=snapshot, now=now, partial=partial)
            self._stack = _wire.make_stack(self.config)
            self._stack.on_request(self._on_request)
            await self._stack.start()
            endpoints = _wire.endpoints_of(self._stack)
            _check_aor_family(self._aor, endpoints)
            for local in await self._stack.transports.open_udp_for_sending():
                # Listening on TCP/TLS only: UDP destinations (a peer's plain sip: AOR, its
                # IMDN's Request-URI) are still reachable; nothing is taken in on this socket.
                _log.info("no UDP listener for %s: sending UDP requests from %s:%d", local[0], *local)
            self._aor = _resolve_port_zero(self._aor, endpoints)
            if self.config.registers:
                self._start_registration(self._stack)
            if shared is not None:
                await self._shared_start(shared, renewed_at)
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
        """Stop: let running work finish, flush the store, close transports.

        Protocol work (sends, notifications, answers being decided) and
        :meth:`spawn` tasks get ``config.close_grace`` seconds to finish, new
        ones they start included; then every task still running is cancelled
        (event callbacks and handlers already answered for at once), spawned
        ones named in a warning, protocol work in an INFO line.
        """
        if self._closed or not self._started:
            self._closed = True
            return
        # Let what is running finish for a bounded time: protocol work (an answer being
        # decided, an IMDN in flight) and the application's spawn() tasks, so stopping right
        # after mark_displayed, or with replies being written, loses nothing. Event callbacks
        # and handlers already answered for (past their deadline) are not waited for.
        loop = asyncio.get_running_loop()
        grace = self.config.close_grace
        grace_end = loop.time() + grace
        # Finishing one task can start another (an answer makes an IMDN due, a spawned task
        # sends a reply): loop until nothing runs or the grace is over.
        while loop.time() < grace_end:
            pending: list[asyncio.Future[Any]] = [
                t for t in (*self._wire_tasks, *self._app_tasks) if not t.done()
            ]
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
        self._shared_stop()
        self._timer.cancel()
        self._sweep_timer.cancel()
        if self._purge_timer is not None:
            self._purge_timer.cancel()
            self._purge_timer = None
        if self._deadlines is not None:
            self._deadlines.close()
        tasks = [t for t in self._tasks if not t.done()]
        _log_cancelled("spawned", [t for t in tasks if t in self._app_tasks], grace, logging.WARNING)
        _log_cancelled("protocol", [t for t in tasks if t in self._wire_tasks], grace, logging.INFO)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for handle in list(self._handles.values()):
            handle._set_failure(TransportError("user agent closed"))
        if self._stack is not None:
            await self._stack.close()
        if self._tracker is not None:
            self._writer.submit(self._drain_writes(self._tracker))
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
    def tracker(self) -> DispositionTracker:
        """The sans-IO tracker holding every notification state of this user agent.

        For inspection (``sent()``, ``received()``, ``owed()``, ``peer_flags()``,
        ``snapshot()``): change state through the user agent's methods, which
        also send, store and re-arm what the tracker asks for.
        """
        return self._require_tracker()

    @property
    def stack(self) -> SipStack:
        """The SIP stack under the user agent (transports and transactions), for diagnostics."""
        return self._require_stack()

    async def flush(self) -> None:
        """Wait until every state change made so far has reached the store."""
        self._require_tracker()
        await self._writer.flush()

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

    def on_message(self, handler: _MessageH) -> _MessageH:
        """Call ``await handler(message)`` for every new instant message; return ``handler``.

        Usable as a decorator (the decorated function stays a function). The
        handler must be a coroutine function (``async def``, or an object with
        an ``async def __call__``): anything else raises :class:`TypeError`
        here, since it would block the event loop. It decides the final
        response: return None (200), an :class:`~sipimdn.ua.Answer` or another
        final status code, ``(code, reason)`` or a :class:`~sipimdn.ua.Decision`
        (:data:`~sipimdn.ua.HandlerResult`). If it has not returned within
        ``config.handler_deadline`` seconds the stack answers
        ``config.deadline_status`` by itself and the handler keeps running.
        With several handlers the first refusal (in registration order) wins,
        then 202, then 200. Stop calling it with :meth:`remove_handler`.
        """
        require_async(handler, "on_message")
        self._message_handlers.append(handler)
        return handler

    def on_disposition(self, handler: _DispositionH) -> _DispositionH:
        """Call ``await handler(event)`` for every disposition event of messages we sent; return it.

        Also for messages sent before a restart. Events
        (:data:`~sipimdn.events.DispositionEvent`): ``DispositionChanged``,
        ``NotificationAccepted``, ``NotificationRejected`` (unverified, not
        applied) and ``TrackingEnded``. A decorator, like :meth:`on_message`.
        """
        require_async(handler, "on_disposition")
        self._disposition_handlers.append(handler)
        return handler

    def on_notification(self, handler: _NotificationH) -> _NotificationH:
        """Call ``await handler(event)`` for what happens to notifications we owe; return it.

        Events (:data:`~sipimdn.events.NotificationEvent`): ``NotificationSent``,
        ``NotificationAbandoned`` and ``NotificationsDeclined``. A decorator,
        like :meth:`on_message`.
        """
        require_async(handler, "on_notification")
        self._notification_handlers.append(handler)
        return handler

    def on_registration(self, handler: _RegistrationH) -> _RegistrationH:
        """Call ``await handler(event)`` whenever our registration changes; return it.

        Events (from :mod:`sipimdn.registration`): ``RegistrationSucceeded``
        (first registration and each refresh, with the granted expiry),
        ``RegistrationFailed`` (``retry_at`` None: given up, e.g. wrong
        password), ``RegistrationExpired`` and ``Unregistered`` (on close).
        A decorator, like :meth:`on_message`.
        """
        require_async(handler, "on_registration")
        self._registration_handlers.append(handler)
        return handler

    def remove_handler(self, handler: Callable[..., Awaitable[Any]]) -> bool:
        """Stop calling ``handler``, wherever it was registered; True if it was registered.

        Idempotent. Calls already started finish (a message being decided keeps
        its handler's answer).
        """
        removed = False
        registries: tuple[list[Any], ...] = (
            self._message_handlers,
            self._disposition_handlers,
            self._notification_handlers,
            self._registration_handlers,
            self._composing_handlers,
        )
        for registry in registries:
            while handler in registry:
                registry.remove(handler)
                removed = True
        if removed:
            _log.debug("handler %s removed", callable_name(handler))
        return removed

    def stats(self) -> UserAgentStats:
        """A snapshot of what this user agent has done and holds now (see :mod:`sipimdn.ua.stats`)."""
        stack = self._require_stack()
        tracker = self._require_tracker()
        counters = self._counters
        layer = stack.layer
        writer = self._writer
        return UserAgentStats(
            messages_sent=counters.messages_sent,
            messages_received=counters.messages_received,
            duplicates_received=counters.duplicates_received,
            notifications_sent=counters.notifications_sent,
            notifications_received=counters.notifications_received,
            notifications_accepted=counters.notifications_accepted,
            notifications_rejected=counters.notifications_rejected,
            retransmissions=layer.retransmissions,
            timeouts=layer.timeouts,
            transport_errors=layer.transport_failures,
            open_connections=stack.transports.connection_count,
            tracked_messages=tracker.tracked_sent,
            tracked_received=tracker.tracked_received,
            owed_notifications=tracker.owed_count,
            records_lost=counters.records_lost,
            working_set_evictions=tracker.working_set_evictions,
            working_set_reads=counters.working_set_reads,
            store_writes=writer.writes,
            store_failures=writer.failures,
            store_write_seconds=writer.write_seconds,
            store_write_max_seconds=writer.write_max_seconds,
        )

    def on_composing(self, handler: _ComposingH) -> _ComposingH:
        """Call ``await handler(event)`` when a peer starts or stops composing (RFC 3994); return it.

        ``event`` is a :class:`~sipimdn.iscomposing.ComposingStateChanged`: ``sender``
        (CPIM From, else SIP From), ``state`` (``active``/``idle``), ``content_type``,
        ``refresh``, ``last_active`` and ``cause``: an indication, a ``timeout`` (an active
        state not refreshed in time, RFC 3994 §3.3), a ``message`` from the sender, or
        ``limit`` (too many senders active at once). A decorator, like :meth:`on_message`.
        """
        require_async(handler, "on_composing")
        self._composing_handlers.append(handler)
        return handler

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

    # -- the application's calls ------------------------------------------------------------

    async def send_message(
        self,
        to: str,
        body: str | bytes,
        *,
        content_type: str = "text/plain;charset=utf-8",
        notify: Iterable[DispositionRequest | NotifyName] = (),
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
        return self._start_send(
            to,
            body,
            content_type=content_type,
            notify=notify,
            subject=subject,
            cpim=cpim,
            transport=transport,
            to_list=to_list,
        )

    async def report_disposition(
        self, message_id: str, kind: Kind | KindName, status: Status | StatusName, sender: str | None = None
    ) -> bool:
        """Report what became of a received message, also one from an earlier run.

        ``kind`` ``"delivery"`` with ``"failed"``, ``"forbidden"`` or
        ``"error"`` (or ``"delivered"`` when ``auto_delivery`` is off), or
        ``"display"`` with ``"displayed"``, ``"forbidden"`` or ``"error"``.
        Returns the tracker's decision: True, a notification is owed and
        will be sent (for a message still being answered: with its 2xx, never
        after a refusal); False, nothing will be. Raises
        :class:`~sipimdn.errors.LocalProtocolError` where RFC 5438 forbids the
        report: after a non-2xx answer (RFC 5438 §7.2.1.1), or a second, different
        notification of one kind (RFC 5438 §7.2), and
        :class:`~sipimdn.errors.StoreError` when the message's record had left memory (see
        ``config.working_set_max``) and the store could not be read.
        """
        return await self._report_disposition(message_id, kind, status, sender)

    async def mark_displayed(self, message_id: str, sender: str | None = None) -> bool:
        """Send the display notification for a received message, also one from an earlier run.

        ``sender`` (the CPIM or SIP From of the message) disambiguates when two
        senders used the same Message-ID. Returns True if a notification is
        now owed, as :meth:`report_disposition` (False: none requested, already
        owed, privacy setting, or unknown message). A message whose record left memory
        (``config.working_set_max``) is read back from the store first, off the event loop.
        """
        return await self._mark_displayed(message_id, sender)

    def composing(
        self,
        peer: str,
        *,
        content_type: str | None = "text/plain",
        refresh: int = DEFAULT_REFRESH,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        cpim: bool | None = None,
    ) -> Composer:
        """Our composing state towards ``peer`` (RFC 3994 §3.2): call ``keystroke()`` on it.

        The same :class:`~sipimdn.ua.Composer` is returned for a peer while the
        application holds it (the other arguments apply when it is made).
        ``refresh`` (at least 60 s) is how often an active state is re-sent,
        ``idle_timeout`` how long after the last keystroke ``idle`` is sent.
        ``cpim`` forces the indications into message/cpim (no IMDN header) or
        bare; default: as messages (``config.use_cpim``, off for a peer known to
        refuse CPIM). A message sent to the peer ends the active state with no
        ``idle`` indication.
        """
        return self._composer(
            peer, content_type=content_type, refresh=refresh, idle_timeout=idle_timeout, cpim=cpim
        )

    async def await_disposition(
        self, message_id: str, state: str | DispositionState, timeout: float | None = None
    ) -> DispositionState:
        """Wait until the message ``message_id`` reaches ``state`` (or can no longer); return its state.

        Works for a message any worker sharing the store sent (its record is read there and
        re-read when a worker writes it), as for one sent here (see
        :meth:`SentMessage.await_disposition <sipimdn.ua.SentMessage.await_disposition>`).
        It can no longer reach ``state`` when its state is terminal (``failed``, ``expired``
        when no positive news came before the tracking deadline...) or when its tracking
        ended: the state returned is then the one tracking ended in, which may fall short of
        ``state`` (``delivered`` when ``displayed`` was awaited); check with
        :func:`~sipimdn.imdn.vocabulary.reached`. A shared store keeps that final state
        readable for an hour (at most until the record's expiry).

        Raises :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`~sipimdn.errors.MessageNotTracked` (a
        :class:`~sipimdn.errors.LocalProtocolError`) when no worker tracks the message: never
        sent, or its tracking ended and its final state can no longer be read (a store of one
        worker's drops it at once; a shared one when it expires): ``last_state`` then says
        what was read while waiting, if anything.
        """
        self._require_tracker()
        return await self._await_disposition(message_id, state, timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the user agent tracks.

        Its errors are logged with its name (``name``, else the coroutine's
        qualified name). :meth:`close` waits for it up to ``config.close_grace``
        seconds, then cancels it and says so in a warning.
        """
        task = self._spawn(coro, name)
        self._app_tasks.add(task)
        task.add_done_callback(self._app_tasks.discard)
        return task


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


def _log_cancelled(what: str, tasks: list[asyncio.Task[Any]], grace: float, level: int) -> None:
    if tasks:
        names = sorted({t.get_name() for t in tasks})
        _log.log(
            level,
            "closing: cancelling %d %s task(s) still running after the %gs grace: %s",
            len(tasks),
            what,
            grace,
            ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""),
        )


def _check_aor_family(aor: Uri, endpoints: Iterable[ListenEndpoint]) -> None:
    """An AOR written as an IP address must be of a family we listen on.

    With port 0 the AOR stands for this very user agent, so a family nothing
    listens on (``sip:carol@[::1]:0`` with the default IPv4 listener) would
    advertise an address where nobody answers: refused. With a real port the
    AOR may name another host (a registrar's address): a warning.
    """
    try:
        address = ipaddress.ip_address(aor.host.strip("[]"))
    except ValueError:
        return  # a domain name: any listener may serve it
    families = {ipaddress.ip_address(e.host).version for e in endpoints}
    if address.version in families:
        return
    listened = ", ".join(str(e) for e in endpoints)
    problem = f"AOR {aor} is an IPv{address.version} address but the user agent listens only on {listened}"
    if aor.port == 0:
        raise LocalProtocolError(f"{problem}: add a listen endpoint of that family")
    _log.warning("%s: requests sent to the AOR will not reach us directly", problem)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
