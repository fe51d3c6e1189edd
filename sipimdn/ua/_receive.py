"""The receive path: decode a request, ask the tracker, let the application decide, answer.

Cost per received MESSAGE: decoding, dedup and tracking run inline in the
stack's callback; the handlers get one task, which answers from its own
step, and deadlines share one timer (:class:`DeadlineQueue`); a message
answered in time leaves it with its answer, so the timer never wakes for it. An
answer the tracker holds back until the store has its records is a
callback of the writer's group commit (``StoreWriter.when_written``), not a
task. Which dedup entries reach the store, what a report owes and when a
notification may leave are the tracker's decisions (see
:mod:`sipimdn.imdn.tracker.receiver` and :mod:`sipimdn.imdn.tracker.dispatch`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from .._cache import remember_text
from ..errors import (
    CpimError,
    ImdnError,
    RemoteProtocolError,
)
from ..message import safe_reason_phrase
from ..stack import IncomingRequest
from . import _wire
from ._base import ALLOW, MessageHandler, callable_name
from ._deadline import DeadlineQueue, Decision, HandlerOutcome, normalize_decision, outcome_of
from ._workingset import WorkingSetPath
from .incoming import IncomingMessage
from .request_uri import RequestUriVerdict

__all__ = ["Pending", "ReceivePath"]

_log = logging.getLogger("sipimdn.ua")
#: Resends of a message still being decided that wait for its answer (more get the deadline
#: status at once): a sender retries a few times, only a flood sends more.
_MAX_FOLLOWERS = 8
#: Senders remembered as having sent us message/cpim (past this the table starts over).
_MAX_CPIM_SENDERS = 4096
#: What a handler returning None decided (both are immutable, so one is shared).
_DELIVERED = HandlerOutcome(normalize_decision(None), by_handler=True)


class ReceivePath(WorkingSetPath):
    """Answer requests; hand instant messages to the application; apply notifications."""

    # -- receiving ---------------------------------------------------------------------------

    def _on_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        method = request.method
        if method == "ACK":
            # ACK for the 405 we gave an INVITE (RFC 3261 §17.2.1): absorbed.
            return
        verdict = _wire.request_uri_verdict(self.config, self._aor, self._require_stack(), request)
        # (compared by identity: the verdict's ``status`` is an enum property and a table lookup)
        if verdict is not RequestUriVerdict.ACCEPTED:  # RFC 3261 §8.2.2.1: nothing reaches the app
            status = verdict.status
            assert status is not None  # (None only for ACCEPTED)
            _log.info("%s for %s from %s: %s", method, request.uri, incoming.flow.remote, verdict.reason)
            incoming.respond(status, verdict.reason)
            return
        require = request.headers.get_all("Require")  # almost always none
        required = [tag for value in require for tag in value.split(",") if tag.strip()] if require else None
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
            incoming.respond(exc.status_code, safe_reason_phrase(exc.reason), headers)
            return
        if inbound.composing is not None:
            # RFC 3994 §3.3: answered 200, never delivered as a message, owes no IMDN.
            incoming.respond(200)
            self._learn_capabilities(inbound)
            self._composing_received(inbound.cpim_from or inbound.sip_from, inbound.composing)
        elif inbound.notification is not None:
            self._receive_notification(incoming, inbound)
        else:
            self._receive_im(incoming, inbound)

    def _learn_capabilities(self, inbound: _wire.Inbound) -> None:
        """A peer that sends us message/cpim takes it: remembered so ``probe_options`` need not
        ask it. In memory and bounded (any peer can send us anything, so this is no store
        record per sender), until ``peer_capability_ttl`` passes."""
        if inbound.cpim is not None:
            remember_text(
                self._sent_us_cpim, inbound.sip_from, time.time() + self.config.peer_capability_ttl,
                _MAX_CPIM_SENDERS,
            )

    def _receive_notification(self, incoming: IncomingRequest, inbound: _wire.Inbound) -> None:
        # Always 200: whether the IMDN correlates is none of the sender's business
        # (no oracle for guessing Message-IDs, RFC 5438 §14). Parts about messages another
        # worker sent are answered once kept for that worker (see _shared).
        assert inbound.notification is not None
        tracker = self._require_tracker()
        # An aggregated IMDN (RFC 5438 §8.3) carries several; each is checked on its own.
        notes = (inbound.notification, *inbound.more_notifications)
        counters = self._counters
        foreign: list[dict[str, Any]] = []
        # The sender as a trusted proxy asserted it (RFC 3325 §9.1): the origin check's identity.
        asserted = self._asserted_identity(incoming)
        asserted_uris = None if asserted is None else asserted.uris
        evicted: list[dict[str, Any]] = []
        if not any(self._is_foreign(note.message_id) for note in notes):
            incoming.respond(200)
        for index, note in enumerate(notes):
            counters.notifications_received += 1
            _log.info(
                "received %s notification '%s' for message %s from %s over %s",
                note.kind,
                note.status,
                note.message_id,
                inbound.cpim_from or inbound.sip_from,
                incoming.flow.transport.value,
            )
            # The replay guard remembers notification ids; the parts of one
            # aggregated IMDN share its Message-ID, so each part gets its own.
            notification_id = inbound.message_id
            if notification_id is not None and len(notes) > 1:
                notification_id = f"{notification_id}#{index}"
            if self._is_foreign(note.message_id):
                # About a message another worker sent: its owner applies it.
                foreign.append(_wire_fields(note, inbound, notification_id, asserted_uris))
                continue
            if self._sent_evicted(note.message_id):
                # About a message whose record left memory: read back, then applied.
                evicted.append(_wire_fields(note, inbound, notification_id, asserted_uris))
                continue
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
                asserted_identity=asserted_uris,
            )
        self._pump()
        if foreign:
            self._forward_then_answer(incoming, foreign)
        if evicted:
            self._spawn_wire(self._apply_read_back(evicted))

    def _receive_im(self, incoming: IncomingRequest, inbound: _wire.Inbound) -> None:
        sender = inbound.cpim_from or inbound.sip_from
        # (without a shared store nothing is claimed: the usual case skips the call)
        if self._shared is None or not self._claim_first(incoming, inbound, sender):
            self._receive_claimed(incoming, inbound)

    def _receive_claimed(self, incoming: IncomingRequest, inbound: _wire.Inbound) -> None:
        request = incoming.request
        tracker = self._require_tracker()
        now = time.time()
        sender = inbound.cpim_from or inbound.sip_from
        message_id = inbound.message_id
        transaction: str | None = None
        if message_id is not None:
            # A message that requests nothing we send takes the tracker's short route (dedup in
            # memory only) inside record_received itself: one call for both kinds.
            reception = tracker.record_received(
                message_id=message_id,
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
            # Its events and writes are pumped with the answer (one pump and one write batch
            # per message): nothing in between can observe them.
        else:
            # No Message-ID (plain text): the SIP transaction identifies a copy sent again,
            # never the Call-ID alone (some peers reuse one across MESSAGEs).
            transaction = f"{request.call_id} {request.from_.tag or ''} {request.cseq.number}"
            reception = tracker.record_plain(inbound.sip_from, transaction, now)
        if reception.duplicate:
            if message_id is not None:
                self._pump()
                deciding = self._deciding.get((message_id, sender))
                if deciding is not None:
                    # A resend in a new transaction while the first copy is still being
                    # decided: not handed up again, and answered with the first copy's
                    # answer when it comes (the sender may only hear this one). Bounded:
                    # past a few, a flood of copies gets the deadline status at once.
                    followers = deciding.followers
                    if followers is None:
                        deciding.followers = [incoming]
                        return
                    if len(followers) < _MAX_FOLLOWERS:
                        followers.append(incoming)
                        return
            status = reception.previous_status or self.config.deadline_status
            self._counters.duplicates_received += 1
            _log.info(
                "duplicate message %s from %s answered %d", message_id or request.call_id, sender, status
            )
            incoming.respond(status)
            return
        self._learn_capabilities(inbound)
        self._composing_message_from(sender)
        tracked_as = sender if message_id is not None else inbound.sip_from
        self._counters.messages_received += 1
        if _log.isEnabledFor(logging.INFO):  # the arguments cost more than the disabled call
            _log.info(
                "received message %s from %s over %s%s",
                message_id or f"(Call-ID {request.call_id})",
                sender,
                incoming.flow.transport.value,
                f", notifications asked: {', '.join(sorted(inbound.notify))}" if inbound.notify else "",
            )
        pending = Pending(incoming, message_id, tracked_as, transaction)
        if message_id is not None:
            self._deciding[(message_id, sender)] = pending
        # (no trusted asserters configured, the usual case: no identity to judge, no call)
        asserted = self._asserted_identity(incoming) if self._asserters is not None else None
        callbacks = self._message_callbacks
        if callbacks is None:
            callbacks = self._message_callbacks = (self._report, self._reply)
        message = _wire.incoming_message(inbound, incoming, callbacks[0], callbacks[1], asserted=asserted)
        self._decide(message, pending)

    def _answer(self, pending: Pending, outcome: HandlerOutcome) -> None:
        """Send the final response chosen for a received IM and record it (once)."""
        if pending.answered:
            return
        pending.answered = True
        deadlines = self._deadlines
        if deadlines is not None:
            # Answered: its deadline goes now, with what it holds (not ``delay`` later, cold).
            deadlines.discard(pending)
        if pending.message_id is not None:
            self._deciding.pop((pending.message_id, pending.sender), None)
        status = outcome.decision.status
        reason = outcome.decision.reason
        if _log.isEnabledFor(logging.INFO):  # the arguments cost more than the disabled call
            _log.info(
                "answered message %s from %s: %d%s",
                pending.message_id or f"(Call-ID {pending.incoming.request.call_id})",
                pending.sender,
                status,
                "" if outcome.by_handler else " (not decided by a handler)",
            )
        if self._closed:
            pending.respond(status, reason)
            return
        tracker = self._require_tracker()
        if pending.message_id is None:
            assert pending.transaction is not None
            tracker.plain_answered(pending.sender, pending.transaction, status)
            pending.respond(status, reason)
            return
        if self._shared is not None:  # (the dedup entry lives in a shared store only)
            self._store_answer(pending, status)
        if tracker.message_answered(pending.message_id, pending.sender, status, time.time(), sent=False):
            # The tracker holds what the answer commits us to until it is sent: those records
            # must be on disk first, or a crash right after the 2xx loses them for good. Write,
            # then answer once durable; the writer batches, so concurrent answers share a commit.
            self._writer.submit(self._drain_writes(tracker))
            self._durable_answers += 1
            failures = self._writer.failures
            self._writer.when_written(
                functools.partial(self._respond_durable, pending, status, reason, failures)
            )
            return
        pending.respond(status, reason)
        self._pump()

    def _respond_durable(self, pending: Pending, status: int, reason: str | None, failures: int = 0) -> None:
        """Answer a received IM now that the records behind that answer reached the store.

        Called by the store writer (``when_written``), with no task of its own. A write
        that failed counts as through: it was logged loudly by the writer, answering
        anyway keeps the peer's transaction from timing out, and what we owe lives on in
        memory for this run. Not with a shared store: other workers must be able to take
        over what we owe, so the message is refused with 503 instead (``_refuse_unstored``).
        """
        self._durable_answers -= 1
        if self._writer.failures > failures and self._refuse_unstored(pending):
            return
        pending.respond(status, reason)
        if pending.message_id is not None and self._tracker is not None:
            self._tracker.answer_sent(pending.message_id, pending.sender)
        self._pump()

    def _decide(self, message: IncomingMessage, pending: Pending) -> None:
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
            self._deadlines = DeadlineQueue(self.config.handler_deadline, self._deadline_passed)
        self._deadlines.add(pending)

    async def _run_handlers(
        self, handlers: list[MessageHandler], message: IncomingMessage, pending: Pending
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
                    _log.error(
                        "on_message handler %s failed on message %s after its deadline",
                        _names(handlers),
                        _about(pending),
                        exc_info=exc,
                    )
                else:
                    self._answer(pending, outcome_of(None, exc, _names(handlers), _about(pending)))
                return
            except BaseException as exc:
                # What spawn()'s done callback logs for other tasks (a handler's SystemExit, say).
                _log.error(
                    "on_message handler %s task failed on message %s",
                    _names(handlers),
                    _about(pending),
                    exc_info=exc,
                )
                raise
            if pending.answered:
                _log.info(
                    "on_message handler %s decided %r on message %s after its deadline;"
                    " the stack had answered",
                    _names(handlers),
                    result,
                    _about(pending),
                )
            elif result is None:
                # The most common case: 200 (``normalize_decision(None)``), one shared outcome.
                self._answer(pending, _DELIVERED)
            else:
                try:
                    # A valid decision, for which no names are formatted.
                    outcome = HandlerOutcome(normalize_decision(result), by_handler=True)
                except (TypeError, ValueError):
                    outcome = outcome_of(result, None, _names(handlers), _about(pending))
                self._answer(pending, outcome)
        finally:
            task = pending.task
            if task is not None:
                self._tasks.discard(task)
                self._wire_tasks.discard(task)

    def _deadline_passed(self, pending: Pending) -> None:
        if pending.answered:
            return
        status = self.config.deadline_status
        _log.warning(
            "on_message handler missed its %.1fs deadline on message %s; answered %d for it",
            self.config.handler_deadline,
            _about(pending),
            status,
        )
        self._answer(pending, HandlerOutcome(Decision(status), by_handler=False))
        if pending.task is not None:
            # Answered: the handler keeps running as an ordinary callback, not protocol work.
            self._wire_tasks.discard(pending.task)

    async def _report(self, message_id: str, sender: str, kind: str, status: str) -> bool:
        # IncomingMessage.report: the same question, asked by the message's own sender.
        # "displayed" is mark_displayed: subject to the display privacy setting, never an error.
        if kind == "display" and status == "displayed":
            return await self._mark_displayed(message_id, sender)
        return await self._report_disposition(message_id, kind, status, sender)

    async def _report_disposition(self, message_id: str, kind: str, status: str, sender: str | None) -> bool:
        """Ask the tracker; do what it says; return its decision (``UserAgent.report_disposition``)."""
        await self._read_back_received(message_id, sender)
        tracker = self._require_tracker()
        owed = tracker.report_disposition(message_id, kind, status, time.time(), sender=sender)
        self._pump()
        return owed is not None

    async def _mark_displayed(self, message_id: str, sender: str | None) -> bool:
        """Ask the tracker; do what it says; return its decision (``UserAgent.mark_displayed``)."""
        await self._read_back_received(message_id, sender)
        tracker = self._require_tracker()
        owed = tracker.mark_displayed(message_id, time.time(), sender=sender)
        self._pump()
        return owed is not None


class Pending:
    """A received IM whose final response is being decided."""

    __slots__ = ("answered", "followers", "incoming", "message_id", "sender", "task", "transaction")

    def __init__(
        self, incoming: IncomingRequest, message_id: str | None, sender: str, transaction: str | None
    ) -> None:
        self.incoming = incoming
        #: Its Message-ID and sender as the tracker knows them (SIP From for plain text).
        self.message_id = message_id
        self.sender = sender
        #: The SIP transaction identity of a plain-text message (its dedup key).
        self.transaction = transaction
        self.answered = False
        self.task: asyncio.Task[Any] | None = None
        #: Resends (same Message-ID, new transaction) received while deciding: same answer
        #: (None while there is none: nearly always, and a list per message would be one more
        #: object for the collector per message being decided).
        self.followers: list[IncomingRequest] | None = None

    def respond(self, status: int, reason: str | None, headers: list[tuple[str, str]] | None = None) -> None:
        """Send the final response to this message and to its resends."""
        self.incoming.respond(status, reason, headers or ())
        for follower in self.followers or ():
            follower.respond(status, reason, headers or ())


def _wire_fields(
    note: Any, inbound: _wire.Inbound, notification_id: str | None, asserted: tuple[str, ...] | None
) -> dict[str, Any]:
    """The arguments of ``DispositionTracker.notification_received`` for one notification."""
    fields = {
        "message_id": note.message_id,
        "kind": str(note.kind),
        "status": str(note.status),
        "sender": inbound.cpim_from,
        "sip_from": inbound.sip_from,
        "recipient_uri": note.recipient_uri,
        "original_recipient_uri": note.original_recipient_uri,
        "notification_id": notification_id,
    }
    if asserted is not None:
        # Only when there is one: a row without it reads as before, on any worker.
        fields["asserted_identity"] = list(asserted)
    return fields


def _names(handlers: list[MessageHandler]) -> str:
    return ", ".join(callable_name(handler) for handler in handlers)


def _about(pending: Pending) -> str:
    """The message a log line is about: its Message-ID and sender, else its Call-ID."""
    if pending.message_id is not None:
        return f"{pending.message_id} from {pending.sender}"
    return f"(Call-ID {pending.incoming.request.call_id}) from {pending.sender}"
