"""RegistrationClient + Authenticator driven through the real SipStack against Kamailio.

Kamailio logs one "REGISTERED ..." line per accepted REGISTER (see the config
template), which is how these tests see refreshes arrive on the wire.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable

import pytest
from kamailio.harness import Kamailio, kamailio, kamailio_factory  # noqa: F401  (fixtures)
from kamailio.rawsip import RawClient, new_branch, new_tag

from sipimdn.auth import Authenticator, Credentials
from sipimdn.errors import TransactionTimeout, TransportError
from sipimdn.registration import (
    RegistrationClient,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationSettings,
    RegistrationSucceeded,
    RegState,
    Unregistered,
)
from sipimdn.stack import SipStack
from sipimdn.transport.flow import Transport
from sipimdn.transport.select import Target

pytestmark = pytest.mark.interop


async def drive(
    reg: RegistrationClient,
    stack: SipStack,
    target: Target,
    *,
    until: Callable[[list[RegistrationEvent]], bool],
    timeout: float,
) -> list[RegistrationEvent]:
    """The loop a user agent runs: send what the client asks, feed back responses and timers."""
    loop = asyncio.get_running_loop()
    seen: list[RegistrationEvent] = []
    deadline = loop.time() + timeout
    while True:
        requests = reg.requests_to_send()
        for request in requests:
            try:
                response = await stack.send_request(request.to_request(), target)
            except (TransactionTimeout, TransportError) as exc:
                reg.handle_failure(loop.time(), str(exc))
            else:
                reg.handle_response_message(response, loop.time())
        while (event := reg.next_event()) is not None:
            seen.append(event)
        if until(seen):
            return seen
        if requests:
            continue  # answering a response may have queued the next REGISTER (401, 423)
        timer = reg.get_timer()
        now = loop.time()
        if now >= deadline:
            raise AssertionError(f"gave up waiting; state {reg.state}, events {seen}")
        if timer is not None and timer <= now:
            reg.handle_timer(now)
            continue
        await asyncio.sleep(min(deadline, timer if timer is not None else deadline) - now)


def registered_lines(server: Kamailio, call_id: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if "REGISTERED" in line and call_id in line]


async def wait_registered_lines(server: Kamailio, call_id: str, count: int) -> list[str]:
    """``registered_lines`` once ``count`` are there (within 5 s).

    Kamailio logs REGISTERED *after* save() has sent the 200, so the line may
    land in the log just after we read the answer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while len(found := registered_lines(server, call_id)) < count and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return found


def client_for(
    server: Kamailio, stack: SipStack, user: str, password: str, **settings: object
) -> RegistrationClient:
    (_, (host, port)) = stack.endpoints[0]
    auth = Authenticator([Credentials(user, password, realm=server.domain)])
    return RegistrationClient(
        RegistrationSettings(
            aor=f"sip:{user}@{server.domain}",
            contacts=(f"sip:{user}@{host}:{port}",),
            **settings,  # type: ignore[arg-type]
        ),
        authenticator=auth,
    )


def count(kind: type, events: list[RegistrationEvent]) -> int:
    return sum(isinstance(event, kind) for event in events)


async def test_register_refresh_and_unregister_through_the_stack(kamailio: Kamailio) -> None:  # noqa: F811
    loop = asyncio.get_running_loop()
    target = Target(Transport.UDP, *kamailio.address("udp"))
    async with SipStack() as stack:
        reg = client_for(kamailio, stack, "alice", "alice-secret", expires=2)
        reg.register(loop.time())
        # 401 answered by the Authenticator, then 200; with 2 s granted the client
        # refreshes every second: wait for the first registration and two refreshes.
        events = await drive(reg, stack, target, until=lambda ev: count(RegistrationSucceeded, ev) >= 3,
                             timeout=12.0)
        succeeded = [e for e in events if isinstance(e, RegistrationSucceeded)]
        assert [e.refreshed for e in succeeded] == [False, True, True]
        assert all(e.expires == 2 for e in succeeded)
        assert not any(isinstance(e, RegistrationFailed) for e in events)
        # Kamailio saw each REGISTER: same Call-ID, CSeq growing (2 = the answer to the 401).
        lines = await wait_registered_lines(kamailio, reg.call_id, 3)
        cseqs = [int(m.group(1)) for line in lines if (m := re.search(r"cseq=(\d+)", line))]
        assert len(cseqs) >= 3 and cseqs == sorted(cseqs) and cseqs[0] == 2
        assert all("expires=2 " in line for line in lines)
        # Refreshes went out authenticated up front: one REGISTER per refresh, no new 401.
        assert cseqs[1] - cseqs[0] == 1 and cseqs[2] - cseqs[1] == 1

        reg.unregister(loop.time())
        events = await drive(reg, stack, target, until=lambda ev: count(Unregistered, ev) >= 1, timeout=5.0)
        assert Unregistered(reg.settings.aor, confirmed=True) in events
        assert reg.state is RegState.IDLE and reg.get_timer() is None

    # The binding is gone: a MESSAGE to alice now gets 404 from the location lookup.
    with RawClient("udp", kamailio.address("udp")) as bob:
        bob_auth = Authenticator([Credentials("bob", "bob-secret", realm=kamailio.domain)])
        assert await asyncio.to_thread(send_authenticated_message, bob, bob_auth, kamailio, "alice") == 404


def send_authenticated_message(client: RawClient, auth: Authenticator, server: Kamailio, to_user: str) -> int:
    ruri = f"sip:{to_user}@{server.domain}"
    call_id = secrets.token_hex(6)
    tag = new_tag()
    attempt = auth.start("MESSAGE", ruri, b"ping")
    for cseq in (1, 2):
        lines = [
            f"MESSAGE {ruri} SIP/2.0",
            f"Via: {client.via(new_branch())}",
            "Max-Forwards: 70",
            f"From: <sip:bob@{server.domain}>;tag={tag}",
            f"To: <{ruri}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} MESSAGE",
            *(f"{name}: {value}" for name, value in attempt.headers),
            "Content-Type: text/plain",
            "Content-Length: 4",
        ]
        client.send(("\r\n".join(lines) + "\r\n\r\nping").encode())
        response = client.recv_final()
        status = response.status_code or 0
        if status != 407:
            return status
        attempt.handle_challenge(407, response.get_all("Proxy-Authenticate"))
    return status


async def test_423_interval_too_brief_is_honoured(kamailio_factory: Callable[..., Kamailio]) -> None:  # noqa: F811
    server = kamailio_factory(min_expires=60)
    target = Target(Transport.UDP, *server.address("udp"))
    async with SipStack() as stack:
        reg = client_for(server, stack, "bob", "bob-secret", expires=10)
        reg.register(asyncio.get_running_loop().time())
        events = await drive(reg, stack, target, until=bool, timeout=10.0)
        (event,) = events
        assert isinstance(event, RegistrationSucceeded) and event.expires == 60
        assert reg.expires == 60
        lines = await wait_registered_lines(server, reg.call_id, 1)
        assert len(lines) == 1 and "expires=60 " in lines[0]


async def test_wrong_password_is_a_permanent_failure_after_one_retry(kamailio: Kamailio) -> None:  # noqa: F811
    target = Target(Transport.UDP, *kamailio.address("udp"))
    async with SipStack() as stack:
        reg = client_for(kamailio, stack, "carol", "wrong-password", expires=60)
        reg.register(asyncio.get_running_loop().time())
        events = await drive(reg, stack, target, until=bool, timeout=10.0)
        (event,) = events
        assert isinstance(event, RegistrationFailed)
        assert event.status_code == 401 and event.retry_at is None and "rejected" in event.reason
        assert reg.state is RegState.FAILED and reg.get_timer() is None
        assert registered_lines(kamailio, reg.call_id) == []
        challenges = [line for line in kamailio.log_text().splitlines()
                      if "REGISTER from carol: challenging" in line]
        assert len(challenges) == 2  # the first REGISTER and the one retry, nothing more
