"""The Request-URI check of a user agent (RFC 3261 §8.2.2.1): sans-IO policy, then on loopback."""

from __future__ import annotations

import asyncio
import secrets
from types import SimpleNamespace

import pytest

from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.dialog.factory import build_request
from sipimdn.message import Request
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport
from sipimdn.transport.select import Target
from sipimdn.ua import UserAgent, _wire
from sipimdn.ua.incoming import IncomingMessage
from sipimdn.ua.request_uri import RequestUriPolicy, RequestUriVerdict
from sipimdn.uri import Uri

ACCEPTED = RequestUriVerdict.ACCEPTED
NOT_HERE = RequestUriVerdict.NOT_HERE
SCHEME = RequestUriVerdict.UNSUPPORTED_SCHEME


def policy(aor: str = "sip:bob@example.com", *endpoints: tuple[str, int]) -> RequestUriPolicy:
    return RequestUriPolicy.of(Uri.parse(aor), endpoints or (("192.0.2.10", 5070), ("2001:db8::10", 5070)))


def verdict(p: RequestUriPolicy, uri: str, method: str = "MESSAGE") -> RequestUriVerdict:
    return p.classify(method, Uri.parse(uri))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # The AOR, as a worker behind a dispatcher receives it; any port (the AOR has none).
        ("sip:bob@example.com", ACCEPTED),
        ("sip:bob@EXAMPLE.com", ACCEPTED),  # hosts compare case-insensitively (§19.1.4)
        ("sip:bob@example.com.", ACCEPTED),
        ("sip:bob@example.com:5080;transport=tcp", ACCEPTED),
        ("sips:bob@example.com", ACCEPTED),
        ("sip:%62ob@example.com", ACCEPTED),  # escaped and unescaped user are the same (§19.1.4)
        # A contact: the AOR's user at a host and port we listen on, with a proxy's parameters.
        ("sip:bob@192.0.2.10:5070", ACCEPTED),
        ("sip:bob@192.0.2.10:5070;transport=tcp;ob", ACCEPTED),
        ("sip:bob@[2001:db8:0::10]:5070", ACCEPTED),  # IPv6 in any spelling
        # Not us.
        ("sip:Bob@example.com", NOT_HERE),  # user parts are case-sensitive (§19.1.4)
        ("sip:carol@example.com", NOT_HERE),
        ("sip:example.com", NOT_HERE),  # no user: only a health-probe OPTIONS
        ("sip:bob@example.org", NOT_HERE),
        ("sip:bob@192.0.2.10", NOT_HERE),  # port 5060 by default: not a port we listen on
        ("sip:bob@192.0.2.10:5071", NOT_HERE),
        ("sip:bob@192.0.2.11:5070", NOT_HERE),
        ("sip:carol@192.0.2.10:5070", NOT_HERE),
        # Schemes we do not serve (§8.2.2.1: 416).
        ("tel:+12025550123", SCHEME),
        ("im:bob@example.com", SCHEME),
        ("pres:bob@example.com", SCHEME),
        ("mailto:bob@example.com", SCHEME),
    ],
)
def test_message_request_uris(uri: str, expected: RequestUriVerdict) -> None:
    assert verdict(policy(), uri) is expected


def test_status_and_reason() -> None:
    assert (ACCEPTED.status, NOT_HERE.status, SCHEME.status) == (None, 404, 416)
    assert NOT_HERE.reason == "Not Found"
    assert SCHEME.reason == "Unsupported URI Scheme"


def test_health_probe_without_user_is_accepted_for_options_only() -> None:
    p = policy()
    assert verdict(p, "sip:192.0.2.10:5070", "OPTIONS") is ACCEPTED
    assert verdict(p, "sip:[2001:db8::10]:5070", "OPTIONS") is ACCEPTED
    assert verdict(p, "sip:example.com", "OPTIONS") is ACCEPTED
    assert verdict(p, "sip:192.0.2.10:5070", "MESSAGE") is NOT_HERE
    assert verdict(p, "sip:192.0.2.99:5070", "OPTIONS") is NOT_HERE
    assert verdict(p, "sip:carol@192.0.2.10:5070", "OPTIONS") is NOT_HERE  # a user, not ours


def test_aor_with_a_port_requires_that_port() -> None:
    # A loopback AOR written with port 0 reaches the policy with the port bound.
    p = policy("sip:bob@127.0.0.1:5071", ("127.0.0.1", 5071))
    assert verdict(p, "sip:bob@127.0.0.1:5071") is ACCEPTED
    assert verdict(p, "sip:bob@127.0.0.1") is NOT_HERE  # 5060: another bob on this host
    assert verdict(p, "sip:bob@127.0.0.1:5072") is NOT_HERE


def test_default_port_follows_the_scheme_and_transport() -> None:
    p = policy("sip:bob@example.com", ("192.0.2.10", 5061), ("192.0.2.10", 5060))
    assert verdict(p, "sips:bob@192.0.2.10") is ACCEPTED
    assert verdict(p, "sip:bob@192.0.2.10;transport=tls") is ACCEPTED
    p = policy("sip:bob@example.com", ("192.0.2.10", 5061))
    assert verdict(p, "sip:bob@192.0.2.10") is NOT_HERE


def test_wildcard_listener_stands_for_every_ip_literal_at_its_port() -> None:
    p = policy("sip:bob@example.com", ("0.0.0.0", 5070), ("::", 5072))
    assert verdict(p, "sip:bob@198.51.100.7:5070") is ACCEPTED
    assert verdict(p, "sip:bob@[2001:db8::7]:5072") is ACCEPTED
    assert verdict(p, "sip:bob@198.51.100.7:5071") is NOT_HERE
    assert verdict(p, "sip:bob@host.example.net:5070") is NOT_HERE  # a name is not a listener


def test_aor_without_user() -> None:
    p = policy("sip:example.com")
    assert verdict(p, "sip:example.com") is ACCEPTED
    assert verdict(p, "sip:bob@example.com") is NOT_HERE


# -- on loopback, through a real user agent ------------------------------------------------------


def raw_message(uri: str, bob_port: int, mallory: str) -> tuple[Request, Target]:
    """A MESSAGE from ``mallory`` asking for a delivery notification, for ``uri``, sent to bob's port."""
    message_id = secrets.token_hex(8)
    body = (
        f"From: <{mallory}>\r\nTo: <sip:bob@example.com>\r\n"
        "NS: imdn <urn:ietf:params:imdn>\r\n"
        f"imdn.Message-ID: {message_id}\r\nDateTime: 2026-01-01T00:00:00Z\r\n"
        "imdn.Disposition-Notification: positive-delivery\r\n\r\n"
        "Content-Type: text/plain\r\n\r\nhello"
    ).encode()
    request = build_request("MESSAGE", uri, f"<{mallory}>", "<sip:bob@example.com>",
                            body=body, content_type="message/cpim")
    return request, Target(Transport.UDP, "127.0.0.1", bob_port)


async def test_user_agent_answers_404_and_416_and_serves_its_own() -> None:
    config = UserAgentConfig(aor="sip:bob@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),))
    seen: list[IncomingMessage] = []
    notifications: list[IncomingRequest] = []

    async def handler(message: IncomingMessage) -> None:
        seen.append(message)

    def peer(incoming: IncomingRequest) -> None:
        notifications.append(incoming)
        incoming.respond(200)

    async with asyncio.timeout(15), UserAgent(config) as bob, \
            SipStack([ListenSpec(Transport.UDP, "127.0.0.1", 0)]) as mallory:
        bob.on_message(handler)
        mallory.on_request(peer)
        mallory_uri = f"sip:mallory@127.0.0.1:{mallory.endpoints[0][1][1]}"
        port = next(ep.port for ep in bob.endpoints if ep.transport == "udp")
        other_port = port + 1 if port < 65535 else port - 1
        for uri, status in [
            ("sip:carol@127.0.0.1", 404),
            (f"sip:carol@127.0.0.1:{port}", 404),
            ("sip:carol@example.com", 404),
            (f"sip:bob@127.0.0.1:{other_port}", 404),
            ("tel:+12025550123", 416),
        ]:
            request, target = raw_message(uri, port, mallory_uri)
            response = await mallory.send_request(request, target)
            assert response.status_code == status, (uri, response.status_code)
        await asyncio.sleep(0.3)
        # Nothing reached the application, and no notification is owed for any of them.
        assert seen == []
        assert notifications == []
        for uri in (bob.aor, bob.contact_uri("udp"), f"sip:bob@127.0.0.1:{port};ob"):
            request, target = raw_message(uri, port, mallory_uri)
            response = await mallory.send_request(request, target)
            assert response.status_code == 200, (uri, response.status_code)
        for _ in range(100):  # the three delivery notifications arrive (bounded wait)
            if len(notifications) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(seen) == 3
        assert len(notifications) == 3
        # A load balancer's probe: OPTIONS to our host and port, no user part.
        probe = build_request("OPTIONS", f"sip:127.0.0.1:{port}", "<sip:lb@example.com>", "<sip:127.0.0.1>")
        response = await mallory.send_request(probe, Target(Transport.UDP, "127.0.0.1", port))
        assert response.status_code == 200


async def test_check_can_be_turned_off() -> None:
    config = UserAgentConfig(aor="sip:bob@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
                             check_request_uri=False)
    async with asyncio.timeout(10), UserAgent(config) as bob, \
            SipStack([ListenSpec(Transport.UDP, "127.0.0.1", 0)]) as mallory:
        seen: list[IncomingMessage] = []

        async def handler(message: IncomingMessage) -> None:
            seen.append(message)

        bob.on_message(handler)
        port = next(ep.port for ep in bob.endpoints if ep.transport == "udp")
        request, target = raw_message("sip:carol@example.com", port, "sip:mallory@example.com")
        assert (await mallory.send_request(request, target)).status_code == 200
        assert len(seen) == 1


async def test_worker_behind_a_dispatcher_accepts_the_public_aor() -> None:
    """A worker whose AOR names the public domain receives requests for that AOR at its own
    address (the dispatcher keeps the Request-URI); other users of the domain get 404."""
    config = UserAgentConfig(aor="sip:bob@example.com", listen=(ListenEndpoint("tcp", "127.0.0.1", 0),))
    seen: list[IncomingMessage] = []

    async def handler(message: IncomingMessage) -> None:
        seen.append(message)

    async with asyncio.timeout(10), UserAgent(config) as bob, \
            SipStack([ListenSpec(Transport.UDP, "127.0.0.1", 0)]) as dispatcher:
        bob.on_message(handler)
        port = next(ep.port for ep in bob.endpoints if ep.transport == "tcp")
        to_bob = Target(Transport.TCP, "127.0.0.1", port)
        for uri, status in [("sip:bob@example.com", 200), ("sip:bob@Example.COM;user=ip", 200),
                            ("sip:alice@example.com", 404), ("tel:+12025550123", 416)]:
            request = build_request("MESSAGE", uri, "<sip:carol@example.net>", f"<{uri}>",
                                    body=b"hi", content_type="text/plain")
            assert (await dispatcher.send_request(request, to_bob)).status_code == status, uri
        assert [m.body for m in seen] == [b"hi", b"hi"]


def test_repeated_request_uri_objects_get_the_verdict_of_their_own_method_and_policy() -> None:
    # The verdict of the last (policy, Request-URI object, method) is reused for the next request;
    # a different method, URI object or listener set is judged afresh.
    config = UserAgentConfig(aor="sip:bob@192.0.2.10:5070")
    aor = Uri.parse(config.aor)
    here = _listening(("192.0.2.10", 5070))
    there = _listening(("192.0.2.11", 5070))
    probe = Uri.parse("sip:192.0.2.10:5070")
    contact = Uri.parse("sip:bob@192.0.2.11:5070")
    cases = [
        (here, "OPTIONS", probe, ACCEPTED),
        (here, "OPTIONS", probe, ACCEPTED),
        (here, "MESSAGE", probe, NOT_HERE),  # same URI object, another method
        (here, "MESSAGE", probe, NOT_HERE),
        (here, "MESSAGE", contact, NOT_HERE),
        (there, "MESSAGE", contact, ACCEPTED),  # same URI object, other listeners
        (there, "MESSAGE", contact, ACCEPTED),
        (here, "MESSAGE", contact, NOT_HERE),
    ]
    for stack, method, uri, expected in cases:
        headers = build_request(method, uri, "<sip:a@example.com>", "<sip:bob@x>").headers
        verdict = _wire.request_uri_verdict(config, aor, stack, Request(method, uri, headers))  # type: ignore[arg-type]
        assert verdict is expected, (method, uri)


def _listening(address: tuple[str, int]) -> SimpleNamespace:
    """What request_uri_verdict reads of a stack: its listeners."""
    return SimpleNamespace(transports=SimpleNamespace(endpoint_tuple=((Transport.UDP, address),)))
