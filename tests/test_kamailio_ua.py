"""Two UserAgents behind a real Kamailio: REGISTER, proxy authentication, IMDNs through the proxy.

Kamailio (tests/kamailio/) challenges REGISTER with 401 and MESSAGE with 407,
keeps bindings in memory and routes by location. It logs one line per
challenge ("MESSAGE from alice: challenging") and per accepted REGISTER
("REGISTERED user=..."), which is how these tests count what went over the
wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from kamailio.harness import Kamailio, kamailio, kamailio_factory  # noqa: F401  (fixtures)

from sipimdn import IncomingMessage, UserAgent, UserAgentConfig
from sipimdn.auth import Credentials
from sipimdn.config import ListenEndpoint
from sipimdn.errors import AuthenticationFailed
from sipimdn.events import (
    DispositionChanged,
    DispositionEvent,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationSucceeded,
    Unregistered,
)
from sipimdn.registration import RegState

pytestmark = pytest.mark.interop

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


def config_for(
    server: Kamailio, user: str, transport: str, *, password: str | None = None, **extra: Any
) -> UserAgentConfig:
    """A user agent registering with Kamailio and sending through it over ``transport``."""
    settings: dict[str, Any] = {
        "register": True,
        "register_expires": 60,
        "close_grace": 2.0,
        "handler_deadline": 1.0,
        "imdn_retry_base": 0.2,
    }
    settings.update(extra)
    return UserAgentConfig(
        aor=f"sip:{user}@{server.domain}",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
        outbound_proxy=server.proxy_uri(transport),
        credentials=(Credentials(user, password or PASSWORDS[user], realm=server.domain),),
        tls_client_context=server.client_ssl_context(),
        **settings,
    )


def lines(server: Kamailio, needle: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if needle in line]


async def wait_for_lines(server: Kamailio, needle: str, count: int, timeout: float) -> list[str]:
    """Kamailio writes its log asynchronously: poll it (bounded) until ``count`` lines are there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(found := lines(server, needle)) < count and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return found


def recorder() -> tuple[list[Any], Callable[[Any], Any]]:
    seen: list[Any] = []

    async def record(event: Any) -> None:
        seen.append(event)

    return seen, record


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_message_and_imdns_through_kamailio(
    kamailio: Kamailio,  # noqa: F811
    transport: str,
) -> None:
    challenged_alice = len(lines(kamailio, "MESSAGE from alice: challenging"))
    challenged_bob = len(lines(kamailio, "MESSAGE from bob: challenging"))
    received: list[IncomingMessage] = []
    async with UserAgent(config_for(kamailio, "bob", transport)) as bob:

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            received.append(message)
            bob.spawn(message.mark_displayed())

        async with UserAgent(config_for(kamailio, "alice", transport)) as alice:
            for ua in (bob, alice):
                event = await ua.wait_registered(timeout=10)
                assert isinstance(event, RegistrationSucceeded) and event.expires == 60, event
                assert ua.registration_state is RegState.REGISTERED
            dispositions, record = recorder()
            alice.on_disposition(record)

            sent = await alice.send_message(
                f"sip:bob@{kamailio.domain}", f"hi bob over {transport}",
                notify={"positive-delivery", "display"},
            )
            response = await asyncio.wait_for(sent.final_response(), 10)
            assert response.status_code == 200
            assert await sent.await_disposition("displayed", timeout=10) == "displayed"
            assert [m.text for m in received] == [f"hi bob over {transport}"]
            assert received[0].sender == alice.aor
            states = [str(e.state) for e in dispositions if isinstance(e, DispositionChanged)]
            assert states[-2:] == ["delivered", "displayed"], states

            # Kamailio challenged alice's MESSAGE once (answered), and bob's first IMDN once;
            # his second IMDN went authenticated up front from the cached nonce.
            assert len(lines(kamailio, "MESSAGE from alice: challenging")) - challenged_alice == 1
            assert len(lines(kamailio, "MESSAGE from bob: challenging")) - challenged_bob == 1

            # A second message: no new challenge at all, for the message or its IMDNs.
            again = await alice.send_message(
                f"sip:bob@{kamailio.domain}", "again", notify={"positive-delivery", "display"}
            )
            assert (await asyncio.wait_for(again.final_response(), 10)).status_code == 200
            assert await again.await_disposition("displayed", timeout=10) == "displayed"
            assert len(lines(kamailio, "MESSAGE from alice: challenging")) - challenged_alice == 1
            assert len(lines(kamailio, "MESSAGE from bob: challenging")) - challenged_bob == 1


async def test_wrong_password_fails_after_exactly_one_retry(kamailio: Kamailio) -> None:  # noqa: F811
    needle = "MESSAGE from carol: challenging"
    before = len(lines(kamailio, needle))
    async with UserAgent(config_for(kamailio, "bob", "udp")) as bob:
        await bob.wait_registered(timeout=10)
        wrong = config_for(kamailio, "carol", "udp", password="not-carols-password", register=False)
        async with UserAgent(wrong) as carol:
            sent = await carol.send_message(f"sip:bob@{kamailio.domain}", "let me in")
            with pytest.raises(AuthenticationFailed, match=r"rejected \(final 407\)"):
                await asyncio.wait_for(sent.final_response(), 10)
            assert await sent.await_disposition("delivered", timeout=5) == "failed"
    # The MESSAGE and one retry with our (wrong) credentials; then nothing more.
    await asyncio.sleep(0.3)
    assert len(await wait_for_lines(kamailio, needle, before + 2, 5.0)) - before == 2


async def test_wrong_password_registration_fails_for_good(kamailio: Kamailio) -> None:  # noqa: F811
    needle = "REGISTER from carol: challenging"
    before = len(lines(kamailio, needle))
    events, record = recorder()
    async with UserAgent(config_for(kamailio, "carol", "tcp", password="nope")) as carol:
        carol.on_registration(record)
        event = await carol.wait_registered(timeout=10)
        assert isinstance(event, RegistrationFailed)
        assert event.status_code == 401 and event.retry_at is None and "rejected" in event.reason
        assert carol.registration_state is RegState.FAILED
        await asyncio.sleep(0.05)  # handler tasks
        assert events == [event]  # reported once to on_registration, never retried in a loop
    assert len(await wait_for_lines(kamailio, needle, before + 2, 5.0)) - before == 2


async def test_registration_refreshed_on_the_wire_and_removed_on_close(
    kamailio: Kamailio,  # noqa: F811
) -> None:
    events: list[RegistrationEvent] = []

    async def record(event: RegistrationEvent) -> None:
        events.append(event)

    challenges_before = len(lines(kamailio, "REGISTER from carol: challenging"))
    registered_before = len(lines(kamailio, "REGISTERED user=carol"))
    config = config_for(kamailio, "carol", "udp", register_expires=2)
    async with UserAgent(config) as carol:
        carol.on_registration(record)
        # 2 s granted: refreshed every second. Wait for the registration and two refreshes.
        found = await wait_for_lines(kamailio, "REGISTERED user=carol", registered_before + 3, 8.0)
        assert len(found) - registered_before >= 3
        assert all("expires=2 " in line for line in found[registered_before:])
        succeeded = [e for e in events if isinstance(e, RegistrationSucceeded)]
        assert succeeded and succeeded[-1].expires == 2
        assert any(e.refreshed for e in succeeded)
        # Refreshes went authenticated up front: only the first REGISTER was challenged.
        challenges = lines(kamailio, "REGISTER from carol: challenging")
        assert len(challenges) - challenges_before == 1
    await asyncio.sleep(0.05)  # the Unregistered handler task ran during close
    assert Unregistered(config.aor, confirmed=True) in events

    # The binding is gone: a message to carol now ends 404 at the location lookup.
    async with UserAgent(config_for(kamailio, "alice", "udp", register=False)) as alice:
        sent = await alice.send_message(config.aor, "still there?", notify={"positive-delivery"})
        assert (await asyncio.wait_for(sent.final_response(), 10)).status_code == 404


async def test_several_realms_and_sha256(kamailio_factory: Callable[..., Kamailio]) -> None:  # noqa: F811
    """SHA-256 challenges; credentials for another realm beside the right one are not used."""
    server = kamailio_factory(algorithm="SHA-256")
    dispositions: list[DispositionEvent] = []

    async def record(event: DispositionEvent) -> None:
        dispositions.append(event)

    bob_config = config_for(server, "bob", "tcp")
    async with UserAgent(bob_config) as bob:
        bob.on_message(_accept)
        alice_config = config_for(server, "alice", "tcp")
        alice_config = UserAgentConfig(
            **{
                **{f: getattr(alice_config, f) for f in alice_config.__dataclass_fields__},
                "credentials": (
                    Credentials("alice", "wrong-realm-secret", realm="elsewhere.test"),
                    Credentials("alice", "alice-secret", realm=server.domain),
                ),
            }
        )
        async with UserAgent(alice_config) as alice:
            alice.on_disposition(record)
            for ua in (bob, alice):
                assert isinstance(await ua.wait_registered(timeout=10), RegistrationSucceeded)
            sent = await alice.send_message(bob_config.aor, "sha-256", notify={"positive-delivery"})
            assert (await asyncio.wait_for(sent.final_response(), 10)).status_code == 200
            assert await sent.await_disposition("delivered", timeout=10) == "delivered"
    # Kamailio offered SHA-256 only (an MD5 answer would be refused): one challenge each, answered.
    assert len(lines(server, "MESSAGE from alice: challenging")) == 1
    assert len(lines(server, "REGISTER from alice: challenging")) == 1


async def _accept(message: IncomingMessage) -> None:
    return None  # 200


async def test_stale_cached_nonce_is_answered_once(kamailio_factory: Callable[..., Kamailio]) -> None:  # noqa: F811
    """A message sent up front with a nonce Kamailio has let expire: 407 stale=true, one retry, 200."""
    server = kamailio_factory(nonce_expire=1)
    async with UserAgent(config_for(server, "bob", "udp")) as bob:
        bob.on_message(_accept)
        async with UserAgent(config_for(server, "alice", "udp", register=False)) as alice:
            assert isinstance(await bob.wait_registered(timeout=10), RegistrationSucceeded)
            first = await alice.send_message(f"sip:bob@{server.domain}", "fresh nonce", cpim=False)
            assert (await asyncio.wait_for(first.final_response(), 10)).status_code == 200
            # Kamailio ages nonces in whole seconds: 2.5 s is safely past nonce_expire=1.
            await asyncio.sleep(2.5)
            second = await alice.send_message(f"sip:bob@{server.domain}", "stale nonce", cpim=False)
            assert (await asyncio.wait_for(second.final_response(), 10)).status_code == 200
    challenges = lines(server, "MESSAGE from alice: challenging")
    # The first message's plain challenge, then one for the stale answer (code -4), nothing more.
    assert len(challenges) == 2 and "(code -4)" in challenges[1], challenges
