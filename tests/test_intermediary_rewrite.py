"""CPIM rewrites an intermediary makes: IMDN-Record-Route on top, Original-To once, To, IMDN-Route pop."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn import cpim, imdn
from sipimdn.errors import LocalProtocolError
from sipimdn.intermediary import add_original_to, add_record_route, pop_imdn_route, replace_to

DATA = Path(__file__).parent / "data" / "cpim"


def rfc_im() -> cpim.CpimMessage:
    return cpim.parse((DATA / "rfc5438_7_1_1_im.cpim").read_bytes(), outer_mime=True)


def test_record_route_goes_on_top_and_keeps_everything_else() -> None:
    im = rfc_im()
    once = add_record_route(im, "sip:first@relay.test")
    twice = add_record_route(once, "sip:second@relay.test")
    routes = [a.uri for a in imdn.imdn_headers(twice).record_routes]
    assert routes == ["sip:second@relay.test", "sip:first@relay.test"]  # top = newest (§6.5)
    assert twice.body == im.body and twice.mime_headers == im.mime_headers
    kept = [h.raw for h in twice.headers if h.name != "IMDN-Record-Route"]
    assert kept == [h.raw for h in im.headers]
    # The IMDN the recipient builds copies them as IMDN-Route in the same order (§7.2.1).
    answer = imdn.build_imdn(twice, kind="delivery", status="delivered", now=0)
    assert [a.uri for a in imdn.imdn_headers(answer).routes] == routes
    assert imdn.imdn_destination(twice) == "sip:second@relay.test"


def test_any_prefix_is_reused_and_a_missing_binding_declared() -> None:
    custom = cpim.build_message(
        [
            ("From", "<im:a@x.test>"),
            ("To", "<im:b@x.test>"),
            ("NS", "zz <urn:ietf:params:imdn>"),
            ("zz.Message-ID", "abc"),
            ("zz.IMDN-Record-Route", "<sip:old@r.test>"),
        ],
        content_type="text/plain",
        body=b"hi",
    )
    routed = add_record_route(custom, "sip:new@r.test")
    assert next(h.raw for h in routed.headers if h.name == "IMDN-Record-Route") == (
        "zz.IMDN-Record-Route: <sip:new@r.test>"
    )
    bare = cpim.build_message(
        [("From", "<im:a@x.test>"), ("To", "<im:b@x.test>")], content_type="text/plain", body=b""
    )
    routed = add_record_route(bare, "sip:new@r.test")
    assert [a.uri for a in imdn.imdn_headers(routed).record_routes] == ["sip:new@r.test"]
    # A prefix "imdn" bound elsewhere is not reused.
    clash = cpim.build_message(
        [("From", "<im:a@x.test>"), ("NS", "imdn <urn:example:other>")], content_type="text/plain", body=b""
    )
    fixed = add_original_to(clash, "sip:list@l.test")
    original = imdn.imdn_headers(fixed).original_to
    assert original is not None and original.uri == "sip:list@l.test"


def test_original_to_is_added_once_and_never_modified() -> None:
    im = add_original_to(rfc_im(), "sip:list@l.test")
    again = add_original_to(im, "sip:other@l.test")
    assert again is im
    original = imdn.imdn_headers(again).original_to
    assert original is not None and original.uri == "sip:list@l.test"


def test_replace_to_rewrites_every_to_into_one() -> None:
    multi = imdn.build_im(
        from_="im:a@x.test", to=["im:b@x.test", "im:c@x.test"], body=b"x", now=0, cc=["im:d@x.test"]
    )
    one = replace_to(multi, cpim.CpimAddress("sip:c@y.test", "Carol"))
    assert [(a.uri, a.display_name) for a in one.to] == [("sip:c@y.test", "Carol")]
    assert [a.uri for a in one.cc] == ["im:d@x.test"]
    assert imdn.imdn_headers(one).message_id == imdn.imdn_headers(multi).message_id


def test_pop_imdn_route_removes_only_the_top() -> None:
    im = add_record_route(add_record_route(rfc_im(), "sip:far@r.test"), "sip:near@r.test")
    notification = imdn.build_imdn(im, kind="display", status="displayed", now=0)
    popped = pop_imdn_route(notification)
    assert [a.uri for a in imdn.imdn_headers(popped).routes] == ["sip:far@r.test"]
    last = pop_imdn_route(popped)
    assert imdn.imdn_headers(last).routes == ()
    with pytest.raises(LocalProtocolError):
        pop_imdn_route(last)
    assert imdn.recognise(last) is not None  # still a valid IMDN


@pytest.mark.parametrize("bad", ["sip:bad>uri@x", "sip:a@b\r\nX: injected", "", "a b", "nocolon"])
def test_values_outside_the_grammar_are_our_error(bad: str) -> None:
    """A URI taken from a request must never inject a header line."""
    for rewrite in (add_record_route, add_original_to, replace_to):
        with pytest.raises(LocalProtocolError):
            rewrite(rfc_im(), bad)
    with pytest.raises(LocalProtocolError):
        replace_to(rfc_im(), cpim.CpimAddress("sip:ok@x.test", "Eve\r\nX: y"))


@settings(max_examples=60, deadline=None)  # each example validates an IMDN against the schema
@given(
    hops=st.lists(st.from_regex(r"sip:[a-z]{1,8}@[a-z]{1,8}\.test", fullmatch=True), min_size=1, max_size=6)
)
def test_route_stack_round_trip(hops: list[str]) -> None:
    """Each hop pushes itself on the way out and pops itself on the way back, in reverse order."""
    im = rfc_im()
    for hop in hops:
        im = add_record_route(im, hop)
    notification = imdn.build_imdn(im, kind="delivery", status="delivered", now=0)
    for hop in reversed(hops):
        assert imdn.imdn_headers(notification).routes[0].uri == hop
        notification = pop_imdn_route(notification)
    assert imdn.imdn_headers(notification).routes == ()
