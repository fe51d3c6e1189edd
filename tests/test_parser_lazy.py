"""The parser's regular-section path: every line checked at once, header rows built on first use.

``parser._parse_regular_head`` answers for header sections ``_REGULAR_HEAD_RE``
matches (CRLF line ends only, no control characters, no folding) and leaves
their rows to ``_LazyHeaders``. Here it is held to the general path
(``_parse_head_general``): the same accepted messages with the same start
line, rows and Content-Length once built, and the same errors (status and
text) for everything else, under default and tight limits. Typed values of
lazily built rows must still fail with ``SipParseError`` when read.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipimdn import Headers, Request, SipParseError, parse_message
from sipimdn import parser as parser_module
from sipimdn.message import Message
from sipimdn.parser import DEFAULT_LIMITS, Limits, StreamFramer

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TYPICAL = (
    b"MESSAGE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.10:50601;branch=z9hG4bK776sgdkse;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=49583\r\n'
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: asd88asd77a@1.2.3.4\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)


def rows_of(message: Message) -> list[tuple[str, str, str, str]]:
    return list(message.headers._rows)


def general_outcome(data: bytes, limits: Limits = DEFAULT_LIMITS) -> object:
    """parse_message with the regular-section path switched off."""
    saved = parser_module._parse_regular_head
    parser_module._parse_regular_head = lambda head, limits: None  # type: ignore[assignment]
    try:
        return outcome(data, limits)
    finally:
        parser_module._parse_regular_head = saved


def outcome(data: bytes, limits: Limits = DEFAULT_LIMITS, *, lazy_rows: bool = True) -> object:
    try:
        message = parse_message(data, limits, lazy_rows=lazy_rows)
    except SipParseError as exc:
        return ("error", exc.status_code, str(exc))
    start = (
        (message.method, str(message.uri), message._uri_text)
        if isinstance(message, Request)
        else (message.status_code, message.reason)
    )
    return (start, rows_of(message), message.body, message.to_bytes())


# -- the typical message ------------------------------------------------------------------------


def test_typical_message_takes_the_regular_path_and_builds_rows_on_first_read() -> None:
    message = parse_message(TYPICAL)
    assert type(message.headers) is parser_module._LazyHeaders
    assert isinstance(message.headers, Headers)
    assert len(message.headers) == 8  # the first read builds the rows ...
    assert type(message.headers) is Headers  # ... and the object is a plain Headers from then on
    assert not hasattr(message.headers, "_source")
    assert outcome(TYPICAL) == general_outcome(TYPICAL)


@pytest.mark.parametrize(
    "first_use",
    [
        lambda m: m.headers.get("call-id"),
        lambda m: m.headers.get_all("via"),
        lambda m: "To" in m.headers,
        lambda m: list(m.headers),
        lambda m: list(m.headers.items()),
        lambda m: list(m.headers.raw_lines()),
        lambda m: m.headers.copy(),
        lambda m: m.headers == parse_message(TYPICAL).headers,
        lambda m: repr(m.headers),
        lambda m: m.headers.add("Subject", "hi"),
        lambda m: m.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKx"),
        lambda m: m.headers.set("Max-Forwards", "69"),
        lambda m: m.headers.remove("Max-Forwards"),
        lambda m: m.headers.replace_first_value("Via", "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKx"),
        lambda m: m.top_via,
        lambda m: m.call_id,
        lambda m: m.cseq,
        lambda m: m.validate(),
        lambda m: m.stamp_received("198.51.100.7", 40000),
        lambda m: m.to_bytes(),
        lambda m: m.copy(),
    ],
)
def test_every_first_use_sees_the_rows_the_general_path_builds(first_use: object) -> None:
    lazy = parse_message(TYPICAL)
    eager = parse_message(TYPICAL)
    assert type(lazy.headers) is parser_module._LazyHeaders
    eager.headers._rows  # noqa: B018 - built first, then used the same way
    assert callable(first_use)
    first_use(lazy)
    first_use(eager)
    assert type(lazy.headers) is Headers
    assert lazy.headers._rows == eager.headers._rows
    assert lazy.to_bytes() == eager.to_bytes()


def test_copies_of_an_unbuilt_message_are_independent() -> None:
    message = parse_message(TYPICAL)
    twin = message.copy()
    twin.headers.set("Max-Forwards", "1")
    assert message.max_forwards == 70 and twin.max_forwards == 1
    shallow = copy.copy(parse_message(TYPICAL).headers)
    assert shallow.get("max-forwards") == "70"


def test_lazily_built_rows_still_raise_typed_errors_when_read() -> None:
    bad = TYPICAL.replace(b"Via: SIP/2.0/TCP 192.0.2.10:50601;", b"Via: SIP/2.0/TCP 192.0.2.10:99999;")
    bad = bad.replace(b"CSeq: 1 MESSAGE", b"CSeq: x MESSAGE")
    message = parse_message(bad)  # typed values are checked when read, as before
    assert type(message.headers) is parser_module._LazyHeaders
    with pytest.raises(SipParseError) as via_error:
        message.top_via  # noqa: B018
    assert via_error.value.status_code == 400
    with pytest.raises(SipParseError, match="bad CSeq"):
        message.cseq  # noqa: B018
    with pytest.raises(SipParseError):
        parse_message(bad).validate()
    two_call_ids = TYPICAL.replace(b"Call-ID: asd88asd77a@1.2.3.4\r\n", b"Call-ID: a@b\r\ni: c@d\r\n")
    with pytest.raises(SipParseError, match="more than one Call-ID"):
        parse_message(two_call_ids).call_id  # noqa: B018


def test_the_stream_framer_takes_the_regular_path_too() -> None:
    framer = StreamFramer()
    framer.feed(TYPICAL + TYPICAL.replace(b"tag=49583", b"tag=2"))
    first, second = list(framer)
    assert isinstance(first, Message) and isinstance(second, Message)
    assert type(first.headers) is parser_module._LazyHeaders
    assert first.from_.tag == "49583" and second.from_.tag == "2"
    assert rows_of(first) == rows_of(parse_message(TYPICAL))


# -- differential: the regular path against the general one ------------------------------------

start_lines = st.sampled_from(
    [
        "MESSAGE sip:bob@biloxi.example.com SIP/2.0",
        "INVITE sip:b@b.example SIP/2.0",
        "SIP/2.0 200 OK",
        "SIP/2.0 180 Ringing \xe9t\xe9",
        "sip/2.0 200 OK",
        "MESSAGE sip:bob@b.example SIP/3.0",
        "MESSAGE  sip:bob@b.example SIP/2.0",
        "MESSAGE sip:bob@b.example?x=y SIP/2.0",
        "ME<SSAGE sip:bob@b.example SIP/2.0",
        "SIP/2.0 099 Low",
        "MESSAGE sip:b\tob@b.example SIP/2.0",
        "MESSAGE sip:bob@b.example SIP/2.0 ",
        "",
    ]
)
names = st.sampled_from(
    [
        "Via",
        "v",
        "From",
        "To",
        "t",
        "Call-ID",
        "CSeq",
        "Content-Type",
        "Content-Length",
        "content-length",
        "CONTENT-LENGTH",
        "l",
        "L",
        "Content-Lengthy",
        "X-Content-Length",
        "Subject",
        "X-\xe9",
        "Bad Name",
        "Na<me",
        "",
        " Via",
        "\tSubject",
        "Max-Forwards",
    ]
)
separators = st.sampled_from([":", ": ", " : ", "\t:", ":\t", "", "  :  "])
values = st.one_of(
    st.sampled_from(
        [
            "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa",
            "<sip:a@a.example>;tag=1",
            "1 MESSAGE",
            "text/plain",
            "0",
            "5",
            "05",
            " 5 ",
            "5 5",
            "-1",
            "\u0665",
            "99999999999999999999",
            "",
            "a,b",
            '"q\\\x01"',
            "x\x00y",
            "x\x7fy",
            "\xe9",
        ]
    ),
    st.text(st.sampled_from('ab1 \t:;,<>"\\\x01\r\n\xe9'), max_size=8),
)
line_ends = st.sampled_from(["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n"])
header_lines = st.builds(lambda n, sep, v, end: f"{n}{sep}{v}{end}", names, separators, values, line_ends)
# Mostly lines the regular path takes, now and then one it must leave to the general path.
good_names = st.sampled_from(
    [
        "Via",
        "v",
        "From",
        "To",
        "Call-ID",
        "i",
        "CSeq",
        "Content-Type",
        "c",
        "Subject",
        "X-A.b!%*_+`'~",
        "Max-Forwards",
        "Contact",
        "Lx",
        "Content-Lengthy",
        "CSeq ",
    ]
)
good_values = st.one_of(
    st.sampled_from(["5", "x", "", "1 MESSAGE", "<sip:a@a.example>;tag=1", "a, b", '"a\\"b"']),
    st.text(st.sampled_from('ab5 \t:;,<>"\\\xe9\U0001f600'), max_size=10),
)
separators_ok = st.sampled_from([":", ": ", " :", "\t: ", ":\t"])
regular_lines = st.builds(lambda n, sep, v: f"{n}{sep}{v}\r\n", good_names, separators_ok, good_values)
content_length_lines = st.builds(
    lambda n, sep, v: f"{n}{sep}{v}\r\n",
    st.sampled_from(["Content-Length", "l", "L", "content-LENGTH"]),
    separators_ok,
    st.sampled_from(["0", "5", "05", "5 ", "\t7", "x", "", "5 5", "\u0665"]),
)
mostly_regular_lines = st.one_of(
    regular_lines, regular_lines, regular_lines, content_length_lines, header_lines
)


@st.composite
def near_regular_heads(draw: st.DrawFn) -> list[str]:
    lines = draw(st.lists(regular_lines, max_size=10))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        lines.insert(draw(st.integers(0, len(lines))), draw(content_length_lines))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(mostly_regular_lines))
    return lines


good_start_lines = st.one_of(
    st.sampled_from(["MESSAGE sip:bob@biloxi.example.com SIP/2.0", "SIP/2.0 200 OK"]), start_lines
)
tight_limits = st.one_of(
    st.just(DEFAULT_LIMITS),
    st.just(DEFAULT_LIMITS),
    st.sampled_from(
        [
            DEFAULT_LIMITS,
            Limits(max_headers=3),
            Limits(max_headers=0),
            Limits(max_start_line=20),
            Limits(max_header_bytes=120),
            Limits(max_body=3),
            Limits(max_message=150),
        ]
    ),
)


def head_of(start: str, lines: list[str]) -> str:
    return start + "\r\n" + "".join(lines)


@SETTINGS
@given(start_lines, st.lists(header_lines, max_size=8), st.binary(max_size=8), tight_limits)
def test_parse_message_regular_path_equals_general_path(
    start: str, lines: list[str], body: bytes, limits: Limits
) -> None:
    data = (head_of(start, lines) + "\r\n").encode("utf-8", "surrogateescape") + body
    assert outcome(data, limits) == general_outcome(data, limits)


@SETTINGS
@given(good_start_lines, near_regular_heads(), st.binary(max_size=8), tight_limits)
def test_parse_message_regular_path_equals_general_path_on_near_regular_input(
    start: str, lines: list[str], body: bytes, limits: Limits
) -> None:
    data = (head_of(start, lines) + "\r\n").encode("utf-8", "surrogateescape") + body
    assert outcome(data, limits) == general_outcome(data, limits)


@SETTINGS
@given(start_lines, st.lists(header_lines, max_size=8), st.binary(max_size=8), tight_limits)
def test_rows_built_at_once_equal_rows_built_lazily(
    start: str, lines: list[str], body: bytes, limits: Limits
) -> None:
    # lazy_rows=False (what the stack asks for) against the default, and against the
    # general path alone: the same message or the same error.
    data = (head_of(start, lines) + "\r\n").encode("utf-8", "surrogateescape") + body
    eager = outcome(data, limits, lazy_rows=False)
    assert eager == outcome(data, limits)
    assert eager == general_outcome(data, limits)


@SETTINGS
@given(good_start_lines, near_regular_heads(), st.binary(max_size=8), tight_limits)
def test_rows_built_at_once_equal_rows_built_lazily_on_near_regular_input(
    start: str, lines: list[str], body: bytes, limits: Limits
) -> None:
    data = (head_of(start, lines) + "\r\n").encode("utf-8", "surrogateescape") + body
    assert outcome(data, limits, lazy_rows=False) == outcome(data, limits)


def test_rows_built_at_once_for_the_typical_message() -> None:
    message = parse_message(TYPICAL, lazy_rows=False)
    assert type(message.headers) is Headers
    assert outcome(TYPICAL, lazy_rows=False) == outcome(TYPICAL)


@SETTINGS
@given(good_start_lines, near_regular_heads(), tight_limits)
def test_regular_head_answers_only_as_the_general_path_would(
    start: str, lines: list[str], limits: Limits
) -> None:
    head = head_of(start, lines).rstrip("\r\n").encode("utf-8", "surrogateescape")
    try:
        general = parser_module._parse_head_general(head, limits)
    except SipParseError as exc:
        general_error: SipParseError | None = exc
    else:
        general_error = None
    try:
        regular = parser_module._parse_regular_head(head, limits)
    except SipParseError as exc:
        # Only a start-line error may come from the regular path, and it is the general one.
        assert general_error is not None
        assert (exc.status_code, str(exc)) == (general_error.status_code, str(general_error))
        return
    if regular is None:
        return  # not regular: the general path decides alone
    assert general_error is None, f"regular path accepted what the general path refuses: {general_error}"
    assert regular[0] == general[0]
    assert regular[2] == general[2]
    assert type(regular[1]) is parser_module._LazyHeaders
    assert regular[1]._rows == general[1]._rows


@SETTINGS
@given(st.lists(header_lines, max_size=6))
def test_regular_lines_give_the_rows_of_a_cold_general_parse(lines: list[str]) -> None:
    # Warm caches (line rows, names, start lines) must not change what the lazy rows are.
    data = (head_of("MESSAGE sip:b@b.example SIP/2.0", lines) + "\r\n").encode("utf-8", "surrogateescape")
    warm = outcome(data)
    parser_module._LINE_ROWS.clear()
    parser_module._NAME_KEYS.clear()
    parser_module._START_LINES.clear()
    assert general_outcome(data) == warm


def test_an_early_bare_lf_empty_line_still_ends_the_head() -> None:
    # The first CRLF CRLF is only trusted when the head before it is regular; here a bare-LF
    # empty line comes first and ends the head, as it always did.
    data = b"MESSAGE sip:b@b.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n\nbody\r\n\r\nmore"
    assert outcome(data) == general_outcome(data)
    message = parse_message(data)
    assert message.body == b"body\r\n\r\nmore"


@pytest.mark.parametrize(
    "head",
    [
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length: 5\r\nl: 5",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length: 5\r\nl: 6",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length: 05\r\nCONTENT-LENGTH : 5",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length: x",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length: \xd9\xa5",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length:",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Length : \t7\t",
        b"MESSAGE sip:b@b.example SIP/2.0\r\nContent-Lengthy: x\r\nX-l: y",
    ],
)
def test_content_length_spellings(head: bytes) -> None:
    data = head + b"\r\n\r\n1234567"
    assert outcome(data) == general_outcome(data)


def test_copy_and_pickle_of_unbuilt_headers() -> None:
    import pickle

    headers = parse_message(TYPICAL).headers
    for twin in (copy.copy(headers), copy.deepcopy(headers), pickle.loads(pickle.dumps(headers))):
        assert type(twin) is parser_module._LazyHeaders
        twin.set("Max-Forwards", "1")
        assert twin.get("max-forwards") == "1"
    assert type(headers) is parser_module._LazyHeaders
    assert headers.get("max-forwards") == "70"


# -- digit runs beyond int()'s 4,300-digit limit are SipParseErrors, not ValueErrors -------------

HUGE = "1" * 5000
ZEROS = "0" * 5000


@pytest.mark.parametrize("regular", [True, False])
def test_a_content_length_of_thousands_of_digits_is_a_413(regular: bool) -> None:
    data = TYPICAL.replace(b"Content-Length: 5", b"Content-Length: " + HUGE.encode())
    if not regular:
        data = data.replace(b"\r\nTo:", b"\nTo:")
    with pytest.raises(SipParseError) as error:
        parse_message(data)
    assert error.value.status_code == 413
    padded = TYPICAL.replace(b"Content-Length: 5", b"Content-Length: " + ZEROS.encode() + b"5")
    assert parse_message(padded).body == b"hello"
    assert parse_message(padded).content_length == 5
    framer = StreamFramer()
    framer.feed(data)
    with pytest.raises(SipParseError):
        list(framer)


@pytest.mark.parametrize(
    ("old", "new", "read"),
    [
        (b"Max-Forwards: 70", b"Max-Forwards: " + HUGE.encode(), lambda m: m.max_forwards),
        (b"192.0.2.10:50601;", b"192.0.2.10:" + HUGE.encode() + b";", lambda m: m.top_via),
        (b"192.0.2.10:50601;", b"192.0.2.10 :" + HUGE.encode() + b";", lambda m: m.top_via),
        (b";rport", b";rport=" + HUGE.encode(), lambda m: m.top_via),
        (b";rport", b";ttl=" + HUGE.encode(), lambda m: m.top_via),
        (
            b"<sip:bob@biloxi.example.com>",
            b"<sip:bob@biloxi.example.com:" + HUGE.encode() + b">",
            lambda m: m.to,
        ),
    ],
)
def test_huge_digit_runs_in_typed_values_are_parse_errors(old: bytes, new: bytes, read: object) -> None:
    data = TYPICAL.replace(old, new, 1)
    assert data != TYPICAL
    message = parse_message(data)
    assert callable(read)
    with pytest.raises(SipParseError):
        read(message)


def test_huge_request_uri_port_is_a_parse_error() -> None:
    data = TYPICAL.replace(
        b"MESSAGE sip:bob@biloxi.example.com SIP/2.0",
        b"MESSAGE sip:b@b.example:" + HUGE.encode() + b" SIP/2.0",
    )
    with pytest.raises(SipParseError) as error:
        parse_message(data)
    assert error.value.status_code == 400


def test_zero_padded_values_keep_their_meaning() -> None:
    data = TYPICAL.replace(b";rport", b";rport=" + ZEROS.encode() + b"5060;ttl=" + ZEROS.encode())
    data = data.replace(b"Max-Forwards: 70", b"Max-Forwards: " + ZEROS.encode() + b"70")
    message = parse_message(data)
    assert message.top_via.rport == 5060 and message.top_via.ttl == 0
    assert message.max_forwards == 70
    ok_ttl = parse_message(TYPICAL.replace(b";rport", b";ttl=0"))
    assert ok_ttl.top_via.ttl == 0
