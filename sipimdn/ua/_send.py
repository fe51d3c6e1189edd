"""The send path: instant messages and owed notifications, one transaction per destination.

``send_message`` registers the message with the tracker, then a wire task
sends it: at most one MESSAGE transaction at a time to one destination
(RFC 3428 §8), once as text/plain after a 415 to message/cpim, and with
credentials after a 401/407 (RFC 3261 §22.2). Owed notifications go the
same way and their outcome goes back to the tracker; one whose transaction
can start at once (its destination free, nothing to resolve, no credentials)
starts in the pump that made it due, with no task, and its answer is handled
inline in the stack's pump that matched it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable

from .._pacing import DestinationKey
from ..auth import challenge_header_for
from ..errors import (
    AuthenticationFailed,
    LocalProtocolError,
    SipParseError,
    TransactionTimeout,
    TransportError,
)
from ..events import NotificationSent
from ..imdn import new_message_id
from ..imdn.tracker import (
    PEER_CPIM,
    PEER_NO_CPIM,
    DispositionTracker,
    OwedNotification,
)
from ..imdn.vocabulary import REQUEST_KINDS, Kind, Status
from ..message import Request, Response
from ..uri import Uri
from . import _wire
from ._base import AgentCore
from .outgoing import SentMessage

__all__ = ["SendPath"]

_log = logging.getLogger("sipimdn.ua")
#: Seconds an OPTIONS probe may take before the message goes out as message/cpim anyway.
_PROBE_TIMEOUT = 5.0


class SendPath(AgentCore):
    """Send instant messages and the notifications the tracker says we owe."""

    # -- owed notifications ------------------------------------------------------------------

    def _send_owed(self, owed: OwedNotification) -> None:
        """Send one owed IMDN, started in the pump that made it due.

        The client transaction starts right here when nothing must be awaited first: the
        destination's turn is free (RFC 3428 §8), no credentials are configured (a 401/407
        would be answered with a retry) and the stack can send at once (see
        :meth:`SipStack.send_request_now`); its answer is handled inline, in the stack's pump
        (:class:`_OwedInFlight`). Otherwise a wire task waits for what it must.
        """
        try:
            request = _wire.build_imdn_request(self, owed, now=time.time())
        except (LocalProtocolError, ValueError) as exc:
            # We cannot build it (bad stored data): retrying would fail the same way.
            _log.error("cannot build IMDN %s for %s: %s", owed.notification_id, owed.message_id, exc)
            self._require_tracker().notification_outcome(owed.notification_id, 400, time.time())
            self._pump()
            return
        tracker = self._require_tracker()
        tracker.notification_sent(owed.notification_id, len(request.to_bytes()), time.time())
        key = Uri.parse(owed.request_uri)
        if self._auth is None:
            turn = DestinationKey(key)
            if self._queue.try_acquire(turn):
                self._start_owed(owed, request, turn)
                return
        held = functools.partial(self._owed_held, tracker, owed.notification_id)
        self._spawn_wire(self._send_owed_waiting(owed, request, key, held=held))

    def _owed_held(self, tracker: DispositionTracker, notification_id: str) -> bool:
        # Our turn at this URI (RFC 3428 §8) came after the hand-out: if the destination was
        # parked meanwhile (it left another notification unanswered), wait for the end of
        # the parking instead of running one more transaction into the void. With workers
        # sharing the store, nor while this one is unsure it still owns the notification
        # (checked here, as late as can be before the request goes out).
        if not self._may_send_owed(notification_id):
            return True
        return tracker.notification_held(notification_id, time.time())

    def _start_owed(self, owed: OwedNotification, request: Request, turn: DestinationKey) -> None:
        """Send an owed IMDN whose destination turn we hold, without a task when the stack can."""
        if self._owed_held(self._require_tracker(), owed.notification_id):
            self._queue.release(turn)
            self._pump()
            return
        flight = _OwedInFlight(self, owed, turn)
        try:
            future = self._require_stack().send_request_now(request, on_final=flight.answered)
        except Exception as exc:  # what awaiting send_request would raise: the same handling
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        if future is None:
            # Something to await (a host name to resolve, server location): a task holding the turn.
            self._spawn_wire(self._send_owed_waiting(owed, request, Uri.parse(owed.request_uri), turn=turn))
            return
        # The future stays in the wire tasks until it settles: close() gives it the grace time.
        flight.future = future
        self._wire_tasks.add(future)
        future.add_done_callback(flight.settled)

    def _owed_answered(self, owed: OwedNotification, turn: DestinationKey, status: int) -> None:
        """The final answer of an IMDN started by :meth:`_start_owed` (see :class:`_OwedInFlight`)."""
        self._queue.release(turn)
        if not self._closed:
            # Without credentials a 401/407 is final too: its status is the outcome.
            self._owed_done(owed, status)

    def _owed_failed(
        self, owed: OwedNotification, turn: DestinationKey, future: asyncio.Future[Response]
    ) -> None:
        """An IMDN started by :meth:`_start_owed` ended without an answer (or the agent closed)."""
        self._wire_tasks.discard(future)
        self._queue.release(turn)
        if self._closed or future.cancelled():
            return  # closing: as a wire task cancelled by close(), nothing more is done
        error = future.exception()
        if isinstance(error, (TransactionTimeout, TransportError)):
            if isinstance(error, TransportError):
                self._transport_failed()
            _log.debug("IMDN %s to %s failed: %s", owed.notification_id, owed.request_uri, error)
            self._owed_done(owed, None)
        elif error is not None:
            _log.error("IMDN %s to %s failed", owed.notification_id, owed.request_uri, exc_info=error)

    async def _send_owed_waiting(
        self,
        owed: OwedNotification,
        request: Request,
        key: Uri,
        *,
        held: Callable[[], bool] | None = None,
        turn: DestinationKey | None = None,
    ) -> None:
        """An owed IMDN that must await something (its turn, a resolution, credentials)."""
        status: int | None = None
        try:
            response = await self._transact(key, request, owed.request_uri, held=held, holding=turn)
            status = response.status_code
        except _Held:
            self._pump()
            return
        except (TransactionTimeout, TransportError) as exc:
            _log.debug("IMDN %s to %s failed: %s", owed.notification_id, owed.request_uri, exc)
        except _AuthRefused as refused:
            # A final 401/407: retrying the IMDN with the same credentials cannot help.
            status = refused.response.status_code
        self._owed_done(owed, status)

    def _owed_done(self, owed: OwedNotification, status: int | None) -> None:
        """Report a sent IMDN's outcome (the final status, None without answer) to the tracker."""
        self._counters.notifications_sent += 1
        _log.info(
            "sent %s notification '%s' for message %s to %s: %s",
            owed.kind,
            owed.status,
            owed.message_id,
            owed.request_uri,
            status if status is not None else "no answer",
        )
        if self._closed:
            return
        self._require_tracker().notification_outcome(owed.notification_id, status, time.time())
        self._pump()
        if not self._notification_handlers:
            return  # nobody to tell: the event is not even built
        self._fire(
            self._notification_handlers,
            NotificationSent(
                notification_id=owed.notification_id,
                message_id=owed.message_id,
                kind=Kind(owed.kind),
                status=Status(owed.status),
                to=owed.request_uri,
                sip_status=status,
                attempt=owed.attempt,
            ),
        )

    # -- sending -----------------------------------------------------------------------------

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
        """Register the message with the tracker and start its wire task (``UserAgent.send_message``)."""
        tracker = self._require_tracker()
        self._require_stack()
        try:
            target = Uri.parse(to)
        except SipParseError as exc:
            raise LocalProtocolError(f"cannot send to {to!r}: {exc.reason}") from None
        if target.scheme not in ("sip", "sips"):
            raise LocalProtocolError(f"cannot send to a {target.scheme}: URI; resolve it to a SIP URI first")
        wanted = frozenset(notify)
        unknown = wanted - REQUEST_KINDS
        if unknown:
            raise LocalProtocolError(f"unknown notification kind(s) {sorted(unknown)}")
        data = body.encode("utf-8") if isinstance(body, str) else body
        # None: CPIM unless the peer's OPTIONS answer says otherwise (asked by the wire task).
        use_cpim: bool | None
        if cpim is None:
            flags = tracker.peer_flags(to)
            if not self.config.use_cpim:
                use_cpim = False
                wanted = frozenset()  # our own choice: nothing was requested
            elif PEER_NO_CPIM in flags:
                use_cpim = False
            elif self.config.probe_options and PEER_CPIM not in flags and not self._sent_us_cpim_lately(to):
                use_cpim = None
            else:
                use_cpim = True
        else:
            use_cpim = cpim
            if wanted and not use_cpim:
                raise LocalProtocolError("notifications can only be requested in message/cpim")
        if wanted and use_cpim is False:
            # Requested, but the peer takes no CPIM: sent as text/plain; the recipient ends
            # ``unsupported`` once the message is accepted (see DispositionState.UNSUPPORTED).
            _log.info("%s takes no message/cpim: sending text/plain without notification requests", to)
        message_id = new_message_id()  # 128 random bits, CPIM Token-safe (RFC 5438 §6.3)
        now = time.time()
        tracker.register_sent(
            message_id=message_id, recipients=[to], requested=set(wanted), now=now, expect_members=to_list
        )
        shown = wanted if use_cpim is not False else frozenset()
        handle = SentMessage(message_id=message_id, to=to, notify=shown)
        self._handles[message_id] = handle
        self._counters.messages_sent += 1
        self._composing_message_sent(to)
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

    async def _run_send(self, handle: SentMessage, outgoing: _wire.Outgoing, cpim: bool | None) -> None:
        tracker = self._require_tracker()
        # The sent record must be on disk before the MESSAGE leaves: a notification can come
        # back at once, and after a crash an unknown Message-ID would be refused for good.
        try:
            await self._writer.written()
        except Exception:
            _log.exception("store write before sending %s failed", outgoing.message_id)
        # A 2xx is recorded the moment the stack matches it (see _accepted), so an IMDN
        # read in the same loop turn, just behind it, finds the message accepted.
        # A probe never fails: what it cannot learn leaves the default, message/cpim.
        use_cpim = cpim if cpim is not None else await self._probe(outgoing)
        if not use_cpim:
            handle._set_notify(frozenset())
        # Without CPIM no notification can come: tracking ends at the answer (``unsupported``
        # when some were requested).
        dropped = not use_cpim
        accepted = functools.partial(self._accepted, handle.message_id, dropped)
        try:
            request = _wire.build_im_request(self, outgoing, use_cpim=use_cpim)
            _log.info(
                "sending message %s to %s (Call-ID %s%s)",
                handle.message_id,
                outgoing.to,
                request.call_id,
                f", notifications asked: {', '.join(sorted(handle.notify))}" if handle.notify else "",
            )
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
                tracker.set_peer_flag(outgoing.to, PEER_CPIM, False, time.time())
                tracker.set_peer_flag(outgoing.to, PEER_NO_CPIM, True, time.time())
                handle._set_notify(frozenset())
                self._pump()
                dropped = True
                accepted = functools.partial(self._accepted, handle.message_id, dropped)
                request = _wire.build_im_request(self, outgoing, use_cpim=False, previous=request)
                response = await self._transact(
                    outgoing.target, request, outgoing.to, outgoing.transport, on_final=accepted
                )
        except (TransactionTimeout, TransportError) as exc:
            _log.info("message %s to %s failed: %s", handle.message_id, outgoing.to, exc)
            if not self._closed:
                tracker.response_received(handle.message_id, exc.status_code, time.time())
                self._pump()
            handle._set_failure(exc)
            return
        except _AuthRefused as refused:
            _log.info(
                "message %s to %s answered %d: %s",
                handle.message_id,
                outgoing.to,
                refused.response.status_code,
                refused.error,
            )
            # Not delivered (4xx): the tracker ends the message's tracking as failed.
            tracker.response_received(handle.message_id, refused.response.status_code, time.time())
            self._pump()
            handle._set_failure(refused.error)
            return
        _log.info(
            "message %s to %s answered %d %s",
            handle.message_id,
            outgoing.to,
            response.status_code,
            response.reason,
        )
        # A 2xx was already recorded by _accepted (this second report is then a no-op).
        tracker.response_received(
            handle.message_id, response.status_code, time.time(), imdn_dropped=dropped
        )
        self._pump()
        handle._set_response(response)

    def _accepted(self, message_id: str, dropped: bool, response: Response) -> None:
        """A 2xx to an IM we sent, recorded inline in the stack's pump (``on_final``).

        The sending task only resumes on a later loop turn; a notification the peer
        sent right after its 2xx may be read before that (several datagrams per
        wake-up, or a fast TCP peer) and must find the message accepted, not pending.
        A 2xx ends the send (no retry follows one), so it is the final answer of the
        whole send; other answers are left to the task (415 fallback, 401/407 retry).
        """
        if 200 <= response.status_code < 300 and not self._closed and self._tracker is not None:
            self._tracker.response_received(
                message_id, response.status_code, time.time(), imdn_dropped=dropped
            )
            self._pump()

    def _sent_us_cpim_lately(self, peer: str) -> bool:
        """Whether ``peer`` sent us message/cpim within ``peer_capability_ttl``: it takes it."""
        until = self._sent_us_cpim.get(peer)
        return until is not None and until > time.time()

    async def _probe(self, outgoing: _wire.Outgoing) -> bool:
        """Ask a peer of unknown capabilities with OPTIONS whether it takes message/cpim.

        RFC 3261 §11: the Accept of the 200 lists the bodies it takes. The answer is
        remembered (peer flags, ``peer_capability_ttl``); one probe per peer at a time,
        shared by the messages waiting for it. No answer, a refusal or an answer with no
        Accept teaches nothing: CPIM, as without probing (a 415 still falls back).
        """
        to = outgoing.to
        probe = self._probes.get(to)
        if probe is None:
            probe = self._spawn(self._ask_options(outgoing))
            self._probes[to] = probe
            probe.add_done_callback(lambda _f: self._probes.pop(to, None))
        return bool(await asyncio.shield(probe))

    async def _ask_options(self, outgoing: _wire.Outgoing) -> bool:
        to = outgoing.to
        request = _wire.build_options_request(self, to)
        try:
            response = await asyncio.wait_for(
                self._transact(outgoing.target, request, to, outgoing.transport), _PROBE_TIMEOUT
            )
        except (TransactionTimeout, TransportError, TimeoutError, _AuthRefused) as exc:
            _log.info("OPTIONS to %s taught nothing (%s): sending message/cpim", to, exc)
            return True
        if not 200 <= response.status_code < 300:
            _log.info("OPTIONS to %s answered %d: sending message/cpim", to, response.status_code)
            return True
        verdict = _wire.accepts_cpim(response.headers.get_all("Accept"))
        if verdict is None:
            return True
        if not self._closed:
            tracker = self._require_tracker()
            now = time.time()
            tracker.set_peer_flag(to, PEER_NO_CPIM, not verdict, now)
            tracker.set_peer_flag(to, PEER_CPIM, verdict, now)
            self._pump()
        if not verdict:
            _log.info("%s lists no message/cpim in its Accept: sending text/plain", to)
        return verdict

    async def _transact(
        self,
        key: Uri,
        request: Request,
        to: str,
        transport: str | None = None,
        on_final: Callable[[Response], None] | None = None,
        *,
        held: Callable[[], bool] | None = None,
        holding: DestinationKey | None = None,
    ) -> Response:
        """One MESSAGE, never two transactions at once to the same URI (RFC 3428 §8).

        With credentials configured, a 401/407 is answered (RFC 3261 §22.2):
        the retry is a new transaction in the same turn, since the challenged
        one has completed. Realms answered before go authenticated up front.
        A challenge we cannot or must not answer again (our credentials were
        just rejected) raises :class:`_AuthRefused`: never a retry loop.
        ``held`` is asked once the turn is ours: True gives the turn up
        unused (:class:`_Held`). ``holding``: the turn, already ours.
        """
        queue = self._queue
        if holding is None:
            turn = DestinationKey(key)
            await queue.acquire(turn)
        else:
            turn = holding
        try:
            stack = self._require_stack()
            target = _wire.target_for(self.config, to, transport)
            if held is not None and held():
                raise _Held
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
                    self._transport_failed()
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


    def _transport_failed(self) -> None:
        if self._registrar is not None and self.config.outbound_proxy:
            # Our binding points at the flow to the proxy that just failed.
            self._registrar.reregister()


class _OwedInFlight:
    """An owed IMDN whose client transaction :meth:`SendPath._start_owed` started without a task.

    Its final response is handled inline, in the stack's pump that matched it (``on_final``),
    like the 2xx of a message we send: the tracker learns the outcome there, and the done
    callback is taken off the future before the stack settles it, so an answered IMDN costs
    no loop callback. Anything else that settles the future (Timer F, a transport error, the
    stack closing, a cancellation) goes through the done callback, as an awaited
    :meth:`SipStack.send_request` would raise it.
    """

    __slots__ = ("agent", "future", "owed", "turn")

    def __init__(self, agent: SendPath, owed: OwedNotification, turn: DestinationKey) -> None:
        self.agent = agent
        self.owed = owed
        self.turn = turn
        self.future: asyncio.Future[Response] | None = None

    def answered(self, response: Response) -> None:
        future = self.future
        if future is not None:
            future.remove_done_callback(self.settled)
            self.agent._wire_tasks.discard(future)
        self.agent._owed_answered(self.owed, self.turn, response.status_code)

    def settled(self, future: asyncio.Future[Response]) -> None:
        self.agent._owed_failed(self.owed, self.turn, future)


class _Held(Exception):
    """Internal: an owed notification was held back when its turn came (destination parked)."""


class _AuthRefused(Exception):
    """Internal: a request ended in an authentication failure, with the final 401/407."""

    def __init__(self, error: AuthenticationFailed, response: Response) -> None:
        super().__init__(str(error))
        self.error = error
        self.response = response
