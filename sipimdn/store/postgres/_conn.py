"""The PostgreSQL store's plumbing: its private event loop, the data connection and LISTEN.

See :mod:`sipimdn.store.postgres` ("Threads and loops", "Faults").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ...errors import StoreError
from ._sql import _MAX_NOTIFY_BYTES

if TYPE_CHECKING:
    import asyncpg

__all__ = ["LoopClient", "is_postgres_url"]

_log = logging.getLogger("sipimdn.store.postgres")

_T = TypeVar("_T")

#: Longest wait between two attempts to reconnect the listening connection (seconds).
_RELISTEN_MAX_DELAY = 5.0


def is_postgres_url(target: str) -> bool:
    """True when ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return target.lower().startswith(("postgresql://", "postgres://"))


def _asyncpg() -> Any:
    try:
        import asyncpg  # noqa: PLC0415  (optional extra: imported only when used)
    except ImportError as exc:
        raise StoreError("the PostgreSQL store needs asyncpg: pip install 'sipimdn[postgres]'") from exc
    return asyncpg


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


class LoopClient:
    """asyncpg behind a synchronous face: a private loop in a daemon thread runs every call
    (:meth:`_call`), on one data connection at a time (``_lock``) and one listening connection.
    """

    def __init__(
        self, url: str, *, channel: str | None, connect_timeout: float, command_timeout: float
    ) -> None:
        self._pg = _asyncpg()
        self.url = url
        self.channel = channel
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._conn: asyncpg.Connection[Any] | None = None
        self._listen_conn: asyncpg.Connection[Any] | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._resume_callbacks: list[Callable[[], None]] = []
        self._relisten: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="sipimdn-postgres", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, _T], what: str) -> _T:
        """Run ``coro`` on the store's loop and wait; database faults become StoreError."""
        if self._closed:
            coro.close()
            raise StoreError("store is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop stopped: closed meanwhile by another thread
            coro.close()
            raise StoreError("store is closed") from exc
        try:
            # The loop enforces connect and command timeouts; this bound only guards a stuck loop.
            return future.result(timeout=self._connect_timeout + 2 * self._command_timeout + 5)
        except StoreError:
            raise
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            self._drop_connection()
            raise StoreError(f"{what}: {_redacted(self.url)}: no answer in time") from exc
        except (self._pg.PostgresError, self._pg.InterfaceError, OSError, TimeoutError, UnicodeError) as exc:
            self._drop_connection()
            raise StoreError(f"{what}: {_redacted(self.url)}: {exc or type(exc).__name__}") from exc

    def _drop_connection(self) -> None:
        """Forget the data connection after a fault: the next call connects again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(conn.terminate)

    async def _connect(self) -> asyncpg.Connection[Any]:
        conn: asyncpg.Connection[Any] = await self._pg.connect(
            self.url, timeout=self._connect_timeout, command_timeout=self._command_timeout
        )
        return conn

    async def _connection(self) -> asyncpg.Connection[Any]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    def close(self) -> None:
        """Close the connections and stop the store's loop (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def shut() -> None:
            if self._relisten is not None:
                self._relisten.cancel()
            for conn in (self._conn, self._listen_conn):
                if conn is not None and not conn.is_closed():
                    try:
                        await asyncio.wait_for(conn.close(), timeout=2.0)
                    except (OSError, TimeoutError, self._pg.PostgresError, self._pg.InterfaceError):
                        conn.terminate()
            self._conn = self._listen_conn = None

        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, payload: str) -> None:
        """Send ``payload`` to every listener on :attr:`channel` (this process's included)."""
        if self.channel is None:
            raise StoreError("store has no notification channel")
        if len(payload.encode()) > _MAX_NOTIFY_BYTES:
            raise StoreError(f"notification payload longer than {_MAX_NOTIFY_BYTES} bytes")
        channel = self.channel

        async def send() -> None:
            conn = await self._connection()
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

        with self._lock:
            self._call(send(), "store notify failed")

    def listen(
        self, callback: Callable[[str], None], *, on_resume: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(payload)`` for every notification on :attr:`channel`; return an unsubscriber.

        Payloads are the Message-IDs of ``sent`` records written by any worker (and whatever
        :meth:`notify` sends). Callbacks run on the store's own thread: keep them short and
        hand over to your loop (``loop.call_soon_threadsafe``). Listening starts before this
        returns, so a notification committed afterwards is delivered. When the listening
        connection is lost (database restart), the store connects again (every few seconds
        until it succeeds) and then calls ``on_resume()``: notifications sent in between are
        lost, so re-read what you wait for from the tables.
        """
        if self.channel is None:
            raise StoreError("store has no notification channel")

        async def subscribe() -> None:
            if self._listen_conn is None or self._listen_conn.is_closed():
                self._listen_conn = await self._listening_connection()
            self._listeners.append(callback)
            if on_resume is not None:
                self._resume_callbacks.append(on_resume)

        self._call(subscribe(), "store listen failed")

        def unsubscribe() -> None:
            def drop() -> None:
                if callback in self._listeners:
                    self._listeners.remove(callback)
                if on_resume is not None and on_resume in self._resume_callbacks:
                    self._resume_callbacks.remove(on_resume)

            if not self._closed:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(drop)

        return unsubscribe

    async def _listening_connection(self) -> asyncpg.Connection[Any]:
        assert self.channel is not None
        conn = await self._connect()
        try:
            await conn.add_listener(self.channel, self._deliver)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._listen_lost)
        return conn

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for listener in list(self._listeners):
            try:
                listener(str(payload))
            except Exception:  # one failing listener must not silence the others
                _log.exception("store notification listener failed")

    def _listen_lost(self, conn: object) -> None:
        if self._closed or conn is not self._listen_conn or self._relisten is not None:
            return
        _log.warning("store notification connection lost: %s; reconnecting", _redacted(self.url))
        self._listen_conn = None
        self._relisten = self._loop.create_task(self._reconnect_listener())

    async def _reconnect_listener(self) -> None:
        delay = 0.25
        try:
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    self._listen_conn = await self._listening_connection()
                except (self._pg.PostgresError, self._pg.InterfaceError, OSError, TimeoutError) as exc:
                    _log.debug("store notification connection: still down: %s", exc)
                    delay = min(delay * 2, _RELISTEN_MAX_DELAY)
                    continue
                _log.warning("store notification connection back: %s", _redacted(self.url))
                for resume in list(self._resume_callbacks):
                    try:
                        resume()
                    except Exception:
                        _log.exception("store notification resume callback failed")
                return
        finally:
            self._relisten = None
