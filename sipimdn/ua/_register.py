"""Keeps the user agent registered: drives a sans-IO RegistrationClient through the stack.

The :class:`~sipimdn.registration.RegistrationClient` decides everything
(what to send, when to refresh, how long to back off, what the registrar
granted); this module is only its pump, one asyncio task per user agent:

    send what the client queued (one transaction at a time, final responses
    fed back; Timer F and transport errors as failures) -> hand its events
    to the user agent -> sleep until the client's timer (a
    :class:`~sipimdn._coretimer.CoreTimer`) or a wake-up.

Its clock is the event loop's (monotonic), never the wall clock: refreshes
must not drift when the system time is set. The events it hands on carry
wall-clock times (``refresh_at``, ``retry_at`` as :func:`time.time` values),
like every event of the user agent: the client's monotonic deadlines are
converted as they leave it. A wake-up comes from
:meth:`RegistrationDriver.reregister` (a request through the proxy failed
on the transport, so the flow our binding points at is probably gone) and
:meth:`RegistrationDriver.stop` (unregister on close).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from .._coretimer import CoreTimer
from ..config import ListenEndpoint, UserAgentConfig
from ..errors import LocalProtocolError, TransactionTimeout, TransportError
from ..message import Request
from ..registration import (
    RegisterRequest,
    RegistrationClient,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationSettings,
    RegistrationSucceeded,
    RegState,
    Unregistered,
)
from ..stack import SipStack
from ..uri import Uri

__all__ = ["RegistrationDriver", "contacts_for", "settings_for"]

_log = logging.getLogger("sipimdn.ua.register")


def contacts_for(
    aor: Uri, listen: Sequence[ListenEndpoint], bound: Sequence[ListenEndpoint]
) -> tuple[str, ...]:
    """One Contact URI per configured listen endpoint, with the port actually bound.

    Endpoints the stack added on its own (TCP implied by UDP, RFC 3261
    §18.2.1) are not registered: the registrar would fork every request to
    both, and the first endpoint of each host already reaches us.
    """
    available = list(bound)
    contacts = []
    user = f"{aor.user}@" if aor.user else ""
    for wanted in listen:
        match = next(
            (
                ep
                for ep in available
                if ep.transport == wanted.transport
                and ep.host == wanted.host
                and (wanted.port in (0, ep.port))
            ),
            None,
        )
        if match is None:
            raise LocalProtocolError(f"listen endpoint {wanted} is not bound")
        available.remove(match)
        host = f"[{match.host}]" if match.is_ipv6 else match.host
        suffix = "" if match.transport == "udp" else f";transport={match.transport}"
        contacts.append(f"sip:{user}{host}:{match.port}{suffix}")
    return tuple(contacts)


def settings_for(config: UserAgentConfig, aor: Uri, contacts: tuple[str, ...]) -> RegistrationSettings:
    """The registration settings the user agent's configuration asks for."""
    return RegistrationSettings(
        aor=str(aor),
        contacts=contacts,
        registrar_uri=config.registrar,
        expires=config.register_expires,
        instance_id=config.instance_id,
        outbound=config.reg_id,
        display_name=config.display_name,
        refresh_margin=config.register_refresh_margin,
        retry_base=config.register_retry_base,
        retry_max=config.register_retry_max,
    )


class RegistrationDriver:
    """The asyncio pump of one :class:`~sipimdn.registration.RegistrationClient`."""

    def __init__(
        self,
        client: RegistrationClient,
        stack: SipStack,
        *,
        route: str | None,
        user_agent: str,
        emit: Callable[[RegistrationEvent], None],
    ) -> None:
        self.client = client
        self._stack = stack
        self._route = route
        self._user_agent = user_agent
        self._emit = emit
        self._wake = asyncio.Event()
        # Armed only while the pump sleeps: the client's timers never run during a transaction.
        self._timer = CoreTimer(self._on_timer, clock=None)
        self._task: asyncio.Task[None] | None = None
        # Futures of wait_settled(): resolved by a success or by a failure the client gave up on.
        self._settled: list[asyncio.Future[RegistrationEvent]] = []
        self._last: RegistrationEvent | None = None

    @property
    def state(self) -> RegState:
        """The client's state."""
        return self.client.state

    def start(self) -> None:
        """Send the first REGISTER and keep the binding refreshed until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        self.client.register(loop.time())
        self._task = loop.create_task(self._run(), name=f"register {self.client.settings.aor}")
        self._task.add_done_callback(_log_crash)

    def reregister(self) -> None:
        """Refresh now: a transport failure towards the proxy may have broken our flow.

        Only from a settled state: a REGISTER already in flight will itself
        report how the flow is doing.
        """
        if self.client.state in (RegState.REGISTERED, RegState.BACKOFF, RegState.FAILED):
            _log.info("re-registering %s after a transport failure", self.client.settings.aor)
            self.client.register(asyncio.get_running_loop().time())
            self._wake.set()

    async def wait_settled(self, timeout: float | None) -> RegistrationEvent:
        """The first success, or the failure the client gave up on, from now (or already had)."""
        if self.client.registered and isinstance(self._last, RegistrationSucceeded):
            return self._last
        if self.client.state is RegState.FAILED and self._last is not None:
            return self._last
        future: asyncio.Future[RegistrationEvent] = asyncio.get_running_loop().create_future()
        self._settled.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if future in self._settled:
                self._settled.remove(future)

    async def stop(self, timeout: float) -> bool:
        """Unregister (bounded by ``timeout`` seconds) and stop; True if the registrar confirmed."""
        confirmed = False
        task = self._task
        if task is not None and not task.done():
            loop = asyncio.get_running_loop()
            done: asyncio.Future[bool] = loop.create_future()
            previous_emit = self._emit

            def watch(event: RegistrationEvent) -> None:
                previous_emit(event)
                if isinstance(event, Unregistered) and not done.done():
                    done.set_result(event.confirmed)

            self._emit = watch
            self.client.unregister(loop.time())
            self._drain()
            self._wake.set()
            try:
                confirmed = await asyncio.wait_for(asyncio.shield(done), timeout)
            except TimeoutError:
                _log.info("unregistration of %s unanswered after %.1fs", self.client.settings.aor, timeout)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for future in self._settled:
            if not future.done():
                future.cancel()
        return confirmed

    # -- the pump --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                requests = self.client.requests_to_send()
                for request in requests:
                    await self._send(request)
                    self._drain()
                if requests:
                    continue  # a 401/407/423 answered queues the next REGISTER at once
                self._wake.clear()
                self._timer.arm(self.client.get_timer())
                await self._wake.wait()
                self._timer.cancel()
        finally:
            self._timer.cancel()

    def _on_timer(self, now: float) -> None:
        self.client.handle_timer(now)
        self._drain()
        self._wake.set()

    async def _send(self, register: RegisterRequest) -> None:
        loop = asyncio.get_running_loop()
        try:
            response = await self._stack.send_request(self._request(register))
        except (TransactionTimeout, TransportError, LocalProtocolError) as exc:
            # LocalProtocolError: the registrar URI cannot be reached as configured
            # (sips over UDP...): the client backs off like for any unreachable registrar.
            self.client.handle_failure(loop.time(), str(exc))
        else:
            self.client.handle_response_message(response, loop.time())

    def _request(self, register: RegisterRequest) -> Request:
        request = register.to_request()
        if self._route is not None:
            # The pre-loaded route set (RFC 3261 §8.1.2): the stack sends to its first entry.
            request.headers.add("Route", f"<{self._route}>")
        if self._user_agent:
            request.headers.add("User-Agent", self._user_agent)
        return request

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            event = _wall_clock(event, time.time() - asyncio.get_running_loop().time())
            self._last = event
            _log.info("registration of %s: %s", self.client.settings.aor, _describe(event))
            settles = isinstance(event, RegistrationSucceeded) or (
                isinstance(event, RegistrationFailed) and event.retry_at is None
            )
            if settles:
                for future in self._settled:
                    if not future.done():
                        future.set_result(event)
            self._emit(event)


def _wall_clock(event: RegistrationEvent, offset: float) -> RegistrationEvent:
    """``event`` with its loop-clock deadline moved to the wall clock (``offset`` = wall - loop)."""
    if isinstance(event, RegistrationSucceeded):
        return dataclasses.replace(event, refresh_at=event.refresh_at + offset)
    if isinstance(event, RegistrationFailed) and event.retry_at is not None:
        return dataclasses.replace(event, retry_at=event.retry_at + offset)
    return event


def _describe(event: RegistrationEvent) -> str:
    """A log line for an event (events never carry secrets)."""
    if isinstance(event, RegistrationSucceeded):
        return f"{'refreshed' if event.refreshed else 'registered'} for {event.expires}s"
    if isinstance(event, RegistrationFailed):
        retry = "giving up" if event.retry_at is None else "will retry"
        return f"failed ({event.status_code}: {event.reason}); {retry}"
    return type(event).__name__


def _log_crash(task: asyncio.Task[None]) -> None:
    """The pump only ends by cancellation; anything else is a bug worth a loud log line."""
    if not task.cancelled() and task.exception() is not None:
        _log.error("registration task stopped", exc_info=task.exception())
