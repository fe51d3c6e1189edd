"""A client transaction's response is matched to the key the layer's table holds: the event
carries the very key ``send_request`` returned, not an equal one built from the response; once
completed over UDP only Timer K is left (the transaction parked as plain values, see
tests/test_layer_parked.py), then nothing."""

from __future__ import annotations

import pytest

from sipimdn.dialog.events import ResponseReceived
from sipimdn.dialog.factory import build_request, stamp_via
from sipimdn.dialog.layer import TransactionLayer
from sipimdn.message import make_response
from sipimdn.parser import parse_message
from sipimdn.transport.flow import Flow, Transport

UDP = Flow(Transport.UDP, ("192.0.2.9", 5060), None)


@pytest.mark.parametrize("status", [180, 200, 404])
def test_response_and_timer_k_use_the_key_send_request_returned(status: int) -> None:
    layer = TransactionLayer()
    request = build_request("MESSAGE", "sip:bob@192.0.2.9", "<sip:alice@192.0.2.1>", "<sip:bob@192.0.2.9>",
                            body=b"hi", content_type="text/plain")
    stamp_via(request, Transport.UDP, ("192.0.2.1", 5060))
    key = layer.send_request(request, UDP, 0.0)
    layer.messages_to_send()
    response = parse_message(make_response(request, status, to_tag="t1").to_bytes())
    layer.receive(response, UDP, 0.1)
    event = layer.next_event()
    assert isinstance(event, ResponseReceived) and event.key is key and event.response.status_code == status
    if status >= 200:
        # Completed: Timer K (T4) is what is left, then nothing.
        assert layer.get_timer() == pytest.approx(0.1 + layer.config.t4)
        layer.handle_timer(0.1 + layer.config.t4)
        assert layer.transaction_count == 0
