"""Property tests for Uri.parse: total on any text, round trip, §19.1.4 equality rules."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn import SipParseError, Uri
from sipimdn.errors import LocalProtocolError

SETTINGS = settings(max_examples=200, deadline=None)

LOWER = "abcdefghijklmnopqrstuvwxyz"
label = st.text(alphabet=LOWER + "0123456789", min_size=1, max_size=10)
top_label = st.builds(lambda first, rest: first + rest, st.sampled_from(LOWER), st.text(LOWER, max_size=6))
hostname = st.builds(lambda labels, top: ".".join([*labels, top]), st.lists(label, max_size=3), top_label)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).map(str)
host = st.one_of(hostname, ipv4, ipv6)
# any printable text, including characters that must be escaped
free_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=12)
param_name = st.text(alphabet=LOWER + "-_.!~*'", min_size=1, max_size=8)
params = st.dictionaries(param_name, st.one_of(st.none(), free_text), max_size=4)
headers = st.dictionaries(st.text(alphabet=LOWER, min_size=1, max_size=6), free_text, max_size=3)


@st.composite
def sip_uris(draw: st.DrawFn) -> Uri:
    user = draw(st.one_of(st.none(), free_text))
    password = draw(st.one_of(st.none(), free_text)) if user is not None else None
    return Uri(
        draw(st.sampled_from(["sip", "sips"])),
        user,
        password,
        draw(host),
        draw(st.one_of(st.none(), st.integers(0, 65535))),
        draw(params),
        draw(headers),
    )


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_parses_or_raises_sip_parse_error(text: str) -> None:
    try:
        uri = Uri.parse(text)
    except SipParseError as exc:
        assert exc.status_code == 400
        return
    again = Uri.parse(str(uri))
    assert again == uri
    assert hash(again) == hash(uri)


@SETTINGS
@given(st.text(alphabet="sip:@;=?&%[]:.-_abc123ABC!~*'()/,$+ ", max_size=60))
def test_uri_shaped_text_parses_or_raises(text: str) -> None:
    test_any_text_parses_or_raises_sip_parse_error.hypothesis.inner_test(text)  # type: ignore[attr-defined]


@SETTINGS
@given(sip_uris())
def test_constructed_uris_round_trip(uri: Uri) -> None:
    text = str(uri)
    parsed = Uri.parse(text)
    assert parsed == uri
    assert hash(parsed) == hash(uri)
    assert (parsed.user, parsed.password, parsed.port) == (uri.user, uri.password, uri.port)
    assert dict(parsed.params) == {k.lower(): v for k, v in uri.params.items()}
    assert dict(parsed.headers) == dict(uri.headers)
    assert str(parsed) == text


@SETTINGS
@given(sip_uris())
def test_host_and_param_case_do_not_matter_but_user_case_does(uri: Uri) -> None:
    shouting = Uri(
        uri.scheme.upper().lower(),
        uri.user,
        uri.password,
        uri.host.upper(),
        uri.port,
        {k.upper(): v for k, v in uri.params.items()},
        uri.headers,
    )
    assert Uri.parse(str(shouting)) == uri
    if uri.user is not None and uri.user.upper() != uri.user:
        upper_user = Uri(
            uri.scheme, uri.user.upper(), uri.password, uri.host, uri.port, uri.params, uri.headers
        )
        assert Uri.parse(str(upper_user)) != uri  # userinfo compares case-sensitively


@SETTINGS
@given(sip_uris(), st.sampled_from(["transport", "user", "ttl", "method", "maddr"]), free_text)
def test_special_params_must_be_in_both(uri: Uri, name: str, value: str) -> None:
    without = uri.without_params(name)
    assert without.with_params(**{name: value}) != without


@SETTINGS
@given(sip_uris(), param_name, free_text)
def test_other_params_in_one_uri_only_are_ignored(uri: Uri, name: str, value: str) -> None:
    if name in ("transport", "user", "ttl", "method", "maddr") or name in uri.params:
        return
    extended = uri.with_params(**{name: value})
    assert extended == uri
    assert hash(extended) == hash(uri)


@SETTINGS
@given(st.text(alphabet=LOWER + "0123456789-_.!~*'()", min_size=1, max_size=10), hostname)
def test_escaped_unreserved_characters_equal_plain_ones(user: str, host_name: str) -> None:
    escaped = "".join(f"%{ord(c):02X}" for c in user)
    assert Uri.parse(f"sip:{escaped}@{host_name}") == Uri.parse(f"sip:{user}@{host_name}")


def _twin(uri: Uri) -> Uri:
    """A fresh object of the same fields: nothing derived yet."""
    return Uri(uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers, uri.opaque)


@SETTINGS
@given(st.one_of(sip_uris(), st.text(alphabet="sipte:@;=?&%[]:.-_abc123ABC!~*'()/,$+ ", max_size=60)))
def test_text_key_and_hash_remembered_per_object_equal_the_computed_ones(value: Uri | str) -> None:
    # str(), the comparison key and the hash are derived once per Uri and kept on it: every later
    # answer must be what a fresh object computes, and derived values never leak to a copy.
    if isinstance(value, str):
        try:
            uri = Uri.parse(value)
        except SipParseError:
            return
    else:
        uri = value
    try:
        written: str | None = _twin(uri)._write()
    except LocalProtocolError:
        written = None
    for _ in range(2):
        if written is None:
            with pytest.raises(LocalProtocolError):
                str(uri)
        else:
            assert str(uri) == written
        assert uri._key() == _twin(uri)._make_key()
        assert hash(uri) == hash(_twin(uri)._make_key())
        assert uri == _twin(uri) and hash(uri) == hash(_twin(uri))
    moved = dataclasses.replace(uri, port=(uri.port or 0) + 1) if uri.host else None
    if moved is not None:
        assert str(moved) == _twin(moved)._write() and moved != uri


def _reference_key(uri: Uri) -> tuple[object, ...]:
    """The comparison key of a sip/sips URI as §19.1.4 reads (every must-match parameter
    looked up, headers sorted), written plainly: _make_key's shortcuts must give the same."""
    special = tuple(
        (name, (uri.params[name] or "").lower()) if name in uri.params else (name, None)
        for name in ("user", "ttl", "method", "maddr", "transport")
    )
    headers = tuple(sorted((k.lower(), v) for k, v in uri.headers.items()))
    return (uri.scheme, uri.user, uri.password, uri._host_key(), uri.port, special, headers)


@SETTINGS
@given(st.one_of(
    sip_uris(),
    st.builds(lambda u: dataclasses.replace(u, params={}, headers={}), sip_uris()),
    st.builds(lambda u, t: dataclasses.replace(u, params={"transport": t}), sip_uris(),
              st.sampled_from(["UDP", "tcp"])),
))
def test_comparison_key_is_the_plain_reading_of_section_19_1_4(uri: Uri) -> None:
    assert _twin(uri)._make_key() == _reference_key(uri)
    assert hash(_twin(uri)) == hash(_reference_key(uri))


_FIELDS = ("scheme", "user", "password", "host", "port", "params", "headers", "opaque")


@SETTINGS
@given(st.one_of(sip_uris().map(str), st.text(alphabet="sip:@;=?&%[]:.-_abc123ABC!~*'()/,$+ ", max_size=60)))
def test_parser_builds_what_the_constructor_builds(text: str) -> None:
    # The parser sets a new Uri's slots itself (no dataclass __init__): the object must be the one
    # the constructor makes from the same fields, read-only mappings included.
    try:
        parsed = Uri._parse(text)
    except SipParseError:
        return
    built = Uri(*(getattr(parsed, name) for name in _FIELDS))
    for name in _FIELDS:
        assert getattr(parsed, name) == getattr(built, name), name
    for mapping in (parsed.params, parsed.headers):
        assert type(mapping) is MappingProxyType
    # (the text may be kept from the parse, when it is exactly what str() writes)
    assert parsed._text in (None, built._write())
    assert (parsed._cmp_key, parsed._hash) == (None, None)
    assert repr(parsed) == repr(built) and parsed == built and hash(parsed) == hash(built)
    assert dataclasses.replace(parsed) == parsed


# -- the parser's text of a URI already in written form --------------------------------------

uri_shaped = st.builds(
    "{}{}{}{}{}".format,
    st.sampled_from(["sip:", "sips:", "SIP:", "Sip:", "im:", "tel:"]),
    st.sampled_from(["", "alice@", "alice-7@", "a%41b@", "a%2fb@", "a:pw@", "+33.6!~*'()&=$,;?/@", "é@"]),
    st.one_of(host, st.just("HOST.Example.COM"), st.just("[2001:DB8::1]"), st.just("1.2.3")),
    st.sampled_from(["", ":5060", ":05060", ":0", ":65535", ":65536", ":"]),
    st.sampled_from(["", ";lr", ";transport=udp", "?subject=x", ";", "?"]),
)


@SETTINGS
@given(uri_shaped)
def test_text_kept_from_the_parse_is_what_str_writes(text: str) -> None:
    # Uri.parse keeps the input as the URI's text when it is already what str() writes: the
    # text str() gives is always the one written from the parsed fields.
    try:
        uri = Uri._parse(text)
    except SipParseError:
        return
    assert str(uri) == uri._write()
    assert Uri.parse(str(uri)) == uri
