"""SIPp against sipimdn's SipStack, at transaction and transport level.

The stack runs in this process with a handler that answers every MESSAGE 200 and records
what it was handed. SIPp sends over UDP and TCP, also with 10% loss; and SIPp is the
receiver of a request too large for UDP, which the stack must send over TCP by itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from helpers_sip import message_of_wire_size

from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport as StackTransport

from .sipp import LOOPBACK, SippRunner, Transport

pytestmark = pytest.mark.interop


@dataclass
class Responder:
    """A SipStack that answers 200 to every MESSAGE and remembers each one it was handed."""

    stack: SipStack
    handed_up: list[IncomingRequest] = field(default_factory=list)

    def port(self, transport: Transport) -> int:
        wanted = StackTransport.UDP if transport == "udp" else StackTransport.TCP
        return next(port for kind, (_, port) in self.stack.endpoints if kind is wanted)

    def call_ids(self) -> Counter[str]:
        return Counter(incoming.request.call_id for incoming in self.handed_up)


@pytest.fixture
async def responder() -> AsyncIterator[Responder]:
    listen = [ListenSpec(StackTransport.UDP, LOOPBACK, 0), ListenSpec(StackTransport.TCP, LOOPBACK, 0)]
    async with SipStack(listen) as stack:
        result = Responder(stack)

        def answer(incoming: IncomingRequest) -> None:
            result.handed_up.append(incoming)
            incoming.respond(200 if incoming.request.method == "MESSAGE" else 405)

        stack.on_request(answer)
        yield result


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("scenario", ["uac_text.xml", "uac_cpim.xml"])
async def test_sipp_messages_to_the_stack_all_succeed(
    sipp: SippRunner, responder: Responder, transport: Transport, scenario: str
) -> None:
    calls = 20
    result = await sipp.run_async(
        "uac", scenario, calls=calls, timeout=20, transport=transport,
        remote=(LOOPBACK, responder.port(transport)),
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (0, calls, 0), result.describe()
    # Each MESSAGE reached the handler exactly once, over the transport SIPp used.
    assert len(responder.handed_up) == calls
    assert set(responder.call_ids().values()) == {1}
    assert {incoming.flow.transport.value for incoming in responder.handed_up} == {transport.upper()}


async def test_sipp_lost_10_to_the_stack_succeeds_through_retransmission(
    sipp: SippRunner, responder: Responder
) -> None:
    """-lost 10 over UDP: every call ends in 200, and no retransmission reaches the handler.

    SIPp drops a tenth of the messages it handles, so requests and answers go missing and
    SIPp retransmits (Timer E); the stack's server transactions must answer those from
    their Completed state without handing the request up again. With 100 calls the chance
    that nothing at all is lost is below 1e-4.
    """
    calls = 100
    result = await sipp.run_async(
        "uac", "uac_text.xml", calls=calls, rate=500, timeout=40, lost=10,
        remote=(LOOPBACK, responder.port("udp")),
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (0, calls, 0), result.describe()
    assert result.retransmissions > 0, result.describe()
    assert len(responder.handed_up) == calls
    assert set(responder.call_ids().values()) == {1}


@pytest.mark.parametrize(("size", "expected"), [(1301, "TCP"), (1300, "UDP")])
async def test_the_stack_switches_to_tcp_above_1300_bytes_by_itself(
    sipp: SippRunner, size: int, expected: str
) -> None:
    """RFC 3261 18.1.1: a request over 1300 bytes as sent (our Via included) goes over TCP,
    one of exactly 1300 stays on UDP.

    The target URI names no transport (RFC 3263 would pick UDP). SIPp listens with the
    chosen transport only, so its receiving the request shows which one the stack picked.
    """
    transport: Transport = "tcp" if expected == "TCP" else "udp"
    server = sipp.start("uas", "uas_any.xml", calls=1, timeout=15, transport=transport)
    async with SipStack([ListenSpec(StackTransport.UDP, LOOPBACK, 0)]) as stack:
        sent_by = stack.transports.sent_by(StackTransport.UDP, LOOPBACK)
        request = message_of_wire_size(LOOPBACK, server.port, size, sent_by, rport=stack.rport)
        response = await stack.send_request(request)
    served = await server.wait_async()
    assert response.status_code == 200
    assert (served.exit_code, served.successful) == (0, 1), served.describe()
    assert f"{expected} message received" in served.messages_log
    assert f"Via: SIP/2.0/{expected} " in served.messages_log
    # SIPp logs each message it received with its length: the size rule saw exactly `size`
    assert f"{expected} message received [{size}] bytes" in served.messages_log
