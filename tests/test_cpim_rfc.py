"""The RFC 3862 and RFC 5438 examples, at the CPIM level: they parse to the values the RFCs
state, serialise back octet for octet (RFC 3862 §2.2, §6), and rebuild to an equivalent message.

Data files in tests/data/cpim/ are the examples as printed, including the outer
``Content-type: Message/CPIM`` line (how RFC 3862 §6 prints its examples), hence ``outer_mime=True``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sipimdn import cpim, imdn

DATA = Path(__file__).parent / "data" / "cpim"
OUTER = b"Content-type: Message/CPIM\r\n\r\n"


def load(name: str) -> cpim.CpimMessage:
    data = (DATA / name).read_bytes()
    msg = cpim.parse(data, outer_mime=True)
    # Without the outer MIME lines the body is exactly a SIP message/cpim body.
    assert cpim.parse(data[len(OUTER) :]) == msg
    return msg


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.cpim")))
def test_examples_serialise_back_octet_for_octet(name: str) -> None:
    """RFC 3862 §2.2, §6: headers are never reformatted or reordered; content is untouched."""
    data = (DATA / name).read_bytes()
    assert load(name).to_bytes() == data[len(OUTER) :]


def test_rfc3862_5_1_example_values() -> None:
    """RFC 3862 §5.1: core headers, two Subjects (one ;lang=fr), NS prefix, Require, MIME part."""
    msg = load("rfc3862_5_1.cpim")
    assert msg.from_ == cpim.CpimAddress("im:piglet@100akerwood.com", "MR SANDERS")
    assert msg.to == [cpim.CpimAddress("im:eeyore@100akerwood.com", "Depressed Donkey")]
    assert msg.date_time is not None
    assert msg.date_time.raw == "2000-12-13T13:40:00-08:00"
    assert msg.date_time.strict
    assert msg.datetime == dt.datetime(2000, 12, 13, 21, 40, tzinfo=dt.UTC)
    assert msg.subjects == [
        cpim.Subject("the weather will be fine today", None),
        cpim.Subject("beau temps prevu pour aujourd'hui", "fr"),
    ]
    assert msg.namespaces() == {"MyFeatures": "mid:MessageFeatures@id.foo.com"}
    assert msg.require == ["MyFeatures.VitalMessageOption"]
    assert msg.requirements() == [("mid:MessageFeatures@id.foo.com", "VitalMessageOption")]
    features = "mid:MessageFeatures@id.foo.com"
    assert msg.value(features, "VitalMessageOption") == "Confirmation-requested"
    assert msg.value(features, "WackyMessageOption") == "Use-silly-font"
    assert msg.content_type == "text/xml"
    assert msg.content_type_params == {"charset": "utf-8"}
    assert msg.mime_header("content-id") == "<1234567890@foo.com>"
    assert msg.body == b"<body>\r\nHere is the text of my message.\r\n</body>\r\n"
    assert msg.lenient == ()


def test_rfc3862_5_1_rebuilds_equivalent() -> None:
    """Building the §5.1 message from its values gives the same headers, MIME part and content."""
    original = load("rfc3862_5_1.cpim")
    rebuilt = cpim.build_from_lines(
        [
            cpim.format_header("From", str(original.from_)),
            cpim.format_header("To", str(original.to[0])),
            cpim.format_header("DateTime", "2000-12-13T13:40:00-08:00"),
            cpim.format_header("Subject", cpim.format_text("the weather will be fine today")),
            cpim.format_header("Subject", "beau temps prevu pour aujourd'hui", [("lang", "fr")]),
            cpim.format_header("NS", "MyFeatures <mid:MessageFeatures@id.foo.com>"),
            cpim.format_header("Require", "MyFeatures.VitalMessageOption"),
            cpim.format_header("MyFeatures.VitalMessageOption", "Confirmation-requested"),
            cpim.format_header("MyFeatures.WackyMessageOption", "Use-silly-font"),
        ],
        content_type="text/xml; charset=utf-8",
        mime_headers=[("Content-ID", "<1234567890@foo.com>")],
        body=original.body,
    )
    assert rebuilt.headers == original.headers
    assert rebuilt.body == original.body
    assert rebuilt.mime_header("Content-ID") == original.mime_header("Content-ID")


def test_rfc3862_4_header_examples() -> None:
    """RFC 3862 §4.1-§4.3: addresses with and without a Formal-name; cc is lower-case."""
    msg = cpim.parse(
        b"From: Winnie the Pooh <im:pooh@100akerwood.com>\r\n"
        b"To: <im:pooh@100akerwood.com>\r\n"
        b"cc: Winnie the Pooh <im:pooh@100akerwood.com>\r\n"
        b"cc: <im:tigger@100akerwood.com>\r\n"
        b"DateTime: 2001-02-02T10:48:54-05:00\r\n"
        b"\r\nContent-Type: text/plain\r\n\r\n"
    )
    assert msg.from_ == cpim.CpimAddress("im:pooh@100akerwood.com", "Winnie the Pooh")
    assert msg.to == [cpim.CpimAddress("im:pooh@100akerwood.com")]
    assert [a.uri for a in msg.cc] == ["im:pooh@100akerwood.com", "im:tigger@100akerwood.com"]
    assert msg.datetime == dt.datetime(2001, 2, 2, 15, 48, 54, tzinfo=dt.UTC)


def test_rfc5438_7_1_1_im_values() -> None:
    """RFC 5438 §7.1.1: Message-ID, DateTime and the disposition request of an IM."""
    msg = load("rfc5438_7_1_1_im.cpim")
    headers = imdn.imdn_headers(msg)
    assert headers.message_id == "34jk324j"
    assert headers.requested == {imdn.DispositionRequest.POSITIVE_DELIVERY, imdn.DispositionRequest.DISPLAY}
    assert msg.date_time is not None and msg.date_time.raw == "2006-04-04T12:16:49-05:00"
    assert msg.content_type == "text/plain"
    # "Content-length: 12" is kept but never used for framing (the enclosing protocol frames CPIM).
    assert msg.mime_header("Content-Length") == "12"
    assert msg.body == b"Hello World\r\n"
    assert imdn.recognise(msg) is None  # an IM, not an IMDN (RFC 5438 §9)


@pytest.mark.parametrize(
    ("name", "mid", "kind", "status"),
    [
        ("rfc5438_7_2_1_1_delivery.cpim", "d834jied93rf", imdn.Kind.DELIVERY, imdn.Status.DELIVERED),
        ("rfc5438_7_2_1_2_display.cpim", "dfjkleriou432333", imdn.Kind.DISPLAY, imdn.Status.DISPLAYED),
        ("rfc5438_8_1_processing.cpim", None, imdn.Kind.PROCESSING, imdn.Status.PROCESSED),
    ],
)
def test_rfc5438_imdn_examples_recognised(
    name: str, mid: str | None, kind: imdn.Kind, status: imdn.Status
) -> None:
    """RFC 5438 §7.2.1.1, §7.2.1.2, §8.1: all three §9 markers present; the values the RFC shows."""
    msg = load(name)
    received = imdn.recognise(msg, require_disposition=True)
    assert received is not None
    assert received.message_id == mid  # §8.1's example has no NS/Message-ID (a gap in the RFC's example)
    assert received.disposition_marker and not received.aggregated
    (note,) = received.notifications
    assert note.message_id == "34jk324j"
    assert note.datetime == "2008-04-04T12:16:49-05:00"
    assert note.kind is kind and note.status is status
    assert note.recipient_uri == note.original_recipient_uri == "im:bob@example.com"
    assert msg.from_ == cpim.CpimAddress("im:bob@example.com", "Bob")
    assert msg.to == [cpim.CpimAddress("im:alice@example.com", "Alice")]
    # "Content-length: ..." is literally in the RFC: harmless because we never use it.
    assert msg.mime_header("Content-length") == "..."


def test_rfc5438_8_3_aggregated_example() -> None:
    """RFC 5438 §8.3 as printed: folded Content-type, two parts, no closing delimiter (EID 3850)."""
    msg = load("rfc5438_8_3_aggregated.cpim")
    assert msg.content_type == "multipart/mixed"
    assert msg.content_type_params == {"boundary": "imdn-boundary"}
    received = imdn.recognise(msg)
    assert received is not None and received.aggregated
    assert [n.recipient_uri for n in received.notifications] == ["im:bob@example.com", "im:ann@example.com"]
    assert {(n.kind, n.status) for n in received.notifications} == {
        (imdn.Kind.DELIVERY, imdn.Status.DELIVERED)
    }


def test_rfc5438_7_2_1_1_rebuilt_from_the_7_1_1_im() -> None:
    """Building the §7.2.1.1 IMDN from the §7.1.1 IM gives the RFC's wrapper and values.

    The RFC's example omits DateTime although RFC 5438 §6.3 requires it; we add one, a project choice.
    """
    im = load("rfc5438_7_1_1_im.cpim")
    report = imdn.build_imdn(
        im, kind="delivery", status="delivered", now=1_207_329_409, message_id="d834jied93rf"
    )
    assert report.from_ == cpim.CpimAddress("im:bob@example.com", "Bob")
    assert report.to == [cpim.CpimAddress("im:alice@example.com", "Alice")]
    assert report.value(imdn.IMDN_NS, "Message-ID") == "d834jied93rf"
    assert report.content_type == imdn.CONTENT_TYPE
    assert report.content_disposition == "notification"
    assert report.get(imdn.IMDN_NS, "Disposition-Notification") is None
    expected = imdn.parse_notification((DATA.parent / "imdn" / "rfc5438_7_2_1_1_delivery.xml").read_bytes())
    got = imdn.parse_notification(report.body)
    # Same document except <datetime>: the RFC's IM says 2006 while its IMDN says 2008; we echo the IM.
    assert got.datetime == "2006-04-04T12:16:49-05:00"
    assert (got.message_id, got.kind, got.status, got.recipient_uri, got.original_recipient_uri) == (
        expected.message_id,
        expected.kind,
        expected.status,
        expected.recipient_uri,
        expected.original_recipient_uri,
    )
