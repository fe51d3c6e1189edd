"""What the user agent puts on and takes off the wire: bodies, CPIM envelopes, requests.

Pure functions between the façade (:mod:`._agent`) and the layers below:
decoding a received MESSAGE into an :class:`Inbound` (text/plain,
message/cpim wrapping any type, bare message/imdn+xml, deflate/gzip
bodies), building the CPIM instant message and the CPIM IMDN, and the
SIP requests that carry them. Nothing here does I/O or reads a clock: the
caller passes ``now``, and :func:`make_stack` only builds the stack, which
opens its sockets when started.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import cpim
from .._cache import remember
from .._inflate import ACCEPT_ENCODING, inflate
from ..config import ListenEndpoint, UserAgentConfig
from ..dialog.factory import RequestTemplate, build_request
from ..dialog.transaction import TimerConfig
from ..errors import CpimError, RemoteProtocolError
from ..headers import AssertedIdentity, NameAddr
from ..imdn import (
    CONTENT_TYPE as IMDN_CONTENT_TYPE,
)
from ..imdn import (
    DispositionRequest,
    Notification,
    build_im,
    imdn_headers,
    make_notification,
    parse_notification,
    recognise,
)
from ..imdn.message import build_imdn_bytes
from ..imdn.tracker import OwedNotification, TrackerConfig
from ..iscomposing import CONTENT_TYPE as COMPOSING_TYPE
from ..iscomposing import IsComposing, composing_from_cpim, parse_iscomposing
from ..message import Request
from ..stack import IncomingRequest, SipStack
from ..transport.base import ListenSpec, TransportConfig
from ..transport.dns import DnsLocator
from ..transport.flow import Transport
from ..transport.select import Target, target_for_uri
from ..trust import withholds_identity
from ..uri import Uri
from ._deadline import Decision, normalize_decision
from .incoming import IncomingMessage
from .outgoing import SentMessage
from .request_uri import RequestUriPolicy, RequestUriVerdict

#: Bodies we take in a MESSAGE (RFC 3261 §8.2.3: the Accept of our 415 and OPTIONS answers):
#: CPIM (wrapping any type), plain text, bare IMDNs and composition indications (RFC 3994).
ACCEPT = f"message/cpim, text/plain, message/imdn+xml, {COMPOSING_TYPE}"

__all__ = [
    "ACCEPT",
    "Inbound",
    "Outgoing",
    "accepts_cpim",
    "as_decision",
    "build_composing_request",
    "build_im_request",
    "build_imdn_request",
    "build_options_request",
    "capability_headers",
    "decode_message",
    "incoming_message",
    "request_uri_verdict",
]


def capability_headers(allow: str) -> list[tuple[str, str]]:
    """Allow/Accept/Accept-Encoding, for OPTIONS answers and 415s."""
    return [("Allow", allow), ("Accept", ACCEPT), ("Accept-Encoding", ACCEPT_ENCODING)]



def as_decision(value: object) -> Decision:
    """A handler's return value as a :class:`Decision` (raises TypeError/ValueError if invalid)."""
    return normalize_decision(value)


# -- receiving --------------------------------------------------------------------------------


@dataclass(slots=True)
class Inbound:
    """A received MESSAGE, decoded (read-only by convention: not frozen, whose ``__init__`` sets
    each of these fields through ``object.__setattr__``, four times the cost per message)."""

    request: Request
    sip_from: str
    sip_from_name: str | None
    sip_to: str
    content_type: str
    content_params: dict[str, str]
    body: bytes
    cpim: cpim.CpimMessage | None
    cpim_from: str | None
    cpim_to: tuple[str, ...]
    message_id: str | None
    notify: frozenset[str]
    datetime: str | None
    subject: str | None
    original_to: str | None
    imdn_route: tuple[str, ...]
    #: Set when the MESSAGE carries an IMDN rather than an instant message.
    notification: Notification | None = None
    #: Further notifications of an aggregated IMDN (RFC 5438 §8.3).
    more_notifications: tuple[Notification, ...] = ()
    #: Set when the MESSAGE carries a composition indication (RFC 3994), bare or in CPIM.
    composing: IsComposing | None = None


def decode_message(request: Request, config: UserAgentConfig) -> Inbound:
    """Decode a MESSAGE body; raises a ``RemoteProtocolError`` carrying the status to answer.

    413 when the body is larger than ``config.max_body_bytes`` (or inflates
    past ``config.max_inflated_bytes``) or an is-composing document over its
    cap, 415 for a type or coding we do not take, 400 for a malformed CPIM
    envelope, IMDN or is-composing document.
    """
    # Runs for every received MESSAGE: the Inbound is built in one call per branch (no
    # keyword dicts), the SIP From/To URIs are formatted once per URI object (the core
    # shares them between messages with the same header text), and an IM whose inner
    # Content-Type is neither IMDN type skips recognise(), which would return None.
    raw = request.body
    if len(raw) > config.max_body_bytes:
        raise RemoteProtocolError(f"body larger than {config.max_body_bytes} bytes", 413)
    headers = request.headers
    encoding = headers.get("Content-Encoding")
    body = raw if encoding is None else inflate(raw, encoding, config.max_inflated_bytes)
    ctype = request.content_type
    if ctype is None:
        if body:
            raise RemoteProtocolError("a body without Content-Type", 415)
        mime, params = "text/plain", {}
    else:
        mime = ctype.mime
        if mime == cpim.CONTENT_TYPE:
            return _decode_cpim(request, body, config)
        params = dict(ctype.params)
    from_ = request.from_
    sip_from = str(from_.uri)  # a Uri keeps its text: the parse cache shares the object
    sip_to = str(request.to.uri)
    subject = headers.get("Subject")
    if mime == "text/plain":
        return Inbound(
            request=request, sip_from=sip_from, sip_from_name=from_.display_name, sip_to=sip_to,
            content_type=mime, content_params=params, body=body, cpim=None, cpim_from=None,
            cpim_to=(), message_id=None, notify=_NOTHING, datetime=None, subject=subject,
            original_to=None, imdn_route=(),
        )
    if mime == IMDN_CONTENT_TYPE:
        note = parse_notification(body)
        return Inbound(
            request=request, sip_from=sip_from, sip_from_name=from_.display_name, sip_to=sip_to,
            content_type=mime, content_params=params, body=body, cpim=None, cpim_from=None,
            cpim_to=(), message_id=None, notify=_NOTHING, datetime=note.datetime, subject=subject,
            original_to=None, imdn_route=(), notification=note,
        )
    if mime == COMPOSING_TYPE:
        indication = parse_iscomposing(body)
        return Inbound(
            request=request, sip_from=sip_from, sip_from_name=from_.display_name, sip_to=sip_to,
            content_type=mime, content_params=params, body=body, cpim=None, cpim_from=None,
            cpim_to=(), message_id=None, notify=_NOTHING, datetime=None, subject=subject,
            original_to=None, imdn_route=(), composing=indication,
        )
    raise RemoteProtocolError(f"unsupported Content-Type {mime}", 415)


_NOTHING: frozenset[str] = frozenset()
_IMDN_TYPES = (IMDN_CONTENT_TYPE, "multipart/mixed")
# Requested notification types -> their names (a handful of sets, each its own frozen object).
_NOTIFY: dict[frozenset[DispositionRequest], frozenset[str]] = {}


def _notify(requested: frozenset[DispositionRequest]) -> frozenset[str]:
    return remember(_NOTIFY, requested, frozenset(str(r) for r in requested), 64)


def _decode_cpim(request: Request, body: bytes, config: UserAgentConfig) -> Inbound:
    envelope = cpim.parse(body)
    from_ = request.from_
    sip_from = str(from_.uri)  # a Uri keeps its text: the parse cache shares the object
    sip_to = str(request.to.uri)
    # One walk over the envelope's headers for what its properties (from_, to, date_time,
    # subject) would each walk for. cpim.parse checked every standard header of the CPIM
    # namespace, so none of these reads can fail here; the IMDN headers are imdn_headers' part.
    cpim_from: str | None = None
    to: list[str] = []
    datetime: str | None = None
    subject: str | None = None
    for h in envelope.headers:
        if h.namespace == cpim.CPIM_NS:
            name = h.name
            if name == "From":
                if cpim_from is None:
                    cpim_from = cpim.parse_address(h.value).uri
            elif name == "To":
                to.append(cpim.parse_address(h.value).uri)
            elif name == "DateTime":
                if datetime is None:
                    datetime = h.value.rstrip(" ")
            elif name == "Subject" and subject is None:
                subject = h.text
    cpim_to = tuple(to)
    imdn = imdn_headers(envelope)
    # The SIP Subject is read only when the envelope has no Subject (RFC 3862 §4.5), which is preferred.
    subject = subject or request.headers.get("Subject")
    original_to = None if imdn.original_to is None else imdn.original_to.uri
    imdn_route = tuple(a.uri for a in imdn.record_routes) if imdn.record_routes else ()
    # The inner Content-Type read once (type and parameters from one parse); cpim.parse
    # already refused a message without a readable one.
    inner_value = envelope.mime_header("Content-Type")
    inner_params: dict[str, str]
    if inner_value is None:
        inner, inner_params = "text/plain", {}
    else:
        try:
            inner, inner_params = cpim.parse_media_type(inner_value)
        except ValueError as exc:
            raise CpimError(str(exc)) from None
    if inner in _IMDN_TYPES:
        received = recognise(envelope, max_inflated_size=config.max_inflated_bytes)
        if received is not None:
            first, *rest = received.notifications
            return Inbound(
                request=request, sip_from=sip_from, sip_from_name=from_.display_name, sip_to=sip_to,
                content_type=IMDN_CONTENT_TYPE, content_params={}, body=envelope.body, cpim=envelope,
                cpim_from=cpim_from, cpim_to=cpim_to, message_id=imdn.message_id, notify=_NOTHING,
                datetime=datetime, subject=subject, original_to=original_to, imdn_route=imdn_route,
                notification=first, more_notifications=tuple(rest),
            )
    if inner == COMPOSING_TYPE:
        # liblinphone wraps indications in CPIM when CPIM is on; any IMDN request it
        # carries is ignored: an indication never owes a notification (RFC 3994 §3.3).
        indication = composing_from_cpim(envelope)
        return Inbound(
            request=request, sip_from=sip_from, sip_from_name=from_.display_name, sip_to=sip_to,
            content_type=inner, content_params=inner_params, body=envelope.body, cpim=envelope,
            cpim_from=cpim_from, cpim_to=cpim_to, message_id=None, notify=_NOTHING,
            datetime=datetime, subject=subject, original_to=None, imdn_route=(), composing=indication,
        )
    requested = imdn.requested
    notify = (_NOTIFY.get(requested) or _notify(requested)) if requested else _NOTHING
    # The instant message, every received IM's branch: its fields passed by position, in the
    # order Inbound declares them (0.34 instead of 0.87 us for the keyword call).
    return Inbound(
        request, sip_from, from_.display_name, sip_to,  # request, sip_from, sip_from_name, sip_to
        inner, inner_params, envelope.body, envelope,  # content_type, content_params, body, cpim
        cpim_from, cpim_to, imdn.message_id, notify,  # cpim_from, cpim_to, message_id, notify
        datetime, subject, original_to, imdn_route,  # datetime, subject, original_to, imdn_route
    )


#: ``IncomingMessage.transport`` of each transport ("udp", ...): one lookup per message
#: instead of the enum's ``value`` descriptor and a ``lower()``.
_TRANSPORT_NAMES: dict[Transport, str] = {kind: kind.value.lower() for kind in Transport}


def incoming_message(
    inbound: Inbound,
    incoming: IncomingRequest,
    report: Callable[[str, str, str, str], Awaitable[bool]],
    reply: Callable[..., Awaitable[SentMessage]] | None = None,
    *,
    asserted: AssertedIdentity | None = None,
) -> IncomingMessage:
    """The application's view of a received instant message (``reply`` sends one back);
    ``asserted`` is the sender's identity as a trusted proxy asserted it."""
    flow = incoming.flow
    message = IncomingMessage(
        sender=inbound.sip_from,
        sender_name=inbound.sip_from_name,
        recipient=inbound.sip_to,
        cpim_from=inbound.cpim_from,
        cpim_to=inbound.cpim_to,
        content_type=inbound.content_type,
        content_params=inbound.content_params,
        body=inbound.body,
        subject=inbound.subject,
        message_id=inbound.message_id,
        datetime=inbound.datetime,
        notify=inbound.notify,
        transport=_TRANSPORT_NAMES[flow.transport],
        source=(flow.remote[0], flow.remote[1]),
        request=inbound.request,
        cpim=inbound.cpim,
        _report=report,
        _reply=reply,
    )
    if asserted is not None:  # (set apart: the usual message has none and pays nothing for it)
        message.asserted_identity = asserted.uri
        message.asserted_identities = asserted.uris
        message.identity_withheld = withholds_identity(inbound.request)
    return message


# -- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One instant message to send (kept to rebuild it for the text/plain fallback)."""

    target: Uri
    to: str
    body: bytes
    content_type: str
    subject: str | None
    message_id: str
    notify: frozenset[str]
    sent_at: float
    transport: str | None


class _Sender(Protocol):
    """What the builders need from the user agent (kept narrow to avoid a cycle)."""

    config: UserAgentConfig

    @property
    def aor(self) -> str: ...


def _our_address(ua: _Sender) -> cpim.CpimAddress:
    return _cpim_address(ua.aor, ua.config.display_name)


# Our own addresses are the same for every message we send; both values are immutable.
@functools.lru_cache(maxsize=16)
def _cpim_address(aor: str, display_name: str | None) -> cpim.CpimAddress:
    return cpim.CpimAddress(uri=aor, display_name=display_name)


@functools.lru_cache(maxsize=16)
def _from_value(aor: str, display_name: str | None) -> NameAddr:
    return NameAddr(Uri.parse(aor), display_name)


def build_im_request(
    ua: _Sender, out: Outgoing, *, use_cpim: bool, previous: Request | None = None
) -> Request:
    """The MESSAGE carrying ``out``: CPIM-wrapped with IMDN headers, or plain.

    ``previous`` is the request this one retries (after a 415): RFC 3261
    §8.1.3.5 keeps its Call-ID, From tag and To, with CSeq plus one.
    """
    if use_cpim:
        envelope = build_im(
            from_=_our_address(ua),
            to=out.to,
            body=out.body,
            now=out.sent_at,
            content_type=out.content_type,
            notify=sorted(out.notify),
            message_id=out.message_id,
            subject=out.subject,
        )
        return _message_request(
            ua, out.to, out.to, content_type=cpim.CONTENT_TYPE, body=envelope.to_bytes(), previous=previous
        )
    extra = [("Subject", out.subject)] if out.subject else []
    return _message_request(
        ua, out.to, out.to, content_type=out.content_type, body=out.body, extra=extra, previous=previous
    )


def build_imdn_request(ua: _Sender, owed: OwedNotification, *, now: float) -> Request:
    """The MESSAGE carrying an IMDN we owe (RFC 5438 §7.2.1.1, §12.1.3.1).

    ``now`` (POSIX seconds, the wall clock) becomes the IMDN's CPIM DateTime (RFC 5438 §6.3).
    """
    note = make_notification(
        message_id=owed.message_id,
        datetime=owed.datetime or "",
        kind=str(owed.kind),
        status=str(owed.status),
        recipient_uri=owed.recipient_uri,
        original_recipient_uri=owed.original_recipient_uri,
        subject=owed.subject,
    )
    envelope = build_imdn_bytes(
        note,
        from_=owed.cpim_from or ua.aor,
        to=owed.cpim_to or owed.sip_to,
        now=now,
        # Stable across retries, so the peer can tell a retry from a new IMDN.
        message_id=owed.notification_id,
        # §7.2.1: every IMDN-Record-Route of the IM becomes an IMDN-Route, same order.
        routes=owed.imdn_route,
    )
    return _message_request(ua, owed.request_uri, owed.sip_to, content_type=cpim.CONTENT_TYPE, body=envelope)


def build_composing_request(
    ua: _Sender, to: str, indication: IsComposing, *, use_cpim: bool, now: float
) -> Request:
    """The MESSAGE carrying a composition indication (RFC 3994 §3.2), bare or in message/cpim.

    The CPIM envelope has From, To and DateTime and no IMDN header: an indication
    requests no notification.
    """
    document = indication.to_xml()
    if not use_cpim:
        return _message_request(ua, to, to, content_type=COMPOSING_TYPE, body=document)
    envelope = cpim.build_message(
        [("From", str(_our_address(ua))), ("To", str(cpim.CpimAddress(uri=to))),
         ("DateTime", cpim.format_datetime(now))],
        content_type=COMPOSING_TYPE,
        body=document,
    )
    return _message_request(ua, to, to, content_type=cpim.CONTENT_TYPE, body=envelope.to_bytes())


def build_options_request(ua: _Sender, to: str) -> Request:
    """An OPTIONS asking ``to`` what it takes (RFC 3261 §11.1)."""
    config = ua.config
    route = [f"<{loose_route(config.outbound_proxy)}>"] if config.outbound_proxy else []
    headers = [("User-Agent", config.user_agent)] if config.user_agent else []
    return build_request(
        "OPTIONS", to, _from_value(ua.aor, config.display_name), NameAddr(Uri.parse(to)),
        route=route, headers=headers,
    )


def accepts_cpim(accept_values: Sequence[str]) -> bool | None:
    """Whether Accept header values list message/cpim (or a range covering it).

    None when there is no Accept value at all: RFC 3261 §11.2 lets an OPTIONS
    answer leave it out, which says nothing about CPIM.
    """
    ranges = [
        item.split(";", 1)[0].strip().lower()
        for value in accept_values
        for item in value.split(",")
        if item.strip()
    ]
    if not ranges:
        return None
    return any(r in ("message/cpim", "message/*", "*/*") for r in ranges)


def tracker_config(config: UserAgentConfig) -> TrackerConfig:
    """The tracker's configuration derived from the user agent's."""
    return TrackerConfig(
        auto_delivered=config.auto_delivery,
        display_policy=config.display_privacy,
        max_attempts=config.imdn_max_attempts,
        retry_base=config.imdn_retry_base,
        retry_cap=config.imdn_retry_cap,
        rate_limit=config.imdn_rate_limit,
        rate_window=config.imdn_rate_window,
        byte_budget=config.imdn_byte_budget,
        park_base=config.imdn_park_base,
        park_cap=config.imdn_park_cap,
        tracking_ttl=config.state_expiry,
        received_ttl=config.state_expiry,
        plain_dedup_capacity=config.dedup_capacity,
        dedup_max=config.dedup_max,
        working_set_max=config.working_set_max,
        # Every message we send goes through the outbound proxy: it may report for our recipients
        # (a store-and-forward server's processing and failure notifications).
        trusted_intermediaries=(config.outbound_proxy,) if config.outbound_proxy else (),
        plain_dedup_ttl=config.dedup_ttl,
        peer_flag_ttl=config.peer_capability_ttl,
    )


def _message_request(
    ua: _Sender,
    request_uri: str,
    to: str,
    *,
    content_type: str,
    body: bytes,
    extra: Sequence[tuple[str, str]] = (),
    previous: Request | None = None,
) -> Request:
    config = ua.config
    if previous is None and not extra:
        # A new MESSAGE with only the headers every one of ours carries (every IMDN, most
        # IMs): the constant rows come from the template, checked once.
        template = _message_template(
            ua.aor, config.display_name, config.outbound_proxy, config.user_agent, content_type
        )
        if template is not None:
            to_uri = Uri.parse(to)  # (parsed first, as below: the same error for two bad URIs)
            request = template.build(Uri.parse(request_uri), to_uri, body)
            if request is not None:
                return request
    route = [f"<{loose_route(config.outbound_proxy)}>"] if config.outbound_proxy else []
    headers = list(extra)
    if config.user_agent:
        headers.append(("User-Agent", config.user_agent))
    from_ = _from_value(ua.aor, config.display_name)
    call_id: str | None = None
    cseq = 1
    from_tag: str | None = None
    if previous is not None:
        call_id = previous.call_id
        cseq = previous.cseq.number + 1
        from_tag = previous.from_.tag
    return build_request(
        "MESSAGE",
        request_uri,
        from_,
        NameAddr(Uri.parse(to)),
        call_id=call_id,
        cseq=cseq,
        from_tag=from_tag,
        route=route,
        headers=headers,
        body=body,
        content_type=content_type,
    )


@functools.lru_cache(maxsize=16)
def _message_template(
    aor: str, display_name: str | None, outbound_proxy: str | None, user_agent: str | None, content_type: str
) -> RequestTemplate | None:
    """The constant rows of our new MESSAGEs (see :func:`_message_request`): one template per
    configuration and body type, shared by every request (a handful of each per agent)."""
    route = [f"<{loose_route(outbound_proxy)}>"] if outbound_proxy else []
    headers = [("User-Agent", user_agent)] if user_agent else []
    return RequestTemplate.of(
        "MESSAGE", _from_value(aor, display_name), route=route, headers=headers, content_type=content_type
    )


def loose_route(proxy: str) -> str:
    """The outbound proxy as a loose-routing Route URI (RFC 3261 §8.1.1.1 pre-existing route set)."""
    uri = Uri.parse(proxy)
    return str(uri) if "lr" in uri.params else f"{uri};lr"


# -- the stack --------------------------------------------------------------------------------


def make_stack(config: UserAgentConfig) -> SipStack:
    """A :class:`~sipimdn.stack.SipStack` listening where ``config`` says, with its timers."""
    specs = [
        ListenSpec(
            Transport.from_token(ep.transport),
            ep.host,
            ep.port,
            config.tls_server_context if ep.transport == "tls" else None,
        )
        for ep in config.listen
    ]
    if config.udp_implies_tcp:
        # RFC 3261 §18.2.1: listen with TCP wherever we listen with UDP, so a peer
        # whose request grew past 1300 bytes (§18.1.1) can still reach us. Port 0
        # makes the stack take the UDP socket's port when it is free.
        tcp_hosts = {ep.host for ep in config.listen if ep.transport == "tcp"}
        for ep in config.listen:
            if ep.transport == "udp" and ep.host not in tcp_hosts:
                specs.append(ListenSpec(Transport.TCP, ep.host, 0))
                tcp_hosts.add(ep.host)
    transport_config = TransportConfig(
        client_ssl_context=config.tls_client_context,
        max_connections=config.max_connections,
        max_connections_per_source=config.max_connections_per_source,
        outbound_connection_reserve=config.outbound_connection_reserve,
        stalled_connection_after=config.stalled_connection_after,
    )
    stack = SipStack(
        specs,
        timers=TimerConfig(t1=config.t1, t2=config.t2, t4=config.t4),
        transport_config=transport_config,
    )
    if config.dns_servers or config.rfc3263:
        # RFC 3263 server location: NAPTR, SRV (weighted), A/AAAA, with failover (§4.3).
        # Opt-in: without it a host name goes through getaddrinfo, as before.
        stack.locator = DnsLocator(config.dns_servers)
    return stack


@functools.lru_cache(maxsize=8)
def _request_uri_policy(aor: Uri, endpoints: tuple[tuple[str, int], ...]) -> RequestUriPolicy:
    return RequestUriPolicy.of(aor, endpoints)


def request_uri_verdict(
    config: UserAgentConfig, aor: Uri, stack: SipStack, request: Request
) -> RequestUriVerdict:
    """Whether ``request`` is for the user agent of ``aor`` listening where ``stack`` does
    (RFC 3261 §8.2.2.1, see :mod:`.request_uri`); always accepted when ``check_request_uri`` is off."""
    if not config.check_request_uri:
        return RequestUriVerdict.ACCEPTED
    listening = stack.transports.endpoint_tuple
    last = _LAST_POLICY[0]
    # Asked for every request: the same agent and listeners skip hashing the AOR (a Uri).
    if last is not None and last[0] is aor and last[1] is listening:
        policy = last[2]
    else:
        policy = _request_uri_policy(aor, tuple(address for _, address in listening))
        _LAST_POLICY[0] = (aor, listening, policy)
    # The core hands out one Uri object per distinct Request-URI text, so the requests of a
    # run of messages to us carry the same object: its verdict (a pure function of the
    # policy, the method and the URI, which is immutable) is kept for the next one.
    uri = request.uri
    method = request.method
    verdict = _LAST_VERDICT[0]
    if verdict is not None and verdict[0] is policy and verdict[1] is uri and verdict[2] == method:
        return verdict[3]
    answer = policy.classify(method, uri)
    _LAST_VERDICT[0] = (policy, uri, method, answer)
    return answer


#: The policy last used, with the AOR object and the listener tuple it was made for.
_LAST_POLICY: list[tuple[Uri, tuple[object, ...], RequestUriPolicy] | None] = [None]
#: The last verdict, with the policy, Request-URI object and method it was given for.
_LAST_VERDICT: list[tuple[RequestUriPolicy, Uri, str, RequestUriVerdict] | None] = [None]


def endpoints_of(stack: SipStack) -> tuple[ListenEndpoint, ...]:
    """The stack's bound endpoints as :class:`~sipimdn.config.ListenEndpoint` values."""
    return tuple(ListenEndpoint(kind.value.lower(), host, port) for kind, (host, port) in stack.endpoints)


def target_for(config: UserAgentConfig, to: str, transport: str | None) -> Target | None:
    """Where the first hop goes when the caller forces a transport; None lets the stack decide.

    Without a forced transport the stack follows the first Route (the
    outbound proxy) or the Request-URI (RFC 3263 subset).
    """
    if transport is None:
        return None
    uri = Uri.parse(config.outbound_proxy) if config.outbound_proxy else Uri.parse(to)
    kind = Transport.from_token(transport)
    base = target_for_uri(uri.without_params("transport") if uri.scheme == "sip" else uri)
    port = uri.port or kind.default_port
    server_name = base.server_name if kind is Transport.TLS else None
    return Target(kind, base.host, port, server_name)


def with_authorization(request: Request, headers: Sequence[tuple[str, str]], *, next_cseq: bool) -> Request:
    """``request`` carrying ``headers`` instead of its Authorization/Proxy-Authorization.

    For a retry after 401/407 (``next_cseq``): same Call-ID, From tag, To,
    Request-URI and body, CSeq plus one (RFC 3261 §8.1.3.5, §22.2); the stack
    writes a new Via branch, making it a new transaction.
    """
    if not headers and not next_cseq:
        return request
    rows = request.headers.copy()
    rows.remove("Authorization")
    rows.remove("Proxy-Authorization")
    for name, value in headers:
        rows.add(name, value)
    if next_cseq:
        rows.set("CSeq", f"{request.cseq.number + 1} {request.method}")
    return Request(request.method, request.uri, rows, request.body)
