"""Helpers for testing your own code that embeds a :class:`~sipimdn.ua.UserAgent`.

Two user agents on loopback, each on a free port with an in-memory store, that
reach each other by their AORs; recorders that keep what a user agent's
callbacks receive and wait for the next one with a timeout; a wait for a sent
message's disposition that fails with a readable error. Everything here uses
the user agent's public API only: the helpers see what your application sees,
and the messages between the two user agents are real SIP over real sockets.

A test with pytest and pytest-asyncio (any ``asyncio_mode``)::

    import pytest
    from sipimdn.testing import record_messages, ua_pair, wait_disposition

    @pytest.mark.asyncio
    async def test_bob_gets_the_message() -> None:
        async with ua_pair() as (alice, bob):
            inbox = record_messages(bob)              # before anything is sent
            sent = await alice.send_message(bob.aor, "hi", notify={"positive-delivery"})
            message = await inbox.next()              # WaitTimeout after 5 s
            assert message.text == "hi"
            await wait_disposition(sent, "delivered")

Both user agents are closed when the ``async with`` block ends, also when it
raises. ``ua_pair("tcp")`` and ``ua_pair("tls")`` select the transport (TLS
makes a throwaway certificate authority with ``trustme``, which is then
needed: ``pip install trustme``); ``alice={...}`` and ``bob={...}`` override
:class:`~sipimdn.config.UserAgentConfig` fields per side. The same pair is a
pytest fixture, ``sipimdn_pair``, in :mod:`sipimdn.testing.pytest_plugin`.

This module imports neither pytest nor trustme: it can be used from any test
runner (``asyncio.run`` will do).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from ..config import ListenEndpoint, UserAgentConfig
from ..events import DispositionEvent, DispositionState, NotificationEvent
from ..store import MemoryStore
from ..ua import IncomingMessage, SentMessage, UserAgent

__all__ = [
    "DEFAULT_TIMEOUT",
    "Recorder",
    "TlsContexts",
    "TransportName",
    "UaPair",
    "UnexpectedDisposition",
    "WaitTimeout",
    "loopback_config",
    "record_dispositions",
    "record_messages",
    "record_notifications",
    "throwaway_tls",
    "ua_pair",
    "wait_disposition",
]

#: Seconds every wait here gives by default. A loopback exchange takes milliseconds; the margin
#: is for a loaded test machine, not for the protocol.
DEFAULT_TIMEOUT = 5.0

#: The transports :func:`ua_pair` and :func:`loopback_config` can put a user agent on.
TransportName = Literal["udp", "tcp", "tls"]

_T = TypeVar("_T")

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(UserAgentConfig))


class WaitTimeout(TimeoutError):
    """Nothing (that matched) arrived in time.

    A :class:`TimeoutError`, so ``pytest.raises(TimeoutError)`` catches it too; the message
    says who waited for what, for how long, and what did arrive.
    """


class UnexpectedDisposition(AssertionError):
    """A sent message settled in a state from which the awaited one cannot be reached
    (``failed`` while waiting for ``delivered``, for example)."""

    def __init__(self, message: str, *, sent: SentMessage, wanted: DispositionState) -> None:
        super().__init__(message)
        #: The handle of the message, as it ended.
        self.sent = sent
        #: The state that was awaited.
        self.wanted = wanted


@dataclasses.dataclass(frozen=True, slots=True)
class TlsContexts:
    """The two TLS contexts a loopback user agent needs: one to serve with, one to connect with."""

    #: Holds a certificate valid for 127.0.0.1, ::1 and localhost.
    server: ssl.SSLContext
    #: Trusts the authority that issued ``server``'s certificate (and verifies host names).
    client: ssl.SSLContext


def throwaway_tls() -> TlsContexts:
    """Contexts from a certificate authority made up on the spot (with ``trustme``).

    Both user agents of a pair share one: each serves with the certificate and trusts the
    authority. Raises :class:`ImportError`, saying what to install, without ``trustme``.
    """
    try:
        import trustme  # noqa: PLC0415  (optional: only TLS pairs need it)
    except ImportError as exc:
        raise ImportError(
            "sipimdn.testing: a TLS user agent pair needs a throwaway certificate authority, made with "
            "trustme, which is not installed: pip install trustme (or pass tls=TlsContexts(server, "
            "client) with contexts of your own)",
            name="trustme",
        ) from exc
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "::1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    authority.configure_trust(client)
    return TlsContexts(server=server, client=client)


def loopback_config(
    name: str,
    transport: TransportName = "udp",
    *,
    host: str = "127.0.0.1",
    tls: TlsContexts | None = None,
    **overrides: Any,
) -> UserAgentConfig:
    """The configuration of a user agent ``name`` listening on ``host`` over ``transport``.

    The port is 0 (a free one), and so is the AOR's, which the user agent replaces with the
    port it bound (``sip:alice@127.0.0.1:0`` becomes ``sip:alice@127.0.0.1:40123``). Over TCP
    the AOR says ``;transport=tcp``, over TLS it is a ``sips:`` URI. A UDP user agent also
    listens on TCP (``udp_implies_tcp``), as RFC 3261 §18.2.1 wants. ``overrides`` set any
    other :class:`~sipimdn.config.UserAgentConfig` field (``listen`` and ``aor`` included);
    an unknown name raises :class:`TypeError`. ``tls`` defaults to :func:`throwaway_tls` for
    ``transport="tls"``.
    """
    if transport not in ("udp", "tcp", "tls"):
        raise ValueError(f"transport must be 'udp', 'tcp' or 'tls', not {transport!r}")
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"{name}: unknown UserAgentConfig field(s) {', '.join(unknown)}")
    if transport == "tls" and tls is None:
        tls = throwaway_tls()
    bracketed = f"[{host}]" if ":" in host else host
    aor = {
        "udp": f"sip:{name}@{bracketed}:0",
        "tcp": f"sip:{name}@{bracketed}:0;transport=tcp",
        "tls": f"sips:{name}@{bracketed}:0",
    }[transport]
    fields: dict[str, Any] = {
        "aor": aor,
        "display_name": name.capitalize(),
        "listen": (ListenEndpoint(transport, host, 0),),
    }
    if tls is not None:
        fields["tls_server_context"] = tls.server
        fields["tls_client_context"] = tls.client
    fields.update(overrides)
    return UserAgentConfig(**fields)


class UaPair(NamedTuple):
    """Two running user agents that reach each other: ``async with ua_pair() as (alice, bob):``."""

    #: The first user agent (``sip:alice@...`` by default).
    alice: UserAgent
    #: The second user agent (``sip:bob@...`` by default).
    bob: UserAgent


@contextlib.asynccontextmanager
async def ua_pair(
    transport: TransportName = "udp",
    *,
    alice: Mapping[str, Any] | None = None,
    bob: Mapping[str, Any] | None = None,
    names: tuple[str, str] = ("alice", "bob"),
    host: str = "127.0.0.1",
    tls: TlsContexts | None = None,
) -> AsyncIterator[UaPair]:
    """Start two user agents on ``host`` (free ports) and yield them; close both on the way out.

    Each has the configuration :func:`loopback_config` gives for its name (``names``) and
    ``transport``, with the fields in ``alice`` or ``bob`` overridden; over TLS both use the same
    ``tls`` contexts (default: :func:`throwaway_tls`). Each side gets a fresh
    :class:`~sipimdn.store.MemoryStore`, unless its overrides name a ``store_path``. Either AOR
    reaches the other directly: ``await alice.send_message(bob.aor, ...)``.

    A user agent with no ``on_message`` handler answers messages 480 (no application to take
    them): register your service's handler, or :func:`record_messages`, before sending to it.

    Both user agents are closed when the block ends, normally or by an exception, which then
    propagates unchanged (if the second cannot start, the first is closed before the error
    propagates); closing gives notifications in flight ``close_grace`` seconds, as
    ``UserAgent.close`` does.
    """
    if transport == "tls" and tls is None:
        tls = throwaway_tls()
    sides = list(zip(names, (alice or {}, bob or {}), strict=True))
    # Both configurations first: a bad override fails before anything listens.
    configs = [loopback_config(name, transport, host=host, tls=tls, **overrides) for name, overrides in sides]
    async with contextlib.AsyncExitStack() as stack:
        agents: list[UserAgent] = []
        for config, (_, overrides) in zip(configs, sides, strict=True):
            store: MemoryStore | None = None
            if "store_path" not in overrides:
                store = MemoryStore()
                # A store handed to a user agent stays open after it closes: ours is closed here,
                # after the agent (the exit stack unwinds in reverse).
                stack.callback(store.close)
            agent = UserAgent(config, store=store)
            await stack.enter_async_context(agent)
            agents.append(agent)
        yield UaPair(agents[0], agents[1])


class Recorder(Generic[_T]):
    """What one callback of a user agent received, in order, with waits for more.

    Made by :func:`record_messages`, :func:`record_dispositions` and
    :func:`record_notifications`, which register :meth:`record` with the user agent. Every item
    stays in :attr:`received`; :meth:`next` takes them out of the unread ones, in arrival order,
    optionally only those ``where`` accepts (the others stay unread for a later :meth:`next`).
    Use it from the event loop the user agent runs on.
    """

    def __init__(self, what: str, owner: str, describe: Callable[[_T], str] = repr) -> None:
        #: What is recorded, for error messages ("message", "disposition event"...).
        self.what = what
        #: Whose callback this is (the user agent's AOR), for error messages.
        self.owner = owner
        #: Everything received so far, in order.
        self.received: list[_T] = []
        self._unread: list[_T] = []
        self._describe = describe
        self._waiters: list[asyncio.Future[None]] = []

    async def record(self, item: _T) -> None:
        """The callback: keep ``item`` and wake whoever waits."""
        self.received.append(item)
        self._unread.append(item)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def unread(self) -> list[_T]:
        """The items :meth:`next` has not returned yet, oldest first (a copy)."""
        return list(self._unread)

    async def next(
        self, *, where: Callable[[_T], bool] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> _T:
        """The oldest unread item (that ``where`` accepts), waiting up to ``timeout`` seconds for
        one to arrive; it is then read. Raises :class:`WaitTimeout` saying what arrived instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, item in enumerate(self._unread):
                if where is None or where(item):
                    del self._unread[index]
                    return item
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise WaitTimeout(self._timeout_message(timeout, where is not None))
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise WaitTimeout(self._timeout_message(timeout, where is not None)) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def assert_nothing(self, within: float, *, where: Callable[[_T], bool] | None = None) -> None:
        """Wait ``within`` seconds and raise :class:`AssertionError` if an unread item (that
        ``where`` accepts) is there by then, or arrived meanwhile. Nothing is read."""
        await asyncio.sleep(within)
        unexpected = [item for item in self._unread if where is None or where(item)]
        if unexpected:
            raise AssertionError(
                f"{self.owner}: expected no {self.what} within {within:g} s, got "
                + "; ".join(self._describe(item) for item in unexpected[:3])
                + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
            )

    def _timeout_message(self, timeout: float, filtered: bool) -> str:
        wanted = f"matching {self.what}" if filtered else self.what
        text = f"{self.owner}: no {wanted} within {timeout:g} s ({len(self.received)} received in all"
        if filtered and self._unread:
            shown = "; ".join(self._describe(item) for item in self._unread[:3])
            more = f" and {len(self._unread) - 3} more" if len(self._unread) > 3 else ""
            text += f"; unread ones that did not match: {shown}{more}"
        return text + ")"


def _describe_message(message: IncomingMessage) -> str:
    text = message.text
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"{message.content_type} {shown!r} from {message.sender} (Message-ID {message.message_id})"


def record_messages(
    ua: UserAgent, *, answer: int | tuple[int, str] | None = None
) -> Recorder[IncomingMessage]:
    """Record the instant messages ``ua`` receives (an ``on_message`` handler).

    The handler answers ``answer``: None, the default, answers 200 and so changes nothing when
    other handlers decide (the first refusal wins, then 202, then 200); ``486`` or ``(486,
    "Busy Here")`` makes ``ua`` refuse every message, to test how your sender copes. Register it
    before the messages it should see are sent: it stays registered while ``ua`` runs.
    """
    recorder: Recorder[IncomingMessage] = Recorder("message", ua.aor, _describe_message)

    async def handler(message: IncomingMessage) -> int | tuple[int, str] | None:
        await recorder.record(message)
        return answer

    ua.on_message(handler)
    return recorder


def record_dispositions(ua: UserAgent) -> Recorder[DispositionEvent]:
    """Record the disposition events of the messages ``ua`` sent (an ``on_disposition`` handler):
    :class:`~sipimdn.events.DispositionChanged`, :class:`~sipimdn.events.NotificationAccepted`,
    :class:`~sipimdn.events.NotificationRejected`, :class:`~sipimdn.events.TrackingEnded`."""
    recorder: Recorder[DispositionEvent] = Recorder("disposition event", ua.aor)
    ua.on_disposition(recorder.record)
    return recorder


def record_notifications(ua: UserAgent) -> Recorder[NotificationEvent]:
    """Record what happens to the notifications ``ua`` owes (an ``on_notification`` handler):
    :class:`~sipimdn.events.NotificationSent`, :class:`~sipimdn.events.NotificationAbandoned`,
    :class:`~sipimdn.events.NotificationsDeclined`."""
    recorder: Recorder[NotificationEvent] = Recorder("notification event", ua.aor)
    ua.on_notification(recorder.record)
    return recorder


async def wait_disposition(
    sent: SentMessage, target: str | DispositionState, timeout: float = DEFAULT_TIMEOUT
) -> DispositionState:
    """Wait until the recipient of ``sent`` is at ``target`` or beyond (``displayed`` implies
    ``delivered``) and return its state.

    Raises :class:`UnexpectedDisposition` (an :class:`AssertionError`) when the message settles
    where ``target`` can no longer be reached (``failed``, ``forbidden``, ``error``, ``expired``,
    or ``displayed`` while waiting for a failure), and :class:`WaitTimeout` after ``timeout``
    seconds, naming the state it was left in.
    """
    wanted = DispositionState(target)
    try:
        state = await sent.await_disposition(wanted, timeout=timeout)
    except TimeoutError:
        raise WaitTimeout(
            f"message {sent.message_id} to {sent.to}: still {sent.state.value!r} after {timeout:g} s, "
            f"waiting for {wanted.value!r} (notifications requested: {sorted(sent.notify) or 'none'})"
        ) from None
    if not sent.reached(wanted):
        raise UnexpectedDisposition(
            f"message {sent.message_id} to {sent.to} ended {state.value!r}; {wanted.value!r} was awaited",
            sent=sent,
            wanted=wanted,
        )
    return state
