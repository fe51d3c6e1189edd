"""The transaction layer: matching, Via stamping, response routing, stateless 400, lossy links."""

from __future__ import annotations

import pytest
from helpers_sip import LayerPair, Link, client_transactions, message_request, server_transactions
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.dialog.events import (
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
    TransportFailed,
)
from sipimdn.dialog.factory import MAGIC_COOKIE, build_request, new_branch, new_call_id, new_tag, stamp_via
from sipimdn.dialog.layer import TransactionLayer, response_flow, stamp_received
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import LocalProtocolError, SipParseError
from sipimdn.headers import Via
from sipimdn.message import Request, Response, make_response
from sipimdn.parser import parse_message
from sipimdn.transport.flow import Flow, Transport

SCHEDULE = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]

UDP_FROM = Flow(Transport.UDP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))


def raw_request(via: str, method: str = "MESSAGE", extra: str = "") -> bytes:
    return (
        f"{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@example.com>;tag=f1\r\n"
        f"To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 7 {method}\r\nMax-Forwards: 70\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# -- factory ------------------------------------------------------------------------------------


def test_identifiers_are_random_and_well_formed() -> None:
    branches = {new_branch() for _ in range(200)}
    assert len(branches) == 200
    # >= 64 random bits: at least 16 hex digits after the cookie
    assert all(b.startswith(MAGIC_COOKIE) and len(b) - len(MAGIC_COOKIE) >= 16 for b in branches)
    assert len({new_tag() for _ in range(200)}) == 200
    assert new_call_id("example.com").endswith("@example.com")


def test_build_message_request_follows_8_1_1() -> None:
    request = build_request("MESSAGE", "sip:bob@example.com", "Alice <sip:alice@example.com>",
                            "<sip:bob@example.com>", body="héllo".encode(), content_type="text/plain")
    assert request.from_.tag is not None and request.to.tag is None
    assert request.cseq.number == 1 and request.cseq.method == "MESSAGE"
    assert request.max_forwards == 70
    assert "contact" not in request.headers
    assert request.to_bytes().endswith("héllo".encode())
    with pytest.raises(LocalProtocolError):
        build_request("MESSAGE", "sip:bob@example.com", "<sip:a@x>", "<sip:b@x>", contact="<sip:a@1.2.3.4>")
    with pytest.raises(LocalProtocolError):
        build_request("MESSAGE", "sip:bob@example.com", "<sip:a@x>", "<sip:b@x>;tag=1")
    with pytest.raises(LocalProtocolError):
        build_request("MESSAGE", "sip:bob@example.com", "<sip:a@x>", "<sip:b@x>", cseq=2**31)


def test_stamp_via_sets_fresh_branch_and_rport_each_time() -> None:
    request = message_request("127.0.0.1", 5070)
    first = stamp_via(request, Transport.UDP, ("127.0.0.1", 5060))
    second = stamp_via(request, Transport.TCP, ("::1", 5062))
    assert first.branch != second.branch
    assert len(request.vias) == 1
    top = parse_message(request.to_bytes()).top_via
    assert (top.transport, top.host, top.port, top.has_rport) == ("TCP", "::1", 5062, True)
    no_rport = stamp_via(request, Transport.UDP, ("127.0.0.1", 5060), rport=False)
    assert not no_rport.has_rport


# -- Via stamping and response routing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("via", "expected_received", "expected_rport"),
    [
        ("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa;rport", "192.0.2.7", "40000"),  # RFC 3581: always
        ("SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKa", "192.0.2.7", None),  # a name
        ("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa", "192.0.2.7", None),  # behind a NAT
        ("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa", None, None),  # nothing to add
    ],
)
def test_received_and_rport_filled_on_receipt(via: str, expected_received: str | None,
                                              expected_rport: str | None) -> None:
    request = parse_message(raw_request(via))
    assert isinstance(request, Request)
    stamp_received(request, UDP_FROM)
    top = parse_message(request.to_bytes()).top_via
    assert top.received == expected_received
    assert top.params.get("rport") == expected_rport


@pytest.mark.parametrize(
    ("via", "flow", "expected"),
    [
        # 1. reliable: the same connection
        ("SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKa;received=192.0.2.7;rport=40000",
         Flow(Transport.TCP, ("192.0.2.7", 40000), ("127.0.0.1", 5060)),
         Flow(Transport.TCP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))),
        # 2. maddr
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;maddr=224.0.1.75;received=192.0.2.7", UDP_FROM,
         Flow(Transport.UDP, ("224.0.1.75", 5070))),
        # 3. received + rport: back to the source port, from the socket it came in on
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;received=192.0.2.7;rport=40000", UDP_FROM,
         Flow(Transport.UDP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))),
        # 4. received only: the sent-by port
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;received=192.0.2.7", UDP_FROM,
         Flow(Transport.UDP, ("192.0.2.7", 5070), ("127.0.0.1", 5060))),
        # 5. sent-by, default port
        ("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKa", UDP_FROM,
         Flow(Transport.UDP, ("192.0.2.7", 5060), ("127.0.0.1", 5060))),
        ("SIP/2.0/UDP [2001:db8::1]:5080;branch=z9hG4bKa;received=[2001:db8::9];rport=4000",
         Flow(Transport.UDP, ("2001:db8::9", 4000), ("::1", 5060)),
         Flow(Transport.UDP, ("2001:db8::9", 4000), ("::1", 5060))),
    ],
)
def test_response_routing_18_2_2(via: str, flow: Flow, expected: Flow) -> None:
    assert response_flow(flow, Via.parse(via)) == expected


def test_response_to_rport_request_goes_to_source_port() -> None:
    layer = TransactionLayer()
    data = raw_request("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKr1;rport")
    layer.receive(parse_message(data), UDP_FROM, 0.0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    layer.respond(event.key, make_response(event.request, 200), 0.1)
    [out] = layer.messages_to_send()
    assert out.flow == Flow(Transport.UDP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))
    assert out.message.top_via.params.get("rport") == "40000"
    assert out.message.top_via.received == "192.0.2.7"


# -- matching ----------------------------------------------------------------------------------


def test_server_retransmission_absorbed_and_answered_again() -> None:
    layer = TransactionLayer()
    data = raw_request("SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKdup")
    layer.receive(parse_message(data), UDP_FROM, 0.0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    layer.receive(parse_message(data), UDP_FROM, 0.5)  # before the answer: absorbed, silent
    assert layer.next_event() is None and layer.messages_to_send() == []
    assert layer.respond(event.key, make_response(event.request, 202), 0.6)
    assert [getattr(o.message, "status_code", None) for o in layer.messages_to_send()] == [202]
    layer.receive(parse_message(data), UDP_FROM, 1.0)  # after: the same response again
    assert [getattr(o.message, "status_code", None) for o in layer.messages_to_send()] == [202]
    assert layer.next_event() is None


def test_same_branch_other_sent_by_or_method_is_another_transaction() -> None:
    layer = TransactionLayer()
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKs")), UDP_FROM, 0)
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.8:40000;branch=z9hG4bKs")), UDP_FROM, 0)
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKs", "OPTIONS")),
                  UDP_FROM, 0)
    keys = set()
    while (event := layer.next_event()) is not None:
        assert isinstance(event, RequestReceived)
        keys.add(event.key)
    assert len(keys) == 3


def test_rfc2543_request_without_cookie_still_matches_retransmissions() -> None:
    layer = TransactionLayer()
    data = raw_request("SIP/2.0/UDP 192.0.2.7:40000;branch=old1")
    layer.receive(parse_message(data), UDP_FROM, 0)
    layer.receive(parse_message(data), UDP_FROM, 0.5)
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7:40000")), UDP_FROM, 0.6)
    events = [layer.next_event() for _ in range(3)]
    assert [type(e) for e in events] == [RequestReceived, RequestReceived, type(None)]


def test_ack_is_dropped() -> None:
    layer = TransactionLayer()
    layer.receive(parse_message(raw_request("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKack", "ACK")), UDP_FROM, 0)
    assert layer.next_event() is None and layer.transaction_count == 0


def test_client_matching_needs_branch_and_method() -> None:
    pair = LayerPair()
    pair.b.responder = None
    key = pair.send_request()
    [(_, event)] = pair.b.events
    assert isinstance(event, RequestReceived)
    other_method = make_response(event.request, 200)
    other_method.headers.set("CSeq", "1 OPTIONS")
    two_vias = make_response(event.request, 200)
    two_vias.headers.add("Via", "SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKx")
    foreign = make_response(event.request, 200)
    foreign.set_top_via(Via("UDP", "127.0.0.1", 5060, {"branch": new_branch()}))
    for response in (other_method, two_vias, foreign):
        pair.a.layer.receive(parse_message(response.to_bytes()), Flow(Transport.UDP, pair.b.address), 1.0)
    assert pair.a.layer.next_event() is None
    good = make_response(event.request, 200)
    pair.a.layer.receive(parse_message(good.to_bytes()), Flow(Transport.UDP, pair.b.address), 1.0)
    received = pair.a.layer.next_event()
    assert isinstance(received, ResponseReceived) and received.key == key and received.final


def test_send_request_refuses_bad_branch_and_reuse() -> None:
    layer = TransactionLayer()
    request = message_request("127.0.0.1", 5070)
    request.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=abc")
    flow = Flow(Transport.UDP, ("127.0.0.1", 5070))
    with pytest.raises(LocalProtocolError):
        layer.send_request(request, flow, 0)
    stamp_via(request, Transport.UDP, ("127.0.0.1", 5060))
    layer.send_request(request, flow, 0)
    with pytest.raises(LocalProtocolError):
        layer.send_request(request, flow, 0)


def test_respond_to_unknown_or_finished_transaction() -> None:
    layer = TransactionLayer()
    layer.receive(parse_message(raw_request("SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKt")),
                  Flow(Transport.TCP, ("192.0.2.7", 40000), ("127.0.0.1", 5060)), 0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    with pytest.raises(LocalProtocolError):
        layer.respond(event.key, make_response(event.request, 408), 0.1)  # RFC 4320 §4.2
    assert layer.respond(event.key, make_response(event.request, 200), 0.1)
    assert layer.transaction_count == 0  # J = 0 on TCP
    assert not layer.respond(event.key, make_response(event.request, 200), 0.2)


# -- stateless 400 ------------------------------------------------------------------------------


def test_unparseable_request_with_readable_via_gets_400_with_reason() -> None:
    layer = TransactionLayer()
    data = raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKbad;rport").replace(b"CSeq: 7", b"CSeq: x")
    with pytest.raises(SipParseError) as info:
        layer.receive(parse_message(data), UDP_FROM, 0)
    assert layer.receive_unparseable(data, info.value, UDP_FROM)
    [out] = layer.messages_to_send()
    assert out.key is None
    assert isinstance(out.message, Response) and out.message.status_code == 400
    assert "CSeq" in out.message.reason
    to_tag = out.message.to.tag
    assert to_tag is not None  # §8.2.6.2, and the same one for a retransmission (§8.2.7)
    layer.receive_unparseable(data, info.value, UDP_FROM)
    [again] = layer.messages_to_send()
    assert again.message.to.tag == to_tag
    assert out.flow == Flow(Transport.UDP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))
    assert layer.transaction_count == 0


@pytest.mark.parametrize("via", [
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKbad;received=evil.example;rport",
    "SIP/2.0/UDP 192.0.2.7:5070;received=evil.example;branch=z9hG4bKbad",
    "SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKbad;RECEIVED = 1.2.3 ;rport",
])
def test_received_that_is_no_ip_address_gets_400_sent_to_the_source(via: str) -> None:
    """RFC 3261 §20.42: received is an IP address. The answer drops the bad value and stamps the
    address the request came from, so it goes back there (RFC 3581 §4 with rport)."""
    layer = TransactionLayer()
    data = raw_request(via)
    with pytest.raises(SipParseError) as info:
        layer.receive(parse_message(data), UDP_FROM, 0)
    assert layer.receive_unparseable(data, info.value, UDP_FROM)
    [out] = layer.messages_to_send()
    assert isinstance(out.message, Response) and out.message.status_code == 400
    top = out.message.top_via
    # With rport received is always written (RFC 3581 §4); without, only when sent-by differs.
    assert top.received == ("192.0.2.7" if top.has_rport else None)
    assert top.branch == "z9hG4bKbad"
    assert out.flow.remote[0] == "192.0.2.7"


def test_a_via_broken_beyond_its_received_gets_nothing() -> None:
    layer = TransactionLayer()
    data = raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKbad;received=evil.example;rport=x")
    with pytest.raises(SipParseError) as info:
        layer.receive(parse_message(data), UDP_FROM, 0)
    assert not layer.receive_unparseable(data, info.value, UDP_FROM)
    assert layer.messages_to_send() == []


@pytest.mark.parametrize("data", [
    b"\x00\xffgarbage",
    b"MESSAGE sip:bob@x SIP/2.0\r\nFrom: <sip:a@b>\r\n\r\n",  # no Via: nowhere to answer
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKz\r\nCSeq: x\r\n\r\n",  # a response
])
def test_garbage_gets_nothing(data: bytes) -> None:
    layer = TransactionLayer()
    assert not layer.receive_unparseable(data, SipParseError("bad"), UDP_FROM)
    assert layer.messages_to_send() == []


# -- whole transactions over an in-memory pair ------------------------------------------------------


def test_pair_udp_round_trip_and_cleanup() -> None:
    pair = LayerPair()
    key = pair.send_request()
    outcome = pair.outcome(key)
    assert outcome is not None and outcome[0] == 0.0
    assert isinstance(outcome[1], ResponseReceived) and outcome[1].response.status_code == 200
    pair.run()
    assert pair.a.layer.transaction_count == pair.b.layer.transaction_count == 0
    assert pair.clock.now == 32.0  # Timer J (64*T1) was the last to go, K (T4) before it


def test_pair_tcp_has_no_retransmissions_and_no_lingering() -> None:
    pair = LayerPair(transport=Transport.TCP)
    key = pair.send_request()
    assert pair.outcome(key) is not None
    assert pair.a.layer.transaction_count == pair.b.layer.transaction_count == 0
    assert pair.a.layer.get_timer() is None


def test_pair_timeout_when_nothing_gets_through() -> None:
    pair = LayerPair(a_to_b=Link(drop_first=100))
    key = pair.send_request()
    pair.run()
    outcome = pair.outcome(key)
    assert outcome is not None and outcome[0] == 32.0 and isinstance(outcome[1], TransactionTimedOut)
    assert [at for at, _, _ in pair.links[id(pair.a)].log] == SCHEDULE


def test_pair_100_trying_when_tu_is_slow() -> None:
    pair = LayerPair()
    pair.b.responder = None
    key = pair.send_request()
    pair.run(until=10.0)
    provisional = [(at, e.response.status_code) for at, e in pair.a.events if isinstance(e, ResponseReceived)]
    # RFC 4320: not before E reaches T2 (3.5 s); then re-sent for each retransmitted request
    assert provisional == [(3.5, 100), (3.5, 100), (7.5, 100)]
    assert [at for at, _, _ in pair.links[id(pair.b)].log] == [3.5, 3.5, 7.5]
    [(_, request_event)] = pair.b.events
    assert isinstance(request_event, RequestReceived)
    pair.b.layer.respond(request_event.key, make_response(request_event.request, 200), pair.clock.now)
    pair.pump()
    assert pair.outcome(key) is not None
    # a's retransmissions after the 1xx came every T2 (§17.1.2.2): 3.5 → 7.5 fired before the 100 landed
    sends = [at for at, _, _ in pair.links[id(pair.a)].log]
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5]


@pytest.mark.parametrize("drop_first", range(0, 11))
def test_pair_drop_first_n_requests(drop_first: int) -> None:
    pair = LayerPair(a_to_b=Link(drop_first=drop_first))
    key = pair.send_request()
    pair.run()
    outcome = pair.outcome(key)
    assert outcome is not None
    at, event = outcome
    assert isinstance(event, ResponseReceived) and event.response.status_code == 200
    assert at == SCHEDULE[drop_first]  # answered at the first send that got through
    assert len(pair.b.of_type(RequestReceived)) == 1
    assert pair.a.layer.transaction_count == pair.b.layer.transaction_count == 0


@pytest.mark.parametrize("drop_first", range(0, 10))
def test_pair_drop_first_n_responses(drop_first: int) -> None:
    pair = LayerPair(b_to_a=Link(drop_first=drop_first))
    key = pair.send_request()
    pair.run()
    outcome = pair.outcome(key)
    assert outcome is not None and isinstance(outcome[1], ResponseReceived)
    # each retransmitted request makes b re-send its 200; the (n+1)-th one gets through
    assert outcome[0] == SCHEDULE[drop_first]
    assert len(pair.b.of_type(RequestReceived)) == 1


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_pair_drop_every_kth_both_ways_one_after_another(k: int) -> None:
    pair = LayerPair(a_to_b=Link(drop_every=k), b_to_a=Link(drop_every=k))
    for _ in range(20):
        started = pair.clock.now
        key = pair.send_request()
        for _ in range(100):
            if pair.outcome(key) is not None:
                break
            pair.run(until=pair.next_deadline() or 0.0)
        outcome = pair.outcome(key)
        assert outcome is not None and isinstance(outcome[1], ResponseReceived)
        assert outcome[0] - started < 32.0
    assert len(pair.b.of_type(RequestReceived)) == 20  # duplicates never reach the TU
    pair.run()
    assert pair.a.layer.transaction_count == pair.b.layer.transaction_count == 0


@pytest.mark.parametrize("k", [3, 4, 5])
def test_pair_drop_every_kth_both_ways_twenty_at_once(k: int) -> None:
    pair = LayerPair(a_to_b=Link(drop_every=k), b_to_a=Link(drop_every=k))
    keys = [pair.send_request() for _ in range(20)]
    pair.run()
    for key in keys:
        outcome = pair.outcome(key)
        assert outcome is not None and isinstance(outcome[1], ResponseReceived)
        assert outcome[0] < 32.0
    assert len(pair.b.of_type(RequestReceived)) == 20
    assert pair.a.layer.transaction_count == pair.b.layer.transaction_count == 0


@settings(max_examples=200, deadline=None)
@given(
    drop_ab=st.frozensets(st.integers(0, 14), max_size=12),
    drop_ba=st.frozensets(st.integers(0, 14), max_size=12),
    tcp=st.booleans(),
)
def test_pair_any_loss_pattern_ends_cleanly(drop_ab: frozenset[int], drop_ba: frozenset[int],
                                            tcp: bool) -> None:
    pair = LayerPair(transport=Transport.TCP if tcp else Transport.UDP,
                     a_to_b=Link(drop=drop_ab), b_to_a=Link(drop=drop_ba))
    key = pair.send_request()
    pair.run()
    outcome = pair.outcome(key)
    assert outcome is not None
    at, event = outcome
    assert at <= 32.0
    assert isinstance(event, ResponseReceived | TransactionTimedOut)
    finals = [e for e in pair.a.of_type(ResponseReceived) if isinstance(e, ResponseReceived) and e.final]
    assert len(finals) <= 1
    assert len(pair.b.of_type(RequestReceived)) <= 1
    a_sent = pair.links[id(pair.a)].log
    assert len(a_sent) <= (1 if tcp else 11)
    if any(ok for _, _, ok in pair.links[id(pair.b)].log):
        assert isinstance(event, ResponseReceived)
    assert pair.a.layer.transaction_count == pair.b.layer.transaction_count == 0


def test_short_timers_scale_the_schedule() -> None:
    pair = LayerPair(timers=TimerConfig(t1=0.05, t2=0.4, t4=0.5), a_to_b=Link(drop_first=100))
    key = pair.send_request()
    pair.run()
    outcome = pair.outcome(key)
    assert outcome is not None and isinstance(outcome[1], TransactionTimedOut)
    assert outcome[0] == pytest.approx(3.2)


# -- failures --------------------------------------------------------------------------------------


def test_flow_failed_ends_client_transactions_on_that_path_only() -> None:
    layer = TransactionLayer()
    keys = []
    for port in (5070, 5071):
        request = message_request("127.0.0.1", port)
        stamp_via(request, Transport.UDP, ("127.0.0.1", 5060))
        keys.append(layer.send_request(request, Flow(Transport.UDP, ("127.0.0.1", port)), 0))
    layer.messages_to_send()
    layer.flow_failed(Flow(Transport.UDP, ("127.0.0.1", 5070)), 0.1, "ICMP port unreachable")
    event = layer.next_event()
    assert isinstance(event, TransportFailed) and event.key == keys[0] and "ICMP" in event.reason
    assert layer.next_event() is None
    assert layer.transaction_count == 1


def test_transport_error_on_a_response() -> None:
    layer = TransactionLayer()
    flow = Flow(Transport.TCP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))
    layer.receive(parse_message(raw_request("SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKq")), flow, 0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    layer.transport_error(event.key, 0.1, "connection reset")  # nothing sent yet: nothing to fail
    assert layer.next_event() is None and layer.transaction_count == 1


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d.replace(b"CSeq: 7 MESSAGE", b"CSeq: 7 OPTIONS"), "CSeq"),
    (lambda d: d.replace(b"Call-ID: c1\r\n", b""), "Call-ID"),
    (lambda d: d.replace(b"From: <sip:a@example.com>;tag=f1", b"From: <<<"), "'>'"),
])
def test_requests_missing_what_a_transaction_needs_get_400(mutate: object, reason: str) -> None:
    layer = TransactionLayer()
    data = mutate(raw_request("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKm"))  # type: ignore[operator]
    with pytest.raises(SipParseError) as info:
        layer.receive(parse_message(data), UDP_FROM, 0)
    assert reason.lower() in info.value.reason.lower()
    assert layer.transaction_count == 0 and layer.next_event() is None
    assert layer.receive_unparseable(data, info.value, UDP_FROM)
    [out] = layer.messages_to_send()
    assert isinstance(out.message, Response) and out.message.status_code == 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "answer", "wait"]), st.floats(0, 5)), max_size=40))
def test_layer_timer_is_the_earliest_transaction_deadline(ops: list[tuple[str, float]]) -> None:
    pair = LayerPair(a_to_b=Link(drop_every=3))
    pair.b.responder = None
    now = 0.0
    for op, dt in ops:
        now += dt
        if op == "send":
            pair.send_request()
        elif op == "answer":
            for _, event in pair.b.events:
                if isinstance(event, RequestReceived):
                    pair.b.layer.respond(event.key, make_response(event.request, 200), pair.clock.now)
        else:
            pair.run(until=now)
        pair.pump()
        for side in (pair.a, pair.b):
            layer = side.layer
            live = [tx.get_timer() for _, tx in client_transactions(layer)]
            live += [tx.get_timer() for _, tx in server_transactions(layer)]
            expected = min((d for d in live if d is not None), default=None)
            assert layer.get_timer() == expected


def test_server_transaction_cap_answers_503_statelessly() -> None:
    layer = TransactionLayer(max_server_transactions=2)
    for i in range(3):
        data = raw_request(f"SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKcap{i}")
        layer.receive(parse_message(data), UDP_FROM, 0)
    assert [type(layer.next_event()) for _ in range(3)] == [RequestReceived, RequestReceived, type(None)]
    [busy] = layer.messages_to_send()
    assert isinstance(busy.message, Response) and busy.message.status_code == 503 and busy.key is None
    assert busy.message.headers.get("Retry-After") == "5"
    assert layer.transaction_count == 2


def test_closed_connection_does_not_kill_a_server_transaction_awaiting_its_answer() -> None:
    layer = TransactionLayer()
    flow = Flow(Transport.TCP, ("192.0.2.7", 40000), ("127.0.0.1", 5060))
    layer.receive(parse_message(raw_request("SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKkeep")), flow, 0)
    event = layer.next_event()
    assert isinstance(event, RequestReceived)
    layer.handle_timer(TimerConfig().trying_delay)  # 100 Trying sent: Proceeding
    layer.messages_to_send()
    layer.flow_failed(flow, 4.0, "connection closed by peer")
    assert layer.next_event() is None
    assert layer.respond(event.key, make_response(event.request, 200), 5.0)
    [out] = layer.messages_to_send()
    assert out.flow == flow  # the stack reconnects to sent-by when this connection is gone
