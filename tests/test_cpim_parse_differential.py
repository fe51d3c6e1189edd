"""``cpim.parse`` against a plain reference parser (differential, hypothesis).

The parser is tuned for the receive path: line and MIME caches, a one-pass
header split, the grammar match tried before the reasons for a refusal, the
message object built without the dataclass ``__init__``. The reference below
is the same reading of RFC 3862 written plainly (no cache, line by line, every
check in the order the RFC states it): for any input both must give an equal
message with the same lenient notes, or the same refusal (reason and status),
on a first parse and on a second one served from the caches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipimdn import cpim
from sipimdn.cpim import grammar
from sipimdn.cpim import message as message_module
from sipimdn.cpim.message import (
    _CHECKED_ADDRESS,
    _CTL_RE,
    _FIELD_NAME_RE,
    CPIM_NS,
    DEFAULT_LIMITS,
    CpimHeader,
    CpimMessage,
    Limits,
    MimeHeader,
    parse_media_type,
)
from sipimdn.cpim.values import parse_address, parse_datetime
from sipimdn.errors import CpimError

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the reference ----------------------------------------------------------------------------


def reference_parse(data: bytes, limits: Limits = DEFAULT_LIMITS, strict: bool = False) -> CpimMessage:
    if len(data) > limits.max_size:
        raise CpimError(f"message/cpim body larger than {limits.max_size} bytes", 413)
    lenient: list[str] = []
    lines, pos = _lines(data, 0, limits.max_headers, limits.max_header_bytes, "CPIM", lenient, False)
    headers = _cpim_headers(lines, lenient)
    mime_lines, pos = _lines(
        data, pos, limits.max_mime_headers, limits.max_mime_header_bytes, "MIME", lenient, True
    )
    mime = _mime_headers(mime_lines)
    msg = CpimMessage(headers=headers, mime_headers=mime, body=data[pos:], lenient=tuple(lenient))
    ctype = msg.mime_header("Content-Type")
    if ctype is None:
        raise CpimError("encapsulated MIME entity has no Content-Type (RFC 3862 §2.4)")
    try:
        parse_media_type(ctype)
    except ValueError as exc:
        raise CpimError(str(exc)) from None
    if strict and lenient:
        raise CpimError(f"not strict RFC 3862: {'; '.join(lenient)}")
    return msg


def _lines(  # noqa: PLR0917 - a reference, written plainly
    data: bytes, pos: int, max_count: int, max_bytes: int, what: str, lenient: list[str], allow_eof: bool
) -> tuple[list[str], int]:
    lines: list[str] = []
    start = pos
    bare_lf = False
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if allow_eof:
                rest = data[pos:]
                if rest.strip(b"\r"):
                    lines.append(_utf8(rest.rstrip(b"\r"), what))
                    lenient.append(f"{what} header block not terminated by an empty line")
                return lines, len(data)
            raise CpimError(f"{what} header block not terminated by an empty line")
        if nl - start > max_bytes:
            raise CpimError(f"{what} header block longer than {max_bytes} bytes", 413)
        line = data[pos:nl]
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            bare_lf = True
        pos = nl + 1
        if not line:
            break
        if len(lines) >= max_count:
            raise CpimError(f"more than {max_count} {what} headers", 413)
        lines.append(_utf8(line, what))
    if bare_lf:
        lenient.append(f"{what} lines end in bare LF")
    return lines, pos


def _utf8(line: bytes, what: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise CpimError(f"{what} header is not valid UTF-8 (RFC 3862 §2.2)") from None


def _cpim_headers(lines: list[str], lenient: list[str]) -> tuple[CpimHeader, ...]:
    prefixes: dict[str, str] = {}
    default_ns = CPIM_NS
    out: list[CpimHeader] = []
    for raw in lines:
        # RFC 3862 §2.2: no folding, no control characters, then the §3.6 grammar.
        if raw[:1] in (" ", "\t"):
            raise CpimError("CPIM header folding/leading whitespace is not allowed (RFC 3862 §2.2)")
        if _CTL_RE.search(raw) is not None:
            raise CpimError("control character in a CPIM header; use an escape (RFC 3862 §2.2)")
        m = grammar.HEADER_LINE_RE.fullmatch(raw)
        if m is None:
            m = grammar.HEADER_LINE_LENIENT_RE.fullmatch(raw)
            if m is None:
                raise CpimError(f"malformed CPIM header line: {raw[:80]!r}")
            lenient.append(f"no SP after the colon in {raw.split(':', 1)[0]!r}")
        params_text = m.group("params")
        params = tuple(
            (p.group("pname"), p.group("pvalue")) for p in grammar.PARAMETER_RE.finditer(params_text)
        )
        prefix = m.group("prefix")
        header = CpimHeader(
            raw=raw,
            prefix=prefix,
            name=m.group("local"),
            namespace=default_ns if prefix is None else prefixes.get(prefix),
            params=params,
            value=m.group("value"),
        )
        if header.namespace == CPIM_NS:
            value = header.value.rstrip(" ")
            if header.name == "NS":
                ns = grammar.NS_VALUE_RE.fullmatch(value)
                if ns is None:
                    raise CpimError(f"malformed NS header: {value!r}")
                uri = ns.group("uri")
                if "#" in uri:
                    raise CpimError(f"namespace URI must not have a fragment (RFC 3862 §3.4): {uri!r}")
                if ns.group("prefix") is None:
                    default_ns = uri
                else:
                    prefixes[ns.group("prefix")] = uri
            elif header.name in _CHECKED_ADDRESS:
                try:
                    parse_address(header.value)
                except ValueError as exc:
                    raise CpimError(f"{header.full_name}: {exc}") from None
            elif header.name == "DateTime":
                try:
                    if not parse_datetime(value).strict:
                        lenient.append(f"DateTime is not strict RFC 3339: {value!r}")
                except ValueError as exc:
                    raise CpimError(str(exc)) from None
            elif header.name == "Subject":
                lang = header.lang
                if lang is not None and grammar.LANGUAGE_TAG_RE.fullmatch(lang) is None:
                    raise CpimError(f"bad Subject language tag: {lang!r}")
                _ = header.text
            elif header.name == "Require":
                for item in value.split(","):
                    if grammar.HEADER_NAME_RE.fullmatch(item.strip()) is None:
                        raise CpimError(f"malformed Require entry: {item!r}")
        out.append(header)
    return tuple(out)


def _mime_headers(lines: list[str]) -> tuple[MimeHeader, ...]:
    out: list[MimeHeader] = []
    for raw in lines:
        if raw[:1] in (" ", "\t"):
            if not out:
                raise CpimError("MIME header block starts with a continuation line")
            prev = out[-1]
            out[-1] = MimeHeader(prev.name, (prev.value + " " + raw.strip()).strip(), prev.raw + "\r\n" + raw)
            continue
        name, colon, value = raw.partition(":")
        if not colon or _FIELD_NAME_RE.fullmatch(name) is None:
            raise CpimError(f"malformed MIME header line: {raw[:80]!r}")
        out.append(MimeHeader(name=name, value=value.strip(), raw=raw))
    return tuple(out)


# -- the comparison ---------------------------------------------------------------------------


def _outcome(parse: Any, data: bytes, **kw: Any) -> Any:
    try:
        msg = parse(data, **kw)
    except CpimError as exc:
        return ("refused", exc.reason, exc.status_code)
    return (msg.headers, msg.mime_headers, msg.body, msg.lenient)


def _same(data: bytes, **kw: Any) -> None:
    expected = _outcome(reference_parse, data, **kw)
    assert _outcome(cpim.parse, data, **kw) == expected
    assert _outcome(cpim.parse, data, **kw) == expected  # served from the caches


_cpim_lines = st.sampled_from(
    [
        "From: <sip:alice@example.com>",
        'From: "Alice \\"A\\"" <sip:alice@example.com>',
        "From:<sip:alice@example.com>",
        "From: not an address",
        "To: Bob <sip:bob@example.com>",
        "cc: <im:carol@example.com>",
        "DateTime: 2026-06-15T10:00:00Z",
        "DateTime: 2026-06-15 10:00:00",
        "DateTime: 2026-13-45T10:00:00Z",
        "NS: imdn <urn:ietf:params:imdn>",
        "NS: imdn<urn:ietf:params:imdn>",
        "NS: <urn:example:default>",
        "NS: z <urn:ietf:params:cpim-headers:>",
        "NS: bad urn:no:brackets",
        "NS: f <urn:x#frag>",
        "imdn.Message-ID: 34jk324j",
        "imdn.Disposition-Notification: positive-delivery, display",
        "z.From: junk",
        "z.To: <sip:x@y>",
        "Subject:;lang=fr Bonjour",
        "Subject:;lang=123456789 x",
        "Subject: \\uD800 lone",
        "Subject: tab\\there",
        "Require: imdn.Message-ID, Subject",
        "Require: bad entry!",
        "X-Thing:;p=\"q\";r=1 value  ",
        " From: <sip:lead@example.com>",
        "\tTo: <sip:tab@example.com>",
        "Bad\x01Name: x",
        "Sub: ctl\x7f",
        "No colon here",
        "x.y.z: too many dots",
        "Héllo: wörld",
        "Key: ",
        "",
    ]
)
_mime_lines = st.sampled_from(
    [
        "Content-Type: text/plain;charset=UTF-8",
        "Content-type: message/imdn+xml",
        "Content-Type: notatype",
        "Content-Disposition: notification",
        " folded continuation",
        "Bad Name: x",
        "NoColon",
        "Content-Length: 12",
    ]
)
_texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
_endings = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"])


def _block(lines: list[str], endings: list[str]) -> str:
    return "".join(line + endings[i % len(endings)] for i, line in enumerate(lines))


@SETTINGS
@given(
    cpim_lines=st.lists(_cpim_lines | _texts, max_size=8),
    mime_lines=st.lists(_mime_lines | _texts, max_size=4),
    endings=st.lists(_endings, min_size=1, max_size=3),
    terminated=st.booleans(),
    body=st.binary(max_size=8),
    strict=st.booleans(),
)
@example(
    cpim_lines=["From: <sip:a@b>", "imdn.Message-ID: x"], mime_lines=["Content-Type: text/plain"],
    endings=["\r\n"], terminated=True, body=b"hi", strict=False,
)
def test_parse_agrees_with_the_reference(  # noqa: PLR0917 - hypothesis
    cpim_lines: list[str],
    mime_lines: list[str],
    endings: list[str],
    terminated: bool,
    body: bytes,
    strict: bool,
) -> None:
    text = _block(cpim_lines, endings) + "\r\n" + _block(mime_lines, endings) + ("\r\n" if terminated else "")
    _same(text.encode("utf-8", "surrogatepass") + body, strict=strict)


@SETTINGS
@given(data=st.binary(max_size=80))
@example(data=b"\r\nContent-Type: text/plain\r\n\r\n")
@example(data=b"\xff: x\r\n\r\nContent-Type: text/plain\r\n\r\n")
def test_any_bytes_agree_with_the_reference(data: bytes) -> None:
    _same(data)


@given(
    count=st.integers(0, 5),
    max_headers=st.integers(0, 4),
    max_header_bytes=st.integers(0, 60),
)
@SETTINGS
def test_limits_agree_with_the_reference(count: int, max_headers: int, max_header_bytes: int) -> None:
    limits = Limits(max_headers=max_headers, max_header_bytes=max_header_bytes, max_mime_headers=max_headers)
    data = ("".join(f"X-{i}: v\r\n" for i in range(count)) + "\r\nContent-Type: text/plain\r\n\r\n").encode()
    _same(data, limits=limits)


def test_parsed_objects_are_the_frozen_dataclasses_their_init_makes() -> None:
    # The parser builds CpimHeader and CpimMessage without their __init__: same values, same
    # equality and hash, still immutable.
    msg = cpim.parse(b"imdn.Message-ID: m1\r\nFrom: <sip:a@b>\r\n\r\nContent-Type: text/plain\r\n\r\nhi")
    reference = reference_parse(msg.to_bytes())
    assert msg == reference and hash(msg.headers) == hash(reference.headers)
    header = msg.headers[0]
    assert (header.raw, header.prefix, header.name, header.namespace, header.params, header.value) == (
        "imdn.Message-ID: m1", "imdn", "Message-ID", None, (), "m1",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.value = "m2"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.body = b""  # type: ignore[misc]


# -- the short route of a "Name: value" line whose name was read before ---------------------


def _line_outcome(parse: Any, raw: str) -> Any:
    try:
        line = parse(raw)
    except CpimError as exc:
        return ("refused", exc.reason, exc.status_code)
    return (line.prefix, line.name, line.params, line.value, line.notes)


_known_names = st.sampled_from(
    ["imdn.Message-ID", "DateTime", "From", "Subject", "z.Key", "NS", "imdn.Disposition-Notification"]
)
_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], whitelist_characters=": ;\t\x00\x1f\x7f"),
    max_size=12,
)


@SETTINGS
@given(name=_known_names, separator=st.sampled_from([": ", ":", ":  ", " : ", ";p=1 "]), value=_values)
def test_a_line_of_a_known_name_reads_as_the_grammar_reads_it(name: str, separator: str, value: str) -> None:
    message_module._parse_line_general(f"{name}: warm")  # the name is now known
    raw = f"{name}{separator}{value}"
    expected = _line_outcome(message_module._parse_line_general, raw)
    assert _line_outcome(message_module._parse_line, raw) == expected


@SETTINGS
@given(message_id=_values, datetime=_values)
def test_per_message_lines_parse_as_the_reference_reads_them(message_id: str, datetime: str) -> None:
    text = (
        "From: <sip:alice@example.com>\r\nNS: imdn <urn:ietf:params:imdn>\r\n"
        f"imdn.Message-ID: {message_id}\r\nDateTime: {datetime}\r\n\r\nContent-Type: text/plain\r\n\r\n"
    )
    _same(text.encode("utf-8", "surrogatepass") + b"hi")
