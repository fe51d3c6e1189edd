"""The intermediary's shared state and plumbing: the roles it wires together, the pump, tracked tasks.

One :class:`ServiceBase` holds the three sans-IO roles (the registrar of RFC 3261 §10.3, the
store-and-forward core and the URI-list exploder of RFC 5438 §8) and the asyncio machinery
they run on: one store worker thread (writes applied in the order queued), one timer, a set of
tracked tasks. Every input ends in :meth:`ServiceBase._pump`: drain the roles' events and do
what they say (:mod:`._relay`), hand the store writes to the worker, re-arm the timer (aioquic's
``_process_events(); transmit()``). The receive path (:mod:`._receive`) and the service's
lifecycle and public API (:mod:`.service`) are the classes built on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .. import cpim
from .._coretimer import CoreTimer
from .._pacing import DestinationQueue
from ..errors import LocalProtocolError
from ..headers import NameAddr
from ..imdn import ImdnHeaders
from ..stack import SipStack
from .config import IntermediaryConfig
from .exploder import ListExploder
from .forward import StoreAndForward
from .registrar import Registrar
from .store import ParkedOp, ParkedStore

if TYPE_CHECKING:
    from ..transport.flow import Transport

__all__ = ["ServiceBase"]

_log = logging.getLogger("sipimdn.intermediary")


class ServiceBase:
    """The state every part of the intermediary shares, declared in one place, and its pump."""

    def __init__(self, config: IntermediaryConfig | None = None, *, store: ParkedStore | None = None) -> None:
        self.config = config or IntermediaryConfig()
        self._given_store = store
        self._store: ParkedStore | None = None
        # One worker: store writes are applied in the order they were queued.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="parked")
        self._last_write: asyncio.Future[None] | None = None
        self.registrar = Registrar(max_expires=self.config.max_expires)
        self.exploder = ListExploder(self.config.lists, self.config.exploder)
        self.forwarder: StoreAndForward = StoreAndForward(self.config.forward)
        self._domains = {d.lower() for d in self.config.domains}
        self._stack: SipStack | None = None
        self._uri: str | None = None
        self._observers: list[Callable[[object], None]] = []
        self._copy_sources: dict[str, tuple[cpim.CpimMessage, ImdnHeaders, NameAddr, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue = DestinationQueue()
        self._timer = CoreTimer(self._on_timer)  # wall clock: parked records outlive a restart
        self._closed = False

    if TYPE_CHECKING:  # defined by Intermediary (the public API) and RelayPath (_dispatch)

        @property
        def uri(self) -> str: ...

        @property
        def endpoints(self) -> list[tuple[Transport, tuple[str, int]]]: ...

        async def flush(self) -> None: ...

        def _dispatch(self, event: object) -> None: ...

    # -- the pump ----------------------------------------------------------------------------

    def _require_stack(self) -> SipStack:
        if self._stack is None:
            raise LocalProtocolError("intermediary not started")
        return self._stack

    def _pump(self) -> None:
        if self._closed:
            return
        while True:
            event: object | None = self.forwarder.next_event()
            if event is None:
                event = self.exploder.next_event()
            if event is None:
                break
            self._dispatch(event)
        writes = self.forwarder.writes_to_apply()
        if writes:
            self._submit(writes)
        timers = [t for t in (self.forwarder.get_timer(), self.exploder.get_timer()) if t is not None]
        if not self._closed:
            self._timer.arm(min(timers) if timers else None)

    def _submit(self, ops: list[ParkedOp]) -> None:
        store = self._store
        assert store is not None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, store.apply, ops)
        future.add_done_callback(_log_write_failure)
        self._last_write = future

    def _on_timer(self, now: float) -> None:
        if self._closed:
            return
        self.forwarder.handle_timer(now)
        self.exploder.handle_timer(now)
        self._pump()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("intermediary task failed", exc_info=task.exception())


def _log_write_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("parked store write failed", exc_info=future.exception())
