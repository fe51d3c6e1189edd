"""A deliberately tiny SIP peer over UDP, used only to prove the SIPp scenarios themselves.

It is not sipimdn and shares no code with it: the point is to know that each scenario
loads, passes against a peer that behaves, and fails against one that does not, before
(and independently of) the stack under test. It answers every MESSAGE with 200 (also
retransmissions, as a stateless responder does), and can answer a CPIM MESSAGE that asks
for positive-delivery with a delivered IMDN whose shape a test can spoil on purpose.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field
from typing import cast

CRLF = "\r\n"


@dataclass(frozen=True)
class ImdnShape:
    """How the delivered IMDN is built; each field can be spoiled by a test."""

    send: bool = True
    message_id: str | None = None
    """Override for <message-id> (None: echo the IM's imdn.Message-ID)."""
    datetime: str | None = None
    """Override for <datetime> (None: echo the IM's DateTime)."""
    status: str = "<delivered/>"
    notification: str = "delivery-notification"
    sip_content_type: str = "message/cpim"
    inner_content_type: str = "message/imdn+xml"
    content_disposition: str | None = "notification"
    ns_line: str | None = "NS: imdn <urn:ietf:params:imdn>"
    asks_for_imdn: bool = False
    """Add imdn.Disposition-Notification to the IMDN (RFC 5438 forbids it)."""
    contact: bool = False
    """Add a Contact header to the MESSAGE (RFC 3428 forbids it)."""
    xml_namespace: str = "urn:ietf:params:xml:ns:imdn"
    cpim_to_user: str = "alice"


@dataclass(frozen=True)
class ParsedRequest:
    """The few parts of a request this peer looks at."""

    method: str
    uri: str
    headers: dict[str, str]
    body: str


def parse_request(data: bytes) -> ParsedRequest | None:
    """Split a request into start line, headers (last value wins, names lower-case) and body."""
    text = data.decode("utf-8", errors="replace")
    head, _, body = text.partition(CRLF + CRLF)
    lines = head.split(CRLF)
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return ParsedRequest(method=parts[0], uri=parts[1], headers=headers, body=body)


def build_ok(request: ParsedRequest, to_tag: str) -> bytes:
    """A 200 to ``request`` with a To tag (RFC 3261 8.2.6)."""
    to = request.headers.get("to", "")
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    lines = [
        "SIP/2.0 200 OK",
        f"Via: {request.headers.get('via', '')}",
        f"From: {request.headers.get('from', '')}",
        f"To: {to}",
        f"Call-ID: {request.headers.get('call-id', '')}",
        f"CSeq: {request.headers.get('cseq', '')}",
        "Content-Length: 0",
    ]
    return (CRLF.join(lines) + CRLF + CRLF).encode()


def _cpim_header(body: str, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}:[ \t]*(.+?)\r?$", body, re.MULTILINE)
    return match.group(1).strip() if match else None


def build_imdn(
    request: ParsedRequest, shape: ImdnShape, local: tuple[str, int]
) -> tuple[bytes, tuple[str, int]]:
    """The delivered IMDN for ``request`` and where to send it (the IM's SIP From)."""
    sender = re.search(r"<sip:([^@>]+)@([^:>;]+):(\d+)", request.headers.get("from", ""))
    if sender is None:
        raise ValueError(f"cannot route an IMDN to {request.headers.get('from')!r}")
    user, host, port = sender.group(1), sender.group(2), int(sender.group(3))
    me = f"sip:bob@{local[0]}:{local[1]}"
    them = f"sip:{user}@{host}:{port}"
    message_id = shape.message_id or _cpim_header(request.body, "imdn.Message-ID") or ""
    datetime = shape.datetime or _cpim_header(request.body, "DateTime") or ""
    xml = CRLF.join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<imdn xmlns="{shape.xml_namespace}">',
        f"  <message-id>{message_id}</message-id>",
        f"  <datetime>{datetime}</datetime>",
        f"  <recipient-uri>{me}</recipient-uri>",
        f"  <original-recipient-uri>{me}</original-recipient-uri>",
        f"  <{shape.notification}><status>{shape.status}</status></{shape.notification}>",
        "</imdn>",
    ])  # fmt: skip
    cpim = [f"From: <{me}>", f"To: <sip:{shape.cpim_to_user}@{host}:{port}>"]
    if shape.ns_line is not None:
        cpim.append(shape.ns_line)
    cpim += [f"imdn.Message-ID: {secrets.token_hex(8)}", "DateTime: 2026-06-15T10:00:01Z"]
    if shape.asks_for_imdn:
        cpim.append("imdn.Disposition-Notification: positive-delivery")
    mime = [f"Content-Type: {shape.inner_content_type}"]
    if shape.content_disposition is not None:
        mime.append(f"Content-Disposition: {shape.content_disposition}")
    mime.append(f"Content-Length: {len(xml.encode())}")
    body = CRLF.join(cpim) + CRLF + CRLF + CRLF.join(mime) + CRLF + CRLF + xml
    headers = [
        f"MESSAGE {them} SIP/2.0",
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)}",
        "Max-Forwards: 70",
        f"From: <{me}>;tag={secrets.token_hex(4)}",
        f"To: <{them}>",
        f"Call-ID: {secrets.token_hex(8)}@{local[0]}",
        "CSeq: 1 MESSAGE",
    ]
    if shape.contact:
        headers.append(f"Contact: <{me}>")
    headers += [f"Content-Type: {shape.sip_content_type}", f"Content-Length: {len(body.encode())}"]
    return (CRLF.join(headers) + CRLF + CRLF + body).encode(), (host, port)


@dataclass
class TinyPeer(asyncio.DatagramProtocol):
    """The responder: 200 to every MESSAGE; a delivered IMDN when asked and ``imdn.send``."""

    imdn: ImdnShape = field(default_factory=ImdnShape)
    received: list[ParsedRequest] = field(default_factory=list)
    """Every request received, retransmissions included."""
    responses: list[str] = field(default_factory=list)
    """Status lines of the responses to what this peer sent (IMDNs, requests)."""
    arrivals: list[str] = field(default_factory=list)
    """Everything that arrived, in order: ``"MESSAGE"`` for a request, the status code for a response."""
    transport: asyncio.DatagramTransport | None = None
    _answered_ids: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _acked: set[str] = field(default_factory=set)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this peer listens on."""
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        assert self.transport is not None
        if data.startswith(b"SIP/2.0 "):
            status_line = data.split(b"\r\n", 1)[0].decode()
            answered = re.search(rb"\r\nCall-ID:[ \t]*([^\r\n]+)", data, re.IGNORECASE)
            if answered is not None:
                self._acked.add(answered.group(1).decode())
            self.responses.append(status_line)
            self.arrivals.append(status_line.split(" ")[1])
            return
        request = parse_request(data)
        if request is None or request.method != "MESSAGE":
            return
        self.received.append(request)
        self.arrivals.append(request.method)
        call_id = request.headers.get("call-id", "")
        self.transport.sendto(build_ok(request, to_tag=f"tp{abs(hash(call_id)) % 10**8}"), addr)
        wants_imdn = request.headers.get("content-type", "").startswith(
            "message/cpim"
        ) and "positive-delivery" in (_cpim_header(request.body, "imdn.Disposition-Notification") or "")
        if wants_imdn and self.imdn.send and call_id not in self._answered_ids:
            self._answered_ids.add(call_id)
            task = asyncio.get_running_loop().create_task(self._send_imdn(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def send(self, data: bytes, target: tuple[str, int]) -> None:
        """Send one datagram (a hand-made request) from this peer's socket."""
        assert self.transport is not None
        self.transport.sendto(data, target)

    async def wait_for_requests(self, count: int, timeout: float) -> list[ParsedRequest]:
        """Wait (bounded) until ``count`` requests have arrived; return what arrived."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return list(self.received)

    async def _send_imdn(self, request: ParsedRequest) -> None:
        # RFC 3261 Timer E over UDP (500 ms doubling), bounded to four sends.
        assert self.transport is not None
        data, target = build_imdn(request, self.imdn, self.address)
        call_id = re.search(rb"\r\nCall-ID: ([^\r\n]+)", data)
        assert call_id is not None
        delay = 0.5
        for _ in range(4):
            self.transport.sendto(data, target)
            await asyncio.sleep(delay)
            if call_id.group(1).decode() in self._acked:
                return
            delay *= 2


async def start_tiny_peer(imdn: ImdnShape | None = None) -> TinyPeer:
    """Start a :class:`TinyPeer` on 127.0.0.1, port chosen by the kernel."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: TinyPeer(imdn=imdn or ImdnShape()), local_addr=("127.0.0.1", 0)
    )
    return protocol


async def stop_tiny_peer(peer: TinyPeer) -> None:
    """Close the peer's socket and cancel its pending IMDN sends."""
    for task in list(peer._tasks):
        task.cancel()
    if peer.transport is not None:
        peer.transport.close()


def build_cpim_message(
    target: tuple[str, int], local: tuple[str, int], *, spoil: str | None = None
) -> tuple[bytes, str]:
    """A CPIM MESSAGE from alice at ``local`` to bob at ``target`` asking for positive-delivery.

    ``spoil`` names one defect to build in (see the tests). Returns the request and its
    imdn.Message-ID.
    """
    message_id = secrets.token_hex(8)
    cpim_lines = [
        f"From: <sip:alice@{local[0]}:{local[1]}>",
        f"To: <sip:bob@{target[0]}:{target[1]}>",
        "DateTime: 2026-06-15T10:00:00Z",
        "NS: imdn <urn:ietf:params:imdn>",
        f"imdn.Message-ID: {message_id}",
        "imdn.Disposition-Notification: positive-delivery",
    ]
    inner_type = "Content-Type: text/plain;charset=UTF-8"
    dropped = {"no_datetime": "DateTime", "no_ns": "NS:", "no_message_id": "imdn.Message-ID"}.get(spoil or "")
    if dropped is not None:
        cpim_lines = [line for line in cpim_lines if not line.startswith(dropped)]
    if spoil == "inner_html":
        inner_type = "Content-Type: text/html"
    body = CRLF.join(cpim_lines) + CRLF + CRLF + inner_type + CRLF + CRLF + "hello"
    sip_type = "text/plain" if spoil == "sip_text_plain" else "message/cpim"
    headers = [
        f"MESSAGE sip:bob@{target[0]}:{target[1]} SIP/2.0",
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(8)}",
        "Max-Forwards: 70",
        f"From: <sip:alice@{local[0]}:{local[1]}>;tag={secrets.token_hex(4)}",
        f"To: <sip:bob@{target[0]}:{target[1]}>",
        f"Call-ID: {secrets.token_hex(8)}@{local[0]}",
        "CSeq: 1 MESSAGE",
        f"Content-Type: {sip_type}",
    ]
    if spoil == "contact":
        headers.append(f"Contact: <sip:alice@{local[0]}:{local[1]}>")
    if spoil == "compact_contact":
        headers.append(f"m: <sip:alice@{local[0]}:{local[1]}>")
    headers.append(f"Content-Length: {len(body.encode())}")
    return (CRLF.join(headers) + CRLF + CRLF + body).encode(), message_id
