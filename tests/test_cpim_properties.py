"""Hypothesis properties of the codecs: build -> parse is identity for CPIM
messages and IMDN documents; any bytes either parse or raise the codec's own error type."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipimdn import cpim, imdn
from sipimdn.errors import CpimError, ImdnError, LocalProtocolError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------

schemes = st.sampled_from(["im", "sip", "sips", "tel", "pres", "urn"])
uri_rest = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='<>"'),
    min_size=1,
    max_size=30,
)
uris = st.builds(lambda s, r: f"{s}:{r}", schemes, uri_rest)
# Display names: anything printable (quoted and escaped when not plain Token words).
display_names = st.none() | st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=0, max_size=20
)
addresses = st.builds(cpim.CpimAddress, uris, display_names)
# Free text: any code point but surrogates; controls are escaped by the builder.
free_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)
lang_tags = st.none() | st.from_regex(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8}){0,2}", fullmatch=True)
notify = st.lists(
    st.sampled_from(["positive-delivery", "negative-delivery", "display", "processing", "x-ext;v=1"]),
    max_size=4,
)
content_types = st.sampled_from(
    ["text/plain; charset=utf-8", "text/plain", "application/octet-stream", 'text/html; charset="UTF-8"']
)


@SETTINGS
@given(
    from_=addresses,
    to=st.lists(addresses, min_size=1, max_size=3),
    cc=st.lists(addresses, max_size=2),
    body=st.binary(max_size=300),
    now=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    subject=st.none() | free_text,
    lang=lang_tags,
    requests=notify,
    content_type=content_types,
    prefix=st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,8}", fullmatch=True),
)
def test_im_build_parse_identity(**kw: Any) -> None:
    im = imdn.build_im(
        from_=kw["from_"],
        to=kw["to"],
        cc=kw["cc"],
        body=kw["body"],
        now=kw["now"],
        subject=kw["subject"],
        subject_lang=kw["lang"] if kw["subject"] is not None else None,
        notify=kw["requests"],
        content_type=kw["content_type"],
        prefix=kw["prefix"],
    )
    data = im.to_bytes()
    parsed = cpim.parse(data)
    assert parsed == im
    assert parsed.to_bytes() == data
    assert parsed.from_ == kw["from_"]
    assert parsed.to == kw["to"]
    assert parsed.cc == kw["cc"]
    assert parsed.body == kw["body"]
    if kw["subject"] is not None:
        assert parsed.subjects == [cpim.Subject(kw["subject"], kw["lang"])]
    headers = imdn.imdn_headers(parsed)
    assert [r.token for r in headers.disposition_notification or ()] == [
        r.split(";")[0] for r in kw["requests"]
    ]
    assert parsed.date_time is not None and parsed.date_time.strict
    assert abs(parsed.date_time.value.timestamp() - kw["now"]) < 0.001


header_names = st.from_regex(
    r"([A-Za-z][A-Za-z0-9!#$%&'*+^_`|~-]{0,10}\.)?[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True
)


@SETTINGS
@given(st.lists(st.tuples(header_names, free_text), min_size=1, max_size=8), st.binary(max_size=100))
def test_generic_build_parse_identity(headers: list[tuple[str, str]], body: bytes) -> None:
    """Any names and escaped free-text values survive build -> parse; unknown prefixes are kept as written."""
    values = [(name, cpim.format_text(text)) for name, text in headers]
    try:
        msg = cpim.build_message(values, content_type="text/plain", body=body)
    except LocalProtocolError:
        # Only a value that is a core header with its own syntax may be refused (e.g. "From: x").
        assert any(n in ("From", "To", "cc", "DateTime", "NS", "Require", "Subject") for n, _ in headers)
        return
    assert cpim.parse(msg.to_bytes()) == msg
    assert [h.full_name for h in msg.headers] == [n for n, _ in headers]
    assert [h.text for h in msg.headers] == [t for _, t in headers]


# -- any bytes ---------------------------------------------------------------------------------

VALID_IM = imdn.build_im(
    from_=cpim.CpimAddress("im:alice@example.com", "Alice"),
    to="im:bob@example.com",
    body=b"Hello",
    now=0,
    notify=["positive-delivery", "display"],
    subject="hi",
).to_bytes()
VALID_IMDN = imdn.build_imdn(cpim.parse(VALID_IM), kind="delivery", status="delivered", now=1).to_bytes()


def exercise(data: bytes) -> None:
    """Parse and touch every accessor; only the codecs' own errors may escape."""
    try:
        msg = cpim.parse(data)
    except CpimError:
        return
    assert cpim.parse(msg.to_bytes()) == msg  # what we accept, we re-emit identically
    try:
        for header in msg.headers:
            _ = header.text
        _ = (msg.from_, msg.to, msg.cc, msg.date_time, msg.subjects, msg.require, msg.namespaces())
        _ = (msg.content_type, msg.content_type_params, msg.content_disposition)
    except CpimError:
        pass
    imdn.is_imdn(msg)  # a guard: never raises
    for step in (imdn.imdn_headers, imdn.recognise):
        with contextlib.suppress(ImdnError):  # the IMDN layer raises its own error type only
            step(msg)


@SETTINGS
@given(st.binary(max_size=600))
@example(b"")
@example(b"\r\n\r\n")
@example(b"a: b\r\n\r\nContent-Type: message/imdn+xml\r\n\r\n<imdn")
def test_any_bytes_parse_or_raise_cpim_error(data: bytes) -> None:
    exercise(data)


@SETTINGS
@given(st.sampled_from([VALID_IM, VALID_IMDN]), st.data())
def test_mutated_messages_parse_or_raise(seed: bytes, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(buf) - 1)) if buf else 0
        if op == "flip" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(
                st.sampled_from([b"\r\n", b":", b";", b"\\", b"<", b">", b"\x00", b"\xff", b"--"])
            )
        elif buf:
            del buf[pos]
    exercise(bytes(buf))


# -- IMDN documents ------------------------------------------------------------------------------

xml_text = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"], blacklist_characters="\x00\r\ufffe\uffff", min_codepoint=0x09
    ).filter(lambda c: c in "\t\n" or c >= " "),
    max_size=30,
)
tokens = st.from_regex(r"[A-Za-z0-9._~!$&'*+-]{1,30}", fullmatch=True)
# xs:anyURI: libxml2 refuses a "%" not followed by two hex digits, so keep to plain characters here.
xml_uris = st.builds(
    lambda s, r: f"{s}:{r}", schemes, st.from_regex(r"[A-Za-z0-9@.:;=+_-]{1,30}", fullmatch=True)
)
kind_status = st.sampled_from(
    [(k, s) for k, allowed in imdn.ALLOWED_STATUSES.items() for s in sorted(allowed)]
)
extension_elements = st.lists(
    st.builds(
        # Foreign-namespace elements, sometimes holding an unqualified child (allowed inside
        # anyIMDN content; the case libxml2 mis-serialises under a default namespace).
        lambda name, text, inner: (
            f'<e:{name} xmlns:e="urn:example:ext" a="1">{text}{inner}</e:{name}>'.encode()
        ),
        st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9 ]{0,10}", fullmatch=True),
        st.sampled_from(["", "<plain>p</plain>", '<x xmlns="urn:example:d"><y xmlns="">z</y></x>']),
    ),
    max_size=2,
)


@SETTINGS
@given(
    message_id=tokens,
    datetime=xml_text,
    ks=kind_status,
    recipient=st.none() | st.tuples(xml_uris, st.none() | xml_uris, st.none() | xml_text),
    extensions=extension_elements,
    status_extensions=extension_elements,
)
def test_notification_build_parse_identity(**kw: Any) -> None:
    kind, status = kw["ks"]
    recipient_uri = original = subject = None
    if kw["recipient"] is not None:
        recipient_uri, original, subject = kw["recipient"]
    note = imdn.make_notification(
        message_id=kw["message_id"],
        datetime=kw["datetime"],
        kind=kind,
        status=status,
        recipient_uri=recipient_uri,
        original_recipient_uri=original,
        subject=subject,
        extensions=tuple(kw["extensions"]),
        status_extensions=tuple(kw["status_extensions"]),
    )
    assert imdn.parse_notification(note.to_xml()) == note


VALID_XML = imdn.build_notification(
    message_id="m1",
    datetime="2020-01-01T00:00:00Z",
    kind="display",
    status="displayed",
    recipient_uri="im:b@x",
)


@SETTINGS
@given(st.one_of(st.binary(max_size=400), st.builds(lambda t: t.encode(), st.text(max_size=200))))
def test_any_bytes_parse_notification_or_raise_imdn_error(data: bytes) -> None:
    try:
        note = imdn.parse_notification(data)
    except ImdnError:
        return
    assert note.status in imdn.ALLOWED_STATUSES[note.kind]


@SETTINGS
@given(st.data())
def test_mutated_notifications_parse_or_raise(data: st.DataObject) -> None:
    buf = bytearray(VALID_XML)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[pos] = data.draw(st.integers(0, 255))
        else:
            buf[pos:pos] = data.draw(
                st.sampled_from([b"<", b"/>", b"&", b"<!DOCTYPE x>", b"<x:y xmlns:x='u:v'/>"])
            )
    try:
        note = imdn.parse_notification(bytes(buf))
    except ImdnError:
        return
    assert note.status in imdn.ALLOWED_STATUSES[note.kind]


@SETTINGS
@given(
    ctype=st.sampled_from(
        ["message/imdn+xml", "multipart/mixed; boundary=b", "multipart/mixed", "text/plain"]
    ),
    extra=st.lists(
        st.sampled_from(
            [
                "Content-Encoding: deflate",
                "Content-Encoding: gzip",
                "Content-Transfer-Encoding: base64",
                "Content-Transfer-Encoding: quoted-printable",
                "Content-Disposition: notification",
            ]
        ),
        max_size=3,
        unique=True,
    ),
    body=st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [VALID_XML, b"--b\r\nContent-Type: message/imdn+xml\r\n\r\n" + VALID_XML + b"\r\n--b"]
        ),
    ),
)
def test_recognise_any_body_returns_or_raises_imdn_error(ctype: str, extra: list[str], body: bytes) -> None:
    head = "From: <im:b@x>\r\nNS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: n\r\n\r\n"
    mime = f"Content-Type: {ctype}\r\n" + "".join(line + "\r\n" for line in extra) + "\r\n"
    msg = cpim.parse(head.encode() + mime.encode() + body)
    try:
        received = imdn.recognise(msg)
    except ImdnError:
        return
    if received is not None:
        assert received.notifications
        assert all(n.status in imdn.ALLOWED_STATUSES[n.kind] for n in received.notifications)


prefixes = st.from_regex(r"[A-Za-z0-9!#$%&'*+^_`|~-]{1,8}", fullmatch=True)
urns = st.builds(lambda s: f"urn:example:{s}", st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))


@SETTINGS
@given(
    bindings=st.lists(st.tuples(prefixes, urns), min_size=1, max_size=4),
    name=st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True),
    stranger=prefixes,
)
def test_headers_resolve_by_uri_whatever_the_prefix(
    bindings: list[tuple[str, str]], name: str, stranger: str
) -> None:
    """RFC 3862 §3.4, RFC 5438 §6.1: access by (URI, name) finds each header under the binding in force."""
    lines = []
    expected: dict[str, list[str]] = {}
    current: dict[str, str] = {}
    for i, (prefix, urn) in enumerate(bindings):
        lines.append(f"NS: {prefix} <{urn}>")
        current[prefix] = urn
        lines.append(f"{prefix}.{name}: v{i}")
        expected.setdefault(urn, []).append(f"v{i}")
    undeclared = stranger not in current
    lines.append(f"{stranger}.{name}: stray")
    msg = cpim.parse(
        ("".join(line + "\r\n" for line in lines) + "\r\nContent-Type: text/plain\r\n\r\n").encode()
    )
    for urn, values in expected.items():
        got = [h.value for h in msg.get_all(urn, name)]
        stray = [] if undeclared or current[stranger] != urn else ["stray"]
        assert got == values + stray
    if undeclared:
        assert msg.headers[-1].namespace is None


def _plain_format_datetime(now: float) -> str:
    """format_datetime as written without the kept second: fromtimestamp and strftime each time."""
    import datetime as dt

    moment = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_NEAR_EDGES = st.builds(
    lambda second, offset: second + offset,
    st.integers(0, 4_102_444_800).map(float),  # up to 2100
    st.sampled_from([0.0, 5e-7, 4.9999e-7, 0.0005, 0.0004995, 0.9995, 0.9999994, 0.9999995, 0.9999996,
                     0.99999949, 0.999999, 0.5, 0.123456, 0.0015]),
)


@SETTINGS
@example([1.7649e9 + 0.9999995, 1.7649e9 + 0.9999995, 1.7649e9 + 1.0000004])
@example([-1.5, -0.0, 0.0, 0.9999999999, 1.0, float("nan"), float("inf")])
@given(st.lists(st.one_of(_NEAR_EDGES, st.floats(0, 4.1e9), st.floats(-1e11, 1e11), st.floats()),
                min_size=1, max_size=6))
def test_format_datetime_keeps_its_last_second_exactly(moments: list[float]) -> None:
    # The kept second must never change a text: each moment, in any order (repeats of a second,
    # rounding up into the next one, negative and unrepresentable times), gives the plain text.
    for now in [*moments, *moments]:
        try:
            expected = _plain_format_datetime(now)
        except (OverflowError, OSError, ValueError):
            with pytest.raises(LocalProtocolError):
                cpim.format_datetime(now)
            continue
        assert cpim.format_datetime(now) == expected
