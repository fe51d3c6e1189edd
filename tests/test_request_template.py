"""A request built from a RequestTemplate is the request build_request makes from the same
arguments: same rows (names, values, wire text), same Request-URI, same bytes; and where
build_request would refuse a value the template declines to be made (of() gives None) or to
build (build() gives None), so the general route raises its own error. The first Via that
stamp_via writes from its cached text is the Via the general route writes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.dialog import factory
from sipimdn.dialog.factory import RequestTemplate, build_request, stamp_via
from sipimdn.errors import LocalProtocolError
from sipimdn.headers import NameAddr, Via
from sipimdn.message import Request
from sipimdn.transport.flow import Transport
from sipimdn.uri import Uri


def _fixed_identifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same From tag and Call-ID on both routes, so whole requests compare."""
    monkeypatch.setattr(factory, "new_tag", lambda: "5eed7a9")
    monkeypatch.setattr(factory, "new_call_id", lambda host=None: "c411-1d")


def _same(a: Request, b: Request) -> None:
    assert a.method == b.method
    assert a.uri == b.uri and str(a.uri) == str(b.uri)
    assert a.headers._rows == b.headers._rows
    assert a.body == b.body
    assert a.to_bytes() == b.to_bytes()


_USERS = st.sampled_from(["alice", "bob-2", "+33612345678", "a.b_c"])
_HOSTS = st.sampled_from(["example.com", "127.0.0.1", "[2001:db8::1]", "proxy.example.net"])
_PORTS = st.sampled_from(["", ":5060", ":39702"])
_URI_PARAMS = st.sampled_from(["", ";transport=tcp", ";lr", ";user=phone;transport=UDP"])
_URIS = st.builds(lambda u, h, p, q: f"sip:{u}@{h}{p}{q}", _USERS, _HOSTS, _PORTS, _URI_PARAMS)
_DISPLAY = st.sampled_from([None, "Alice", "Bob A. Example", 'Quote "me"', "Zoë"])
_ROUTES = st.lists(st.builds(lambda u: f"<{u}>", _URIS), max_size=2)
_HEADERS = st.lists(
    st.tuples(st.sampled_from(["User-Agent"]), st.sampled_from(["sipimdn/0.1", "x y/2 (test)"])),
    max_size=1,
)
_TYPES = st.sampled_from([None, "message/cpim", "text/plain;charset=UTF-8", "message/imdn+xml"])
_METHODS = st.sampled_from(["MESSAGE", "OPTIONS"])


@settings(max_examples=300, deadline=None)
@given(method=_METHODS, me=_URIS, display=_DISPLAY, route=_ROUTES, headers=_HEADERS,
       content_type=_TYPES, target=_URIS, to=_URIS, body=st.binary(max_size=40))
def test_template_builds_what_build_request_builds(  # noqa: PLR0917 - hypothesis
    method: str, me: str, display: str | None, route: list[str], headers: list[tuple[str, str]],
    content_type: str | None, target: str, to: str, body: bytes,
) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _fixed_identifiers(monkeypatch)
        from_ = NameAddr(Uri.parse(me), display)
        template = RequestTemplate.of(method, from_, route=route, headers=headers, content_type=content_type)
        assert template is not None
        for _ in range(2):  # the second time from the caches
            built = template.build(Uri.parse(target), Uri.parse(to), body)
            assert built is not None
            general = build_request(
                method, target, from_, NameAddr(Uri.parse(to)), route=route, headers=headers,
                body=body, content_type=content_type,
            )
            _same(built, general)


@pytest.mark.parametrize(
    ("route", "headers", "content_type"),
    [
        (["<sip:proxy.example.com;lr>\r\nX-Injected: 1"], [], None),
        ([], [("User-Agent", "bad\nvalue")], None),
        ([], [("User-Agent", "nul\x00")], None),
        ([], [], "text/plain\r\nX: y"),
        ([], [("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx")], None),
        ([], [("Content-Length", "0")], None),
        ([], [("X-Other", "unknown names take the general route")], None),
    ],
)
def test_template_declines_what_build_request_refuses_or_checks_itself(
    route: list[str], headers: list[tuple[str, str]], content_type: str | None
) -> None:
    from_ = NameAddr(Uri.parse("sip:alice@example.com"))
    template = RequestTemplate.of("MESSAGE", from_, route=route, headers=headers, content_type=content_type)
    assert template is None
    if headers and headers[0][0] == "X-Other":
        return  # a valid request, only built the general way
    with pytest.raises(LocalProtocolError):
        build_request("MESSAGE", "sip:bob@example.com", from_, NameAddr(Uri.parse("sip:bob@example.com")),
                      route=route, headers=headers, content_type=content_type)


def test_template_declines_a_from_with_a_tag_or_parameters_and_unknown_methods() -> None:
    uri = Uri.parse("sip:alice@example.com")
    assert RequestTemplate.of("MESSAGE", NameAddr(uri, None, {"tag": "1"})) is None
    assert RequestTemplate.of("MESSAGE", NameAddr(uri, None, {"expires": "1"})) is None
    assert RequestTemplate.of("FOO", NameAddr(uri)) is None
    assert RequestTemplate.of("MESSAGE", NameAddr(uri)) is not None


def test_template_requests_are_new_requests_each_time() -> None:
    template = RequestTemplate.of("MESSAGE", NameAddr(Uri.parse("sip:alice@example.com")),
                                  content_type="message/cpim")
    assert template is not None
    target = Uri.parse("sip:bob@example.com")
    a = template.build(target, target, b"1")
    b = template.build(target, target, b"2")
    assert a is not None and b is not None
    # §8.1.1: a fresh From tag and Call-ID, CSeq 1, no To tag
    assert a.from_.tag and b.from_.tag and a.from_.tag != b.from_.tag
    assert a.call_id != b.call_id
    assert a.cseq.number == 1 and a.cseq.method == "MESSAGE" and a.to.tag is None
    # Their header sections are their own: a write to one leaves the other as it was.
    a.headers.add("X-Mine", "1")
    assert "X-Mine" not in b.headers and b.headers.get("Max-Forwards") == "70"


_SENT_BY = st.tuples(
    st.sampled_from(["127.0.0.1", "192.0.2.7", "2001:db8::1", "::1", "sip.example.com"]),
    st.sampled_from([5060, 5061, 40647, 1]),
)


@settings(max_examples=200, deadline=None)
@given(transport=st.sampled_from(list(Transport)), sent_by=_SENT_BY, rport=st.booleans())
def test_first_via_from_cached_parts_is_the_general_one(
    transport: Transport, sent_by: tuple[str, int], rport: bool
) -> None:
    template = RequestTemplate.of("MESSAGE", NameAddr(Uri.parse("sip:alice@example.com")),
                                  content_type="text/plain")
    assert template is not None
    target = Uri.parse("sip:bob@example.com")
    for _ in range(2):  # the second time from the cache
        fast_request = template.build(target, target, b"x")
        general_request = template.build(target, target, b"x")
        assert fast_request is not None and general_request is not None
        general_request.headers._rows[:] = fast_request.headers._rows  # (the same tag and Call-ID)
        fast = stamp_via(fast_request, transport, sent_by, rport=rport)
        # A branch given takes the general route (Via(), str(), Headers.prepend).
        general = stamp_via(general_request, transport, sent_by, rport=rport, branch=fast.branch)
        assert fast == general and str(fast) == str(general)
        assert fast.branch is not None and fast.branch.startswith("z9hG4bK") and len(fast.branch) == 31
        _same(fast_request, general_request)
        assert fast_request.top_via == general and Via.parse(fast_request.headers.get_all("Via")[0]) == fast


def test_a_second_stamp_replaces_the_via_as_before() -> None:
    request = build_request("MESSAGE", "sip:bob@example.com", "<sip:alice@example.com>",
                            "<sip:bob@example.com>")
    first = stamp_via(request, Transport.UDP, ("127.0.0.1", 5060))
    second = stamp_via(request, Transport.TCP, ("127.0.0.1", 5060))
    assert first.branch != second.branch
    assert request.headers.get_all("Via") == [str(second)] and request.top_via == second
