"""The codec fast paths against the code they shortcut (differential tests).

Each fast path must give exactly what the general path gives, or decline and
leave the case to it:

* ``document._render_template`` (IMDN XML from a template) against the lxml
  tree builder ``_render_tree``, which validates against imdn.xsd: byte-identical
  whenever the template answers;
* ``cpim.build_from_lines`` (strict checks run on the lines) against the old
  way, serialising and re-parsing with ``cpim.parse(strict=True)``;
* ``message._header_lines_crlf`` (one-pass CRLF header block) against the
  line-by-line loop;
* the bounded caches of header lines, addresses, media types and
  Disposition-Notification values: repeated input gives the same result and
  the same refusals, whatever context it appears in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from sipimdn import _safexml, cpim, imdn
from sipimdn.cpim import build as cpim_build
from sipimdn.cpim import message as cpim_message
from sipimdn.errors import CpimError, ImdnError, LocalProtocolError
from sipimdn.imdn import Kind, Notification, Status, document
from sipimdn.imdn import message as imdn_message

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- IMDN XML: template vs tree ----------------------------------------------------------------

# Text that exercises the escapes and every refusal: markup characters, CR, other
# controls, U+FFFE/U+FFFF, non-ASCII, white space.
_tricky = st.sampled_from(
    ["&", "<", ">", '"', "'", "\r", "\n", "\t", " ", "\x00", "\x0b", "\ufffe", "\uffff", "é", "€", "😀"]
)
texts = st.lists(st.characters(blacklist_categories=["Cs"]) | _tricky, max_size=20).map("".join)
tokens = st.from_regex(r"[A-Za-z0-9_\-.@]{1,20}", fullmatch=True) | texts
good_uris = st.from_regex(r"(sip|sips|tel|im):([a-z0-9@.\[\]:;=]|%[0-9A-Fa-f]{2}){1,24}", fullmatch=True)
uris = (
    good_uris | texts | st.sampled_from(["sip:bob@[::1]:5060", "sip:a%41b@x", "sip:a%4", "sip: x", "1sip:x"])
)
kinds = st.sampled_from(list(Kind))
statuses = st.sampled_from(list(Status))


def _tree_or_error(n: Notification) -> bytes | type[Exception]:
    try:
        return document._render_tree(n)
    except (LocalProtocolError, ValueError) as exc:
        return type(exc)


@SETTINGS
@given(
    message_id=tokens,
    datetime=texts | st.just("2023-11-14T22:13:20.000Z"),
    kind=kinds,
    status=statuses,
    recipient=st.none() | uris,
    original=st.none() | uris,
    subject=st.none() | texts,
)
@example(
    message_id="m1", datetime="d", kind=Kind.DELIVERY, status=Status.DELIVERED,
    recipient="sip:bob@example.com", original=None, subject="a <b> & c",
)  # fmt: skip
def test_template_is_byte_identical_to_the_tree_builder(**kw: Any) -> None:
    n = Notification(
        message_id=kw["message_id"],
        datetime=kw["datetime"],
        kind=kw["kind"],
        status=kw["status"],
        recipient_uri=kw["recipient"],
        original_recipient_uri=kw["original"],
        subject=kw["subject"],
    )
    fast = document._render_template(n)
    assert document._render_template(n) == fast  # again, with the URI elements remembered
    tree = _tree_or_error(n)
    if fast is not None:
        # The template only answers what the tree builder writes and imdn.xsd accepts.
        assert fast == tree
        root = etree.fromstring(fast, _safexml.make_parser())
        assert document.validate(root) is None
    # Whichever path runs, to_xml() behaves as the tree builder alone did.
    try:
        assert n.to_xml() == tree
    except (LocalProtocolError, ValueError) as exc:
        assert type(exc) is tree


@SETTINGS
@given(
    message_id=st.from_regex(r"[A-Za-z0-9_\-]{1,22}", fullmatch=True),
    kind_status=st.sampled_from([(k, s) for k, ss in imdn.ALLOWED_STATUSES.items() for s in ss]),
    recipient=st.none() | good_uris,
    subject=st.none() | st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20),
)
def test_ordinary_notifications_take_the_template_and_round_trip(**kw: Any) -> None:
    kind, status = kw["kind_status"]
    n = imdn.make_notification(
        message_id=kw["message_id"],
        datetime="2023-11-14T22:13:20.000Z",
        kind=kind,
        status=status,
        recipient_uri=kw["recipient"],
        subject=kw["subject"] if kw["recipient"] is not None else None,
    )
    if "\ufffe" in (n.subject or "") or "\uffff" in (n.subject or ""):
        return  # not XML characters: the tree builder refuses them, checked above
    fast = document._render_template(n)
    assert fast is not None
    assert fast == document._render_tree(n)
    assert imdn.parse_notification(fast) == n


# Text made of characters the template writes (no CR, no other control, no U+FFFE/U+FFFF),
# with the markup characters it must escape drawn often.
_writable = st.lists(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\ufffe\uffff")
    | st.sampled_from(["&", "<", ">", '"', "'", "]]>", "&amp;", "<!--", "\t", "\n", " "]),
    max_size=16,
).map("".join)


@SETTINGS
@given(
    message_id=st.from_regex(r"[A-Za-z0-9_\-.@!%*+~`']{1,22}", fullmatch=True),
    datetime=_writable,
    kind_status=st.sampled_from([(k, s) for k, ss in imdn.ALLOWED_STATUSES.items() for s in ss]),
    recipient=st.none() | good_uris,
    subject=st.none() | _writable,
)
def test_template_output_parses_to_the_notification_the_tree_output_parses_to(**kw: Any) -> None:
    # What a peer reads from our IMDN must not depend on which builder wrote it: the
    # hardened parser gives the same Notification for both outputs, and it is the one built.
    kind, status = kw["kind_status"]
    n = imdn.make_notification(
        message_id=kw["message_id"],
        datetime=kw["datetime"],
        kind=kind,
        status=status,
        recipient_uri=kw["recipient"],
        subject=kw["subject"] if kw["recipient"] is not None else None,
    )
    fast = document._render_template(n)
    assert fast is not None  # every value here is one the template writes
    from_template = imdn.parse_notification(fast)
    assert from_template == imdn.parse_notification(document._render_tree(n))
    assert from_template == n


def test_template_declines_extensions_and_bad_pairs() -> None:
    n = imdn.make_notification(
        message_id="m1",
        datetime="d",
        kind="delivery",
        status="error",
        extensions=(b'<r xmlns="urn:x">1</r>',),
    )
    assert document._render_template(n) is None
    assert imdn.parse_notification(n.to_xml()) == n
    odd = Notification(message_id="m1", datetime="d", kind=Kind.DISPLAY, status=Status.DELIVERED)
    assert document._render_template(odd) is None
    with pytest.raises(LocalProtocolError):
        odd.to_xml()


# -- CPIM build: checks on the lines vs re-parse of the bytes ---------------------------------


def _reference_build(
    lines: list[str], content_type: str, body: bytes, mime: list[tuple[str, str]], limits: cpim.Limits
) -> cpim.CpimMessage | None:
    """The builder as it was: serialise, then ``parse(strict=True)``; None when that refuses."""
    head = "".join(line + "\r\n" for line in lines) + "\r\n"
    mime_text = "".join(
        f"{line}\r\n" for line in [f"Content-Type: {content_type}", *(f"{n}: {v}" for n, v in mime)]
    )
    data = head.encode() + (mime_text + "\r\n").encode() + body
    try:
        return cpim.parse(data, strict=True, limits=limits)
    except CpimError:
        return None


_value_chars = st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n")
values = st.lists(
    _value_chars | st.sampled_from([" ", "<", ">", '"', "\\", ";", ":", "\x01", "\x7f"]), max_size=24
).map("".join)
names = st.sampled_from(
    [
        "From",
        "To",
        "cc",
        "DateTime",
        "Subject",
        "NS",
        "Require",
        "imdn.Message-ID",
        "x.Foo",
        "Bad Name",
        "a.b.c",
        "",
    ]
)
header_values = values | st.sampled_from(
    [
        "<sip:a@example.com>",
        "Alice <sip:a@example.com>",
        '"A \\"q\\"" <im:a@b>',
        "imdn <urn:ietf:params:imdn>",
        "x <urn:x>",
        "<urn:default>",
        "<urn:x#frag>",
        "2023-11-14T22:13:20.000Z",
        "2023-11-14 22:13:20",
        "imdn.Message-ID, Foo",
        "m-1",
    ]
)
params = st.lists(st.sampled_from([("lang", "fr"), ("lang", "x_y"), ("p", '"q s"'), ("n", "12")]), max_size=2)
raw_lines = st.builds(
    lambda n, p, v: f"{n}:{''.join(f';{a}={b}' for a, b in p)} {v}", names, params, header_values
)
no_sp_lines = st.builds(lambda n, v: f"{n}:{v}", names, header_values)


@SETTINGS
@given(
    lines=st.lists(raw_lines | no_sp_lines, max_size=8),
    content_type=st.sampled_from(
        ["text/plain", "message/imdn+xml", "text/plain; charset=utf-8", "bad", "a/b; c"]
    ),
    mime=st.lists(
        st.tuples(st.sampled_from(["Content-Disposition", "X-A", "Bad:Name", " Folded"]), values), max_size=3
    ),
    body=st.binary(max_size=40),
    limits=st.sampled_from(
        [
            cpim.DEFAULT_LIMITS,
            cpim.Limits(
                max_headers=3, max_header_bytes=80, max_mime_headers=2, max_mime_header_bytes=60, max_size=200
            ),
            cpim.Limits(
                max_headers=1, max_header_bytes=10, max_mime_headers=1, max_mime_header_bytes=30, max_size=60
            ),
        ]
    ),
)
def test_build_checks_agree_with_reparse(
    lines: list[str], content_type: str, mime: list[tuple[str, str]], body: bytes, limits: cpim.Limits
) -> None:
    expected = _reference_build(lines, content_type, body, mime, limits)
    try:
        built: cpim.CpimMessage | None = cpim_build.build_from_lines(
            lines, content_type=content_type, body=body, mime_headers=mime, limits=limits
        )
    except LocalProtocolError:
        built = None
    if built is None:
        # The line checks may only be stricter where a line would split on the wire.
        assert expected is None or any(not line for line in lines)
        return
    assert built == expected
    assert built.to_bytes() == expected.to_bytes()


def _imdn_by_lines(  # noqa: PLR0917 - build_imdn_message's arguments, spelled out
    note: Notification, from_: Any, to: Any, now: float, mid: str, routes: list[Any], prefix: str
) -> cpim.CpimMessage | str:
    """build_imdn_message's general way: every line through build_from_lines (or its error text)."""
    try:
        lines = [
            cpim_build.format_header("From", str(imdn.message._address(from_))),
            cpim_build.format_header("To", str(imdn.message._address(to))),
            cpim_build.format_header("NS", f"{prefix} <{imdn.IMDN_NS}>"),
            cpim_build.format_header(f"{prefix}.Message-ID", mid),
            cpim_build.format_header("DateTime", cpim.format_datetime(now)),
        ]
        lines += [
            cpim_build.format_header(f"{prefix}.IMDN-Route", str(imdn.message._address(r))) for r in routes
        ]
        return cpim_build.build_from_lines(
            lines,
            content_type=imdn.CONTENT_TYPE,
            body=note.to_xml(),
            mime_headers=[("Content-Disposition", "notification")],
        )
    except LocalProtocolError as exc:
        return str(exc)


# CPIM addresses as build_imdn_message takes them: bare URIs, "Name <URI>" strings (parsed),
# CpimAddress values (taken as they are), with characters the grammar refuses or must escape.
_address_texts = st.sampled_from(
    ["sip:a@example.com", "im:bob@b", "sip:x", "sip:a b@c", "sip:a\r\nTo: <sip:evil@x>", "sip:é@x", "", "<>"]
) | good_uris | texts
addresses = (
    _address_texts
    | st.builds(lambda n, u: f"{n} <{u}>", texts | st.sampled_from(['"A \\"q\\""', "Bob", "é ü"]), good_uris)
    | st.builds(cpim.CpimAddress, _address_texts, st.none() | texts)
)


@SETTINGS
@given(
    from_=addresses,
    to=addresses,
    mid=tokens,
    routes=st.lists(addresses, max_size=2),
    now=st.sampled_from([0.0, 1_700_000_000.123, 253402300799.999, 1e20, -1.5]),
    prefix=st.sampled_from(["imdn", "z", "IMDN", "a-b", "bad prefix", "x.y"]),
)
@example(from_="sip:bob@example.com", to="Alice <sip:alice@example.com>", mid="m-2", routes=["<sip:as@r>"],
         now=1_700_000_000.123, prefix="imdn")
@example(from_=cpim.CpimAddress("sip:bob@b", 'B "x"'), to="im:a@a", mid="x", routes=[], now=0.0, prefix="z")
def test_imdn_envelope_fast_path_equals_the_line_by_line_build(  # noqa: PLR0917 - hypothesis
    from_: Any, to: Any, mid: str, routes: list[Any], now: float, prefix: str
) -> None:
    # build_imdn_message takes the Message-ID and DateTime headers as made (build_with_known)
    # instead of parsing them again: the same message, or the same refusal, as parsing every line.
    note = imdn.make_notification(
        message_id="m-1", datetime="2023-11-14T22:13:20Z", kind="delivery", status="delivered"
    )
    if grammar_token(mid) is None:
        with pytest.raises(LocalProtocolError):
            imdn.build_imdn_message(
                note, from_=from_, to=to, now=now, message_id=mid, routes=routes, prefix=prefix
            )
        return
    expected = _imdn_by_lines(note, from_, to, now, mid, routes, prefix)
    try:
        built: cpim.CpimMessage | str = imdn.build_imdn_message(
            note, from_=from_, to=to, now=now, message_id=mid, routes=routes, prefix=prefix
        )
    except LocalProtocolError as exc:
        built = str(exc)
    assert built == expected
    if isinstance(built, cpim.CpimMessage):
        assert isinstance(expected, cpim.CpimMessage)
        assert built.to_bytes() == expected.to_bytes()
        # ... and it is what the strict parser reads back from its bytes.
        assert cpim.parse(built.to_bytes(), strict=True) == built


def grammar_token(text: str) -> object:
    return cpim.grammar.TOKEN_RE.fullmatch(text)


def test_build_with_known_refuses_a_known_ns_header() -> None:
    ns = cpim_message.CpimHeader("NS: z <urn:z>", None, "NS", cpim_message.CPIM_NS, (), "z <urn:z>")
    with pytest.raises(LocalProtocolError):
        cpim_build.build_with_known(["NS: z <urn:z>"], {0: ns}, mime=(), body=b"")


@pytest.mark.parametrize("line", ["Subject: a\r\nTo: <sip:evil@x>", "Subject: a\nb", ""])
def test_build_refuses_lines_that_would_split_on_the_wire(line: str) -> None:
    with pytest.raises(LocalProtocolError):
        cpim_build.build_from_lines(["From: <sip:a@b>", line], content_type="text/plain", body=b"")


@contextlib.contextmanager
def _self_check_on() -> Iterator[None]:
    cpim_build.SELF_CHECK = True
    try:
        yield
    finally:
        cpim_build.SELF_CHECK = False


@SETTINGS
@given(
    # XML 1.0 characters only: <subject> carries it (a control character is refused, as tested above).
    subject=st.none()
    | st.text(
        alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\ufffe\uffff"),
        max_size=20,
    ),
    name=st.none() | st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12),
    kind_status=st.sampled_from([(k, s) for k, ss in imdn.ALLOWED_STATUSES.items() for s in ss]),
)
def test_self_check_mode_accepts_everything_the_builders_make(
    subject: str | None, name: str | None, kind_status: tuple[Kind, Status]
) -> None:
    with _self_check_on():
        _build_and_recognise(subject, name, kind_status)


def _build_and_recognise(subject: str | None, name: str | None, kind_status: tuple[Kind, Status]) -> None:
    im = imdn.build_im(
        from_=cpim.CpimAddress("sip:alice@example.com", name),
        to=cpim.CpimAddress("sip:bob@example.com"),
        body=b"hi",
        now=1_700_000_000.0,
        subject=subject,
        notify=["positive-delivery", "display", "processing"],
    )
    kind, status = kind_status
    notification = imdn.build_imdn(im, kind=kind, status=status, now=1_700_000_001.0, include_subject=True)
    received = imdn.recognise(cpim.parse(notification.to_bytes()))
    assert received is not None
    assert received.notifications[0].kind == kind and received.notifications[0].status == status


def test_self_check_mode_catches_a_builder_that_lies(monkeypatch: pytest.MonkeyPatch) -> None:
    built = cpim_build.build_from_lines(["From: <sip:a@b>"], content_type="text/plain", body=b"x")
    # Simulate a serialiser bug: the bytes no longer say what the object holds.
    monkeypatch.setattr(
        cpim.CpimMessage, "to_bytes", lambda self: b"From: <sip:a@c>\r\n\r\nContent-Type: text/plain\r\n\r\nx"
    )
    with pytest.raises(AssertionError):
        cpim_build._self_check(built)


# -- CPIM header block splitting: one pass vs the loop ----------------------------------------

_pieces = st.sampled_from(
    [b"\r\n", b"\n", b"\r", b"A: b", b"From: <sip:a@b>", b"\xc3\xa9", b"\xff", b" ", b"x" * 30]
)


def _split(data: bytes, pos: int, **kw: Any) -> Any:
    lenient: list[str] = []
    try:
        result = cpim_message._header_lines(data, pos, lenient=lenient, what="CPIM", **kw)
    except CpimError as exc:
        return ("error", exc.reason, exc.status_code)
    return (result, lenient)


@SETTINGS
@given(
    data=st.lists(_pieces, max_size=16).map(b"".join),
    pos=st.integers(0, 3),
    max_count=st.integers(0, 6),
    max_bytes=st.integers(0, 120),
    allow_eof=st.booleans(),
)
@example(data=b"\r\n", pos=0, max_count=5, max_bytes=0, allow_eof=False)
@example(data=b"A: b\r\n\r\nbody", pos=0, max_count=1, max_bytes=7, allow_eof=False)
def test_one_pass_header_split_agrees_with_the_loop(
    data: bytes, pos: int, max_count: int, max_bytes: int, allow_eof: bool
) -> None:
    kw = {"max_count": max_count, "max_bytes": max_bytes, "allow_eof": allow_eof}
    fast = _split(data, pos, **kw)
    original = cpim_message._header_lines_crlf
    cpim_message._header_lines_crlf = lambda *a, **k: None
    try:
        slow = _split(data, pos, **kw)
    finally:
        cpim_message._header_lines_crlf = original
    assert fast == slow


# -- caches -----------------------------------------------------------------------------------


def test_cached_line_resolves_in_each_message_context() -> None:
    a = b"NS: x <urn:one>\r\nx.Foo: bar\r\n\r\nContent-Type: text/plain\r\n\r\n"
    b = b"NS: x <urn:two>\r\nx.Foo: bar\r\n\r\nContent-Type: text/plain\r\n\r\n"
    c = b"x.Foo: bar\r\n\r\nContent-Type: text/plain\r\n\r\n"
    for _ in range(2):  # the second round is served from the cache
        assert cpim.parse(a).get("urn:one", "Foo") is not None
        assert cpim.parse(b).get("urn:two", "Foo") is not None
        assert cpim.parse(b).get("urn:one", "Foo") is None
        assert cpim.parse(c).headers[0].namespace is None


def test_cached_line_keeps_its_lenient_notes_and_refusals() -> None:
    data = b"From:<sip:a@b>\r\n\r\nContent-Type: text/plain\r\n\r\n"
    for _ in range(2):
        assert cpim.parse(data).lenient
        with pytest.raises(CpimError):
            cpim.parse(data, strict=True)
    bad = b"From: not an address\r\n\r\nContent-Type: text/plain\r\n\r\n"
    for _ in range(2):
        with pytest.raises(CpimError):
            cpim.parse(bad)
    # Seen first under an undeclared prefix (unchecked), then as a core header (checked).
    bound = b"NS: z <urn:ietf:params:cpim-headers:>\r\nz.From: junk\r\n\r\nContent-Type: text/plain\r\n\r\n"
    cpim.parse(b"z.From: junk\r\n\r\nContent-Type: text/plain\r\n\r\n")
    with pytest.raises(CpimError):
        cpim.parse(bound)


def test_caches_stay_bounded_and_hold_short_keys_only() -> None:
    for i in range(3 * cpim_message._LINE_CACHE_MAX):
        cpim.parse(f"X-{i}: v\r\n\r\nContent-Type: text/x-{i}\r\nX-M-{i}: w\r\n\r\n".encode())
    assert len(cpim_message._LINE_CACHE) <= cpim_message._LINE_CACHE_MAX
    assert len(cpim_message._MIME_CACHE) <= cpim_message._MIME_CACHE_MAX
    long_line = "X-Long: " + "v" * 1000
    cpim.parse(f"{long_line}\r\n\r\nContent-Type: text/plain\r\n\r\n".encode())
    assert long_line not in cpim_message._LINE_CACHE
    assert all(len(k) <= cpim_message._LINE_CACHE_MAX_KEY for k in cpim_message._LINE_CACHE)
    # Per-message lines never enter the cache.
    cpim.parse(b"DateTime: 2023-11-14T22:13:20.000Z\r\n\r\nContent-Type: text/plain\r\n\r\n")
    assert "DateTime: 2023-11-14T22:13:20.000Z" not in cpim_message._LINE_CACHE


def test_cached_media_type_params_are_a_fresh_dict() -> None:
    msg = cpim.parse(b"\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n")
    params = msg.content_type_params
    params["boundary"] = "changed"
    assert msg.content_type_params == {"boundary": "b1"}


def test_cached_disposition_notification_refusals_repeat() -> None:
    for _ in range(2):
        assert [r.token for r in imdn.parse_disposition_notification("positive-delivery,display")] == [
            "positive-delivery",
            "display",
        ]
        with pytest.raises(ValueError):
            imdn.parse_disposition_notification("a b")


# -- XML depth bound --------------------------------------------------------------------------


def _nested(depth: int, siblings: int) -> bytes:
    inner = "<e/>" * siblings
    return ("<a>" * depth + inner + "</a>" * depth).encode()


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(1, 24), siblings=st.integers(0, 20), max_depth=st.integers(1, 20))
def test_depth_bound_is_exact(depth: int, siblings: int, max_depth: int) -> None:
    true_depth = depth + (1 if siblings else 0)
    outcome: Any
    with contextlib.suppress(ImdnError):
        outcome = _safexml.parse_xml(_nested(depth, siblings), max_depth=max_depth)
        assert true_depth <= max_depth, outcome
        return
    assert true_depth > max_depth


# -- the IMDN's wire form: build_imdn_bytes against build_imdn_message ------------------------

_addresses = (
    good_uris
    | good_uris.map(lambda u: f"Bob <{u}>")
    | texts
    | st.sampled_from(
        ["sip:bob@example.com", '"B\\"ob" <sip:b@x>', "Bob <sip:b@x", "<sip:b@x>", "sip:a b@x",
         "sip:a\r\nX: y", "sip:" + "a" * 300 + "@x", "", " sip:b@x"]
    )
)
_times = st.floats(min_value=-1e12, max_value=1e13, allow_nan=False) | st.sampled_from(
    [0.0, 1.9999996, 1765137600.123, 1765137600.9995, 1e300, float("inf"), float("nan")]
)


def _outcome(build: Any, **kw: Any) -> bytes | tuple[type[Exception], str]:
    try:
        return build(**kw)  # type: ignore[no-any-return]
    except (LocalProtocolError, ValueError) as exc:
        return type(exc), str(exc)


@SETTINGS
@given(
    from_=_addresses,
    to=_addresses,
    now=_times,
    message_id=tokens | st.sampled_from(["0123456789abcdef0123456789abcdef", "a" * 300]),
    routes=st.sampled_from([(), ("sip:proxy@example.com",), ("<bad",)]),
    recipient=st.none() | good_uris | st.just("sip:a b"),
    datetime=st.just("2023-11-14T22:13:20.000Z") | texts,
)
@example(from_="sip:bob@127.0.0.1", to="sip:alice@127.0.0.1", now=1765137600.123,
         message_id="0123456789abcdef", routes=(), recipient="sip:bob@127.0.0.1",
         datetime="2023-11-14T22:13:20.000Z")  # fmt: skip
def test_imdn_bytes_are_those_of_the_built_message_and_refusals_the_same(**kw: Any) -> None:
    note = Notification(
        message_id="m1",
        datetime=kw.pop("datetime"),
        kind=Kind.DELIVERY,
        status=Status.DELIVERED,
        recipient_uri=kw["recipient"],
        original_recipient_uri=kw.pop("recipient"),
    )
    for _ in range(2):  # the second time with the address lines remembered
        general = _outcome(lambda **k: imdn.build_imdn_message(note, **k).to_bytes(), **kw)
        fast = _outcome(lambda **k: imdn.message.build_imdn_bytes(note, **k), **kw)
        assert fast == general


def test_imdn_bytes_respect_the_cpim_size_limits_as_the_builder_does() -> None:
    note = imdn.make_notification(
        message_id="m1", datetime="d", kind="delivery", status="delivered", recipient_uri="sip:b@x"
    )
    limits = cpim_message.DEFAULT_LIMITS
    # A To just long enough that the header block passes its limit by one byte, and one fitting.
    base = imdn.build_imdn_message(note, from_="sip:a@x", to="sip:b@x", now=0.0, message_id="n1")
    head = base.to_bytes().index(b"\r\n\r\n") + 3  # as the builder counts: up to the empty line's CR
    room = limits.max_header_bytes - head
    for extra in (room, room + 1):
        to = "sip:b" + "c" * extra + "@x"
        general = _outcome(lambda **k: imdn.build_imdn_message(note, **k).to_bytes(), from_="sip:a@x",
                           to=to, now=0.0, message_id="n1")  # fmt: skip
        fast = _outcome(imdn.message.build_imdn_bytes, notification=note, from_="sip:a@x", to=to, now=0.0,
                        message_id="n1")  # fmt: skip
        assert fast == general
        assert isinstance(fast, bytes) is (extra == room)


@pytest.mark.parametrize("kind", ["delivery", Kind.DISPLAY, "Delivery", "read", 3, ["delivery"], None])
@pytest.mark.parametrize("status", ["delivered", Status.DISPLAYED, "bogus", 7, ("x",)])
def test_make_notification_reads_kind_and_status_as_the_enums_do(kind: Any, status: Any) -> None:
    try:
        expected: Any = (Kind(kind), Status(status))
    except ValueError as exc:
        expected = str(exc)
    try:
        n = imdn.make_notification(message_id="m1", datetime="d", kind=kind, status=status)
    except LocalProtocolError as exc:
        got: Any = exc.reason if isinstance(expected, str) else "refused"
        if not isinstance(expected, str):
            assert "not allowed" in str(exc)  # a valid pair of the wrong kind (RFC 5438 §5)
            return
        assert got == expected
        return
    assert (n.kind, n.status) == expected and type(n.kind) is Kind and type(n.status) is Status
    assert n.extensions == () and n.status_extensions == ()


def _address_line_by_parsing(name: str, value: str) -> str | None:
    """The From/To line as the general path makes it: format, then parse it back strictly."""
    try:
        line = cpim_build.format_header(name, str(imdn_message._address(value)))
        cpim_build.check_header_lines([line])
    except (LocalProtocolError, ValueError):
        return None
    return line


@SETTINGS
@given(
    st.sampled_from(["From", "To"]),
    st.one_of(
        st.text(alphabet="sipm:@<>\"' \t\r\n\x00\x7f;=?&%[]._-abcAB19/\\é", max_size=40),
        st.builds(lambda s, rest: f"{s}:{rest}", st.sampled_from(["sip", "im", "tel", "x+y.z", "9p", ""]),
                  st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x3FF), max_size=30)),
    ),
)
@example("To", "sip:alice-7@127.0.0.1:5060")
@example("From", "Alice <sip:a@b>")
@example("To", "sip:a b@c")
@example("To", "sip:")
def test_address_line_of_a_bare_uri_equals_the_parsed_line(name: str, value: str) -> None:
    # _address_line writes a bare URI's line without the parser: the same line, or the same
    # refusal, as formatting it and parsing it back. (Cleared first: the table is shared.)
    imdn_message._ADDRESS_LINES.clear()
    expected = _address_line_by_parsing(name, value)
    for _ in range(2):  # written, then read from the table
        assert imdn_message._address_line(name, value) == expected
