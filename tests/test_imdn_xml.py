"""message/imdn+xml: the RFC 5438 examples, statuses per kind, the shipped XSD rejecting each
schema rule of RFC 5438 §11, extensions, draft-03 "read", and hostile documents (RFC 5438 §14)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree
from memory_probe import peak_rss

from sipimdn import _safexml, imdn
from sipimdn.errors import ImdnError, LocalProtocolError
from sipimdn.imdn import Kind, Status
from sipimdn.imdn.document import validate

DATA = Path(__file__).parent / "data" / "imdn"
NS = 'xmlns="urn:ietf:params:xml:ns:imdn"'
HEAD = "<message-id>m1</message-id><datetime>2008-04-04T12:16:49-05:00</datetime>"
DELIVERED = "<delivery-notification><status><delivered/></status></delivery-notification>"


def doc(inner: str, root_attrs: str = NS) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<imdn {root_attrs}>{inner}</imdn>'.encode()


# -- RFC 5438 examples ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "status"),
    [
        ("rfc5438_7_2_1_1_delivery.xml", Kind.DELIVERY, Status.DELIVERED),
        ("rfc5438_7_2_1_2_display.xml", Kind.DISPLAY, Status.DISPLAYED),
        ("rfc5438_8_1_processing.xml", Kind.PROCESSING, Status.PROCESSED),
    ],
)
def test_rfc5438_examples_parse_and_rebuild(name: str, kind: Kind, status: Status) -> None:
    """RFC 5438 §7.2.1.1, §7.2.1.2, §8.1: the values shown, and an equivalent document built back."""
    parsed = imdn.parse_notification((DATA / name).read_bytes())
    assert parsed == imdn.Notification(
        message_id="34jk324j",
        datetime="2008-04-04T12:16:49-05:00",
        kind=kind,
        status=status,
        recipient_uri="im:bob@example.com",
        original_recipient_uri="im:bob@example.com",
    )
    built = imdn.build_notification(
        message_id="34jk324j",
        datetime="2008-04-04T12:16:49-05:00",
        kind=kind,
        status=status,
        recipient_uri="im:bob@example.com",
    )
    assert imdn.parse_notification(built) == parsed
    assert built.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<imdn xmlns="urn:ietf:params:xml:ns:imdn">'
    )
    assert parsed.sent_at is not None and parsed.sent_at.utcoffset() is not None


# -- statuses per kind (RFC 5438 §11.1) --------------------------------------------------------

ALL_PAIRS = [(k, s) for k in Kind for s in Status]


@pytest.mark.parametrize(("kind", "status"), ALL_PAIRS)
def test_status_table_on_build_and_parse(kind: Kind, status: Status) -> None:
    allowed = status in imdn.ALLOWED_STATUSES[kind]
    raw = doc(f"{HEAD}<{kind}-notification><status><{status}/></status></{kind}-notification>")
    if allowed:
        built = imdn.build_notification(message_id="m1", datetime="d", kind=kind, status=status)
        note = imdn.parse_notification(built)
        assert (note.kind, note.status) == (kind, status)
        assert imdn.parse_notification(raw).status is status
    else:
        with pytest.raises(LocalProtocolError, match="not allowed"):
            imdn.build_notification(message_id="m1", datetime="d", kind=kind, status=status)
        with pytest.raises(ImdnError, match="schema"):
            imdn.parse_notification(raw)


def test_schema_ships_inside_the_package() -> None:
    """The XSD is package data (pyproject: imdn/*.xsd), loaded via importlib.resources."""
    from importlib import resources

    xsd = resources.files("sipimdn.imdn").joinpath("imdn.xsd")
    assert xsd.is_file()
    assert b'targetNamespace="urn:ietf:params:xml:ns:imdn"' in xsd.read_bytes()


def test_allowed_status_table_matches_rfc() -> None:
    assert {
        Kind.DELIVERY: {Status.DELIVERED, Status.FAILED, Status.FORBIDDEN, Status.ERROR},
        Kind.DISPLAY: {Status.DISPLAYED, Status.FORBIDDEN, Status.ERROR},
        Kind.PROCESSING: {Status.PROCESSED, Status.STORED, Status.FORBIDDEN, Status.ERROR},
    } == imdn.ALLOWED_STATUSES


# -- the XSD rejects each schema rule of RFC 5438 §11 ----------------------------------------

RECIPIENTS = "<recipient-uri>im:b@x</recipient-uri><original-recipient-uri>im:b@x</original-recipient-uri>"
SCHEMA_VIOLATIONS = {
    "missing message-id": "<datetime>d</datetime>" + DELIVERED,
    "missing datetime": "<message-id>m</message-id>" + DELIVERED,
    "datetime before message-id": "<datetime>d</datetime><message-id>m</message-id>" + DELIVERED,
    "two message-ids": "<message-id>a</message-id>" + HEAD + DELIVERED,
    "recipient-uri without original-recipient-uri": HEAD
    + "<recipient-uri>im:b@x</recipient-uri>"
    + DELIVERED,
    "original-recipient-uri without recipient-uri": HEAD
    + "<original-recipient-uri>im:b@x</original-recipient-uri>"
    + DELIVERED,
    "recipient group out of order": HEAD
    + "<original-recipient-uri>im:b@x</original-recipient-uri><recipient-uri>im:b@x</recipient-uri>"
    + DELIVERED,
    "subject without the recipient group": HEAD + "<subject>s</subject>" + DELIVERED,
    "subject before the uris": HEAD + "<subject>s</subject>" + RECIPIENTS + DELIVERED,
    "two subjects": HEAD + RECIPIENTS + "<subject>a</subject><subject>b</subject>" + DELIVERED,
    "two notification elements": HEAD + DELIVERED + DELIVERED,
    "notification without status": HEAD + "<delivery-notification/>",
    "status without a value": HEAD + "<delivery-notification><status/></delivery-notification>",
    "status with two values": HEAD
    + "<delivery-notification><status><delivered/><failed/></status></delivery-notification>",
    "status value with content": HEAD
    + "<delivery-notification><status><delivered>yes</delivered></status></delivery-notification>",
    "display status in a delivery notification": HEAD
    + "<delivery-notification><status><displayed/></status></delivery-notification>",
    "unknown element in the imdn namespace": HEAD + DELIVERED + "<reason>x</reason>",
    "unqualified extension element": HEAD + DELIVERED + '<reason xmlns="">x</reason>',
    "extension before the notification": HEAD + '<x:e xmlns:x="urn:example:ext"/>' + DELIVERED,
    "unqualified element inside status": HEAD
    + '<delivery-notification><status><delivered/><code xmlns="">1</code></status></delivery-notification>',
    "text directly in imdn": HEAD + DELIVERED + "stray text",
    "element inside message-id": "<message-id><b>m</b></message-id><datetime>d</datetime>" + DELIVERED,
}


@pytest.mark.parametrize("rule", sorted(SCHEMA_VIOLATIONS))
def test_xsd_rejects_each_schema_rule(rule: str) -> None:
    data = doc(SCHEMA_VIOLATIONS[rule])
    root = etree.fromstring(data)
    assert validate(root) is not None, rule
    with pytest.raises(ImdnError, match="schema violation") as info:
        imdn.parse_notification(data)
    assert info.value.status_code == 400


def test_xsd_rejects_attributes_and_foreign_roots() -> None:
    for data in (
        doc(HEAD + DELIVERED, root_attrs=NS + ' version="1"'),
        doc(HEAD + DELIVERED, root_attrs='xmlns="urn:example:not-imdn"'),
        b"<imdn>" + HEAD.encode() + DELIVERED.encode() + b"</imdn>",
    ):
        with pytest.raises(ImdnError):
            imdn.parse_notification(data)


def test_xsd_accepts_what_the_rfc_allows() -> None:
    """Minimal document, full document with subject, extensions at both extension points."""
    full = doc(
        HEAD
        + RECIPIENTS
        + "<subject>Project Tomorrow</subject>"
        + '<display-notification><status><error/><v:why xmlns:v="urn:example:v" code="7">busy</v:why>'
        + "</status></display-notification>"
        + '<v:trace xmlns:v="urn:example:v"><v:hop>a</v:hop><inner xmlns="">free</inner></v:trace>'
    )
    note = imdn.parse_notification(full)
    assert note.subject == "Project Tomorrow"
    assert (note.kind, note.status) == (Kind.DISPLAY, Status.ERROR)
    assert len(note.status_extensions) == 1 and b"busy" in note.status_extensions[0]
    assert len(note.extensions) == 1 and b"<v:hop>a</v:hop>" in note.extensions[0]
    # Extensions survive a build -> parse round trip.
    assert imdn.parse_notification(note.to_xml()) == note


def test_schema_valid_document_without_notification_is_still_refused() -> None:
    """The RFC 5438 schema allows it (<empty/>), §11.1.6 requires one; we refuse."""
    data = doc(HEAD)
    assert validate(etree.fromstring(data)) is None
    with pytest.raises(ImdnError, match="no notification element"):
        imdn.parse_notification(data)


def test_whitespace_collapse_of_token_and_uri_types() -> None:
    note = imdn.parse_notification(
        doc(
            "<message-id>\n  m1  \n</message-id><datetime> raw kept </datetime>"
            "<recipient-uri> im:b@x </recipient-uri>"
            "<original-recipient-uri>\nim:b@x\n</original-recipient-uri>" + DELIVERED
        )
    )
    assert note.message_id == "m1"
    assert note.datetime == " raw kept "  # xs:string: echoed verbatim
    assert note.recipient_uri == note.original_recipient_uri == "im:b@x"


# -- real peers -------------------------------------------------------------------------------


def test_liblinphone_error_notification_with_reason_extension() -> None:
    """Shape liblinphone writes for a failed delivery (from reading its code): an extra
    namespace on the root and ``<linphoneimdn:reason code=..>`` after ``<error/>`` in <status>."""
    data = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<imdn xmlns="urn:ietf:params:xml:ns:imdn" xmlns:linphoneimdn="http://www.linphone.org/xsds/imdn.xsd">'
        b"<message-id>Ab12</message-id><datetime>2024-05-01T10:00:00Z</datetime>"
        b'<delivery-notification><status><error/><linphoneimdn:reason code="488">Not acceptable here'
        b"</linphoneimdn:reason></status></delivery-notification></imdn>"
    )
    note = imdn.parse_notification(data)
    assert (note.kind, note.status) == (Kind.DELIVERY, Status.ERROR)
    (reason,) = note.status_extensions
    assert reason == (
        b'<linphoneimdn:reason xmlns:linphoneimdn="http://www.linphone.org/xsds/imdn.xsd" code="488">'
        b"Not acceptable here</linphoneimdn:reason>"
    )
    assert imdn.parse_notification(note.to_xml()) == note


def test_built_documents_are_compact_for_naive_peers() -> None:
    """liblinphone reads the status as the *first child node* of <status> (code reading): no
    whitespace text may sit before it, so we never pretty-print."""
    built = imdn.build_notification(message_id="m", datetime="d", kind="display", status="displayed")
    assert b"<status><displayed/></status>" in built
    assert b"\n " not in built


# -- builder refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"kind": "read", "status": "displayed"}, "is not a valid Kind"),
        ({"kind": "display", "status": "read"}, "is not a valid Status"),
        (
            {"kind": "display", "status": "displayed", "original_recipient_uri": "im:x@y"},
            "needs recipient-uri",
        ),
        ({"kind": "display", "status": "displayed", "subject": "s"}, "subject needs"),
        ({"kind": "display", "status": "displayed", "message_id": "bad\x00id"}, "CPIM Token"),
        ({"kind": "display", "status": "displayed", "message_id": "a b"}, "CPIM Token"),
        ({"kind": "display", "status": "displayed", "message_id": ""}, "CPIM Token"),
        ({"kind": "display", "status": "displayed", "datetime": "bad\x00"}, "cannot build"),
        ({"kind": "display", "status": "displayed", "recipient_uri": "im:%zz"}, "schema"),
        ({"kind": "display", "status": "displayed", "extensions": (b"<plain/>",)}, "schema"),
        (
            {"kind": "display", "status": "displayed", "extensions": (b"<x:y xmlns:x='urn:imdn:x'",)},
            "extension",
        ),
    ],
)
def test_builder_refusals(fields: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"message_id": "m1", "datetime": "d"} | fields
    with pytest.raises(LocalProtocolError, match=reason):
        imdn.build_notification(**args)  # type: ignore[arg-type]


def test_builder_defaults_original_recipient_to_recipient() -> None:
    note = imdn.make_notification(
        message_id="m", datetime="d", kind="delivery", status="failed", recipient_uri="sip:b@x"
    )
    assert note.original_recipient_uri == "sip:b@x"


# -- draft-ietf-simple-imdn-03 "read" --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "<read-notification><status><read/></status></read-notification>",
        "<display-notification><status><read/></status></display-notification>",
        "<read-notification><status><displayed/></status></read-notification>",
    ],
)
def test_draft03_read_accepted_only_behind_the_flag(body: str) -> None:
    data = doc(HEAD + body)
    with pytest.raises(ImdnError):
        imdn.parse_notification(data)
    note = imdn.parse_notification(data, accept_draft_read=True)
    assert (note.kind, note.status) == (Kind.DISPLAY, Status.DISPLAYED)
    assert b"read" not in note.to_xml()  # never generated


def test_draft03_read_status_in_delivery_still_refused() -> None:
    data = doc(HEAD + "<delivery-notification><status><read/></status></delivery-notification>")
    with pytest.raises(ImdnError, match="schema"):
        imdn.parse_notification(data, accept_draft_read=True)


def test_lone_recipient_uri_accepted_only_behind_the_flag() -> None:
    """A gateway-style document: <recipient-uri> without <original-recipient-uri> (schema rule)."""
    data = doc(
        "<message-id>SM55</message-id><datetime>2020-07-07T14:32:00+0000</datetime>"
        "<recipient-uri>sip:491774699123@10.0.0.146:5060;tgrp=101</recipient-uri>" + DELIVERED
    )
    with pytest.raises(ImdnError, match="schema"):
        imdn.parse_notification(data)
    note = imdn.parse_notification(data, accept_lone_recipient=True)
    assert note.recipient_uri == note.original_recipient_uri == "sip:491774699123@10.0.0.146:5060;tgrp=101"
    assert note.sent_at is not None  # "+0000" read leniently
    # Only the pairing is repaired: every other schema rule still applies.
    bad = doc(
        HEAD + "<recipient-uri>im:b@x</recipient-uri><subject>s</subject><subject>t</subject>" + DELIVERED
    )
    with pytest.raises(ImdnError, match="schema"):
        imdn.parse_notification(bad, accept_lone_recipient=True)


def test_validation_from_several_threads() -> None:
    """Parser and schema are per thread (lxml objects are not thread-safe)."""
    good = (DATA / "rfc5438_7_2_1_1_delivery.xml").read_bytes()
    bad = doc(SCHEMA_VIOLATIONS["two notification elements"])

    def work(_: int) -> tuple[str, bool]:
        note = imdn.parse_notification(good)
        try:
            imdn.parse_notification(bad)
        except ImdnError:
            return note.message_id, True
        return note.message_id, False

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(64)))
    assert results == [("34jk324j", True)] * 64


# -- hostile documents: entity bombs, external entities and DTDs, size, depth ---------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE imdn [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>&lol9;</message-id><datetime>d</datetime>
<delivery-notification><status><delivered/></status></delivery-notification></imdn>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE imdn [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>&xxe;</message-id><datetime>d</datetime>
<delivery-notification><status><delivered/></status></delivery-notification></imdn>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE imdn SYSTEM "http://127.0.0.1:9/imdn.dtd">
<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>m</message-id><datetime>d</datetime>
<delivery-notification><status><delivered/></status></delivery-notification></imdn>"""


def _refused_fast(data: bytes, reason: str) -> ImdnError:
    # The peak resident memory of this parse alone, libxml2's included (tests/memory_probe.py);
    # ru_maxrss, the process's peak so far, would read 0 after any bigger earlier test.
    with peak_rss() as memory:
        started = time.perf_counter()
        with pytest.raises(ImdnError, match=reason) as info:
            imdn.parse_notification(data)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"took {elapsed:.3f}s"
    assert memory.growth < 8 * 1024 * 1024, f"peak RSS grew by {memory.growth} bytes"
    return info.value


def test_billion_laughs_refused_fast() -> None:
    _refused_fast(BILLION_LAUGHS, "DOCTYPE")


def test_external_entity_refused_fast() -> None:
    _refused_fast(EXTERNAL_ENTITY, "DOCTYPE")


def test_external_dtd_refused_fast() -> None:
    _refused_fast(EXTERNAL_DTD, "DOCTYPE")


def test_ten_megabyte_document_refused_fast() -> None:
    big = doc(HEAD + DELIVERED + "<!--" + "x" * (10 * 1024 * 1024) + "-->")
    error = _refused_fast(big, "larger than")
    assert error.status_code == 413


def test_parser_itself_neither_expands_nor_fetches() -> None:
    """Defence in depth: even past the DOCTYPE scan, the lxml parser settings hold."""
    started = time.perf_counter()
    try:
        root = etree.fromstring(BILLION_LAUGHS, _safexml.make_parser())
    except etree.XMLSyntaxError as exc:  # libxml2's amplification guard refused it
        assert "amplification" in str(exc)
    else:  # or it kept the references unexpanded
        assert len(etree.tostring(root)) < 10_000
    root = etree.fromstring(EXTERNAL_ENTITY, _safexml.make_parser())
    assert b"root:" not in etree.tostring(root)
    assert time.perf_counter() - started < 0.5


def test_deep_nesting_refused() -> None:
    deep = "<x:a xmlns:x='urn:example:x'>" * 40 + "</x:a>" * 40
    with pytest.raises(ImdnError, match="deeper than"):
        imdn.parse_notification(doc(HEAD + DELIVERED + deep))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("<imdn/>".encode("utf-16"), "not UTF-8"),
        (b'<?xml version="1.0" encoding="ISO-8859-1"?><imdn/>', "not UTF-8"),
        (
            b"<imdn xmlns='urn:ietf:params:xml:ns:imdn'><message-id>&amp;&bogus;</message-id></imdn>",
            "well-formed",
        ),
        (b"<imdn", "well-formed"),
        (b"", "well-formed"),
        (b"\x00\x00\x00", "not UTF-8"),
        ("<?xml version='1.0' encoding='cp500'?><imdn/>".encode("cp500"), "start with '<'"),
        (b"junk<imdn/>", "start with '<'"),
        (b"<?xml version='1.0'?><!ENTITY x 'y'><imdn/>", "DOCTYPE"),
        (b'<x xmlns="urn:ietf:params:xml:ns:imdn"/>', "not imdn"),
    ],
)
def test_malformed_documents(data: bytes, reason: str) -> None:
    with pytest.raises(ImdnError, match=reason):
        imdn.parse_notification(data)


def test_size_cap_is_configurable() -> None:
    data = doc(HEAD + DELIVERED)
    with pytest.raises(ImdnError, match="larger than 10 bytes"):
        imdn.parse_notification(data, max_size=10)
    assert imdn.parse_notification(data, max_size=len(data)).message_id == "m1"


def test_utf8_bom_accepted() -> None:
    note = imdn.parse_notification(b"\xef\xbb\xbf" + doc(HEAD + DELIVERED))
    assert note.message_id == "m1"


def test_comments_and_processing_instructions_ignored() -> None:
    data = doc("<!-- note -->" + HEAD + "<?pi x?>" + DELIVERED)
    assert imdn.parse_notification(data).status is Status.DELIVERED


def test_parse_refuses_non_bytes() -> None:
    with pytest.raises(TypeError):
        imdn.parse_notification("<imdn/>")  # type: ignore[arg-type]
