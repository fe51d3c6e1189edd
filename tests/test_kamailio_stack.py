"""Two SipStacks behind Kamailio: bob registers, alice's MESSAGE is challenged (407), answered, delivered.

Integration of auth.py and registration.py with the real transaction layer and
transports, over UDP, TCP and TLS; the user agent will do the same in its own
loop (see docs/ARCHITECTURE.md, "Authentication and registration").
"""

from __future__ import annotations

import asyncio

import pytest
from kamailio.harness import Kamailio, kamailio  # noqa: F401  (fixture)

from sipimdn.auth import Authenticator, Credentials, challenge_header_for
from sipimdn.dialog.factory import build_request, new_call_id, new_tag
from sipimdn.errors import AuthenticationFailed
from sipimdn.message import Response
from sipimdn.registration import RegistrationClient, RegistrationSettings, RegistrationSucceeded
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Transport
from sipimdn.transport.select import Target

pytestmark = pytest.mark.interop

TRANSPORTS = {"udp": Transport.UDP, "tcp": Transport.TCP, "tls": Transport.TLS}


def make_stack(server: Kamailio, transport: str) -> SipStack:
    # Listening on UDP and TCP is enough: over TCP/TLS Kamailio reaches us on the connection we
    # opened to register (it stored the source address of the REGISTER).
    return SipStack(
        [ListenSpec(Transport.UDP, "127.0.0.1", 0), ListenSpec(Transport.TCP, "127.0.0.1", 0)],
        transport_config=TransportConfig(client_ssl_context=server.client_ssl_context()),
    )


def target_of(server: Kamailio, transport: str) -> Target:
    host, port = server.address(transport)
    return Target(TRANSPORTS[transport], host, port, "127.0.0.1" if transport == "tls" else None)


async def register(stack: SipStack, server: Kamailio, user: str, password: str, transport: str) -> None:
    loop = asyncio.get_running_loop()
    kind = Transport.UDP if transport == "udp" else Transport.TCP
    host, port = next(addr for t, addr in stack.endpoints if t is kind)
    suffix = "" if transport == "udp" else f";transport={transport}"
    reg = RegistrationClient(
        RegistrationSettings(
            f"sip:{user}@{server.domain}", (f"sip:{user}@{host}:{port}{suffix}",), expires=60
        ),
        authenticator=Authenticator([Credentials(user, password, realm=server.domain)]),
    )
    reg.register(loop.time())
    for _ in range(4):  # the REGISTER and its answer to the 401, with room to spare
        for request in reg.requests_to_send():
            response = await stack.send_request(request.to_request(), target_of(server, transport))
            reg.handle_response_message(response, loop.time())
        event = reg.next_event()
        if event is not None:
            assert isinstance(event, RegistrationSucceeded), event
            return
    raise AssertionError("registration did not finish")


async def send_message(
    stack: SipStack, server: Kamailio, auth: Authenticator, to_user: str, body: bytes, *, transport: str
) -> tuple[Response, int]:
    """The UA's send loop: same Call-ID/From tag/To, CSeq + 1 and a new branch per retry."""
    from_aor, to_aor = f"sip:alice@{server.domain}", f"sip:{to_user}@{server.domain}"
    call_id, tag = new_call_id(), new_tag()
    attempt = auth.start("MESSAGE", to_aor, body)
    for cseq in range(1, 6):
        request = build_request(
            "MESSAGE", to_aor, f"<{from_aor}>", f"<{to_aor}>", call_id=call_id, cseq=cseq, from_tag=tag,
            headers=attempt.headers, body=body, content_type="text/plain",
        )
        response = await stack.send_request(request, target_of(server, transport))
        if response.status_code not in (401, 407):
            return response, cseq
        challenges = response.headers.get_all(challenge_header_for(response.status_code))
        attempt.handle_challenge(response.status_code, challenges)
    raise AssertionError("more retries than the authenticator allows")


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_message_through_kamailio_with_proxy_authentication(
    kamailio: Kamailio,  # noqa: F811
    transport: str,
) -> None:
    received: list[bytes] = []

    async def bob_handler(incoming: IncomingRequest) -> None:
        received.append(incoming.request.body)
        incoming.respond(200)

    async with make_stack(kamailio, transport) as alice, make_stack(kamailio, transport) as bob:
        bob.on_request(bob_handler)
        await register(bob, kamailio, "bob", "bob-secret", transport)
        alice_auth = Authenticator([Credentials("alice", "alice-secret", realm=kamailio.domain)])
        body = f"hi bob, over {transport}".encode()
        response, sent = await send_message(alice, kamailio, alice_auth, "bob", body, transport=transport)
        assert response.status_code == 200 and sent == 2  # the MESSAGE, then its answer to the 407
        assert received == [body]
        # Next message: authenticated up front from the cached proxy nonce, one request only.
        response, sent = await send_message(alice, kamailio, alice_auth, "bob", b"again", transport=transport)
        assert response.status_code == 200 and sent == 1 and received[-1] == b"again"

        wrong = Authenticator([Credentials("alice", "not-the-password")])
        with pytest.raises(AuthenticationFailed, match="rejected"):
            await send_message(alice, kamailio, wrong, "bob", b"nope", transport=transport)
        assert received[-1] == b"again"
