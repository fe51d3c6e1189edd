"""The transaction layer stamps received/rport (RFC 3261 §18.2.1, RFC 3581 §4) through the core's
in-place ``Message.stamp_received``, and falls back to the typed route for a source address the
core will not write (a scoped IPv6 address), so such a peer's request is still served."""

from __future__ import annotations

import pytest

from sipimdn import parse_message
from sipimdn.dialog.layer import stamp_received
from sipimdn.transport.flow import Flow, Transport

REQUEST = (
    b"MESSAGE sip:b@h SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP [fe80::1]:5060;branch=z9hG4bK1234;rport\r\n"
    b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize("source_ip", ["127.0.0.1", "::1", "fe80::1%eth0"])
def test_received_and_rport_are_stamped(source_ip: str) -> None:
    request = parse_message(REQUEST)
    via = stamp_received(request, Flow(Transport.UDP, (source_ip, 5062), None))
    assert via.received == source_ip
    assert via.rport == 5062
    assert request.top_via == via
    # the wire text carries both, and the rest of the sender's Via is untouched
    wire = request.headers.get("Via") or ""
    assert wire.startswith("SIP/2.0/UDP [fe80::1]:5060;branch=z9hG4bK1234;rport=5062;received=")
    assert source_ip in wire


def test_stamping_twice_changes_nothing_more() -> None:
    request = parse_message(REQUEST)
    flow = Flow(Transport.UDP, ("127.0.0.1", 5062), None)
    first = stamp_received(request, flow)
    text = request.headers.get("Via")
    assert stamp_received(request, flow) == first
    assert request.headers.get("Via") == text
