"""Carrying out what the roles ask (RFC 5438 §8): forward held messages, owe notifications, copy to members.

:class:`RelayPath` turns the events of the store-and-forward core and the exploder into
requests: a held MESSAGE due goes to its recipient's newest registered contact (RFC 3261
§10.3), or to the URI itself outside our domains, through a configured next hop (a loose
Route, RFC 3261 §8.1.2) and one transaction at a time per destination (RFC 3428 §8); a
notification we owe (``processed``/``stored``, RFC 5438 §8.1; ``failed``, §8.2) is built and
held like any message; a list member's copy carries CPIM To = member, ``Original-To`` = the
list (RFC 5438 §6.4) and our ``IMDN-Record-Route`` (§6.5); a list's collected notifications go
back aggregated (§8.3).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import cpim
from ..dialog.factory import build_request
from ..errors import LocalProtocolError, RemoteProtocolError, TransactionTimeout, TransportError
from ..headers import NameAddr
from ..imdn import ImdnHeaders, build_imdn_message, make_notification
from ..uri import Uri, identity_key
from ._base import ServiceBase
from .exploder import MemberCopyDue, NotificationsReady
from .forward import ForwardDue, MessageFailed, NotificationDue
from .rewrite import add_original_to, add_record_route, replace_to
from .store import ParkedMessage

__all__ = ["RelayPath"]

_log = logging.getLogger("sipimdn.intermediary")

_STATUS_UNSENDABLE = 502  # the next hop cannot even be addressed: a permanent failure


class RelayPath(ServiceBase):
    """Forward held messages, build the notifications we owe, hand list copies out."""

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
