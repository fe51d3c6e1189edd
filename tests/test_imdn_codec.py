"""Whole IMs and IMDNs (RFC 5438 §7, §9): build_im, build_imdn in one call,
build_imdn_message from tracker fields, imdn_destination, recognise and is_imdn."""

from __future__ import annotations

import base64
import zlib

import pytest

from sipimdn import cpim, imdn
from sipimdn.errors import ImdnError, LocalProtocolError

IMDN_NS = imdn.IMDN_NS
NOW = 1_700_000_000.0


def received_im(*extra: str, to: tuple[str, ...] = ("Bob <im:bob@example.com>",)) -> cpim.CpimMessage:
    lines = [
        "From: Alice <im:alice@example.com>",
        *[f"To: {t}" for t in to],
        "NS: imdn <urn:ietf:params:imdn>",
        "imdn.Message-ID: 34jk324j",
        "DateTime: 2006-04-04T12:16:49-05:00",
        "Subject: lunch?",
        "imdn.Disposition-Notification: positive-delivery, display",
        *extra,
    ]
    data = "".join(line + "\r\n" for line in lines) + "\r\nContent-Type: text/plain\r\n\r\nHello World"
    return cpim.parse(data.encode())


# -- build_im ---------------------------------------------------------------------------------


def test_build_im_headers_in_rfc_order() -> None:
    """RFC 5438 §7.1.1: From, To, NS, Message-ID, DateTime, Subject, request."""
    im = imdn.build_im(
        from_=cpim.CpimAddress("im:alice@example.com", "Alice"),
        to=["im:bob@example.com", cpim.CpimAddress("im:carol@example.com", "Carol C")],
        cc=["im:dave@example.com"],
        body="Grüße".encode(),
        now=NOW,
        notify=[imdn.DispositionRequest.POSITIVE_DELIVERY, "negative-delivery", "display"],
        message_id="fixed-id",
        subject="a\tb",
        subject_lang="de",
        content_type="text/plain; charset=utf-8",
    )
    assert [h.raw for h in im.headers] == [
        "From: Alice <im:alice@example.com>",
        "To: <im:bob@example.com>",
        "To: Carol C <im:carol@example.com>",
        "cc: <im:dave@example.com>",
        "NS: imdn <urn:ietf:params:imdn>",
        "imdn.Message-ID: fixed-id",
        "DateTime: 2023-11-14T22:13:20.000Z",
        "Subject:;lang=de a\\tb",
        "imdn.Disposition-Notification: positive-delivery, negative-delivery, display",
    ]
    assert im.subjects == [cpim.Subject("a\tb", "de")]
    assert im.body == "Grüße".encode()
    assert cpim.parse(im.to_bytes()) == im


def test_build_im_defaults() -> None:
    im = imdn.build_im(from_="sip:a@x", to="sip:b@x", body=b"", now=0)
    headers = imdn.imdn_headers(im)
    assert headers.message_id is not None and len(headers.message_id) >= 22
    assert headers.disposition_notification is None  # nothing requested: no header at all
    assert im.content_type == "text/plain"
    assert im.date_time is not None and im.date_time.raw == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"to": []}, "at least one To"),
        ({"message_id": "a@b"}, "CPIM Token"),
        ({"from_": "not a uri"}, "cannot build"),
        ({"notify": ["bad token"]}, "Disposition-Notification"),
        ({"subject_lang": "123", "subject": "x"}, "language tag"),
        ({"subject_lang": "a b", "subject": "x"}, "parameter"),
        ({"content_type": "text/plain\r\nX: y"}, "line break"),
        ({"body": "text"}, "bytes"),
        ({"prefix": "im.dn"}, "header name"),
        ({"now": float("nan")}, "DateTime"),
        ({"now": 1e20}, "DateTime"),
    ],
)
def test_build_im_refusals(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"from_": "sip:a@x", "to": "sip:b@x", "body": b"x", "now": 0} | kwargs
    with pytest.raises(LocalProtocolError, match=reason):
        imdn.build_im(**args)  # type: ignore[arg-type]


# -- build_imdn ---------------------------------------------------------------------------------


def test_build_imdn_wrapper_per_7_2_1_1() -> None:
    """From/To swapped, fresh Message-ID, DateTime, message/imdn+xml, notification disposition,
    IMDN-Route copied from IMDN-Record-Route in order, no Disposition-Notification/Record-Route."""
    im = received_im(
        "imdn.IMDN-Record-Route: <sip:newest.example.com>",
        "imdn.IMDN-Record-Route: Older <sip:older.example.com>",
    )
    report = imdn.build_imdn(im, kind="display", status="displayed", now=NOW)
    assert report.from_ == cpim.CpimAddress("im:bob@example.com", "Bob")
    assert report.to == [cpim.CpimAddress("im:alice@example.com", "Alice")]
    headers = imdn.imdn_headers(report)
    assert headers.message_id not in (None, "34jk324j")
    assert headers.disposition_notification is None
    assert headers.record_routes == ()
    assert [r.uri for r in headers.routes] == ["sip:newest.example.com", "sip:older.example.com"]
    assert report.date_time is not None and report.date_time.raw == "2023-11-14T22:13:20.000Z"
    assert report.content_type == "message/imdn+xml"
    assert report.content_disposition == "notification"
    note = imdn.parse_notification(report.body)
    assert note == imdn.Notification(
        message_id="34jk324j",
        datetime="2006-04-04T12:16:49-05:00",
        kind=imdn.Kind.DISPLAY,
        status=imdn.Status.DISPLAYED,
        recipient_uri="im:bob@example.com",
        original_recipient_uri="im:bob@example.com",
    )
    assert imdn.imdn_destination(im) == "sip:newest.example.com"


def test_build_imdn_message_ids_are_fresh_each_time() -> None:
    im = received_im()
    ids = {
        imdn.imdn_headers(imdn.build_imdn(im, kind="delivery", status="delivered", now=NOW)).message_id
        for _ in range(20)
    }
    assert len(ids) == 20


def test_build_imdn_original_to_and_own_address() -> None:
    """§11.1.4: Original-To becomes <original-recipient-uri>; own_address picks our To."""
    im = received_im(
        "imdn.Original-To: <im:list@example.com>",
        to=("Bob <im:bob@example.com>", "Carol <im:carol@example.com>"),
    )
    report = imdn.build_imdn(
        im, kind="delivery", status="failed", now=NOW, own_address="im:carol@example.com", message_id="mine"
    )
    assert report.from_ == cpim.CpimAddress("im:carol@example.com", "Carol")
    assert report.value(IMDN_NS, "Message-ID") == "mine"
    note = imdn.parse_notification(report.body)
    assert (note.recipient_uri, note.original_recipient_uri) == (
        "im:carol@example.com",
        "im:list@example.com",
    )
    other = imdn.build_imdn(im, kind="delivery", status="error", now=NOW, own_address="im:eve@example.com")
    assert other.from_ == cpim.CpimAddress("im:eve@example.com")


def test_build_imdn_privacy_and_subject_options() -> None:
    im = received_im()
    hidden = imdn.parse_notification(
        imdn.build_imdn(im, kind="delivery", status="delivered", now=NOW, include_recipient=False).body
    )
    assert hidden.recipient_uri is None and hidden.original_recipient_uri is None  # RFC 5438 §14.2
    with_subject = imdn.parse_notification(
        imdn.build_imdn(im, kind="delivery", status="delivered", now=NOW, include_subject=True).body
    )
    assert with_subject.subject == "lunch?"


def test_build_imdn_refusals() -> None:
    im = received_im()
    report = imdn.build_imdn(im, kind="delivery", status="delivered", now=NOW)
    with pytest.raises(LocalProtocolError, match="for an IMDN"):  # RFC 5438 §7.2.1
        imdn.build_imdn(report, kind="delivery", status="delivered", now=NOW)
    with pytest.raises(LocalProtocolError, match="not allowed"):
        imdn.build_imdn(im, kind="display", status="delivered", now=NOW)
    bare = cpim.parse(b"From: <im:a@x>\r\nTo: <im:b@x>\r\n\r\nContent-Type: text/plain\r\n\r\nx")
    with pytest.raises(LocalProtocolError, match="Message-ID"):
        imdn.build_imdn(bare, kind="delivery", status="delivered", now=NOW)
    no_date = cpim.parse(
        b"From: <im:a@x>\r\nTo: <im:b@x>\r\nNS: i <urn:ietf:params:imdn>\r\ni.Message-ID: m\r\n"
        b"\r\nContent-Type: text/plain\r\n\r\nx"
    )
    with pytest.raises(LocalProtocolError, match="DateTime"):
        imdn.build_imdn(no_date, kind="delivery", status="delivered", now=NOW)
    no_from = cpim.parse(
        b"To: <im:b@x>\r\nNS: i <urn:ietf:params:imdn>\r\ni.Message-ID: m\r\n"
        b"DateTime: 2020-01-01T00:00:00Z\r\n"
        b"\r\nContent-Type: text/plain\r\n\r\nx"
    )
    with pytest.raises(LocalProtocolError, match="From"):
        imdn.build_imdn(no_from, kind="delivery", status="delivered", now=NOW)
    assert imdn.imdn_destination(no_from) is None
    with pytest.raises(LocalProtocolError, match="own_address"):
        imdn.build_imdn(
            cpim.parse(
                b"From: <im:a@x>\r\nNS: i <urn:ietf:params:imdn>\r\ni.Message-ID: m\r\n"
                b"DateTime: 2020-01-01T00:00:00Z\r\n\r\nContent-Type: text/plain\r\n\r\nx"
            ),
            kind="delivery",
            status="delivered",
            now=NOW,
        )


def test_build_imdn_echoes_a_quirky_datetime_verbatim() -> None:
    """A bad offset seen from real peers: ``+5:30`` is kept raw and echoed in <datetime> exactly."""
    im = cpim.parse(
        b"From: <im:a@x>\r\nTo: <im:b@x>\r\nNS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: m\r\n"
        b"DateTime: 2018-02-16T01:42:50+5:30\r\n\r\nContent-Type: text/plain\r\n\r\nx"
    )
    note = imdn.parse_notification(imdn.build_imdn(im, kind="delivery", status="delivered", now=NOW).body)
    assert note.datetime == "2018-02-16T01:42:50+5:30"


def test_build_imdn_message_from_tracker_fields() -> None:
    one = imdn.make_notification(message_id="m1", datetime="d", kind="delivery", status="delivered")
    two = imdn.make_notification(message_id="m2", datetime="d", kind="display", status="forbidden")
    single = imdn.build_imdn_message(
        one, from_="im:b@x", to="im:a@x", now=NOW, message_id="n1", routes=["sip:r1@x", "sip:r2@x"]
    )
    assert single.content_type == "message/imdn+xml"
    assert [r.uri for r in imdn.imdn_headers(single).routes] == ["sip:r1@x", "sip:r2@x"]
    received = imdn.recognise(cpim.parse(single.to_bytes()))
    assert received is not None and received.notifications == (one,) and received.message_id == "n1"
    aggregated = imdn.build_imdn_message([one, two], from_="im:b@x", to="im:a@x", now=NOW)
    assert aggregated.content_type == "multipart/mixed"
    received = imdn.recognise(cpim.parse(aggregated.to_bytes()), require_disposition=True)
    assert received is not None and received.aggregated and received.notifications == (one, two)
    with pytest.raises(LocalProtocolError, match="CPIM Token"):
        imdn.build_imdn_message(one, from_="im:b@x", to="im:a@x", now=NOW, message_id="a b")


# -- recognise / is_imdn --------------------------------------------------------------------------

XML = imdn.build_notification(message_id="m1", datetime="d", kind="delivery", status="delivered")


def wrap(mime: str, body: bytes) -> cpim.CpimMessage:
    head = "From: <im:b@x>\r\nTo: <im:a@x>\r\nNS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: n\r\n\r\n"
    return cpim.parse(head.encode() + mime.encode() + b"\r\n" + body)


def test_recognise_without_disposition_marker() -> None:
    """Blink/python-sipsimple behaviour: accepted on content type, and the missing marker is reported."""
    msg = wrap("Content-Type: message/imdn+xml\r\n", XML)
    received = imdn.recognise(msg)
    assert received is not None and not received.disposition_marker
    assert imdn.recognise(msg, require_disposition=True) is None  # strict §9 reading
    assert imdn.is_imdn(msg)


def test_recognise_instant_messages() -> None:
    """RFC 5438 §9: no imdn+xml part means an IM."""
    assert imdn.recognise(received_im()) is None
    assert not imdn.is_imdn(received_im())
    text_parts = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n\r\nimplicit text/plain\r\n--b--\r\n"
    )
    msg = wrap('Content-Type: multipart/mixed; boundary="b"\r\n', text_parts)
    assert imdn.recognise(msg) is None
    assert not imdn.is_imdn(msg)


def test_recognise_refuses_im_and_imdn_mixed() -> None:
    """RFC 5438 §9: an IM and an IMDN in one multipart body is invalid."""
    body = (
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: message/imdn+xml\r\n\r\n" + XML
    )
    msg = wrap("Content-Type: multipart/mixed; boundary=b\r\nContent-Disposition: notification\r\n", body)
    assert imdn.is_imdn(msg)
    with pytest.raises(ImdnError, match="IM and an IMDN"):
        imdn.recognise(msg)


def test_recognise_ignores_disposition_request_inside_an_imdn() -> None:
    """RFC 5438 §7.2.1: a Disposition-Notification in an IMDN is ignored (and never answered)."""
    head = (
        "From: <im:b@x>\r\nTo: <im:a@x>\r\nNS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: n\r\n"
        "imdn.Disposition-Notification: display\r\n\r\n"
    )
    msg = cpim.parse(
        head.encode() + b"Content-Type: message/imdn+xml\r\nContent-Disposition: notification\r\n\r\n" + XML
    )
    received = imdn.recognise(msg)
    assert received is not None and received.notifications[0].message_id == "m1"
    with pytest.raises(LocalProtocolError):
        imdn.build_imdn(msg, kind="display", status="displayed", now=NOW)


def test_recognise_inflates_deflate_content_encoding() -> None:
    """liblinphone behaviour: Content-Encoding: deflate, zlib-wrapped or raw."""
    for packed in (zlib.compress(XML), zlib.compress(XML)[2:-4]):
        msg = wrap("Content-Type: message/imdn+xml\r\nContent-Encoding: deflate\r\n", packed)
        received = imdn.recognise(msg)
        assert received is not None and received.notifications[0].message_id == "m1"
    bomb = zlib.compress(b"<" + b"a" * 5_000_000, 9)
    with pytest.raises(ImdnError, match="larger than") as info:
        imdn.recognise(wrap("Content-Type: message/imdn+xml\r\nContent-Encoding: deflate\r\n", bomb))
    assert info.value.status_code == 413


def test_recognise_undoes_content_transfer_encoding() -> None:
    """RFC 3862 §2.4: the encapsulated entity may carry a Content-Transfer-Encoding."""
    b64 = base64.encodebytes(XML)  # 76-column lines, as MIME writes them
    msg = wrap("Content-Type: message/imdn+xml\r\nContent-Transfer-Encoding: base64\r\n", b64)
    assert msg.decoded_body() == XML
    received = imdn.recognise(msg)
    assert received is not None and received.notifications[0].message_id == "m1"
    both = wrap(
        "Content-Type: message/imdn+xml\r\nContent-Transfer-Encoding: BASE64\r\n"
        "Content-Encoding: deflate\r\n",
        base64.b64encode(zlib.compress(XML)),
    )
    assert imdn.recognise(both) is not None
    qp = wrap(
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n", b"caf=C3=A9=\r\n!"
    )
    assert qp.decoded_body() == "café!".encode()
    with pytest.raises(ImdnError, match="Content-Transfer-Encoding") as info:
        imdn.recognise(wrap("Content-Type: message/imdn+xml\r\nContent-Transfer-Encoding: x-uue\r\n", XML))
    assert info.value.status_code == 415
    with pytest.raises(ImdnError, match="base64"):
        imdn.recognise(
            wrap("Content-Type: message/imdn+xml\r\nContent-Transfer-Encoding: base64\r\n", b"abc")
        )


def test_addresses_as_name_uri_strings() -> None:
    im = imdn.build_im(from_="Alice <im:alice@x>", to='"Bob B." <im:bob@x>', body=b"", now=0)
    assert im.from_ == cpim.CpimAddress("im:alice@x", "Alice")
    assert im.to == [cpim.CpimAddress("im:bob@x", "Bob B.")]
    with pytest.raises(LocalProtocolError, match="not a CPIM address"):
        imdn.build_im(from_="Alice <im:alice@x", to="im:bob@x", body=b"", now=0)


def test_recognise_encodings_and_errors() -> None:
    with pytest.raises(ImdnError, match="Content-Encoding") as info:
        imdn.recognise(wrap("Content-Type: message/imdn+xml\r\nContent-Encoding: gzip\r\n", XML))
    assert info.value.status_code == 415
    assert imdn.recognise(wrap("Content-Type: text/plain\r\nContent-Encoding: gzip\r\n", b"x")) is None
    assert imdn.recognise(wrap("Content-Type: message/imdn+xml\r\nContent-Encoding: identity\r\n", XML))
    with pytest.raises(ImdnError, match="well-formed"):
        imdn.recognise(wrap("Content-Type: message/imdn+xml\r\n", b"<imdn"))
    with pytest.raises(ImdnError, match="boundary"):
        imdn.recognise(wrap("Content-Type: multipart/mixed\r\n", b"--x\r\n"))
    with pytest.raises(ImdnError, match="no notification element"):
        imdn.recognise(
            wrap(
                "Content-Type: message/imdn+xml\r\n",
                b'<imdn xmlns="urn:ietf:params:xml:ns:imdn">'
                b"<message-id>m</message-id><datetime>d</datetime></imdn>",
            )
        )


def test_recognise_lone_recipient_flag_passes_through() -> None:
    lone = (
        b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>m</message-id><datetime>d</datetime>'
        b"<recipient-uri>tel:+15551234</recipient-uri>"
        b"<delivery-notification><status><delivered/></status></delivery-notification></imdn>"
    )
    msg = wrap("Content-Type: message/imdn+xml\r\n", lone)
    with pytest.raises(ImdnError, match="schema"):
        imdn.recognise(msg)
    received = imdn.recognise(msg, accept_lone_recipient=True)
    assert received is not None
    assert received.notifications[0].original_recipient_uri == "tel:+15551234"


def test_recognise_draft_read_flag_passes_through() -> None:
    legacy = (
        b'<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>m</message-id><datetime>d</datetime>'
        b"<read-notification><status><read/></status></read-notification></imdn>"
    )
    msg = wrap("Content-Type: message/imdn+xml\r\n", legacy)
    with pytest.raises(ImdnError):
        imdn.recognise(msg)
    received = imdn.recognise(msg, accept_draft_read=True)
    assert received is not None and received.notifications[0].kind is imdn.Kind.DISPLAY
