"""message/cpim parsing: tricky cases of the RFC 3862 §3 grammar, field quirks of real peers,
escapes (RFC 3862 §2.3) and every refusal with its typed error."""

from __future__ import annotations

import datetime as dt

import pytest

from sipimdn import cpim, imdn
from sipimdn.errors import CpimError

CPIM_NS = cpim.CPIM_NS
IMDN_NS = imdn.IMDN_NS
TAIL = b"\r\nContent-Type: text/plain\r\n\r\nhi"


def parse_headers(*lines: str) -> cpim.CpimMessage:
    return cpim.parse("".join(line + "\r\n" for line in lines).encode() + TAIL)


# -- RFC 3862 §3.3, §3.6: parameters sit between the colon and the space ---------------


def test_lang_parameter_before_value() -> None:
    """RFC 3862 §3.3: ``Subject:;lang=de Grüße`` has lang de; ``Subject: ;lang=de x`` has none."""
    msg = parse_headers("Subject:;lang=de Grüße", "Subject: ;lang=de x")
    assert msg.subjects == [cpim.Subject("Grüße", "de"), cpim.Subject(";lang=de x", None)]
    assert msg.headers[0].params == (("lang", "de"),)
    assert msg.headers[1].params == ()


def test_extension_parameters_kept() -> None:
    msg = parse_headers('x.Foo:;a=1;b="two words";lang=en-GB value', "NS: x <urn:example:x>")
    (foo, _) = msg.headers
    assert foo.params == (("a", "1"), ("b", '"two words"'), ("lang", "en-GB"))
    assert foo.lang == "en-GB"
    assert foo.value == "value"


# -- RFC 3862 §3.4: prefixes are resolved by URI, declared before use ---------------------


def test_any_prefix_bound_to_the_imdn_urn() -> None:
    """RFC 5438 §6.1, RFC 3862 §3.4: ``z.Message-ID`` under ``NS: z <urn:ietf:params:imdn>`` is the
    Message-ID."""
    msg = parse_headers("NS: z <urn:ietf:params:imdn>", "z.Message-ID: abc")
    assert msg.value(IMDN_NS, "Message-ID") == "abc"
    assert imdn.imdn_headers(msg).message_id == "abc"


def test_undeclared_prefix_is_unknown() -> None:
    """RFC 3862 §3.4: ``imdn.Message-ID`` without an NS declaration is an unknown header."""
    msg = parse_headers("imdn.Message-ID: abc")
    assert msg.get(IMDN_NS, "Message-ID") is None
    assert msg.headers[0].namespace is None


def test_prefix_declared_after_use_is_unknown() -> None:
    msg = parse_headers("imdn.Message-ID: early", "NS: imdn <urn:ietf:params:imdn>", "imdn.Message-ID: late")
    assert [h.value for h in msg.get_all(IMDN_NS, "Message-ID")] == ["late"]


def test_two_prefixes_same_uri_are_equivalent() -> None:
    """RFC 3862 §3.4: ``x.Foo`` and ``y.Foo`` are the same header when x and y map to one URI."""
    msg = parse_headers("NS: x <urn:example:f>", "NS: y <urn:example:f>", "x.Foo: 1", "y.Foo: 2")
    assert [h.value for h in msg.get_all("urn:example:f", "Foo")] == ["1", "2"]
    assert [h.prefix for h in msg.get_all("urn:example:f", "Foo")] == ["x", "y"]


def test_prefix_rebinding_applies_from_that_line_on() -> None:
    msg = parse_headers("NS: p <urn:example:a>", "p.H: 1", "NS: p <urn:example:b>", "p.H: 2")
    assert msg.value("urn:example:a", "H") == "1"
    assert msg.value("urn:example:b", "H") == "2"
    assert msg.namespaces() == {"p": "urn:example:b"}


# -- RFC 3862 §3: names are case-sensitive -----------------------------------------------


def test_case_matters_in_names() -> None:
    """RFC 3862 §3, RFC 5438 §10: ``from``/``CC``/``imdn.message-id`` are not From/cc/Message-ID."""
    msg = parse_headers(
        "from: <im:a@b>",
        "CC: <im:c@d>",
        "NS: imdn <urn:ietf:params:imdn>",
        "imdn.message-id: abc",
    )
    assert msg.from_ is None
    assert msg.cc == []
    assert msg.get(IMDN_NS, "Message-ID") is None
    assert msg.value(IMDN_NS, "message-id") == "abc"
    assert msg.value(CPIM_NS, "from") == "<im:a@b>"


# -- RFC 3862 §2.3, §2.3.1: escapes --------------------------------------------------------


def test_escapes_in_subject() -> None:
    """RFC 3862 §2.3.1: known escapes, ``\\u00E9``, unknown ``\\q`` -> q, trailing lone backslash dropped."""
    msg = parse_headers("Subject: tab\\there \\u00E9 \\q end\\")
    assert msg.subject == "tab\there é q end"
    assert msg.headers[0].value == "tab\\there \\u00E9 \\q end\\"  # raw kept for echoing


def test_quoted_formal_name_with_escaped_quote() -> None:
    msg = parse_headers('From: "Dr \\"Who\\" \\\\ Co" <im:who@tardis.example>')
    assert msg.from_ == cpim.CpimAddress("im:who@tardis.example", 'Dr "Who" \\ Co')
    assert cpim.parse_address(str(msg.from_)) == msg.from_


def test_surrogate_pair_escape_is_one_code_point() -> None:
    msg = parse_headers("Subject: \\uD83D\\uDE00!")
    assert msg.subject == "\U0001f600!"


@pytest.mark.parametrize("value", ["\\uD83D", "\\uDE00x", "\\uD83Dx", "\\uD83D\\u0041"])
def test_lone_surrogate_is_refused(value: str) -> None:
    with pytest.raises(CpimError, match="surrogate"):
        parse_headers(f"Subject: {value}")


def test_escape_generator_rules() -> None:
    """RFC 3862 §2.3.1: short forms, \\uXXXX for other controls, quote escaping, nothing else."""
    assert cpim.escape("a\\b\bc\td\ne\rf") == "a\\\\b\\bc\\td\\ne\\rf"
    assert cpim.escape("\x00\x1f\x7f") == "\\u0000\\u001F\\u007F"
    assert cpim.escape('say "hi"', quote='"') == 'say \\"hi\\"'
    assert cpim.escape("it's", quote="'") == "it\\'s"
    assert cpim.escape('é "x"') == 'é "x"'  # no escape for non-ASCII or unquoted quotes
    for text in ["plain", "tab\there", "\x01\x7f", "\\", "é\U0001f600", 'q":']:
        assert cpim.unescape(cpim.escape(text)) == text


# -- RFC 3862 §3.4, §4.6: default namespace switch --------------------------------------


def test_default_namespace_switch() -> None:
    """RFC 3862 §3.4: after ``NS: <http://example/x>`` an unprefixed To is not the core To."""
    msg = parse_headers("To: <im:first@b>", "NS: <http://example/x>", "To: <im:a@b>")
    assert [a.uri for a in msg.to] == ["im:first@b"]
    assert msg.value("http://example/x", "To") == "<im:a@b>"


def test_switched_default_is_not_validated_as_core() -> None:
    # "From" in another namespace is opaque: no address syntax is imposed on it.
    msg = parse_headers("NS: <urn:example:other>", "From: not an address")
    assert msg.from_ is None
    assert msg.value("urn:example:other", "From") == "not an address"


# -- RFC 3862 §4.6: NS spacing --------------------------------------------------------------


@pytest.mark.parametrize("line", ["NS: imdn <urn:ietf:params:imdn>", "NS: imdn<urn:ietf:params:imdn>"])
def test_ns_with_and_without_space(line: str) -> None:
    """RFC 3862 §4.6 (NS) and a quirk seen from ZTE/Mavenir clients: both spellings bind the prefix."""
    msg = parse_headers(line, "imdn.Message-ID: m1")
    assert msg.value(IMDN_NS, "Message-ID") == "m1"
    assert msg.to_bytes().startswith(line.encode() + b"\r\n")  # spelling preserved on output


def test_builder_emits_the_spaced_form() -> None:
    im = imdn.build_im(from_="im:a@example.com", to="im:b@example.com", body=b"x", now=0)
    assert im.get(CPIM_NS, "NS") is not None
    assert b"\r\nNS: imdn <urn:ietf:params:imdn>\r\n" in im.to_bytes()


# -- RFC 3862 §2, §2.2, §2.4: blank-line boundaries, folding, binary content -------------


def test_boundaries_folding_and_binary_body() -> None:
    body = bytes(range(256)) + b"\r\n\r\nFrom: <im:not@header>\r\n"
    data = (
        b"From: <im:a@example.com>\r\n\r\n"
        b"Content-Type: application/octet-stream;\r\n"
        b"\tname=blob\r\n"
        b"Content-ID: <x@y>\r\n\r\n" + body
    )
    msg = cpim.parse(data)
    assert msg.body == body
    assert msg.content_type == "application/octet-stream"
    assert msg.content_type_params == {"name": "blob"}
    assert msg.mime_headers[0].raw == "Content-Type: application/octet-stream;\r\n\tname=blob"
    assert msg.to_bytes() == data


def test_cpim_headers_may_not_fold() -> None:
    with pytest.raises(CpimError, match="folding"):
        cpim.parse(b"Subject: a\r\n b\r\n" + TAIL)


# -- quirks seen from real peers -------------------------------------


def test_quirk_disposition_notification_without_space() -> None:
    msg = parse_headers(
        "NS: imdn <urn:ietf:params:imdn>",
        "imdn.Message-ID: q1",
        "imdn.Disposition-Notification: positive-delivery,display",
    )
    assert imdn.imdn_headers(msg).requested == {"positive-delivery", "display"}


def test_quirk_lowercase_inner_content_type_and_content_length() -> None:
    msg = cpim.parse(
        b"From: <im:a@b.example>\r\n\r\nContent-type: text/plain\r\nContent-length: 999\r\n\r\nshort"
    )
    assert msg.content_type == "text/plain"
    assert msg.mime_header("CONTENT-LENGTH") == "999"
    assert msg.body == b"short"  # framing comes from the SIP layer, never the inner length


def test_quirk_bad_utc_offset_kept_raw_and_parsed_leniently() -> None:
    """Mavenir lab script: ``+5:30``. Kept verbatim for <datetime>, parsed as +05:30."""
    msg = parse_headers("DateTime: 2018-02-16T01:42:50+5:30")
    assert msg.date_time is not None
    assert msg.date_time.raw == "2018-02-16T01:42:50+5:30"
    assert not msg.date_time.strict
    assert any("DateTime" in note for note in msg.lenient)
    with pytest.raises(CpimError, match="not strict"):
        cpim.parse(msg.to_bytes(), strict=True)
    assert msg.datetime == dt.datetime(2018, 2, 15, 20, 12, 50, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-05-15T12:00:00.123456789+08:00", dt.datetime(2026, 5, 15, 4, 0, 0, 123456, tzinfo=dt.UTC)),
        ("2026-05-15T12:00:00Z", dt.datetime(2026, 5, 15, 12, tzinfo=dt.UTC)),
        ("2026-05-15T12:00:00+0530", dt.datetime(2026, 5, 15, 6, 30, tzinfo=dt.UTC)),
        ("2026-05-15T12:00:00", dt.datetime(2026, 5, 15, 12, tzinfo=dt.UTC)),
        ("2016-12-31T23:59:60Z", dt.datetime(2016, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
    ],
)
def test_datetime_forms(raw: str, expected: dt.datetime) -> None:
    assert cpim.parse_datetime(raw).value == expected


def test_quirk_anonymous_identities_accepted() -> None:
    msg = parse_headers("From: <sip:anonymous@anonymous.invalid>", "To: <sip:anonymous@anonymous.invalid>")
    assert msg.from_ == cpim.CpimAddress("sip:anonymous@anonymous.invalid")


def test_quirk_no_space_after_colon_is_tolerated_and_noted() -> None:
    msg = parse_headers("NS: imdn <urn:ietf:params:imdn>", "imdn.Message-ID:abc")
    assert msg.value(IMDN_NS, "Message-ID") == "abc"
    assert msg.lenient and "no SP" in msg.lenient[0]
    with pytest.raises(CpimError, match="no SP"):
        cpim.parse(msg.to_bytes(), strict=True)
    assert b"imdn.Message-ID:abc\r\n" in msg.to_bytes()


def test_quirk_bare_lf_line_endings() -> None:
    msg = cpim.parse(
        b"From: <im:a@b.example>\nNS: imdn <urn:ietf:params:imdn>\nimdn.Message-ID: x\n"
        b"\nContent-Type: text/plain\n\nhi\n"
    )
    assert msg.value(IMDN_NS, "Message-ID") == "x"
    assert msg.body == b"hi\n"
    assert any("bare LF" in note for note in msg.lenient)


def test_quirk_display_name_token_words_and_string() -> None:
    msg = parse_headers('From: "Ann Smith"<im:ann@x.example>', "To: Bob Jr.<im:bob@x.example>")
    assert msg.from_ == cpim.CpimAddress("im:ann@x.example", "Ann Smith")
    assert msg.to == [cpim.CpimAddress("im:bob@x.example", "Bob Jr.")]


def test_outer_mime_only_when_asked() -> None:
    data = b"Content-type: Message/CPIM\r\n\r\nFrom: <im:a@b.example>\r\n" + TAIL
    assert cpim.parse(data, outer_mime=True).from_ == cpim.CpimAddress("im:a@b.example")
    # Without the option the outer block is read as CPIM headers and the real ones as the MIME
    # part, which then lacks its Content-Type: refused rather than misread.
    with pytest.raises(CpimError, match="no Content-Type"):
        cpim.parse(data)
    with pytest.raises(CpimError):
        cpim.parse(b"Content-type: text/plain\r\n\r\nFrom: <im:a@b.example>\r\n" + TAIL, outer_mime=True)


def test_require_resolved_with_the_bindings_in_force() -> None:
    """RFC 3862 §3.5, §4.7: entries may name headers or pure feature tokens; prefixes resolve by URI."""
    msg = parse_headers(
        "Require: Early.Thing, Subject",
        "NS: Early <urn:example:e>",
        "Require: Early.Thing,feature-x",
    )
    assert msg.require == ["Early.Thing", "Subject", "Early.Thing", "feature-x"]
    assert msg.requirements() == [
        (None, "Thing"),
        (CPIM_NS, "Subject"),
        ("urn:example:e", "Thing"),
        (CPIM_NS, "feature-x"),
    ]


def test_unknown_headers_kept_in_order() -> None:
    lines = ["X-Vendor: 1", "NS: v <urn:vendor>", "v.Thing: two", "Subject: s", "X-Vendor: 3"]
    msg = parse_headers(*lines)
    assert [h.raw for h in msg.headers] == lines
    assert [h.value for h in msg.get_all(CPIM_NS, "X-Vendor")] == ["1", "3"]


def test_empty_header_value_and_trailing_space() -> None:
    msg = parse_headers("Subject: ", "X-Empty: ", "DateTime: 2020-01-01T00:00:00Z ")
    assert msg.subject == ""
    assert msg.datetime == dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert msg.headers[2].raw == "DateTime: 2020-01-01T00:00:00Z "


def test_empty_message_header_block() -> None:
    """RFC 3862 sets no minimum header set (§6: the application profile decides)."""
    data = b"\r\nContent-Type: text/plain\r\n\r\nbody"
    msg = cpim.parse(data)
    assert msg.headers == () and msg.body == b"body" and msg.from_ is None
    assert msg.to_bytes() == data
    assert imdn.recognise(msg) is None


def test_mime_part_without_trailing_blank_line() -> None:
    msg = cpim.parse(b"From: <im:a@b.example>\r\n\r\nContent-Type: text/plain\r\n")
    assert msg.body == b""
    assert msg.content_type == "text/plain"


# -- refusals, each with a typed error, a reason and a status ------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not terminated"),
        (b"From: <im:a@b>\r\nContent-Type: text/plain", "not terminated"),
        (b"Subject: a\x01b\r\n" + TAIL, "control character"),
        (b"Subject: tab\there\r\n" + TAIL, "control character"),
        (b"Subject: \xff\xfe\r\n" + TAIL, "UTF-8"),
        (b"No colon here\r\n" + TAIL, "malformed CPIM header"),
        (b"Bad Name: x\r\n" + TAIL, "malformed CPIM header"),
        (b"a.b.c: x\r\n" + TAIL, "malformed CPIM header"),
        (b"From: im:a@b\r\n" + TAIL, "not a CPIM address"),
        (b"From: Ann (work) <im:a@b>\r\n" + TAIL, "not a CPIM address"),
        (b"To: <not a uri>\r\n" + TAIL, "not a CPIM address"),
        (b"NS: p <urn:x#frag>\r\n" + TAIL, "fragment"),
        (b"NS: p <relative/path>\r\n" + TAIL, "malformed NS"),
        (b"NS: p.q <urn:x>\r\n" + TAIL, "malformed NS"),
        (b"DateTime: yesterday\r\n" + TAIL, "RFC 3339"),
        (b"DateTime: 2020-13-01T00:00:00Z\r\n" + TAIL, "out of range"),
        (b"DateTime: 2020-01-01T00:00:00+25:00\r\n" + TAIL, "out of range"),
        (b"Subject:;lang=123 x\r\n" + TAIL, "language tag"),
        (b"Require: a b\r\n" + TAIL, "Require"),
        (b"From: <im:a@b>\r\n\r\nContent-ID: <x>\r\n\r\nbody", "no Content-Type"),
        (b"From: <im:a@b>\r\n\r\nContent-Type: text\r\n\r\nbody", "not a media type"),
        (b"From: <im:a@b>\r\n\r\n continuation\r\n\r\n", "continuation"),
        (b"From: <im:a@b>\r\n\r\nBad Header: x\r\n\r\n", "malformed MIME"),
    ],
)
def test_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(CpimError, match=reason) as info:
        cpim.parse(data)
    assert info.value.status_code == 400


def test_limits_are_413() -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(101)).encode()
    with pytest.raises(CpimError, match="more than 100") as info:
        cpim.parse(many + TAIL)
    assert info.value.status_code == 413
    long_line = b"Subject: " + b"a" * 17_000 + b"\r\n"
    with pytest.raises(CpimError, match="longer than") as info:
        cpim.parse(long_line + TAIL)
    assert info.value.status_code == 413
    with pytest.raises(CpimError, match="larger than") as info:
        cpim.parse(b"From: <im:a@b>\r\n" + TAIL + b"x" * 1_100_000)
    assert info.value.status_code == 413
    small = cpim.Limits(max_headers=1)
    with pytest.raises(CpimError):
        cpim.parse(b"A: 1\r\nB: 2\r\n" + TAIL, limits=small)


def test_bad_value_in_unchecked_header_is_refused_on_text_access() -> None:
    msg = parse_headers("X-Note: \\uD800")
    with pytest.raises(CpimError, match="surrogate"):
        _ = msg.headers[0].text


def test_parse_refuses_non_bytes() -> None:
    with pytest.raises(TypeError):
        cpim.parse("From: <im:a@b>\r\n")  # type: ignore[arg-type]
