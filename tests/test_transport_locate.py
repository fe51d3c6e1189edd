"""RFC 3263 §4 server location, sans-IO: the planner against an in-memory zone on a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sipimdn.errors import LocalProtocolError, TransportError
from sipimdn.transport.flow import Transport
from sipimdn.transport.locate import (
    Answer,
    Locator,
    NaptrRecord,
    Query,
    RRType,
    SrvRecord,
    order_srv,
)
from sipimdn.transport.select import Target
from sipimdn.uri import Uri

Zone = dict[tuple[str, RRType], Answer]


class FakeDns:
    """Answers from a dict; anything else is an empty answer (cached 30 s). Counts queries."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.asked: list[Query] = []

    def run(self, locator: Locator, uri: str, now: float = 0.0) -> list[Target]:
        lookup = locator.lookup(Uri.parse(uri), now)
        while (query := lookup.next_query()) is not None:
            self.asked.append(query)
            lookup.feed(query, self.zone.get((query.name, query.rdtype), Answer((), 30.0)), now)
        return lookup.result(now)


def a(*addresses: str, ttl: float = 300.0) -> Answer:
    return Answer(tuple(addresses), ttl)


def srv(*records: tuple[int, int, int, str], ttl: float = 300.0) -> Answer:
    return Answer(tuple(SrvRecord(*r) for r in records), ttl)


def naptr(*records: tuple[int, int, str, str, str], ttl: float = 300.0) -> Answer:
    return Answer(tuple(NaptrRecord(o, p, f, s, "", r) for o, p, f, s, r in records), ttl)


UDP, TCP, TLS = Transport.UDP, Transport.TCP, Transport.TLS


def test_numeric_host_asks_nothing() -> None:
    dns = FakeDns({})
    assert dns.run(Locator(), "sip:bob@192.0.2.1") == [Target(UDP, "192.0.2.1", 5060)]
    assert dns.run(Locator(), "sips:bob@[2001:db8::1]:5081") == [Target(TLS, "2001:db8::1", 5081)]
    assert dns.run(Locator(), "sip:bob@192.0.2.1;transport=tcp") == [Target(TCP, "192.0.2.1", 5060)]
    assert dns.asked == []


def test_explicit_port_skips_naptr_and_srv() -> None:
    dns = FakeDns({("h.example", RRType.A): a("192.0.2.7")})
    assert dns.run(Locator(), "sip:bob@h.example:5070") == [Target(UDP, "192.0.2.7", 5070)]
    assert [q.rdtype for q in dns.asked] == [RRType.A, RRType.AAAA]


def test_explicit_transport_skips_naptr_but_not_srv() -> None:
    dns = FakeDns(
        {
            ("_sip._tcp.example.com", RRType.SRV): srv((0, 0, 5090, "pbx.example.com")),
            ("pbx.example.com", RRType.A): a("192.0.2.9"),
        }
    )
    assert dns.run(Locator(), "sip:bob@example.com;transport=tcp") == [Target(TCP, "192.0.2.9", 5090)]
    assert dns.asked[0] == Query("_sip._tcp.example.com", RRType.SRV)


def test_maddr_is_the_target() -> None:
    dns = FakeDns({})
    assert dns.run(Locator(), "sip:bob@example.com;maddr=192.0.2.3") == [Target(UDP, "192.0.2.3", 5060)]


def test_naptr_order_then_preference_and_unsupported_services_dropped() -> None:
    dns = FakeDns(
        {
            ("example.com", RRType.NAPTR): naptr(
                (20, 10, "s", "SIP+D2U", "_sip._udp.example.com"),
                (10, 50, "s", "SIP+D2T", "_sip._tcp.example.com"),
                (10, 10, "s", "SIP+D2S", "_sip._sctp.example.com"),  # SCTP: not ours
                (10, 20, "S", "SIPS+D2T", "_sips._tcp.example.com"),
                (5, 10, "u", "E2U+sip", "!^.*$!sip:x@y!"),  # not an "s" record
            ),
            ("_sip._udp.example.com", RRType.SRV): srv((0, 0, 5060, "u.example.com")),
            ("_sip._tcp.example.com", RRType.SRV): srv((0, 0, 5060, "t.example.com")),
            ("_sips._tcp.example.com", RRType.SRV): srv((0, 0, 5061, "s.example.com")),
            ("u.example.com", RRType.A): a("192.0.2.1"),
            ("t.example.com", RRType.A): a("192.0.2.2"),
            ("s.example.com", RRType.A): a("192.0.2.3"),
        }
    )
    targets = dns.run(Locator(), "sip:bob@example.com")
    assert targets == [
        Target(TLS, "192.0.2.3", 5061, "example.com"),  # TLS names the URI's domain (RFC 5922)
        Target(TCP, "192.0.2.2", 5060),
        Target(UDP, "192.0.2.1", 5060),
    ]
    assert Query("_sip._sctp.example.com", RRType.SRV) not in dns.asked


def test_sips_uses_only_sips_naptr() -> None:
    dns = FakeDns(
        {
            ("example.com", RRType.NAPTR): naptr(
                (10, 10, "s", "SIP+D2U", "_sip._udp.example.com"),
                (20, 10, "s", "SIPS+D2T", "_sips._tcp.example.com"),
            ),
            ("_sips._tcp.example.com", RRType.SRV): srv((0, 0, 5061, "s.example.com")),
            ("s.example.com", RRType.A): a("192.0.2.3"),
        }
    )
    assert dns.run(Locator(), "sips:bob@example.com") == [Target(TLS, "192.0.2.3", 5061, "example.com")]


def test_no_naptr_asks_srv_per_transport() -> None:
    dns = FakeDns(
        {
            ("_sip._tcp.example.com", RRType.SRV): srv((0, 0, 5062, "t.example.com")),
            ("t.example.com", RRType.A): a("192.0.2.2"),
        }
    )
    assert dns.run(Locator(), "sip:bob@example.com") == [Target(TCP, "192.0.2.2", 5062)]
    assert [(q.name, q.rdtype) for q in dns.asked[:3]] == [
        ("example.com", RRType.NAPTR),
        ("_sip._udp.example.com", RRType.SRV),
        ("_sip._tcp.example.com", RRType.SRV),
    ]


def test_no_srv_falls_back_to_address_records_at_default_port() -> None:
    dns = FakeDns({("example.com", RRType.A): a("192.0.2.5"), ("example.com", RRType.AAAA): a("2001:db8::5")})
    assert dns.run(Locator(), "sip:bob@example.com") == [
        Target(UDP, "192.0.2.5", 5060),
        Target(UDP, "2001:db8::5", 5060),
    ]
    assert dns.run(Locator(), "sips:bob@example.com") == [
        Target(TLS, "192.0.2.5", 5061, "example.com"),
        Target(TLS, "2001:db8::5", 5061, "example.com"),
    ]


def test_srv_priority_first_and_shared_host_asked_once() -> None:
    dns = FakeDns(
        {
            ("_sip._udp.example.com", RRType.SRV): srv(
                (20, 0, 5070, "b.example.com"), (10, 0, 5060, "a.example.com"), (20, 0, 5071, "a.example.com")
            ),
            ("a.example.com", RRType.A): a("192.0.2.1"),
            ("b.example.com", RRType.A): a("192.0.2.2"),
        }
    )
    targets = dns.run(Locator(rng=random.Random(1)), "sip:bob@example.com")
    assert targets[0] == Target(UDP, "192.0.2.1", 5060)
    assert set(targets[1:]) == {Target(UDP, "192.0.2.2", 5070), Target(UDP, "192.0.2.1", 5071)}
    assert dns.asked.count(Query("a.example.com", RRType.A)) == 1


def test_rfc2782_weighted_order_spreads_by_weight() -> None:
    records = [
        SrvRecord(10, 1, 5060, "light"),
        SrvRecord(10, 3, 5060, "heavy"),
        SrvRecord(10, 0, 5060, "zero"),
    ]
    rng = random.Random(2026)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(8000))
    # Picks in [0, 4]: zero wins on 0 (1/5), light on 1 (1/5), heavy on 2..4 (3/5).
    assert abs(firsts["heavy"] / 8000 - 0.6) < 0.03
    assert abs(firsts["light"] / 8000 - 0.2) < 0.03
    assert abs(firsts["zero"] / 8000 - 0.2) < 0.03
    assert all(
        sorted(r.target for r in order_srv(records, rng)) == ["heavy", "light", "zero"] for _ in range(50)
    )


def test_answers_are_cached_for_their_ttl() -> None:
    dns = FakeDns(
        {
            ("_sip._udp.example.com", RRType.SRV): srv((0, 0, 5060, "a.example.com"), ttl=60),
            ("a.example.com", RRType.A): a("192.0.2.1", ttl=10),
        }
    )
    locator = Locator()
    first = dns.run(locator, "sip:bob@example.com", now=0.0)
    asked = len(dns.asked)
    assert dns.run(locator, "sip:bob@example.com", now=5.0) == first
    assert len(dns.asked) == asked  # everything from the cache
    dns.run(locator, "sip:bob@example.com", now=11.0)
    assert dns.asked[asked:] == [Query("a.example.com", RRType.A)]  # only the A record expired


def test_failed_target_is_tried_last_for_a_while() -> None:
    dns = FakeDns(
        {
            ("_sip._udp.example.com", RRType.SRV): srv(
                (10, 0, 5060, "a.example.com"), (20, 0, 5060, "b.example.com")
            ),
            ("a.example.com", RRType.A): a("192.0.2.1"),
            ("b.example.com", RRType.A): a("192.0.2.2"),
        }
    )
    locator = Locator(avoid_for=30.0)
    first, second = dns.run(locator, "sip:bob@example.com", now=0.0)
    locator.mark_failed(first, 1.0)
    assert dns.run(locator, "sip:bob@example.com", now=2.0) == [second, first]
    assert dns.run(locator, "sip:bob@example.com", now=31.0) == [first, second]
    locator.mark_failed(first, 40.0)
    locator.mark_succeeded(first)
    assert dns.run(locator, "sip:bob@example.com", now=41.0) == [first, second]


@pytest.mark.parametrize(
    ("zone", "needle"),
    [
        ({}, "no records"),  # nothing at all
        ({("_sip._udp.example.com", RRType.SRV): srv((0, 0, 5060, "."))}, "0 0 5060 ."),  # "no service"
        (
            {("_sip._udp.example.com", RRType.SRV): srv((0, 0, 5060, "gone.example.com"))},
            "A gone.example.com",
        ),
        # An SRV record pointing back at its own name leads nowhere.
        (
            {("_sip._udp.example.com", RRType.SRV): srv((0, 0, 5060, "_sip._udp.example.com"))},
            "A _sip._udp.example.com",
        ),
        ({("example.com", RRType.NAPTR): Answer((), 0.0, "NXDOMAIN")}, "NAPTR example.com: NXDOMAIN"),
    ],
)
def test_bad_dns_is_a_transport_error_naming_what_was_tried(zone: Zone, needle: str) -> None:
    with pytest.raises(TransportError) as info:
        FakeDns(zone).run(Locator(), "sip:bob@example.com")
    message = str(info.value)
    assert "sip:bob@example.com" in message
    assert needle in message


def test_query_count_is_bounded() -> None:
    many = tuple((0, 0, 5060, f"h{i}.example.com") for i in range(100))
    dns = FakeDns({("_sip._udp.example.com", RRType.SRV): srv(*many)})
    with pytest.raises(TransportError, match="more than 10 DNS queries"):
        dns.run(Locator(max_queries=10), "sip:bob@example.com")
    assert len(dns.asked) <= 10
    # The SRV records followed are bounded too.
    dns = FakeDns({("_sip._udp.example.com", RRType.SRV): srv(*many)})
    with pytest.raises(TransportError):
        dns.run(Locator(max_srv=4), "sip:bob@example.com")
    assert len([q for q in dns.asked if q.rdtype is RRType.A]) == 4


def test_cache_is_bounded() -> None:
    locator = Locator(max_cache=8)
    for i in range(50):
        locator.store(Query(f"n{i}", RRType.A), a("192.0.2.1"), float(i))
    assert sum(locator.cached(Query(f"n{i}", RRType.A), 50.0) is not None for i in range(50)) == 8


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Locator().lookup(Uri.parse("tel:+15551234"), 0.0)
    with pytest.raises(LocalProtocolError):
        Locator().lookup(Uri.parse("sips:bob@example.com;transport=udp"), 0.0)
    lookup = Locator().lookup(Uri.parse("sip:bob@example.com"), 0.0)
    with pytest.raises(LocalProtocolError):
        lookup.feed(Query("other", RRType.A), Answer(), 0.0)
    with pytest.raises(LocalProtocolError):
        lookup.result(0.0)
