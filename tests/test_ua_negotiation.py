"""Per-peer content negotiation: what a peer takes, learned from OPTIONS, a 415 or what it sends."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from ua_helpers import Recorder, StackPeer, ua_config

from sipimdn import UserAgent
from sipimdn.events import DispositionChanged, DispositionState, TrackingEnded
from sipimdn.imdn import build_im
from sipimdn.imdn.tracker import PEER_CPIM, PEER_NO_CPIM
from sipimdn.message import Request
from sipimdn.ua import IncomingMessage

S = DispositionState
BOTH = {"positive-delivery", "display"}


def _answer_with_accept(accept: str | None) -> Any:
    """A peer answering OPTIONS 200 with ``accept`` as its Accept, and every MESSAGE 200."""

    def answer(request: Request) -> Any:
        if request.method == "OPTIONS":
            return (200, [("Accept", accept)] if accept is not None else [])
        return 200

    return answer


def _mime(request: Request) -> str | None:
    return request.content_type.mime if request.content_type is not None else None


async def test_peer_without_cpim_in_its_accept_gets_text_plain_and_notifications_end_unsupported() -> None:
    events = Recorder()
    accept = "text/plain, application/im-iscomposing+xml"
    async with (
        StackPeer("plain", answer=_answer_with_accept(accept)) as peer,
        UserAgent(ua_config("alice", probe_options=True)) as alice,
    ):
        alice.on_disposition(events)
        handle = await alice.send_message(peer.aor, "hello", notify=BOTH)
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        # Ends in a documented terminal state instead of waiting for IMDNs that cannot come.
        assert await handle.await_disposition("displayed", timeout=5) is S.UNSUPPORTED
        assert handle.notify == frozenset()
        options, message = await peer.wait_requests(2)
        assert options.method == "OPTIONS"
        assert (message.method, _mime(message), message.body) == ("MESSAGE", "text/plain", b"hello")
        assert events.states(handle.message_id) == [S.UNSUPPORTED]
        (ended,) = await events.wait_for(TrackingEnded)
        assert ended.states == ((peer.aor, S.UNSUPPORTED),)
        assert PEER_NO_CPIM in alice.tracker.peer_flags(peer.aor)
        # Remembered: no second probe, straight to text/plain.
        again = await alice.send_message(peer.aor, "again", notify={"positive-delivery"})
        assert (await asyncio.wait_for(again.final_response(), 5)).status_code == 200
        requests = await peer.wait_requests(3)
        assert [(r.method, _mime(r)) for r in requests[2:]] == [("MESSAGE", "text/plain")]
        # A message asking for nothing just ends accepted.
        quiet = await alice.send_message(peer.aor, "no requests")
        ends = await events.wait_for(TrackingEnded, count=3)
        assert [e.states for e in ends if e.message_id == quiet.message_id] == [((peer.aor, S.ACCEPTED),)]


async def test_peer_listing_cpim_gets_cpim_after_one_probe() -> None:
    async with (
        StackPeer("cpim", answer=_answer_with_accept("message/cpim, text/plain")) as peer,
        UserAgent(ua_config("alice", probe_options=True)) as alice,
    ):
        # Two messages at once to an unknown peer share one OPTIONS.
        first = await alice.send_message(peer.aor, "one", notify={"positive-delivery"})
        second = await alice.send_message(peer.aor, "two", notify={"positive-delivery"})
        for handle in (first, second):
            assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        requests = await peer.wait_requests(3)
        assert [r.method for r in requests] == ["OPTIONS", "MESSAGE", "MESSAGE"]
        assert {_mime(r) for r in requests[1:]} == {"message/cpim"}
        assert PEER_CPIM in alice.tracker.peer_flags(peer.aor)
        assert first.notify == frozenset({"positive-delivery"})
        assert first.state is S.ACCEPTED  # still awaiting the delivery notification


async def test_an_options_answer_without_accept_teaches_nothing() -> None:
    async with (
        StackPeer("silent", answer=_answer_with_accept(None)) as peer,
        UserAgent(ua_config("alice", probe_options=True)) as alice,
    ):
        handle = await alice.send_message(peer.aor, "hi", notify={"positive-delivery"})
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        options, message = await peer.wait_requests(2)
        assert (options.method, _mime(message)) == ("OPTIONS", "message/cpim")
        assert alice.tracker.peer_flags(peer.aor) == frozenset()


async def test_without_probing_no_options_is_sent() -> None:
    async with (
        StackPeer("plain", answer=_answer_with_accept("text/plain")) as peer,
        UserAgent(ua_config("alice")) as alice,
    ):
        handle = await alice.send_message(peer.aor, "hi", notify={"positive-delivery"})
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        (message,) = await peer.wait_requests(1)
        assert (message.method, _mime(message)) == ("MESSAGE", "message/cpim")


async def test_a_peer_that_sends_cpim_is_known_to_take_it() -> None:
    async with (
        StackPeer("speaker", answer=_answer_with_accept("text/plain")) as peer,
        UserAgent(ua_config("alice", probe_options=True)) as alice,
    ):
        got: list[IncomingMessage] = []

        @alice.on_message
        async def take(message: IncomingMessage) -> None:
            got.append(message)

        envelope = build_im(from_=peer.aor, to=alice.aor, body=b"hi alice", now=1.8e9)
        response = await peer.send_message(alice.aor, "message/cpim", envelope.to_bytes())
        assert response.status_code == 200
        assert got[0].cpim is not None
        # No probe is needed (its OPTIONS answer would even say text/plain): it sent us CPIM.
        back = await alice.send_message(peer.aor, "hi back", notify={"positive-delivery"})
        assert (await asyncio.wait_for(back.final_response(), 5)).status_code == 200
        (request,) = await peer.wait_requests(1)
        assert (request.method, _mime(request)) == ("MESSAGE", "message/cpim")
        assert back.notify == frozenset({"positive-delivery"})


async def test_415_fallback_ends_requested_notifications_unsupported() -> None:
    def refuse_cpim(request: Request) -> Any:
        return (415, [("Accept", "text/plain")]) if _mime(request) == "message/cpim" else 200

    events = Recorder()
    async with StackPeer("old", answer=refuse_cpim) as peer, UserAgent(ua_config("alice")) as alice:
        alice.on_disposition(events)
        handle = await alice.send_message(peer.aor, "hello", notify={"positive-delivery"})
        assert await handle.await_disposition("delivered", timeout=5) is S.UNSUPPORTED
        (change,) = events.of(DispositionChanged)
        assert (change.previous, change.state, change.sip_status) == (S.PENDING, S.UNSUPPORTED, 200)


async def test_cli_send_probe_options_reports_unsupported() -> None:
    async with StackPeer("plain", answer=_answer_with_accept("text/plain")) as peer:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipimdn", "send", "--aor", "sip:alice@127.0.0.1:0",
            "--listen", "udp:127.0.0.1:0", "--to", peer.aor, "--text", "hello", "--wait", "5",
            "--probe-options", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        assert process.returncode == 0, out.decode() + err.decode()
        outcome = next(e for e in events if e["event"] == "outcome")
        assert outcome["state"] == "unsupported"
        assert [e["state"] for e in events if e["event"] == "disposition-changed"] == ["unsupported"]
        assert events[-1] == {"event": "done", "ok": True}
        assert [(r.method, _mime(r)) for r in peer.requests] == [("OPTIONS", None), ("MESSAGE", "text/plain")]
