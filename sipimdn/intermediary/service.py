"""``Intermediary``: the asyncio adapter running the intermediary roles on a :class:`~sipimdn.stack.SipStack`.

Theory of operation. Three sans-IO parts do the protocol work; the service
only feeds them and carries out what they ask:

- :class:`~sipimdn.intermediary.registrar.Registrar` answers REGISTER, so a
  recipient "comes online" by registering (its bindings also locate it);
- :class:`~sipimdn.intermediary.forward.StoreAndForward` holds every
  MESSAGE we relay until the next hop takes it, fails it or it expires;
- :class:`~sipimdn.intermediary.exploder.ListExploder` turns an IM sent to
  a configured list into one copy per member and collects their IMDNs.

Routing of a received MESSAGE (RFC 5438 §8):

1. An IMDN whose top ``IMDN-Route`` is us (RFC 5438 §8): a list member's
   notification goes to the exploder; any other loses its top IMDN-Route and
   is relayed to the next IMDN-Route, else to its CPIM To.
2. An IM to a list URI: 202, exploded (copies: CPIM To = member,
   ``Original-To`` = list unless private, our ``IMDN-Record-Route``).
3. Anything else for someone other than us: 202 once held in the store,
   then forwarded to the registered contact (or the URI itself outside our
   domains); an IM asking for IMDNs gets our ``IMDN-Record-Route`` (top)
   and ``Original-To``, keeps its CPIM Message-ID and travels in a fresh
   transaction. Notifications we owe (``processed``/``stored``,
   ``failed``) are built here and held like any other message.

Every input ends in the pump (``_pump``): drain the cores' events,
hand the store writes to one worker thread (order kept), re-arm the single
timer. A 202 is sent only after the writes that hold the message are on
disk, so an accepted message survives a restart.

The service is built in layers, one job each: :mod:`.config`
(``IntermediaryConfig``); :mod:`._base` (the roles wired together, the
pump, the store worker, tracked tasks); :mod:`._relay` (what the cores ask:
forwarding, owed notifications, list copies); :mod:`._receive` (answering
REGISTER and OPTIONS, routing each MESSAGE); and this module, the
``Intermediary`` itself: its lifecycle and public API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..dialog.transaction import TimerConfig
from ..errors import LocalProtocolError
from ..stack import SipStack
from ..transport.base import ListenSpec, TransportConfig
from ..transport.flow import Transport
from ._receive import (
    ALLOW,  # noqa: F401 - the methods we answer, importable from here as before
    ReceivePath,
    RequestRouted,
)
from .config import IntermediaryConfig
from .forward import StoreAndForward
from .sqlite import SqliteParkedStore

__all__ = ["Intermediary", "IntermediaryConfig", "RequestRouted"]

_log = logging.getLogger("sipimdn.intermediary")


class Intermediary(ReceivePath):
    """Store-and-forward server, URI-list exploder and minimal registrar in one SIP service.

    ``async with Intermediary(config) as server:``; ``server.uri`` is the URI
    it puts in IMDN-Record-Route. Pass ``store=`` to use your own
    :class:`~sipimdn.intermediary.store.ParkedStore`.
    """

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Intermediary:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, resume held messages, listen."""
        loop = asyncio.get_running_loop()
        given, path = self._given_store, self.config.store_path
        self._store = await loop.run_in_executor(
            self._executor, lambda: given if given is not None else SqliteParkedStore(path)
        )
        parked = await loop.run_in_executor(self._executor, self._store.load)
        self.forwarder = StoreAndForward(self.config.forward, parked=parked)
        client_tls = self.config.tls_client_context
        self._stack = SipStack(
            self._listen_specs(),
            timers=TimerConfig(t1=self.config.t1),
            transport_config=TransportConfig(client_ssl_context=client_tls)
            if client_tls is not None
            else None,
        )
        self._stack.on_request(self._on_request)
        try:
            await self._stack.start()
        except BaseException:
            await self._stack.close()
            self._store.close()
            raise
        self._uri = self.config.uri or self._derive_uri()
        if parked:
            _log.info("resumed %d held message(s)", len(parked))
        self.forwarder.handle_timer(time.time())
        self._pump()

    async def close(self) -> None:
        """Stop: cancel attempts in flight (they are due again after a restart), flush the store."""
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._stack is not None:
            await self._stack.close()
        if self._store is not None:
            loop = asyncio.get_running_loop()
            final = self.forwarder.writes_to_apply()
            store = self._store
            await loop.run_in_executor(self._executor, store.apply, final)
            await loop.run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)

    def _listen_specs(self) -> list[ListenSpec]:
        listen = self.config.listen
        tls = self.config.tls_server_context
        specs = [
            ListenSpec(
                Transport.from_token(ep.transport), ep.host, ep.port, tls if ep.transport == "tls" else None
            )
            for ep in listen
        ]
        tcp_hosts = {ep.host for ep in self.config.listen if ep.transport == "tcp"}
        for ep in self.config.listen:
            if ep.transport == "udp" and ep.host not in tcp_hosts:
                specs.append(ListenSpec(Transport.TCP, ep.host, 0))
                tcp_hosts.add(ep.host)
        return specs

    def _derive_uri(self) -> str:
        kind, (host, port) = self._require_stack().endpoints[0]
        shown = f"[{host}]" if ":" in host else host
        suffix = "" if kind is Transport.UDP else f";transport={kind.value.lower()}"
        return f"sip:{self.config.user}@{shown}:{port}{suffix}"

    # -- public ------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """Our own URI (IMDN-Record-Route value; send IMDNs and REGISTERs here)."""
        if self._uri is None:
            raise LocalProtocolError("intermediary not started")
        return self._uri

    @property
    def endpoints(self) -> list[tuple[Transport, tuple[str, int]]]:
        """Bound endpoints."""
        return self._require_stack().endpoints

    def on_event(self, observer: Callable[[object], None]) -> Callable[[], None]:
        """Call ``observer(event)`` for every store-and-forward and exploder event; returns a remover."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    async def flush(self) -> None:
        """Wait until every store write queued so far is applied."""
        if self._last_write is not None:
            await asyncio.shield(self._last_write)
