"""SipStack: the asyncio adapter joining the transaction layer and the transports.

The aioquic shape: every input (a datagram, a stream message, a transport failure, an API call,
the timer) makes one call into the sans-IO ``TransactionLayer`` and then one ``_pump()``: drain
its events, hand its messages to the ``TransportManager``, and re-arm the single
``loop.call_at`` timer only if ``get_timer()`` changed.

Requests we receive go to the handler registered with ``on_request`` as an ``IncomingRequest``,
run as a tracked task. The handler may answer at once or keep the ``IncomingRequest`` and answer
later (after its own return); retransmissions are absorbed by the server transaction meanwhile
and never reach the handler. If no final answer comes within 64*T1 the transaction ends silently
(RFC 4320: no 408); after 3.5 s (with default timers) it sends 100 Trying by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from ._coretimer import CoreTimer
from ._wirelog import log_wire, wire_log
from .dialog.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionKey,
    TransactionTimedOut,
    TransportFailed,
)
from .dialog.factory import new_local_tag, stamp_via
from .dialog.layer import Outgoing, TransactionLayer
from .dialog.transaction import TimerConfig
from .errors import LocalProtocolError, SipParseError, TransactionTimeout, TransportError
from .message import Request, Response, make_response
from .parser import Limits, parse_message
from .transport.base import ListenSpec, TransportConfig
from .transport.flow import Address, Flow, SendKind, Transport, is_ip_literal
from .transport.manager import TransportManager
from .transport.select import DEFAULT_UDP_MAX, Target, needs_stream, resolve, target_for_uri

if TYPE_CHECKING:
    from .transport.locate import ServerLocator
    from .uri import Uri

__all__ = ["IncomingRequest", "RequestHandler", "SipStack"]

log = logging.getLogger(__name__)

#: How many ports the system picks for an ephemeral UDP listener before its TCP companion gives
#: up on sharing the port (each try fails only when that TCP port is taken: rare).
_SAME_PORT_ATTEMPTS = 32


class IncomingRequest:
    """A request the stack received, waiting for its final response.

    ``respond`` may be called once the handler has returned; only the first final response
    counts (later ones are discarded, as RFC 3261 §17.2.2 says).
    """

    __slots__ = ("_stack", "flow", "key", "request", "responded", "to_tag")

    def __init__(self, stack: SipStack, key: TransactionKey, request: Request, flow: Flow) -> None:
        self._stack = stack
        #: The transaction it belongs to.
        self.key = key
        #: The request; its top Via carries received/rport.
        self.request = request
        #: Where it came from.
        self.flow = flow
        #: The To tag every response to it carries (§8.2.6.2).
        self.to_tag = new_local_tag()
        #: The status sent, once a final response has gone out.
        self.responded: int | None = None

    def respond(self, status: int, reason: str | None = None, headers: Iterable[tuple[str, str]] = (),
                body: bytes = b"") -> bool:
        """Send the final response (200-699, not 408). Returns False if it is too late: already
        answered, or the transaction gave up waiting."""
        if self.responded is not None:
            return False
        if not 200 <= status <= 699:
            raise LocalProtocolError(f"only final responses here, not {status} (RFC 4320)")
        response = make_response(self.request, status, reason, to_tag=self.to_tag)
        for name, value in headers:
            response.headers.add(name, value)
        response.body = bytes(body)
        sent = self._stack.respond(self.key, response)
        if sent:
            self.responded = status
        return sent

    def __repr__(self) -> str:
        return f"<IncomingRequest {self.request.method} from {self.flow.remote}>"


#: What ``on_request`` takes: a sync callable (its return value is ignored) or an async one.
RequestHandler = Callable[[IncomingRequest], Awaitable[object] | object]


class SipStack:
    """Transports plus transactions on one event loop. Use ``async with SipStack(...) as stack``.

    ``listen``: the sockets to open (UDP on 127.0.0.1, port 0, by default). ``udp_max``: requests
    larger than this go over TCP instead of UDP (§18.1.1). ``rport``: ask for RFC 3581 symmetric
    response routing in our Via.
    """

    def __init__(
        self,
        listen: Iterable[ListenSpec] = (ListenSpec(Transport.UDP, "127.0.0.1", 0),),
        *,
        timers: TimerConfig | None = None,
        transport_config: TransportConfig | None = None,
        limits: Limits | None = None,
        udp_max: int = DEFAULT_UDP_MAX,
        rport: bool = True,
    ) -> None:
        self._listen = list(listen)
        self.timers = timers or TimerConfig()
        self.udp_max = udp_max
        self.rport = rport
        self._limits = limits
        config = transport_config or TransportConfig()
        if limits is not None and config.limits is None:
            config = dataclasses.replace(config, limits=limits)
        self.layer = TransactionLayer(self.timers)
        self.transports = TransportManager(self, config)
        self._handler: RequestHandler | None = None
        self._waiters: dict[TransactionKey, asyncio.Future[Response]] = {}
        self._final_hooks: dict[TransactionKey, Callable[[Response], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Lazy re-arming: the loop timer is moved only when the earliest deadline comes *earlier*
        # than the one armed. A deadline that moved later (the common case: a request answered at
        # once trades its 100-Trying deadline for Timer J) leaves the handle alone; it fires, finds
        # nothing due and re-arms for the real deadline. Under load this makes call_at/cancel a rare
        # event instead of two per message.
        self._timer = CoreTimer(self._on_timer, clock=None, slot=self.timers.t1 / 25, lazy=True)
        self._pumping = False
        # (request, its bytes) while _attempt's pump sends it for the first time.
        self._encoded: tuple[Request, bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        #: RFC 3263 server location with failover (e.g. ``transport.dns.DnsLocator``), used when
        #: ``send_request`` gets no target. None: the URI's transport and port, getaddrinfo.
        self.locator: ServerLocator | None = None

    @property
    def timer_slot(self) -> float:
        """The loop timer runs on slots of this many seconds (T1/25: 20 ms with default timers).

        Deadlines are rounded *up* to the next slot, so the transactions' timers falling in one
        slot share one loop wake-up. Under steady load a Timer J (or K) expires every few ms;
        without slots each would wake the loop on its own. No timer fires early; a timer fires
        at most one slot late (a retransmission at 0.52 s instead of 0.5 s). 0 = exact.
        """
        return self._timer.slot

    @timer_slot.setter
    def timer_slot(self, value: float) -> None:
        self._timer.slot = value

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open every listening socket. Raises TransportError if one cannot be bound."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        try:
            # UDP listeners whose port the system picked: one may move to another port when the
            # TCP port beside it is taken (see _listen_beside_udp).
            movable: set[Address] = set()
            for spec in self._listen:
                await self._listen_one(spec, movable)
        except BaseException:
            await self.close()
            raise

    async def _listen_one(self, spec: ListenSpec, movable: set[Address]) -> None:
        if spec.transport is Transport.UDP:
            _, local = await self.transports.listen(spec)
            if spec.port == 0:
                movable.add(local)
            return
        if spec.transport is Transport.TCP and spec.port == 0:
            for kind, local in self.transports.endpoints:
                if kind is Transport.UDP and local[0] == spec.host:
                    if await self._listen_beside_udp(local, movable):
                        return
                    break
        await self.transports.listen(spec)

    async def _listen_beside_udp(self, udp: Address, movable: set[Address]) -> bool:
        """Listen with TCP on the port of the UDP listener ``udp``; False if that cannot be done.

        §18.2.1: every UDP port is also listened on with TCP, so a peer switching to TCP for a
        large request (§18.1.1) finds us at the same address. The system picks the UDP port
        without looking at TCP, so that port may already be taken for TCP (by any socket of the
        host, an outgoing connection's local port included): then, while nothing has been sent,
        the UDP listener moves to another port the system picks and TCP is tried there, a
        bounded number of times.
        """
        for _ in range(_SAME_PORT_ATTEMPTS):
            try:
                await self.transports.listen(ListenSpec(Transport.TCP, udp[0], udp[1]))
                return True
            except TransportError as exc:
                if udp not in movable:
                    log.warning("TCP beside UDP %s:%d not possible (%s): TCP on another port", *udp, exc)
                    return False
                movable.discard(udp)
                udp = await self.transports.reopen_udp(udp)
                movable.add(udp)
        log.warning("no port of %s free for both UDP and TCP after %d tries: TCP on another port",
                    udp[0], _SAME_PORT_ATTEMPTS)
        return False

    async def close(self) -> None:
        """Fail pending requests, cancel handlers and close every socket."""
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(TransportError("the SIP stack was closed"))
        self._waiters.clear()
        self._final_hooks.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transports.close()

    async def __aenter__(self) -> SipStack:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def endpoints(self) -> list[tuple[Transport, Address]]:
        """The listening (transport, (host, port)) pairs, with the real ports when 0 was asked."""
        return self.transports.endpoints

    # -- API -------------------------------------------------------------------------------------

    def on_request(self, handler: RequestHandler) -> Callable[[], None]:
        """Set the handler of incoming requests; returns a function that removes it.

        Without a handler, requests are answered 503.
        """
        self._handler = handler

        def remove() -> None:
            if self._handler is handler:
                self._handler = None

        return remove

    async def send_request(self, request: Request, target: Target | None = None, *,
                           on_final: Callable[[Response], None] | None = None) -> Response:
        """Send ``request`` in a new client transaction and return its final response.

        ``target`` defaults to the first Route (loose routing) or the Request-URI. The stack
        writes the top Via (fresh branch, rport). Raises ``TransactionTimeout`` (Timer F),
        ``TransportError`` (cannot resolve, connect, or send; ICMP error; a request over
        ``udp_max`` bytes whose TCP attempt failed) or ``LocalProtocolError`` (a bad request).

        ``on_final(response)`` is called inline, in the pump that matched the final response,
        before anything else received in the same loop turn is handled; the awaiting task only
        resumes later. A caller that must record the answer before a request it causes (an IMDN
        after a 2xx) is processed uses it. Its errors are logged, never raised into the pump.
        """
        self._require_loop()
        if target is None:
            routes = request.route
            uri = routes[0].uri if routes else request.uri
            if self.locator is not None:
                return await self._send_located(request, uri, self.locator, on_final)
            target = target_for_uri(uri)
        candidates = await resolve(target)
        for index, candidate in enumerate(candidates):
            try:
                return await self._attempt(request, candidate, on_final)
            except TransportError:
                # RFC 3263 §4.3: on a transport error, the next address (a new transaction)
                if index + 1 == len(candidates):
                    raise
                log.info("%s unreachable, trying the next address of %s", candidate.host, target.host)
        raise AssertionError("resolve() returned no address")  # pragma: no cover

    def send_request_now(
        self, request: Request, *, on_final: Callable[[Response], None] | None = None
    ) -> asyncio.Future[Response] | None:
        """Start ``request``'s client transaction here and now, without a task; or return None.

        The synchronous start of :meth:`send_request` with no target: the first Route or the
        Request-URI, when that is an IP address (nothing to resolve), no locator is set and the
        request fits UDP's size limit. The request is sent before this returns; the future
        gets the final response or the error :meth:`send_request` would raise. None: nothing
        was sent, use :meth:`send_request` (a host name to resolve, RFC 3263 location, a
        switch to TCP by size whose failure has its own error). ``on_final`` is
        :meth:`send_request`'s: called inline with the final response, just before the future
        gets it.
        """
        loop = self._require_loop()
        if self.locator is not None:
            return None
        routes = request.route
        target = target_for_uri(routes[0].uri if routes else request.uri)
        if not is_ip_literal(target.host):
            return None
        transport = target.transport
        stamp_via(request, transport, self.transports.sent_by(transport, target.host), rport=self.rport)
        data = request.to_bytes()
        if needs_stream(len(data), transport, self.udp_max):
            return None
        # Its waiter is forgotten by the pump as it settles the future (_dispatch, _fail): no
        # task here to do it.
        return self._start(loop, request, target.flow(), data, on_final)[1]

    def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        request: Request,
        flow: Flow,
        data: bytes,
        on_final: Callable[[Response], None] | None = None,
    ) -> tuple[TransactionKey, asyncio.Future[Response]]:
        """Open ``request``'s client transaction on ``flow`` and send it now: its key and the future
        of its final response. The first transmission sends ``data``, the bytes just measured,
        instead of serialising again."""
        key = self.layer.send_request(request, flow, loop.time())
        future: asyncio.Future[Response] = loop.create_future()
        self._waiters[key] = future
        if on_final is not None:
            self._final_hooks[key] = on_final
        self._encoded = (request, data)
        try:
            self._pump()
        finally:
            self._encoded = None
        return key, future

    async def _send_located(self, request: Request, uri: Uri, locator: ServerLocator,
                            on_final: Callable[[Response], None] | None) -> Response:
        """RFC 3263 §4.3: each target in turn, a new transaction (fresh branch) each, moving on at a
        transport error, a Timer F timeout or a 503; retransmissions stay within one transaction,
        so on one target. ``on_final`` sees only the final response that is returned."""
        candidates = await locator.locate(uri)
        for index, candidate in enumerate(candidates):
            last = index + 1 == len(candidates)
            hook = on_final
            if on_final is not None and not last:
                def hook(response: Response, _final: Callable[[Response], None] = on_final) -> None:
                    if response.status_code != 503:
                        _final(response)
            try:
                response = await self._attempt(request, candidate, hook)
            except (TransportError, TransactionTimeout) as exc:
                locator.mark_failed(candidate)
                if last:
                    raise
                log.info("%s:%d (%s) failed (%s), trying the next target for %s",
                         candidate.host, candidate.port, candidate.transport.value, exc, uri)
                continue
            if response.status_code == 503:
                locator.mark_failed(candidate)
                if not last:
                    log.info("%s:%d (%s) answered 503, trying the next target for %s",
                             candidate.host, candidate.port, candidate.transport.value, uri)
                    continue
            else:
                locator.mark_succeeded(candidate)
            return response
        raise TransportError(f"no target for {uri}")

    async def _attempt(self, request: Request, chosen: Target,
                       on_final: Callable[[Response], None] | None = None) -> Response:
        loop = self._require_loop()
        transport = chosen.transport
        stamp_via(request, transport, self.transports.sent_by(transport, chosen.host), rport=self.rport)
        data = request.to_bytes()
        size = len(data)
        switched = needs_stream(size, transport, self.udp_max)
        if switched:
            # §18.1.1: MUST go over a congestion-controlled transport, Via rewritten to match.
            log.info("request of %d bytes exceeds %d: sending over TCP instead of UDP", size, self.udp_max)
            transport = Transport.TCP
            chosen = Target(Transport.TCP, chosen.host, chosen.port, None)
            stamp_via(request, transport, self.transports.sent_by(transport, chosen.host), rport=self.rport)
            data = request.to_bytes()
        key, future = self._start(loop, request, chosen.flow(), data, on_final)
        try:
            return await future
        except TransportError as exc:
            if switched:
                # No silent fallback to UDP: the size rule is a MUST and the caller must know.
                raise TransportError(f"request of {size} bytes is too large for UDP (limit {self.udp_max}, "
                                     f"RFC 3261 §18.1.1) and TCP failed: {exc}") from exc
            raise
        finally:
            self._waiters.pop(key, None)
            self._final_hooks.pop(key, None)

    def respond(self, key: TransactionKey, response: Response) -> bool:
        """Send ``response`` in the server transaction ``key`` and send it out now.

        Returns False when it is too late: the stack is closed or the transaction has ended. A
        final response after the first is discarded by the transaction (RFC 3261 §17.2.2).
        ``IncomingRequest.respond`` builds the response and calls this; call it directly only
        with a response built by hand.
        """
        if self._closed:
            return False
        loop = self._loop
        now = loop.time() if loop is not None else self._now()  # (not started: _now raises)
        sent = self.layer.respond(key, response, now)
        self._pump()
        return sent

    # -- TransportUser ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, flow: Flow) -> None:
        """From UDP: parse, then hand to the layer; answer 400 statelessly if it is broken."""
        if self._closed:
            return
        if wire_log.isEnabledFor(logging.DEBUG):
            log_wire("received", data, flow)
        loop = self._loop
        now = loop.time() if loop is not None else self._now()  # (the loop is set once started)
        try:
            # Matching reads the headers of every message (the top Via first): rows built now.
            message = parse_message(data, self._limits, lazy_rows=False)
            self.layer.receive(message, flow, now)
        except SipParseError as exc:
            if not self.layer.receive_unparseable(data, exc, flow):
                log.debug("dropping unreadable datagram from %s: %s", flow.remote, exc)
        self._pump()

    def stream_message_received(self, message: Request | Response, flow: Flow) -> None:
        """From a TCP/TLS connection's framer."""
        if self._closed:
            return
        if wire_log.isEnabledFor(logging.DEBUG):
            log_wire("received", message.to_bytes(), flow)
        try:
            self.layer.receive(message, flow, self._now())
        except SipParseError as exc:
            with contextlib.suppress(Exception):
                self.layer.receive_unparseable(message.to_bytes(), exc, flow)
        self._pump()

    def stream_message_failed(self, data: bytes | None, error: SipParseError, flow: Flow) -> None:
        """A connection's framing broke; answer what can be answered before it closes."""
        if data is not None and not self._closed:
            if wire_log.isEnabledFor(logging.DEBUG):
                log_wire("received", data, flow)
            self.layer.receive_unparseable(data, error, flow)
            self._pump()

    def flow_failed(self, flow: Flow, error: TransportError) -> None:
        """ICMP error or connection failure: fail the transactions using that path."""
        if self._closed:
            return
        log.info("%s path to %s:%s failed: %s", flow.transport.value, flow.remote[0], flow.remote[1], error)
        self.layer.flow_failed(flow, self._now(), str(error))
        self._pump()

    # -- the pump --------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._require_loop().time()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            raise LocalProtocolError("the SIP stack is not running (use `async with SipStack(...)`)")
        return self._loop

    def _pump(self) -> None:
        if self._pumping:  # a failure reported while sending: the running pump picks it up
            return
        self._pumping = True
        layer = self.layer
        try:
            for _ in range(10_000):
                while (event := layer.next_event()) is not None:
                    self._dispatch(event)
                # Only dispatching makes events, and every one was just dispatched: with
                # nothing to send, nothing is left to do (without asking for both again).
                outgoing = layer.messages_to_send()
                if not outgoing:
                    break
                for message in outgoing:
                    self._transmit(message)
            self._arm_timer()
        finally:
            self._pumping = False

    def _transmit(self, outgoing: Outgoing) -> None:
        flow = outgoing.flow
        try:
            encoded = self._encoded
            if outgoing.data is not None:
                data = outgoing.data
            elif encoded is not None and encoded[0] is outgoing.message:
                data = encoded[1]
                self._encoded = None
            else:
                data = outgoing.message.to_bytes()
            message = outgoing.message
            if isinstance(message, Response):
                kind = SendKind.FINAL_RESPONSE if message.status_code >= 200 else SendKind.OTHER
                if flow.transport is not Transport.UDP and not self.transports.is_open(flow):  # (reliable)
                    flow = _reconnect_flow(message, flow)
            else:
                kind = SendKind.OTHER if message.method == "ACK" else SendKind.REQUEST
            sent_on = self.transports.send(data, flow, kind)
            if wire_log.isEnabledFor(logging.DEBUG):
                log_wire("sent", data, sent_on)
        except TransportError as exc:
            log.info("sending to %s failed: %s", flow.remote, exc)
            if outgoing.key is not None:
                self.layer.transport_error(outgoing.key, self._now(), str(exc))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._run_handler(IncomingRequest(self, event.key, event.request, event.flow))
        elif isinstance(event, ResponseReceived):
            if not event.final:
                return
            future = self._waiters.pop(event.key, None)
            if future is not None and not future.done():
                hook = self._final_hooks.pop(event.key, None)
                if hook is not None:
                    try:
                        hook(event.response)
                    except Exception:
                        log.exception("on_final callback failed for %s", event.key.method)
                future.set_result(event.response)
        elif isinstance(event, TransactionTimedOut):
            self._fail(event.key, TransactionTimeout("no final response before Timer F (64*T1)"))
        elif isinstance(event, TransportFailed):
            if event.key.client:
                self._fail(event.key, TransportError(event.reason))
            else:
                log.info("response to %s lost: %s", event.key.method, event.reason)

    def _fail(self, key: TransactionKey, error: Exception) -> None:
        future = self._waiters.pop(key, None)
        self._final_hooks.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def _run_handler(self, incoming: IncomingRequest) -> None:
        handler = self._handler
        if handler is None:
            incoming.respond(503, "No request handler")
            return
        # The handler is called right here, inside the pump: a synchronous handler that answers at
        # once costs no task and no extra loop iteration, and its response leaves in this same
        # pump. Only an awaitable result (an async handler) becomes a tracked task.
        try:
            result = handler(incoming)
        except Exception:
            self._handler_failed(incoming)
            return
        if result is None or result is True or result is False or not inspect.isawaitable(result):
            return  # a sync handler may return anything (even respond()'s bool)
        task = self._require_loop().create_task(self._await_handler(result, incoming))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_handler(self, result: Awaitable[object], incoming: IncomingRequest) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            self._handler_failed(incoming)

    def _handler_failed(self, incoming: IncomingRequest) -> None:
        log.exception("request handler failed on %r", incoming)
        if incoming.responded is None:
            try:
                incoming.respond(500, "Internal Server Error")
            except Exception:  # e.g. the request lacks what a response must copy
                log.exception("could not answer 500 to %r", incoming)

    def _arm_timer(self) -> None:
        if not self._closed:
            self._timer.arm(self.layer.get_timer())

    def _on_timer(self, now: float) -> None:
        if self._closed:
            return
        self.layer.handle_timer(now)
        self._pump()


def _reconnect_flow(response: Response, flow: Flow) -> Flow:
    """§18.2.2: the request's connection is gone; connect to the received address (or sent-by
    host) at the sent-by port, as the client asked to be reached there."""
    via = response.top_via
    host = (via.received or via.host).strip("[]")
    port = via.port or flow.transport.default_port
    server_name = None if is_ip_literal(via.host) or flow.transport is not Transport.TLS else via.host
    return Flow(flow.transport, (host, port), None, server_name)
