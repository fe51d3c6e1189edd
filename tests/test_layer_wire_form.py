"""A completed server transaction keeps its final response as the bytes it sent (RFC 3261
§17.2.2: it answers every retransmission of the request with that response until Timer J).

Differential: what a retransmission gets on the wire is byte for byte what the first send got,
which is the general ``Response.to_bytes()`` of the response the TU gave, whatever the request's
spelling (folded and compact headers, several Vias) and the response's extra headers and body.
"""

from __future__ import annotations

import gc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipimdn.dialog import layer as layer_module
from sipimdn.dialog import transaction as transaction_module
from sipimdn.dialog.events import RequestReceived, ResponseReceived, TransactionKey
from sipimdn.dialog.layer import Outgoing, TransactionLayer
from sipimdn.dialog.transaction import Deliver, Send, TimerConfig, TxState
from sipimdn.errors import SipParseError
from sipimdn.message import DeferredHeaders, Request, Response, make_response
from sipimdn.parser import parse_message
from sipimdn.transport.flow import Flow, Transport

UDP = Flow(Transport.UDP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))
TCP = Flow(Transport.TCP, ("192.0.2.7", 40001), ("127.0.0.1", 5060))

via_rows = st.sampled_from([
    "Via: SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKw1;rport\r\n",
    "v: SIP/2.0/UDP h.example;branch=z9hG4bKw2\r\n",
    "Via: SIP/2.0/UDP 192.0.2.7\r\n ;branch=z9hG4bKw3\r\n",
    "Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKw4, SIP/2.0/TCP p.example;branch=z9hG4bKp\r\n"
    "Via: SIP/2.0/TLS [2001:db8::1];branch=z9hG4bKq\r\n",
    'Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKw5;x="a b"\r\n',
])
from_rows = st.sampled_from(["From: <sip:a@example.com>;tag=f1\r\n", "f:  Al <sip:a@example.com> ;tag=f2\r\n",
                             'From: "A \\"q\\"" <sip:a@example.com>;tag=f3\r\n'])
to_rows = st.sampled_from(["To: <sip:bob@example.com>\r\n", "t: <sip:bob@example.com>;tag=old\r\n",
                           "To: Bob\r\n <sip:bob@example.com>\r\n"])
extra_rows = st.sampled_from(["", "Timestamp: 5\r\n", "Content-Length: 0\r\n", "Subject: x,\r\n y\r\n"])
added = st.lists(st.tuples(st.sampled_from(["X-A", "Server", "Content-Length", "l", "Content-Type"]),
                           st.sampled_from(["", "v", "a, b", "12", "é"])), max_size=3)


def request_bytes(via: str, from_: str, to: str, extra: str) -> bytes:
    return (f"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n{via}{from_}{to}Call-ID: c1\r\nCSeq: 7 MESSAGE\r\n"
            f"{extra}\r\n").encode("utf-8", "surrogateescape")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(via=via_rows, from_=from_rows, to=to_rows, extra=extra_rows,
       status=st.sampled_from([200, 202, 404, 699]), headers=added,
       body=st.sampled_from([b"", b"x", b"\r\n\r\nbody"]), reliable=st.booleans())
def test_retransmissions_get_the_bytes_of_the_first_send(
    *, via: str, from_: str, to: str, extra: str, status: int, headers: list[tuple[str, str]], body: bytes,
    reliable: bool,
) -> None:
    data = request_bytes(via, from_, to, extra)
    try:
        request = parse_message(data)
    except SipParseError:
        return
    assert isinstance(request, Request)
    flow = TCP if reliable else UDP
    layer = TransactionLayer()
    try:
        layer.receive(request, flow, 0.0)
    except SipParseError:
        return
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    response = make_response(event.request, status, to_tag="t9")
    for name, value in headers:
        response.headers.add(name, value)
    response.body = body
    reference = response.copy().to_bytes()  # the general path, on an untouched copy
    assert layer.respond(event.key, response, 1.0)
    [first] = layer.messages_to_send()
    assert first.message is response
    assert (first.data if first.data is not None else first.message.to_bytes()) == reference
    if reliable:  # Timer J is zero on a stream: the transaction is gone, nothing is kept
        assert layer.transaction_count == 0
        return
    assert first.data == reference
    for at in (2.0, 3.0):  # the request again, parsed afresh each time
        layer.receive(parse_message(data), flow, at)
        assert layer.next_event() is None
        [again] = layer.messages_to_send()
        assert again.key == event.key
        assert isinstance(again.message, Response) and again.message.status_code == status
        assert again.message.to_bytes() == reference
        assert again.message.headers.get_all("via") == response.headers.get_all("via")
        assert again.message.to == response.to


def test_a_completed_transaction_is_kept_as_untracked_atoms() -> None:
    data = request_bytes("Via: SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKk;rport\r\n",
                         "From: <sip:a@example.com>;tag=f1\r\n", "To: <sip:bob@example.com>\r\n", "")
    layer = TransactionLayer()
    layer.receive(parse_message(data), UDP, 0.0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    layer.respond(event.key, make_response(event.request, 200, to_tag="t"), 0.0)
    [sent] = layer.messages_to_send()
    # Parked: no transaction object, no request, no response; a record of atoms holding the bytes sent.
    assert not layer._servers and layer.transaction_count == 1
    [record] = layer._parked.values()
    assert type(record) is tuple and sent.data in record
    atoms = (bool, str, bytes, int, float, type(None))
    assert all(type(value) in atoms for value in record)
    assert record[:4] == event.key and layer._parked.get(event.key) == record
    # Kept in tables the collector never tracks, not even before its first collection (the
    # table object itself holds them and, decoded, the record due first).
    tables = [referent for referent in gc.get_referents(layer._parked) if type(referent) is dict]
    assert len(tables) == 2 and not any(gc.is_tracked(table) for table in tables)
    # Rebuilt for an input, it is the transaction ``respond`` left: Completed, its response as
    # written (the header section as one bytes object, rows built on first use) and no request.
    revived = layer._revive(record)
    assert revived.state is TxState.COMPLETED and revived.request is None
    assert revived.timeout_at == TimerConfig().timer_j(False)
    kept = revived.last_response
    assert kept is not None and isinstance(kept.headers, DeferredHeaders)
    assert kept.to_bytes() == sent.data == sent.message.to_bytes()


def test_the_layers_own_constructors_build_what_the_classes_build() -> None:
    # The layer and the transactions build these without the frozen dataclass __init__.
    response = Response(200)
    key = TransactionKey(False, "z9hG4bKa", "MESSAGE", "h:5060")
    built = layer_module._outgoing(response, UDP, key, b"x")
    reference = Outgoing(response, UDP, key, b"x")
    assert built == reference and hash(built) == hash(reference) and repr(built) == repr(reference)
    request = parse_message(request_bytes("Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKa\r\n",
                                           "From: <sip:a@example.com>;tag=f1\r\n",
                                           "To: <sip:b@example.com>\r\n", ""))
    assert isinstance(request, Request)
    assert layer_module._request_received(key, request, UDP) == RequestReceived(key, request, UDP)
    assert transaction_module._send(response) == Send(response)
    assert transaction_module._deliver(response) == Deliver(response)
    received = layer_module._response_received(key, response, UDP)
    assert received == ResponseReceived(key, response, UDP) and repr(received) == repr(
        ResponseReceived(key, response, UDP)
    )
    client_key = layer_module._client_key("z9hG4bKb", "MESSAGE")
    assert type(client_key) is TransactionKey and client_key == TransactionKey(True, "z9hG4bKb", "MESSAGE")
    assert client_key._asdict() == TransactionKey(True, "z9hG4bKb", "MESSAGE")._asdict()
    assert hash(client_key) == hash(TransactionKey(True, "z9hG4bKb", "MESSAGE"))
    server_key = layer_module.server_key(request)
    assert type(server_key) is TransactionKey
    assert server_key == TransactionKey(False, "z9hG4bKa", "MESSAGE", "192.0.2.7:")
    assert server_key._asdict() == TransactionKey(False, "z9hG4bKa", "MESSAGE", "192.0.2.7:")._asdict()
