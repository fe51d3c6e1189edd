"""The receive path: answer REGISTER and OPTIONS, route every MESSAGE (RFC 5438 §8).

:class:`ReceivePath` answers a request as it arrives. REGISTER goes to the registrar (RFC 3261
§10.3; only for our domains) and releases the messages held for the new binding. A MESSAGE is
decoded (CPIM, RFC 3862; IMDN headers, RFC 5438 §6) and routed: an IMDN whose top
``IMDN-Route`` is us is collected for a list or relayed with our entry popped (RFC 5438 §8);
an IM to a list URI is exploded (§8); anything else for someone else is held (202 once the
store has it, RFC 3428 §7) and forwarded by :mod:`._relay`. Observers get one
:class:`RequestRouted` per MESSAGE.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .. import cpim
from ..errors import CpimError, ImdnError, LocalProtocolError, RemoteProtocolError, StoreError
from ..imdn import ImdnHeaders, ReceivedImdn, imdn_headers, recognise
from ..message import Request, safe_reason_phrase
from ..stack import IncomingRequest
from ..uri import identity_key
from ._relay import RelayPath
from .exploder import ReplyPath, UriList
from .rewrite import add_original_to, add_record_route, pop_imdn_route
from .store import ImdnOrigin

__all__ = ["ALLOW", "ReceivePath", "RequestRouted"]

_log = logging.getLogger("sipimdn.intermediary")

ALLOW = "MESSAGE, REGISTER, OPTIONS"


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


class ReceivePath(RelayPath):
    """Answer REGISTER and OPTIONS; route each MESSAGE to the exploder, along IMDN-Route or to the store."""

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
