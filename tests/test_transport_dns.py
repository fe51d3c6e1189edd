"""RFC 3263 over real DNS: the dnspython adapter against dnsmasq on 127.0.0.1, then SIP failover
through SipStack.locator to real stacks on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _dnsmasq import DOMAIN, DnsServer, dnsmasq
from _peers import IN_CI
from helpers_sip import FakeClock

from sipimdn.dialog.factory import build_request
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import TransportError
from sipimdn.message import Request
from sipimdn.parser import parse_message
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport import dns as dns_module
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.dns import DnsLocator, parse_nameserver
from sipimdn.transport.flow import Transport
from sipimdn.transport.locate import Locator
from sipimdn.transport.select import Target
from sipimdn.uri import Uri

try:
    import dns.asyncresolver  # noqa: F401 - the optional dns extra
except ImportError:
    if IN_CI:  # scripts/test installs the extra: missing in CI means the install step broke
        raise
    pytest.skip("the dns extra (dnspython) is not installed", allow_module_level=True)

FAST = TimerConfig(t1=0.05, t2=0.4, t4=0.2)
UDP, TCP = Transport.UDP, Transport.TCP


async def _logged(server: DnsServer, count: int, name: str | None = None) -> list[str]:
    """The query log once it has ``count`` lines (dnsmasq writes it a moment after answering)."""
    for _ in range(50):
        found = server.queries(name)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    return server.queries(name)


def test_parse_nameserver() -> None:
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    for bad in ("ns.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


async def test_srv_only_udp(tmp_path: Path) -> None:
    records = [
        f"--srv-host=_sip._udp.srv.{DOMAIN},a.{DOMAIN},5070,0,10",
        f"--host-record=a.{DOMAIN},127.0.0.1",
    ]
    with dnsmasq(records, tmp_path) as server:
        locator = DnsLocator([server.address], timeout=2.0)
        assert locator.rfc3263
        targets = await locator.locate(Uri.parse(f"sip:bob@srv.{DOMAIN}"))
        assert targets == [Target(UDP, "127.0.0.1", 5070)]
        asked = await _logged(server, 4)
        assert asked[0].startswith(f"query[NAPTR] srv.{DOMAIN}")
        assert f"query[SRV] _sip._udp.srv.{DOMAIN} from 127.0.0.1" in asked


async def test_naptr_prefers_tcp(tmp_path: Path) -> None:
    records = [
        f"--naptr-record=naptr.{DOMAIN},20,10,s,SIP+D2U,,_sip._udp.naptr.{DOMAIN}",
        f"--naptr-record=naptr.{DOMAIN},10,10,s,SIP+D2T,,_sip._tcp.naptr.{DOMAIN}",
        f"--naptr-record=naptr.{DOMAIN},5,10,s,SIP+D2S,,_sip._sctp.naptr.{DOMAIN}",
        f"--srv-host=_sip._udp.naptr.{DOMAIN},a.{DOMAIN},5060,0,0",
        f"--srv-host=_sip._tcp.naptr.{DOMAIN},a.{DOMAIN},5080,0,0",
        f"--host-record=a.{DOMAIN},127.0.0.1",
    ]
    with dnsmasq(records, tmp_path) as server:
        targets = await DnsLocator([server.address]).locate(Uri.parse(f"sip:bob@naptr.{DOMAIN}"))
        assert targets == [Target(TCP, "127.0.0.1", 5080), Target(UDP, "127.0.0.1", 5060)]


async def test_weighted_srv_spreads_across_equal_priority(tmp_path: Path) -> None:
    records = [
        f"--srv-host=_sip._udp.w.{DOMAIN},light.{DOMAIN},5060,10,1",
        f"--srv-host=_sip._udp.w.{DOMAIN},heavy.{DOMAIN},5060,10,9",
        f"--host-record=light.{DOMAIN},127.0.0.11",
        f"--host-record=heavy.{DOMAIN},127.0.0.19",
    ]
    with dnsmasq(records, tmp_path) as server:
        locator = DnsLocator([server.address], locator=Locator(rng=random.Random(7)))
        firsts: Counter[str] = Counter()
        for _ in range(400):
            targets = await locator.locate(Uri.parse(f"sip:bob@w.{DOMAIN}"))
            assert {t.host for t in targets} == {"127.0.0.11", "127.0.0.19"}
            firsts[targets[0].host] += 1
        # RFC 2782 picks in [0, 10]: light on 0..1 (2/11), heavy on 2..10 (9/11).
        assert 0.70 < firsts["127.0.0.19"] / 400 < 0.92
        assert firsts["127.0.0.11"] > 0
        # 400 lookups, answers cached: the server saw one round of queries.
        assert locator.queries_sent <= 8


async def test_answers_cached_for_their_ttl(tmp_path: Path) -> None:
    records = [
        f"--srv-host=_sip._udp.ttl.{DOMAIN},a.{DOMAIN},5070,0,0",
        f"--host-record=a.{DOMAIN},127.0.0.1",
    ]
    with dnsmasq(records, tmp_path, ttl=30) as server:
        clock = FakeClock(now=1000.0)
        locator = DnsLocator([server.address], clock=clock)
        uri = Uri.parse(f"sip:bob@ttl.{DOMAIN}")
        first = await locator.locate(uri)
        seen = len(await _logged(server, locator.queries_sent))
        assert seen == locator.queries_sent > 0
        clock.now += 29
        assert await locator.locate(uri) == first
        await asyncio.sleep(0.2)
        assert len(server.queries()) == seen  # nothing asked within the TTL
        clock.now += 2
        assert await locator.locate(uri) == first
        assert len(await _logged(server, 2 * seen)) == 2 * seen  # all asked again


async def test_bad_dns_names_the_name_and_what_was_tried(tmp_path: Path) -> None:
    records = [
        f"--srv-host=_sip._udp.dangling.{DOMAIN},nohost.{DOMAIN},5070,0,0",
        f"--srv-host=_sip._udp.noservice.{DOMAIN}",  # target "." (RFC 2782: no such service)
    ]
    with dnsmasq(records, tmp_path) as server:
        locator = DnsLocator([server.address])
        with pytest.raises(TransportError) as info:
            await locator.locate(Uri.parse(f"sip:bob@dangling.{DOMAIN}"))
        message = str(info.value)
        assert f"sip:bob@dangling.{DOMAIN}" in message
        assert f"A nohost.{DOMAIN}: NXDOMAIN" in message
        with pytest.raises(TransportError, match=r"SRV _sip\._udp\.noservice\.sipimdn\.test: 0 0 1 \."):
            await locator.locate(Uri.parse(f"sip:bob@noservice.{DOMAIN}"))
        with pytest.raises(TransportError, match=rf"NAPTR missing\.{DOMAIN}: NXDOMAIN"):
            await locator.locate(Uri.parse(f"sip:bob@missing.{DOMAIN}"))


async def test_silent_name_server_is_a_transport_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # bound, never answers
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        locator = DnsLocator([f"127.0.0.1:{port}"], timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError) as info:
            await locator.locate(Uri.parse(f"sip:bob@example.{DOMAIN}"))
        # One timeout, not one per query: the lookup stops at the first silent answer.
        assert loop.time() - started < 1.5
        message = str(info.value)
        assert "the name servers do not answer" in message
        assert f"NAPTR example.{DOMAIN}: no answer within 0.3 s" in message
        assert "SRV" not in message
        assert locator.queries_sent == 1


async def test_without_dnspython_falls_back_to_getaddrinfo(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns_module, "_warned_fallback", False)
    locator = DnsLocator(use_dnspython=False)
    assert not locator.rfc3263
    with caplog.at_level(logging.WARNING, logger="sipimdn.transport.dns"):
        assert await locator.locate(Uri.parse("sip:bob@127.0.0.1:5070;transport=tcp")) == [
            Target(TCP, "127.0.0.1", 5070)]
        assert Target(UDP, "127.0.0.1", 5060) in await locator.locate(Uri.parse("sip:bob@localhost"))
    warnings = [r for r in caplog.records if "NAPTR and SRV" in r.getMessage()]
    assert len(warnings) == 1


# -- SIP failover through SipStack.locator (RFC 3263 §4.3) ----------------------------------------


def _message(uri: str) -> Request:
    return build_request("MESSAGE", uri, "<sip:alice@example.com>", "<sip:bob@example.com>",
                         body=b"hello", content_type="text/plain")


def _closed_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed when the block ends: connecting is refused


def _port(stack: SipStack, transport: Transport) -> int:
    return next(port for kind, (_host, port) in stack.endpoints if kind is transport)


def _stack(transport: Transport = UDP) -> SipStack:
    """A SipStack on 127.0.0.1, on a port of its own, with fast timers."""
    return SipStack([ListenSpec(transport, "127.0.0.1", 0)], timers=FAST)


def _answering(status: int, into: list[IncomingRequest]) -> Callable[[IncomingRequest], None]:
    """A request handler that records each request in ``into`` and answers ``status``."""

    def answer(incoming: IncomingRequest) -> None:
        into.append(incoming)
        incoming.respond(status)

    return answer


def _two_srv_targets(service: str, first: int, second: int) -> list[str]:
    """dnsmasq records: the SRV name ``service`` on ``a.<test domain>`` (127.0.0.1), port
    ``first`` at priority 10, then port ``second`` at priority 20."""
    return [
        f"--srv-host={service},a.{DOMAIN},{first},10,0",
        f"--srv-host={service},a.{DOMAIN},{second},20,0",
        f"--host-record=a.{DOMAIN},127.0.0.1",
    ]


async def test_failover_to_the_second_srv_target(tmp_path: Path) -> None:
    seen: list[IncomingRequest] = []

    async with _stack(TCP) as bob:
        bob.on_request(_answering(200, seen))
        dead = _closed_tcp_port()
        records = _two_srv_targets(f"_sip._tcp.fo.{DOMAIN}", dead, _port(bob, TCP))
        with dnsmasq(records, tmp_path) as server:
            async with _stack() as alice:
                locator = DnsLocator([server.address])
                alice.locator = locator
                uri = f"sip:bob@fo.{DOMAIN};transport=tcp"
                response = await asyncio.wait_for(alice.send_request(_message(uri)), 10)
                assert response.status_code == 200
                assert len(seen) == 1
                # The refused target is avoided now: the next request goes straight to bob.
                targets = await locator.locate(Uri.parse(uri))
                assert targets[0].port == _port(bob, TCP)
                assert targets[-1].port == dead


async def test_failover_on_503_with_on_final_seeing_only_the_answer(tmp_path: Path) -> None:
    statuses: list[int] = []

    async with _stack() as busy, _stack() as bob:
        busy.on_request(lambda incoming: incoming.respond(503))
        bob.on_request(lambda incoming: incoming.respond(200))
        records = _two_srv_targets(f"_sip._udp.busy.{DOMAIN}", _port(busy, UDP), _port(bob, UDP))
        with dnsmasq(records, tmp_path) as server:
            async with _stack() as alice:
                alice.locator = DnsLocator([server.address])
                response = await asyncio.wait_for(
                    alice.send_request(_message(f"sip:bob@busy.{DOMAIN}"),
                                       on_final=lambda r: statuses.append(r.status_code)), 10)
                assert response.status_code == 200
                assert statuses == [200]


async def test_timer_f_moves_to_the_next_target_and_retransmissions_stay_on_one(tmp_path: Path) -> None:
    seen: list[IncomingRequest] = []

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # receives, never answers
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        async with _stack() as bob:
            bob.on_request(_answering(200, seen))
            records = _two_srv_targets(f"_sip._udp.slow.{DOMAIN}", silent.getsockname()[1], _port(bob, UDP))
            with dnsmasq(records, tmp_path) as server:
                async with _stack() as alice:
                    alice.locator = DnsLocator([server.address])
                    response = await asyncio.wait_for(
                        alice.send_request(_message(f"sip:bob@slow.{DOMAIN}")), 64 * FAST.t1 + 5)
        assert response.status_code == 200
        datagrams = []
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(silent.recv(65535))
    # Timer E retransmitted the first transaction to the silent target only, one branch throughout.
    assert len(datagrams) > 3
    branches = {parse_message(d).top_via.branch for d in datagrams}
    assert len(branches) == 1
    assert len(seen) == 1
    assert seen[0].request.top_via.branch not in branches


class _CnameLoopResponder(asyncio.DatagramProtocol):
    """A name server dnsmasq cannot be (it refuses CNAME loops at start): every answer is the loop
    ``x -> y -> x`` of the test domain."""

    transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        import dns.message
        import dns.rrset

        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        name = query.question[0].name
        other = dns.name.from_text(f"loop-y.{DOMAIN}.")
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", other.to_text()))
        response.answer.append(dns.rrset.from_text(other, 60, "IN", "CNAME", name.to_text()))
        self.transport.sendto(response.to_wire(), addr)


async def test_cname_loop_is_a_transport_error_naming_it() -> None:
    import dns.name  # noqa: F401 - used by the responder

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_CnameLoopResponder, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        locator = DnsLocator([f"127.0.0.1:{port}"], timeout=2.0)
        with pytest.raises(TransportError) as info:
            await locator.locate(Uri.parse(f"sip:bob@loop-x.{DOMAIN}:5070"))
        message = str(info.value)
        assert f"sip:bob@loop-x.{DOMAIN}:5070" in message
        assert f"A loop-x.{DOMAIN}: CNAME chain too long (a loop?)" in message
    finally:
        transport.close()


async def test_user_agent_with_dns_servers_fails_over_to_the_second_srv_target(tmp_path: Path) -> None:
    """UserAgentConfig.dns_servers puts the RFC 3263 locator under the user agent: a message to
    a SIP URI of the test domain goes to the first SRV target, which answers 503, then to the
    second, a user agent whose delivery notification comes back (RFC 3263 §4.3)."""
    from sipimdn import UserAgent
    from sipimdn.config import ListenEndpoint, UserAgentConfig
    from sipimdn.ua import IncomingMessage

    refused: list[IncomingRequest] = []
    domain = f"ua.{DOMAIN}"
    bob_config = UserAgentConfig(aor=f"sip:bob@{domain}", listen=(ListenEndpoint("udp", "127.0.0.1", 0),))
    async with _stack() as first, UserAgent(bob_config) as bob:
        first.on_request(_answering(503, refused))
        got: list[IncomingMessage] = []

        @bob.on_message
        async def take(message: IncomingMessage) -> None:
            got.append(message)

        bob_port = next(e.port for e in bob.endpoints if e.transport == "udp")
        records = _two_srv_targets(f"_sip._udp.{domain}", _port(first, UDP), bob_port)
        with dnsmasq(records, tmp_path) as server:
            alice_config = UserAgentConfig(
                aor="sip:alice@127.0.0.1:0",
                listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
                dns_servers=(server.address,),
            )
            async with UserAgent(alice_config) as alice:
                assert isinstance(alice.stack.locator, DnsLocator)
                to = f"sip:bob@{domain}"
                handle = await alice.send_message(to, "found you", notify={"positive-delivery"})
                assert (await asyncio.wait_for(handle.final_response(), 10)).status_code == 200
                assert await handle.await_disposition("delivered", timeout=5) == "delivered"
            assert len(refused) == 1
            assert [m.text for m in got] == ["found you"]
            assert any(q.startswith(f"query[SRV] _sip._udp.{domain}") for q in server.queries())


def test_user_agent_config_refuses_a_dns_server_name() -> None:
    from sipimdn.config import UserAgentConfig

    with pytest.raises(ValueError, match="not an IP address"):
        UserAgentConfig(aor="sip:alice@127.0.0.1", dns_servers=("ns.example.com",))
    with pytest.raises(ValueError, match="sequence"):
        UserAgentConfig(aor="sip:alice@127.0.0.1", dns_servers="127.0.0.1:53")  # type: ignore[arg-type]
