"""A final response is recorded inline, in the pump that matched it (``on_final``).

When several datagrams are handled in one loop turn (a batched UDP read, a fast TCP peer), a
request the peer sent right after its 2xx (the IMDN) is processed before the task awaiting the
2xx resumes. The user agent records a 2xx through ``SipStack.send_request(on_final=...)`` so the
message is already accepted when that IMDN is matched.
"""

from __future__ import annotations

import asyncio
import socket

from ua_helpers import ua_config

from sipimdn import UserAgent
from sipimdn.dialog.factory import build_request
from sipimdn.headers import NameAddr
from sipimdn.imdn.tracker import DispositionState
from sipimdn.message import Request, Response, make_response
from sipimdn.parser import parse_message
from sipimdn.stack import SipStack
from sipimdn.transport.flow import Flow, Transport
from sipimdn.ua import SentMessage
from sipimdn.uri import Uri


async def _receive(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    async with asyncio.timeout(5):
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                await asyncio.sleep(0.005)
            else:
                return data, addr


def _sink() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _state(handle: SentMessage) -> DispositionState:
    return handle.state  # read through a call: the state changes between asserts


def _answer(data: bytes, status: int) -> bytes:
    request = parse_message(data)
    assert isinstance(request, Request)
    return make_response(request, status, to_tag="peer").to_bytes()


async def test_on_final_runs_inline_before_the_awaiting_task_resumes() -> None:
    sink = _sink()
    try:
        async with SipStack() as stack:
            port = sink.getsockname()[1]
            target = Uri.parse(f"sip:b@127.0.0.1:{port}")
            me = NameAddr(Uri.parse("sip:a@127.0.0.1"))
            request = build_request("MESSAGE", target, me, NameAddr(target))
            seen: list[Response] = []

            def failing(response: Response) -> None:
                raise RuntimeError("a bad hook is logged, not raised into the pump")

            task = asyncio.ensure_future(stack.send_request(request, on_final=seen.append))
            data, addr = await _receive(sink)
            flow = Flow(Transport.UDP, addr, stack.endpoints[0][1])
            # A 1xx is not final: no call.
            stack.datagram_received(_answer(data, 100), flow)
            assert seen == []
            stack.datagram_received(_answer(data, 200), flow)  # as a batched reader would
            assert [r.status_code for r in seen] == [200] and not task.done()
            assert (await task).status_code == 200
            assert not stack._final_hooks and not stack._waiters

            again = build_request("MESSAGE", target, me, NameAddr(target))
            task = asyncio.ensure_future(stack.send_request(again, on_final=failing))
            data, addr = await _receive(sink)
            stack.datagram_received(_answer(data, 486), flow)
            assert (await task).status_code == 486
    finally:
        sink.close()


async def test_user_agent_records_a_2xx_inline() -> None:
    sink = _sink()
    try:
        async with UserAgent(ua_config("alice")) as alice:
            port = sink.getsockname()[1]
            handle = await alice.send_message(f"sip:bob@127.0.0.1:{port}", "hi", notify=["positive-delivery"])
            data, addr = await _receive(sink)
            stack = alice.stack
            flow = Flow(Transport.UDP, addr, stack.endpoints[0][1])
            assert _state(handle) is DispositionState.PENDING
            stack.datagram_received(_answer(data, 200), flow)
            # Accepted before the sending task runs again: an IMDN handled next in the same
            # turn finds the message accepted.
            assert handle.state is DispositionState.ACCEPTED
            response = await asyncio.wait_for(handle.final_response(), 5)
            assert response.status_code == 200 and handle.state is DispositionState.ACCEPTED
    finally:
        sink.close()


async def test_user_agent_leaves_a_refusal_to_the_sending_task() -> None:
    sink = _sink()
    try:
        async with UserAgent(ua_config("alice")) as alice:
            port = sink.getsockname()[1]
            handle = await alice.send_message(f"sip:bob@127.0.0.1:{port}", "hi", notify=["positive-delivery"])
            data, addr = await _receive(sink)
            stack = alice.stack
            stack.datagram_received(_answer(data, 404), Flow(Transport.UDP, addr, stack.endpoints[0][1]))
            assert _state(handle) is DispositionState.PENDING  # not recorded inline
            response = await asyncio.wait_for(handle.final_response(), 5)
            assert response.status_code == 404
            assert handle.state is DispositionState.FAILED
    finally:
        sink.close()
