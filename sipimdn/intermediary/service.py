"""``Intermediary``: the asyncio adapter running the intermediary roles on a :class:`~sipimdn.stack.SipStack`.

Theory of operation. Three sans-IO parts do the protocol work; this module
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

Every input ends in :meth:`Intermediary._pump`: drain the cores' events,
hand the store writes to one worker thread (order kept), re-arm the single
timer. A 202 is sent only after the writes that hold the message are on
disk, so an accepted message survives a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .. import cpim
from .._coretimer import CoreTimer
from .._pacing import DestinationQueue
from ..config import ListenEndpoint
from ..dialog.factory import build_request
from ..dialog.transaction import TimerConfig
from ..errors import (
    CpimError,
    ImdnError,
    LocalProtocolError,
    RemoteProtocolError,
    StoreError,
    TransactionTimeout,
    TransportError,
)
from ..headers import NameAddr
from ..imdn import ImdnHeaders, ReceivedImdn, build_imdn_message, imdn_headers, make_notification, recognise
from ..message import Request, safe_reason_phrase
from ..stack import IncomingRequest, SipStack
from ..transport.base import ListenSpec, TransportConfig
from ..transport.flow import Transport
from ..uri import Uri, identity_key
from .exploder import (
    ExploderConfig,
    ListExploder,
    MemberCopyDue,
    NotificationsReady,
    ReplyPath,
    UriList,
)
from .forward import (
    ForwardConfig,
    ForwardDue,
    MessageFailed,
    NotificationDue,
    StoreAndForward,
)
from .registrar import Registrar
from .rewrite import add_original_to, add_record_route, pop_imdn_route, replace_to
from .sqlite import SqliteParkedStore
from .store import ImdnOrigin, ParkedMessage, ParkedOp, ParkedStore

__all__ = ["Intermediary", "IntermediaryConfig", "RequestRouted"]

_log = logging.getLogger("sipimdn.intermediary")

ALLOW = "MESSAGE, REGISTER, OPTIONS"
_STATUS_UNSENDABLE = 502  # the next hop cannot even be addressed: a permanent failure


@dataclass(frozen=True, slots=True)
class RequestRouted:
    """A MESSAGE reached us and was routed (for observers: logs, tests, metrics)."""

    request: Request
    """The request as received."""
    route: str
    """``imdn-route`` (relayed along IMDN-Route), ``list-notification`` (a member's IMDN taken
    by the exploder), ``list`` (exploded), ``held`` (store-and-forward) or ``refused``."""
    status: int
    """The final status we answered."""


def _default_listen() -> tuple[ListenEndpoint, ...]:
    return (ListenEndpoint("udp", "127.0.0.1", 0),)


@dataclass(frozen=True, slots=True)
class IntermediaryConfig:
    """Everything an :class:`Intermediary` is configured with."""

    #: Local endpoints (TCP is added on every UDP host, RFC 3261 §18.2.1).
    listen: tuple[ListenEndpoint, ...] = field(default_factory=_default_listen)
    #: User part of our own URI (``sip:<user>@<first endpoint>``), used in IMDN-Record-Route.
    user: str = "imdn"
    #: Our own URI when the bound address is not how others reach us (default: derived).
    uri: str | None = None
    #: Domains whose users must register: a message for one who is not registered is held.
    #: Other URIs are forwarded to as they are.
    domains: tuple[str, ...] = ()
    #: URI lists exploded by this intermediary.
    lists: tuple[UriList, ...] = ()
    #: Store-and-forward tunables (retry back-off, expiry).
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    #: List tunables (aggregation, window).
    exploder: ExploderConfig = field(default_factory=ExploderConfig)
    #: SQLite file holding parked messages (":memory:" keeps nothing across restarts).
    store_path: str = ":memory:"
    #: Add our IMDN-Record-Route to IMs that ask for notifications (RFC 5438 §6.5).
    record_route: bool = True
    #: Add Original-To to relayed IMs (RFC 5438 §6.4; off = do not reveal the original recipient).
    original_to: bool = True
    #: Send the notifications *we* generate along the IM's IMDN-Record-Route set by upstream
    #: intermediaries. Off by default (RFC 5438 §14): a forged route would make us a reflector; our
    #: notifications then go to the IM's SIP From. Relayed messages keep their routes either way.
    trust_imdn_route: bool = False
    #: Most upstream IMDN-Record-Route entries honoured when trusted; beyond, none are.
    max_imdn_route: int = 4
    #: Static next hops: ``(domain, proxy URI)``; a message for a user of ``domain`` that is
    #: not ours goes through that proxy (loose route) instead of to the domain itself.
    next_hops: tuple[tuple[str, str], ...] = ()
    #: RFC 3261 T1 (seconds) for our transactions.
    t1: float = 0.5
    #: Longest registration granted (seconds).
    max_expires: int = 86400
    #: Server-side TLS context, required when a TLS endpoint is listened on.
    tls_server_context: ssl.SSLContext | None = None
    #: Client-side TLS context for connections we open (default: system trust, verification on).
    tls_client_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("at least one listen endpoint is required")
        if any(ep.transport == "tls" for ep in self.listen) and self.tls_server_context is None:
            raise ValueError("a tls listen endpoint needs tls_server_context")
        if not self.user or any(c in self.user for c in "@:;<> \r\n"):
            raise ValueError(f"user must be a plain SIP user part, not {self.user!r}")
        if self.t1 <= 0 or self.max_expires < 1:
            raise ValueError("t1 and max_expires must be positive")
        for domain, hop in self.next_hops:
            try:
                Uri.parse(hop)
            except RemoteProtocolError:
                raise ValueError(f"next hop for {domain!r} is not a SIP URI: {hop!r}") from None


class Intermediary:
    """Store-and-forward server, URI-list exploder and minimal registrar in one SIP service.

    ``async with Intermediary(config) as server:``; ``server.uri`` is the URI
    it puts in IMDN-Record-Route. Pass ``store=`` to use your own
    :class:`~sipimdn.intermediary.store.ParkedStore`.
    """

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

    def _dispatch(self, event: object) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the relay
                _log.exception("intermediary observer failed")
        if isinstance(event, ForwardDue):
            self._spawn(self._forward(event.message))
        elif isinstance(event, NotificationDue):
            self._owe_notification(event)
        elif isinstance(event, MessageFailed):
            _log.info(
                "giving up on %s for %s (%s)",
                event.message.key,
                event.message.target,
                "expired" if event.expired else event.status_code,
            )
            if event.message.group is not None:
                self.exploder.member_failed(event.message.group, event.message.target, time.time())
        elif isinstance(event, MemberCopyDue):
            self._send_copy(event)
        elif isinstance(event, NotificationsReady):
            self._send_list_notifications(event)

    # -- forwarding --------------------------------------------------------------------------

    def _is_us(self, uri: Uri | str) -> bool:
        """Is ``uri`` this service itself (our URI, or a bare host:port we listen on)?"""
        parsed = uri if isinstance(uri, Uri) else Uri.parse(uri)
        if identity_key(str(parsed), compare_ports=True) == identity_key(self.uri, compare_ports=True):
            return True
        return parsed.user is None and self._is_our_address(parsed)

    def _is_our_address(self, uri: Uri) -> bool:
        """Does ``uri`` point at a host:port we listen on (whatever its user part)?"""
        port = uri.port or (5061 if uri.secure else 5060)
        return any(host == uri.host and bound == port for _, (host, bound) in self.endpoints)

    def _locate(self, target: str) -> str | None:
        """Where ``target`` is reachable now: its newest binding, itself, or None (held).

        Users of our domains and of our own address are only reachable through a
        binding; a binding or target pointing back at us is no way out (it would
        loop until Max-Forwards ran out).
        """
        for contact in self.registrar.lookup(target, time.time()):
            if not self._is_our_address(Uri.parse(contact)):
                return contact
        uri = Uri.parse(target)
        if uri.host.lower() in self._domains or self._is_our_address(uri):
            return None
        return target

    def _next_hop(self, contact: str) -> list[str]:
        """The Route to put on a request for ``contact`` (a configured next hop of its domain)."""
        host = Uri.parse(contact).host.lower()
        for domain, hop in self.config.next_hops:
            if domain.lower() == host:
                uri = Uri.parse(hop)
                return [f"<{uri if 'lr' in uri.params else f'{uri};lr'}>"]
        return []

    async def _forward(self, message: ParkedMessage) -> None:
        status: int | None = None
        contact: str | None = None
        try:
            contact = self._locate(message.target)
        except RemoteProtocolError as exc:
            _log.info("cannot route to %s: %s", message.target, exc)
            status = _STATUS_UNSENDABLE
        if contact is not None:
            try:
                request = build_request(
                    "MESSAGE",
                    contact,
                    NameAddr(Uri.parse(message.sip_from), message.sip_from_name),
                    NameAddr(Uri.parse(message.sip_to)),
                    max_forwards=message.max_forwards,
                    route=self._next_hop(contact),
                    body=message.body,
                    content_type=message.content_type,
                )
                # One MESSAGE transaction at a time per destination, in order (RFC 3428 §8):
                # held messages released by one REGISTER arrive in the order we took them.
                async with self._queue.turn(identity_key(contact, compare_ports=True) or contact):
                    response = await self._require_stack().send_request(request)
                status = response.status_code
            except (TransactionTimeout, TransportError) as exc:
                _log.info("attempt %d for %s failed: %s", message.attempts, message.target, exc)
            except (LocalProtocolError, RemoteProtocolError) as exc:
                _log.warning("cannot forward to %s: %s", contact, exc)
                status = _STATUS_UNSENDABLE
        if self._closed:
            return
        self.forwarder.forward_outcome(message.key, status, time.time())
        self._pump()

    def _park(self, **kwargs: Any) -> ParkedMessage | None:
        try:
            return self.forwarder.park(now=time.time(), **kwargs)
        except RemoteProtocolError as exc:
            _log.warning("cannot hold a message for %s: %s", kwargs.get("target"), exc)
            return None

    def _owe_notification(self, event: NotificationDue) -> None:
        origin = event.message.origin
        if origin is None:  # pragma: no cover - the core owes nothing without an origin
            return
        now = time.time()
        try:
            note = make_notification(
                message_id=origin.message_id,
                datetime=origin.datetime,
                kind=event.kind,
                status=event.status,
                recipient_uri=origin.recipient,
                original_recipient_uri=origin.original_recipient,
            )
            envelope = build_imdn_message(
                note, from_=self.uri, to=origin.reply_to, now=now, routes=origin.routes
            )
        except LocalProtocolError as exc:
            # The IM's fields cannot be echoed into an IMDN (a peer's odd URI): nothing to send.
            _log.warning("cannot build %s/%s for %s: %s", event.kind, event.status, origin.message_id, exc)
            return
        self._park(
            target=origin.routes[0] if origin.routes else origin.reply_sip,
            sip_from=self.uri,
            sip_to=origin.reply_sip,
            content_type=cpim.CONTENT_TYPE,
            body=envelope.to_bytes(),
            is_notification=True,
        )

    def _reply_routes(self, headers: ImdnHeaders) -> tuple[str, ...]:
        """The IMDN-Route for notifications we generate (upstream routes only when trusted)."""
        routes = tuple(a.uri for a in headers.record_routes)
        if not self.config.trust_imdn_route or len(routes) > self.config.max_imdn_route:
            return ()
        return routes

    # -- lists -------------------------------------------------------------------------------

    def _send_copy(self, event: MemberCopyDue) -> None:
        source = self._copy_sources.get(event.fanout.id)
        if source is None:  # pragma: no cover - copies are handed out within explode()
            return
        envelope, headers, sip_from, max_forwards = source
        uri_list = event.fanout.uri_list
        try:
            copy = replace_to(envelope, event.member)
            if self.config.original_to and not uri_list.private:
                copy = add_original_to(copy, uri_list.uri)
            if self.config.record_route and headers.requested:
                copy = add_record_route(copy, self.uri)
        except LocalProtocolError as exc:
            _log.error("cannot build the copy for %s: %s", event.member, exc)
            self.exploder.member_failed(event.fanout.id, event.member, time.time())
            return
        self._park(
            target=event.member,
            sip_from=str(sip_from.uri),
            sip_from_name=sip_from.display_name,
            sip_to=event.member,
            content_type=cpim.CONTENT_TYPE,
            body=copy.to_bytes(),
            max_forwards=max_forwards,
            group=event.fanout.id,
        )

    def _send_list_notifications(self, event: NotificationsReady) -> None:
        fanout = event.fanout
        notes = event.notifications
        try:
            envelope = build_imdn_message(
                notes[0] if len(notes) == 1 else list(notes),
                from_=fanout.uri_list.uri,
                to=fanout.reply.cpim_to,
                now=time.time(),
                routes=fanout.reply.routes,
            )
        except LocalProtocolError as exc:
            _log.warning("cannot build the list notification for %s: %s", fanout.message_id, exc)
            return
        self._park(
            target=fanout.reply.request_uri,
            sip_from=fanout.uri_list.uri,
            sip_to=fanout.reply.sip_to,
            content_type=cpim.CONTENT_TYPE,
            body=envelope.to_bytes(),
            is_notification=True,
        )

    # -- receiving ---------------------------------------------------------------------------

    def _on_request(self, incoming: IncomingRequest) -> None:
        method = incoming.request.method
        if method == "MESSAGE":
            self._spawn(self._on_message(incoming))
        elif method == "REGISTER":
            self._on_register(incoming)
        elif method == "OPTIONS":
            incoming.respond(200, None, [("Allow", ALLOW), ("Accept", "message/cpim, text/plain")])
        elif method != "ACK":
            incoming.respond(405, None, [("Allow", ALLOW)])

    def _on_register(self, incoming: IncomingRequest) -> None:
        now = time.time()
        domain = incoming.request.to.uri.host.lower()
        if self._domains and domain not in self._domains:
            # RFC 3261 §10.3 step 1: we are the registrar of our domains only.
            incoming.respond(404, "Not Our Domain")
            return
        try:
            result = self.registrar.register(incoming.request, now)
        except RemoteProtocolError as exc:
            headers = [("Min-Expires", str(self.registrar.min_expires))] if exc.status_code == 423 else []
            incoming.respond(exc.status_code, safe_reason_phrase(exc.reason), headers)
            return
        incoming.respond(200, None, result.headers)
        for binding in result.added:
            due = self.forwarder.recipient_reachable(binding.aor, now)
            if due:
                _log.info("%s registered: %d held message(s) due", binding.aor, due)
        self._pump()

    async def _on_message(self, incoming: IncomingRequest) -> None:
        try:
            route = await self._route_message(incoming)
        except Exception:
            # A bug must not leave the sender retransmitting into silence.
            _log.exception("routing MESSAGE %s failed", incoming.request.call_id)
            if incoming.responded is None:
                incoming.respond(500)
            route = "refused"
        event = RequestRouted(incoming.request, route, incoming.responded or 0)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not stop the relay
                _log.exception("intermediary observer failed")

    async def _route_message(self, incoming: IncomingRequest) -> str:
        request = incoming.request
        try:
            max_forwards = request.max_forwards
            envelope, received, headers = _decode(request)
        except (RemoteProtocolError, CpimError, ImdnError) as exc:
            incoming.respond(exc.status_code, safe_reason_phrase(exc.reason))
            return "refused"
        if max_forwards is not None and max_forwards <= 0:
            incoming.respond(483)
            return "refused"
        hops = 69 if max_forwards is None else max_forwards - 1
        if (
            envelope is not None
            and received is not None
            and headers is not None
            and headers.routes
            and self._is_us(headers.routes[0].uri)
        ):
            return await self._route_imdn(incoming, envelope, received, headers, hops)
        uri_list = self.exploder.list_for(str(request.uri))
        if uri_list is not None:
            return self._explode(
                incoming, uri_list, envelope=envelope, received=received, headers=headers, hops=hops
            )
        if self._is_us(request.uri):
            incoming.respond(404, "No Such User Here")
            return "refused"
        return await self._hold(incoming, envelope, received, headers, hops)

    async def _hold(
        self,
        incoming: IncomingRequest,
        envelope: cpim.CpimMessage | None,
        received: ReceivedImdn | None,
        headers: ImdnHeaders | None,
        hops: int,
    ) -> str:
        """Store-and-forward a MESSAGE addressed to someone else (an IM, an IMDN, plain text)."""
        request = incoming.request
        target = str(request.uri)
        body = request.body
        origin: ImdnOrigin | None = None
        if envelope is not None and received is None and headers is not None:
            try:
                origin = _origin(envelope, headers, request, self._reply_routes(headers))
                if headers.requested and self.config.record_route:
                    envelope = add_record_route(envelope, self.uri)
                if headers.message_id is not None and self.config.original_to:
                    addressed = envelope.to[0].uri if envelope.to else str(request.to.uri)
                    envelope = add_original_to(envelope, addressed)
            except (CpimError, ImdnError, LocalProtocolError) as exc:
                # LocalProtocolError: a URI of the request cannot be written into CPIM.
                incoming.respond(400, safe_reason_phrase(exc.reason))
                return "refused"
            body = envelope.to_bytes()
        message_id = headers.message_id if headers is not None else None
        if message_id is not None and self.forwarder.duplicate_of(
            target=target, sip_from=str(request.from_.uri), message_id=message_id
        ):
            # Re-sent because our 202 was lost: held already, answer the same.
            await self._answer_when_stored(incoming, 202)
            return "held"
        ctype = request.content_type
        parked = self._park(
            message_id=message_id,
            target=target,
            sip_from=str(request.from_.uri),
            sip_from_name=request.from_.display_name,
            sip_to=str(request.to.uri),
            content_type=str(ctype) if ctype is not None else "text/plain",
            body=body,
            max_forwards=hops,
            origin=origin,
            is_notification=received is not None,
        )
        if parked is None:
            incoming.respond(503, "Store Full", [("Retry-After", "60")])
            return "refused"
        await self._answer_when_stored(incoming, 202)
        return "held"

    async def _answer_when_stored(self, incoming: IncomingRequest, status: int) -> None:
        self._pump()
        try:
            await self.flush()
        except StoreError:
            # The core still holds it and will try; we just cannot promise it survives a restart.
            incoming.respond(500, "Store Failure")
            return
        incoming.respond(status)

    async def _route_imdn(
        self,
        incoming: IncomingRequest,
        envelope: cpim.CpimMessage,
        received: ReceivedImdn,
        headers: ImdnHeaders,
        hops: int,
    ) -> str:
        """An IMDN routed through us (RFC 5438 §8): collect it for a list, or pop our entry and relay it."""
        now = time.time()
        sender = envelope.from_.uri if envelope.from_ is not None else None
        if any(self.exploder.fanout_for(n.message_id) is not None for n in received.notifications):
            taken = [
                self.exploder.notification_received(n, now, sender=sender) for n in received.notifications
            ]
            if not any(taken):
                _log.info("list notification(s) from %s not taken", sender)
            incoming.respond(200)
            self._pump()
            return "list-notification"
        for note in received.notifications:
            uri_list = self.exploder.list_for(note.original_recipient_uri or "")
            if uri_list is not None and uri_list.private:
                # Its fan-out is forgotten: relaying it would reveal a member (RFC 5438 §14.2).
                _log.info("late notification for private list %s dropped", uri_list.uri)
                incoming.respond(200)
                return "refused"
        remaining = headers.routes[1:]
        if remaining:
            target = remaining[0].uri
        elif envelope.to:
            target = envelope.to[0].uri
        else:
            incoming.respond(400, "IMDN Without CPIM To")
            return "refused"
        request = incoming.request
        self._park(
            target=target,
            sip_from=str(request.from_.uri),
            sip_from_name=request.from_.display_name,
            sip_to=str(request.to.uri),
            content_type=cpim.CONTENT_TYPE,
            body=pop_imdn_route(envelope).to_bytes(),
            max_forwards=hops,
            is_notification=True,
        )
        await self._answer_when_stored(incoming, 202)
        return "imdn-route"

    def _explode(
        self,
        incoming: IncomingRequest,
        uri_list: UriList,
        *,
        envelope: cpim.CpimMessage | None,
        received: ReceivedImdn | None,
        headers: ImdnHeaders | None,
        hops: int,
    ) -> str:
        if envelope is None or headers is None:
            incoming.respond(415, "List Needs CPIM", [("Accept", cpim.CONTENT_TYPE)])
            return "refused"
        if received is not None:
            incoming.respond(403, "Notifications Are Not Exploded")
            return "refused"
        request = incoming.request
        if uri_list.members_only and not uri_list.is_member(str(request.from_.uri)):
            incoming.respond(403, "Members Only")
            return "refused"
        message_id = headers.message_id
        date_time = envelope.date_time
        sender = envelope.from_
        if message_id is None or date_time is None or sender is None:
            incoming.respond(400, "List Message Needs Message-ID, DateTime and From")
            return "refused"
        earlier = self.exploder.fanout_for(message_id)
        if earlier is not None and identity_key(earlier.reply.sip_to) == identity_key(str(request.from_.uri)):
            incoming.respond(202)  # re-sent: exploded already
            return "list"
        reply = ReplyPath(
            cpim_to=sender.uri,
            sip_to=str(request.from_.uri),
            routes=self._reply_routes(headers),
        )
        # Copies are handed out by explode() itself; _pump() below builds them from this source.
        fanout = self.exploder.explode(
            uri_list,
            message_id=message_id,
            datetime=date_time.raw.rstrip(" "),
            requested=[str(r) for r in headers.requested],
            reply=reply,
            now=time.time(),
        )
        self._copy_sources[fanout.id] = (envelope, headers, request.from_, hops)
        try:
            self._pump()
        finally:
            del self._copy_sources[fanout.id]
        incoming.respond(202)
        return "list"


def _decode(
    request: Request,
) -> tuple[cpim.CpimMessage | None, ReceivedImdn | None, ImdnHeaders | None]:
    ctype = request.content_type
    if ctype is None or ctype.mime != cpim.CONTENT_TYPE:
        return None, None, None
    envelope = cpim.parse(request.body)
    return envelope, recognise(envelope), imdn_headers(envelope)


def _origin(
    envelope: cpim.CpimMessage, headers: ImdnHeaders, request: Request, routes: tuple[str, ...]
) -> ImdnOrigin | None:
    """Fields for the notifications we may owe about this IM, or None when none can be owed."""
    requested = tuple(sorted(str(r) for r in headers.requested))
    date_time = envelope.date_time
    sender = envelope.from_
    if not requested or headers.message_id is None or date_time is None or sender is None:
        return None
    recipient = envelope.to[0].uri if envelope.to else str(request.to.uri)
    original = headers.original_to.uri if headers.original_to is not None else recipient
    return ImdnOrigin(
        message_id=headers.message_id,
        datetime=date_time.raw.rstrip(" "),
        reply_to=sender.uri,
        reply_sip=str(request.from_.uri),
        routes=routes,
        recipient=recipient,
        original_recipient=original,
        requested=requested,
    )


def _log_write_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.error("parked store write failed", exc_info=future.exception())
