"""What the user agent puts on and takes off the wire, checked against the real core and codecs."""

from __future__ import annotations

import gzip
import time
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipimdn import cpim
from sipimdn.config import UserAgentConfig
from sipimdn.errors import CpimError, ImdnError, RemoteProtocolError
from sipimdn.imdn import build_im, build_imdn, build_notification, imdn_headers, recognise
from sipimdn.message import Request, safe_reason_phrase
from sipimdn.parser import parse_message
from sipimdn.store import OwedRecord
from sipimdn.ua import _wire

CONFIG = UserAgentConfig(aor="sip:bob@127.0.0.1:5070", display_name="Bob", max_body_bytes=4096)


class _Me:
    def __init__(self, config: UserAgentConfig = CONFIG) -> None:
        self.config = config
        self.aor = config.aor


def _message(content_type: str | None, body: bytes, extra: str = "") -> Request:
    ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
    raw = (
        "MESSAGE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@127.0.0.1:5060>;tag=a1\r\n'
        "To: <sip:bob@127.0.0.1:5070>\r\n"
        "Call-ID: c1@127.0.0.1\r\n"
        "CSeq: 1 MESSAGE\r\n"
        f"{ctype}{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    request = parse_message(raw)
    assert isinstance(request, Request)
    return request


def _im(notify: tuple[str, ...] = ("positive-delivery", "display"), body: bytes = b"hi") -> bytes:
    return build_im(
        from_="sip:alice@127.0.0.1:5060",
        to="sip:bob@127.0.0.1:5070",
        body=body,
        now=time.time(),
        notify=notify,
        message_id="m-123",
        subject="greeting",
    ).to_bytes()


def test_decode_plain_text() -> None:
    inbound = _wire.decode_message(_message("text/plain; charset=utf-8", "héllo".encode()), CONFIG)
    assert inbound.content_type == "text/plain"
    assert inbound.body == "héllo".encode()
    assert inbound.message_id is None
    assert inbound.notify == frozenset()
    assert inbound.sip_from == "sip:alice@127.0.0.1:5060"
    assert inbound.sip_from_name == "Alice"
    assert inbound.notification is None


def test_decode_cpim_im_with_notification_requests() -> None:
    inbound = _wire.decode_message(_message("message/cpim", _im()), CONFIG)
    assert inbound.content_type == "text/plain"
    assert inbound.body == b"hi"
    assert inbound.message_id == "m-123"
    assert inbound.notify == frozenset({"positive-delivery", "display"})
    assert inbound.cpim_from == "sip:alice@127.0.0.1:5060"
    assert inbound.cpim_to == ("sip:bob@127.0.0.1:5070",)
    assert inbound.subject == "greeting"
    assert inbound.datetime is not None
    assert inbound.notification is None


def test_decode_cpim_im_fills_every_field_in_its_place() -> None:
    # The IM branch passes its fields by position: each must land in the field of its name
    # (every value here differs from the others of its type).
    body = (
        b"From: <sip:alice-cpim@example.com>\r\nTo: <sip:bob-cpim@example.com>\r\n"
        b"DateTime: 2026-06-15T10:00:00Z\r\nSubject: greeting\r\nNS: imdn <urn:ietf:params:imdn>\r\n"
        b"imdn.Message-ID: m-123\r\nimdn.Disposition-Notification: positive-delivery\r\n"
        b"imdn.Original-To: <sip:orig@example.com>\r\nimdn.IMDN-Record-Route: <sip:proxy@example.com>\r\n"
        b"\r\nContent-Type: text/plain;charset=UTF-8\r\n\r\nhi"
    )
    request = _message("message/cpim", body)
    inbound = _wire.decode_message(request, CONFIG)
    assert inbound == _wire.Inbound(
        request=request, sip_from="sip:alice@127.0.0.1:5060", sip_from_name="Alice",
        sip_to="sip:bob@127.0.0.1:5070", content_type="text/plain", content_params={"charset": "UTF-8"},
        body=b"hi", cpim=cpim.parse(body), cpim_from="sip:alice-cpim@example.com",
        cpim_to=("sip:bob-cpim@example.com",), message_id="m-123", notify=frozenset({"positive-delivery"}),
        datetime="2026-06-15T10:00:00Z", subject="greeting", original_to="sip:orig@example.com",
        imdn_route=("sip:proxy@example.com",),
    )


@pytest.mark.parametrize(("coding", "pack"), [("deflate", zlib.compress), ("gzip", gzip.compress)])
def test_decode_content_encoded_body(coding: str, pack: object) -> None:
    assert callable(pack)
    body = pack(_im())
    inbound = _wire.decode_message(_message("message/cpim", body, f"Content-Encoding: {coding}\r\n"), CONFIG)
    assert inbound.message_id == "m-123"


def test_decode_cpim_imdn_and_bare_imdn() -> None:
    im = cpim.parse(_im())
    imdn = build_imdn(im, kind="delivery", status="delivered", now=time.time(), message_id="n-1")
    inbound = _wire.decode_message(_message("message/cpim", imdn.to_bytes()), CONFIG)
    assert inbound.notification is not None
    assert inbound.notification.message_id == "m-123"
    assert str(inbound.notification.status) == "delivered"
    assert inbound.message_id == "n-1"
    assert inbound.notify == frozenset()  # never a request in an IMDN (RFC 5438 §7.2.1)
    xml = build_notification(
        message_id="m-9", datetime="2024-01-01T00:00:00Z", kind="display", status="displayed"
    )
    bare = _wire.decode_message(_message("message/imdn+xml", xml), CONFIG)
    assert bare.notification is not None
    assert bare.notification.message_id == "m-9"
    assert bare.cpim_from is None


@pytest.mark.parametrize(
    ("content_type", "body", "extra", "status", "error"),
    [
        ("application/json", b"{}", "", 415, RemoteProtocolError),
        (None, b"naked", "", 415, RemoteProtocolError),
        ("text/plain", b"x" * 5000, "", 413, RemoteProtocolError),
        ("text/plain", b"abc", "Content-Encoding: br\r\n", 415, RemoteProtocolError),
        ("message/cpim", b"this is not cpim", "", 400, CpimError),
        ("message/imdn+xml", b"<imdn/>", "", 400, ImdnError),
    ],
)
def test_decode_refusals_carry_the_status(
    content_type: str | None, body: bytes, extra: str, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        _wire.decode_message(_message(content_type, body, extra), CONFIG)
    assert getattr(info.value, "status_code", None) == status


def test_decode_empty_message_is_empty_text() -> None:
    inbound = _wire.decode_message(_message(None, b""), CONFIG)
    assert inbound.content_type == "text/plain"
    assert inbound.body == b""


def _outgoing(notify: frozenset[str] = frozenset({"positive-delivery"})) -> _wire.Outgoing:
    from sipimdn.uri import Uri

    return _wire.Outgoing(
        target=Uri.parse("sip:alice@127.0.0.1:5060"),
        to="sip:alice@127.0.0.1:5060",
        body="héllo".encode(),
        content_type="text/plain;charset=utf-8",
        subject="s",
        message_id="abc123",
        notify=notify,
        sent_at=time.time(),
        transport=None,
    )


def test_build_im_request_cpim_and_its_text_plain_retry() -> None:
    request = _wire.build_im_request(_Me(), _outgoing(), use_cpim=True)
    wire = parse_message(request.to_bytes())
    assert isinstance(wire, Request)
    assert wire.method == "MESSAGE"
    assert "Contact" not in wire.headers  # RFC 3428 §4
    assert wire.content_type is not None and wire.content_type.mime == "message/cpim"
    assert wire.from_.tag
    assert wire.to.tag is None
    envelope = cpim.parse(wire.body)
    headers = imdn_headers(envelope)
    assert headers.message_id == "abc123"
    assert {str(r) for r in headers.requested} == {"positive-delivery"}
    assert envelope.body == "héllo".encode()
    retry = _wire.build_im_request(_Me(), _outgoing(), use_cpim=False, previous=request)
    assert retry.content_type is not None and retry.content_type.mime == "text/plain"
    assert retry.call_id == request.call_id
    assert retry.from_.tag == request.from_.tag
    assert retry.cseq.number == request.cseq.number + 1
    assert retry.headers.get("Subject") == "s"


def test_outbound_proxy_becomes_a_loose_route() -> None:
    config = UserAgentConfig(aor="sip:bob@127.0.0.1", outbound_proxy="sip:127.0.0.1:5065")
    request = _wire.build_im_request(_Me(config), _outgoing(), use_cpim=True)
    assert [str(r.uri) for r in request.route] == ["sip:127.0.0.1:5065;lr"]
    assert str(request.uri) == "sip:alice@127.0.0.1:5060"


def test_build_imdn_request_from_an_owed_record() -> None:
    owed = OwedRecord(
        notification_id="n-42",
        message_id="m-123",
        sender_key="sip:alice@127.0.0.1",
        kind="display",
        status="displayed",
        request_uri="sip:relay@127.0.0.1:5090",
        sip_to="sip:alice@127.0.0.1:5060",
        cpim_to="sip:alice@127.0.0.1:5060",
        cpim_from="sip:bob@127.0.0.1:5070",
        recipient_uri="sip:bob@127.0.0.1:5070",
        original_recipient_uri=None,
        datetime="2024-01-01T00:00:00Z",
        subject=None,
        imdn_route=("sip:relay@127.0.0.1:5090",),
        peer_key="sip:alice@127.0.0.1",
        attempts=1,
        next_attempt_at=0.0,
        in_flight=True,
        created_at=0.0,
        expires_at=100.0,
    )
    request = _wire.build_imdn_request(_Me(), owed, now=1_700_000_000.0)
    assert str(request.uri) == "sip:relay@127.0.0.1:5090"
    assert str(request.to.uri) == "sip:alice@127.0.0.1:5060"
    envelope = cpim.parse(request.body)
    received = recognise(envelope, require_disposition=True)
    assert received is not None
    assert received.message_id == "n-42"
    assert envelope.date_time is not None
    assert envelope.date_time.raw.startswith("2023-11-14T22:13:20")  # the IMDN's own, from ``now``
    (note,) = received.notifications
    assert (note.message_id, str(note.kind), str(note.status)) == ("m-123", "display", "displayed")
    assert note.datetime == "2024-01-01T00:00:00Z"
    assert note.recipient_uri == "sip:bob@127.0.0.1:5070"
    headers = imdn_headers(envelope)
    assert [r.uri for r in headers.routes] == ["sip:relay@127.0.0.1:5090"]
    assert headers.disposition_notification is None  # never request an IMDN for an IMDN


def test_capability_headers_and_reason_phrase() -> None:
    headers = dict(_wire.capability_headers("MESSAGE, OPTIONS"))
    assert headers["Accept"] == "message/cpim, text/plain, message/imdn+xml, application/im-iscomposing+xml"
    assert "deflate" in headers["Accept-Encoding"]
    assert safe_reason_phrase("two\r\nlines  here") == "two lines here"
    assert safe_reason_phrase("") == "Error"


# -- the CPIM decode against the envelope's general reading (differential) ---------------------

_ENVELOPE_LINES = st.sampled_from(
    [
        "From: <sip:alice@example.com>",
        'From: "Carol C" <sip:carol@example.com>',
        "To: <sip:bob@example.com>",
        "To: Dave <im:dave@example.com>",
        "DateTime: 2026-06-15T10:00:00Z  ",
        "DateTime: 2026-06-15 10:00:00",
        "Subject: hello",
        "Subject:;lang=fr bonjour\\n",
        "Subject: ",
        "NS: imdn <urn:ietf:params:imdn>",
        "NS: z <urn:ietf:params:cpim-headers:>",
        "NS: <urn:example:other>",
        "NS: <urn:ietf:params:cpim-headers:>",
        "z.From: <sip:zed@example.com>",
        "z.Subject: via a prefix",
        "imdn.Message-ID: m-1",
        "imdn.Message-ID: m-2",
        "imdn.Disposition-Notification: positive-delivery, display",
        "imdn.Disposition-Notification: negative-delivery,x-ext;v=1",
        "imdn.Disposition-Notification: bad value!",
        "imdn.Original-To: <sip:orig@example.com>",
        "imdn.IMDN-Record-Route: <sip:proxy@example.com>",
        "X-Other: anything",
    ]
)


def _general_reading(request: Request, body: bytes) -> object:
    """What the decode gives, read through the envelope's properties and imdn_headers."""
    try:
        envelope = cpim.parse(body)
        sender = envelope.from_
        imdn = imdn_headers(envelope)
        date_time = envelope.date_time
        return (
            None if sender is None else sender.uri,
            tuple(a.uri for a in envelope.to),
            None if date_time is None else date_time.raw.rstrip(" "),
            envelope.subject or request.headers.get("Subject"),
            imdn.message_id,
            frozenset(str(r) for r in imdn.requested),
            None if imdn.original_to is None else imdn.original_to.uri,
            tuple(a.uri for a in imdn.record_routes),
        )
    except (CpimError, ImdnError) as exc:
        return (type(exc), exc.reason, exc.status_code)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_ENVELOPE_LINES, max_size=9), sip_subject=st.booleans())
@example(lines=["Subject: ", "From: <sip:a@b>"], sip_subject=True)
def test_cpim_decode_agrees_with_the_envelope_properties(lines: list[str], sip_subject: bool) -> None:
    body = ("".join(f"{line}\r\n" for line in lines) + "\r\nContent-Type: text/plain\r\n\r\nhi").encode()
    request = _message("message/cpim", body, "Subject: from SIP\r\n" if sip_subject else "")
    expected = _general_reading(request, body)
    try:
        inbound = _wire.decode_message(request, CONFIG)
    except (CpimError, ImdnError) as exc:
        assert (type(exc), exc.reason, exc.status_code) == expected
        return
    assert (
        inbound.cpim_from,
        inbound.cpim_to,
        inbound.datetime,
        inbound.subject,
        inbound.message_id,
        inbound.notify,
        inbound.original_to,
        inbound.imdn_route,
    ) == expected
