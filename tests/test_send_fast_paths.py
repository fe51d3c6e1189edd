"""Shortcuts on the send side of the IMDN path keep their results: destination keys with a
cached hash, request building without re-formatting the same From/To, one serialisation for
the first transmission, an owed IMDN started without a task."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ua_helpers import Recorder, StackPeer, ua_config

from sipimdn import UserAgent
from sipimdn._pacing import DestinationKey, DestinationQueue
from sipimdn.dialog import factory
from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import LocalProtocolError, TransactionTimeout
from sipimdn.events import NotificationSent
from sipimdn.headers import NameAddr, Via
from sipimdn.imdn import build_im, imdn_headers
from sipimdn.message import HeaderRow, Headers, Request
from sipimdn.parser import parse_message
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage
from sipimdn.uri import Uri


def test_destination_key_equals_by_value_and_hashes_like_it() -> None:
    a = DestinationKey(Uri.parse("sip:Bob@EXAMPLE.com;transport=udp"))
    b = DestinationKey(Uri.parse("sip:Bob@example.com;transport=UDP"))
    c = DestinationKey(Uri.parse("sip:carol@example.com"))
    assert a == b and hash(a) == hash(b) and a != c
    assert a != Uri.parse("sip:Bob@example.com;transport=udp")  # only keys compare to keys
    assert {a: 1}[b] == 1


async def test_destination_queue_serialises_equal_keys_made_separately() -> None:
    queue = DestinationQueue()
    first = DestinationKey(Uri.parse("sip:bob@example.com"))
    await queue.acquire(first)
    again = DestinationKey(Uri.parse("sip:bob@EXAMPLE.com"))
    waiter = asyncio.ensure_future(queue.acquire(again))
    await asyncio.sleep(0)
    assert not waiter.done() and len(queue) == 1
    queue.release(first)
    await waiter
    queue.release(again)
    assert len(queue) == 0


def test_build_request_formats_from_and_to_as_the_typed_values_do() -> None:
    me = NameAddr(Uri.parse("sip:alice@example.com"), "Alice A.")
    peer = NameAddr(Uri.parse("sip:bob@example.com;transport=tcp"))
    for _ in range(2):  # the second time from the caches
        request = build_request(
            "MESSAGE", "sip:bob@example.com", me, peer, body=b"x", content_type="text/plain"
        )
        from_value = request.headers.get("From")
        assert from_value is not None
        tag = request.from_.tag
        assert tag is not None and from_value == str(me.with_tag(tag))
        assert request.headers.get("To") == str(peer)
    # A given tag, a peer with parameters, a From that has a flag "tag": the general path.
    flagged = NameAddr(Uri.parse("sip:alice@example.com"), None, {"tag": None, "x": "1"})
    request = build_request("MESSAGE", "sip:bob@example.com", flagged, NameAddr(peer.uri, "Bob", {"p": "q"}))
    assert request.headers.get("From") == str(flagged.with_tag(request.from_.tag or ""))
    assert request.headers.get("To") == '"Bob" <sip:bob@example.com;transport=tcp>;p=q'
    request = build_request("MESSAGE", "sip:bob@example.com", me, peer, from_tag="given")
    assert request.from_.tag == "given"


async def test_first_transmission_sends_the_measured_bytes() -> None:
    received: list[Request] = []
    async with SipStack() as a, SipStack() as b:

        def answer(incoming: IncomingRequest) -> None:
            received.append(incoming.request)
            incoming.respond(200)

        b.on_request(answer)
        port = b.endpoints[0][1][1]
        target = Uri.parse(f"sip:b@127.0.0.1:{port}")
        request = build_request("MESSAGE", target, NameAddr(Uri.parse("sip:a@127.0.0.1")), NameAddr(target),
                                body=b"hello", content_type="text/plain")
        response = await a.send_request(request)
        assert response.status_code == 200 and a._encoded is None
        assert len(received) == 1
        # What arrived is what the request serialises to (b stamped received= on its copy only).
        sent = parse_message(request.to_bytes())
        assert isinstance(sent, Request)
        assert received[0].body == b"hello" and received[0].call_id == sent.call_id
        assert received[0].top_via.branch == request.top_via.branch


async def _accept(message: IncomingMessage) -> None:
    return None


def _is_imdn_request(request: Request) -> bool:
    content_type = request.content_type
    return content_type is not None and content_type.subtype == "cpim" and b"message/imdn+xml" in request.body


@pytest.mark.parametrize("status", [200, 202, 486])
@pytest.mark.parametrize("busy", [False, True], ids=["turn-free", "turn-busy"])
async def test_owed_imdn_goes_out_without_a_task_or_waits_its_turn_in_one_with_the_same_outcome(
    busy: bool, status: int
) -> None:
    # Turn free: the IMDN's transaction starts in the pump that made it due and its answer is
    # handled inline, in the stack's pump that matched it (no task, no loop callback). Turn
    # busy (RFC 3428 §8): a wire task waits for it. Either way the same request shape, the
    # same tracker outcome, the same NotificationSent.
    notes = Recorder()
    async with (
        StackPeer("carol", lambda r: None if _is_imdn_request(r) else 200) as carol,
        UserAgent(ua_config("bob")) as bob,
    ):
        bob.on_message(_accept)
        bob.on_notification(notes)
        turn = DestinationKey(Uri.parse(carol.aor))
        if busy:
            assert bob._queue.try_acquire(turn)
        im = build_im(from_=carol.aor, to=bob.aor, body=b"hi", now=time.time(), notify=["positive-delivery"])
        assert (await carol.send_message(bob.aor, "message/cpim", im.to_bytes())).status_code == 200
        waiting = [t for t in asyncio.all_tasks() if "owed" in t.get_name()]
        if busy:
            await asyncio.sleep(0.05)
            assert not carol.requests  # the IMDN waits for the turn
            assert len(waiting) == 1 and waiting[0] in bob._wire_tasks
            assert not bob._queue.try_acquire(turn)
            bob._queue.release(turn)
        incoming = await asyncio.wait_for(carol.incoming.get(), 5)
        assert _is_imdn_request(incoming.request)
        if not busy:
            assert not waiting
            (pending,) = bob._wire_tasks
            assert not isinstance(pending, asyncio.Task) and not pending.done()
        assert not bob._queue.try_acquire(turn)  # held while the IMDN is in flight
        if not busy:
            # The outcome is taken from the stack's pump: the done callback is gone from the
            # future by the time it settles, so it wakes nothing on the loop.
            settled: list[bool] = []
            pending.add_done_callback(lambda f: settled.append(not bob.tracker.owed()))
        incoming.respond(status)
        (sent,) = await notes.wait_for(NotificationSent)
        assert (sent.message_id, sent.kind, sent.status, sent.to, sent.sip_status, sent.attempt) == (
            imdn_headers(im).message_id, "delivery", "delivered", carol.aor, status, 1
        )
        if not busy:
            await asyncio.sleep(0)
            assert pending.done() and pending.result().status_code == status and settled == [True]
        assert not bob.tracker.owed() and not bob._wire_tasks
        assert bob._queue.try_acquire(turn)  # released with the answer
        bob._queue.release(turn)
        assert bob.stats().notifications_sent == 1
        request = incoming.request
        assert request.uri == Uri.parse(carol.aor) and request.from_.uri == Uri.parse(bob.aor)
        assert request.to.uri == Uri.parse(carol.aor) and request.cseq.number == 1


async def test_send_request_now_calls_on_final_inline_before_the_future_settles() -> None:
    async with SipStack() as bob, SipStack() as carol:
        carol.on_request(lambda incoming: incoming.respond(404))
        port = carol.endpoints[0][1][1]
        seen: list[tuple[int, bool]] = []
        request = build_request("MESSAGE", f"sip:carol@127.0.0.1:{port}", "<sip:bob@127.0.0.1>",
                                f"<sip:carol@127.0.0.1:{port}>", body=b"hi", content_type="text/plain")
        future = bob.send_request_now(request, on_final=lambda r: seen.append((r.status_code, future.done())))
        assert future is not None
        response = await asyncio.wait_for(future, 5)
        assert response.status_code == 404 and seen == [(404, False)]


async def test_send_request_now_on_final_is_not_called_without_an_answer() -> None:
    async with SipStack(timers=TimerConfig(t1=0.01, t2=0.04, t4=0.05)) as bob, SipStack() as carol:
        carol.on_request(lambda incoming: None)  # never answers
        port = carol.endpoints[0][1][1]
        seen: list[object] = []
        request = build_request("MESSAGE", f"sip:carol@127.0.0.1:{port}", "<sip:bob@127.0.0.1>",
                                f"<sip:carol@127.0.0.1:{port}>", body=b"hi", content_type="text/plain")
        future = bob.send_request_now(request, on_final=seen.append)
        assert future is not None
        with pytest.raises(TransactionTimeout):
            await asyncio.wait_for(future, 10)
        assert not seen and not bob._final_hooks


async def test_owed_imdn_started_without_a_task_reports_no_answer_after_timer_f() -> None:
    notes = Recorder()
    async with (
        StackPeer("carol", lambda r: None if _is_imdn_request(r) else 200) as carol,
        UserAgent(ua_config("bob", t1=0.01, t2=0.04, t4=0.05)) as bob,
    ):
        bob.on_message(_accept)
        bob.on_notification(notes)
        im = build_im(from_=carol.aor, to=bob.aor, body=b"hi", now=time.time(), notify=["positive-delivery"])
        assert (await carol.send_message(bob.aor, "message/cpim", im.to_bytes())).status_code == 200
        (sent,) = await notes.wait_for(NotificationSent, timeout=10)
        assert sent.sip_status is None and sent.attempt == 1 and not bob._wire_tasks
        assert bob._queue.try_acquire(DestinationKey(Uri.parse(carol.aor)))


_names = st.sampled_from(
    ["Route", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Type", "User-Agent",
     "X-Other", "bad name", "", "from", "i"]
)  # fmt: skip
_values = st.text(alphabet=st.sampled_from(["a", " ", "<", ":", "\r", "\n", "\x00", "é", ";"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(_names, _values), max_size=8))
def test_request_rows_built_directly_are_those_headers_add_makes(items: list[tuple[str, str]]) -> None:
    try:
        general: list[HeaderRow] | type[Exception] = Headers(items)._rows
    except LocalProtocolError as exc:
        general = type(exc)
    checked = factory._checked_rows(items)
    if checked is not None:
        assert checked == general  # equal rows, so equal requests; never accepts a refused row
    assert isinstance(general, list) or checked is None


def test_build_request_refuses_a_bad_header_value_as_before() -> None:
    me = NameAddr(Uri.parse("sip:alice@example.com"))
    with pytest.raises(LocalProtocolError, match="line break or NUL in the value of User-Agent"):
        build_request("MESSAGE", "sip:bob@example.com", me, me, headers=[("User-Agent", "a\r\nX: y")])
    with pytest.raises(LocalProtocolError, match="invalid header name"):
        build_request("MESSAGE", "sip:bob@example.com", me, me, headers=[("Bad Name", "x")])
    request = build_request("MESSAGE", "sip:bob@example.com", me, me, headers=[("X-Other", "1")])
    assert request.headers.get("x-other") == "1" and request.headers.get("l") is None


@pytest.mark.parametrize("transport", list(Transport))
@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "host.example.com"])
@pytest.mark.parametrize("rport", [True, False])
def test_stamped_via_is_what_its_row_parses_to(transport: Transport, host: str, rport: bool) -> None:
    me = NameAddr(Uri.parse("sip:alice@example.com"))
    request = build_request("MESSAGE", "sip:bob@example.com", me, me)
    via = stamp_via(request, transport, (host, 5062), rport=rport)
    assert request.top_via is via
    assert Via.parse(request.headers.get_all("Via")[0]) == via
    again = parse_message(request.to_bytes())
    assert isinstance(again, Request) and again.top_via == via


@pytest.mark.parametrize("method", ["MESSAGE", "OPTIONS", "REGISTER", "X-CUSTOM"])
@pytest.mark.parametrize(
    "uri", ["sip:bob@example.com", "sips:b%20ob@[::1]:5061;transport=tls?subject=a%20b", "tel:+1-555"]
)
def test_built_request_is_the_request_made_from_its_rows(method: str, uri: str) -> None:
    me = NameAddr(Uri.parse("sip:alice@example.com"), "Alice")
    for target in (uri, Uri.parse(uri)):
        for _ in range(2):  # the second time with the Request-URI's text remembered
            request = build_request(method, target, me, me, body=bytearray(b"x"), content_type="text/plain")
            general = Request(method, uri, list(request.headers.items()), b"x")
            assert request.to_bytes() == general.to_bytes()
            assert request.uri == general.uri and type(request.body) is bytes
    with pytest.raises(LocalProtocolError, match="invalid method"):
        build_request("BAD METHOD", uri, me, me)


async def test_owed_imdn_to_a_host_name_is_resolved_in_a_task_holding_the_turn() -> None:
    # send_request_now declines (a name to resolve): the turn taken for it goes to a wire task.
    notes = Recorder()
    async with (
        StackPeer("carol", lambda r: None if _is_imdn_request(r) else 200) as carol,
        UserAgent(ua_config("bob")) as bob,
    ):
        bob.on_message(_accept)
        bob.on_notification(notes)
        port = carol.stack.endpoints[0][1][1]
        named = f"sip:carol@localhost:{port}"
        im = build_im(from_=named, to=bob.aor, body=b"hi", now=time.time(), notify=["positive-delivery"])
        request = build_request(
            "MESSAGE", bob.aor, f"<{named}>", f"<{bob.aor}>", body=im.to_bytes(), content_type="message/cpim"
        )
        assert (await carol.stack.send_request(request)).status_code == 200
        incoming = await asyncio.wait_for(carol.incoming.get(), 5)
        assert _is_imdn_request(incoming.request) and incoming.request.uri == Uri.parse(named)
        (waiting,) = [t for t in asyncio.all_tasks() if "owed" in t.get_name()]
        assert waiting in bob._wire_tasks
        assert not bob._queue.try_acquire(DestinationKey(Uri.parse(named)))
        incoming.respond(200)
        (sent,) = await notes.wait_for(NotificationSent)
        assert (sent.to, sent.sip_status, sent.attempt) == (named, 200, 1)
        await asyncio.wait_for(waiting, 5)
        assert not bob._wire_tasks and bob._queue.try_acquire(DestinationKey(Uri.parse(named)))
