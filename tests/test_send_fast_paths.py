"""Shortcuts on the send side of the IMDN path keep their results: destination keys with a
cached hash, request building without re-formatting the same From/To, one serialisation for
the first transmission."""

from __future__ import annotations

import asyncio

from sipimdn._pacing import DestinationKey, DestinationQueue
from sipimdn.dialog.factory import build_request
from sipimdn.headers import NameAddr
from sipimdn.message import Request
from sipimdn.parser import parse_message
from sipimdn.stack import IncomingRequest, SipStack
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
