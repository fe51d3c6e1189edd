"""The user agent keeping a registration (RFC 3261 §10) against a scripted registrar on loopback.

The registrar is a bare SipStack (``StackPeer``) reached as outbound proxy:
the AOR's domain does not resolve, so every REGISTER reaching it proves the
pre-loaded Route was followed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ua_helpers import StackPeer

from sipimdn import UserAgent, UserAgentConfig
from sipimdn.config import ListenEndpoint
from sipimdn.errors import LocalProtocolError, TransportError
from sipimdn.events import RegistrationEvent, RegistrationSucceeded, Unregistered
from sipimdn.message import Request
from sipimdn.registration import RegState

AOR = "sip:alice@example.test"
INSTANCE = "urn:uuid:7b1b1f6e-43c1-4bd5-9b0a-5c1f7a1a3a10"


def registrar(granted: int) -> Any:
    """Accept every REGISTER, granting ``granted`` seconds to each Contact (0 stays 0)."""

    def answer(request: Request) -> tuple[int, list[tuple[str, str]]]:
        if request.method != "REGISTER":
            return 404, []
        asked = int(request.headers.get("Expires") or "0")
        contacts = [value.split(";expires=")[0] for value in request.headers.get_all("Contact")]
        expires = min(asked, granted)
        return 200, [("Contact", f"{contact};expires={expires}") for contact in contacts]

    return answer


def config(proxy: str, **extra: Any) -> UserAgentConfig:
    settings: dict[str, Any] = {
        "listen": (ListenEndpoint("udp", "127.0.0.1", 0),),
        "outbound_proxy": proxy,
        "register": True,
        "register_expires": 60,
        "close_grace": 1.0,
    }
    settings.update(extra)
    return UserAgentConfig(aor=AOR, **settings)


def registers(peer: StackPeer) -> list[Request]:
    return [r for r in peer.requests if r.method == "REGISTER"]


async def test_registers_honours_the_granted_expiry_refreshes_and_unregisters() -> None:
    events: list[RegistrationEvent] = []

    async def record(event: RegistrationEvent) -> None:
        events.append(event)

    async with StackPeer("registrar", registrar(granted=2)) as peer:
        ua = UserAgent(config(peer.aor))
        ua.on_registration(record)
        async with ua:
            first = await ua.wait_registered(timeout=5)
            assert isinstance(first, RegistrationSucceeded) and first.expires == 2 and not first.refreshed
            assert ua.registration_state is RegState.REGISTERED
            # Granted 2 s (we asked 60): refreshed after about one second, not after 60 - 32.
            await peer.wait_requests(2, timeout=3)
            one, two = registers(peer)[:2]
            (endpoint,) = [e for e in ua.endpoints if e.transport == "udp"]
            assert one.headers.get("Contact") == f"<sip:alice@127.0.0.1:{endpoint.port}>"
            assert str(one.uri) == "sip:example.test"  # the AOR's domain (RFC 3261 §10.2)
            assert one.route[0].uri.host == "127.0.0.1" and "lr" in one.route[0].uri.params
            assert one.headers.get("Expires") == "60"
            assert two.call_id == one.call_id and two.cseq.number == one.cseq.number + 1
            assert two.from_.tag == one.from_.tag
        last = registers(peer)[-1]
        assert last.headers.get("Expires") == "0"
        assert (last.headers.get("Contact") or "").endswith(";expires=0")
    await asyncio.sleep(0)
    assert any(isinstance(e, RegistrationSucceeded) and e.refreshed for e in events)
    assert events[-1] == Unregistered(AOR, confirmed=True)


async def test_every_listen_endpoint_is_a_contact_with_instance_and_reg_id() -> None:
    async with StackPeer("registrar", registrar(granted=60)) as peer:
        listen = (ListenEndpoint("udp", "127.0.0.1", 0), ListenEndpoint("tcp", "127.0.0.1", 0))
        async with UserAgent(config(peer.aor, listen=listen, instance_id=INSTANCE, reg_id=True)) as ua:
            assert isinstance(await ua.wait_registered(timeout=5), RegistrationSucceeded)
            (request,) = registers(peer)
            ports = {e.transport: e.port for e in ua.endpoints}
            assert request.headers.get_all("Contact") == [
                f'<sip:alice@127.0.0.1:{ports["udp"]}>;+sip.instance="<{INSTANCE}>";reg-id=1',
                f'<sip:alice@127.0.0.1:{ports["tcp"]};transport=tcp>;+sip.instance="<{INSTANCE}>";reg-id=2',
            ]
            assert "outbound" in (request.headers.get("Supported") or "")


async def test_a_transport_failure_towards_the_proxy_re_registers_at_once() -> None:
    async with StackPeer("registrar", registrar(granted=3600)) as peer, UserAgent(config(peer.aor)) as ua:
        await ua.wait_registered(timeout=5)
        assert len(registers(peer)) == 1
        # The proxy listens on UDP only: over TCP the connection is refused.
        sent = await ua.send_message("sip:bob@example.test", "hi", transport="tcp")
        with pytest.raises(TransportError):
            await asyncio.wait_for(sent.final_response(), 5)
        await peer.wait_requests(2, timeout=3)
        again = registers(peer)[1]
        assert again.headers.get("Expires") == "60"  # a refresh, not a removal
        assert await ua.wait_registered(timeout=3)
        assert ua.registration_state is RegState.REGISTERED


async def test_a_refused_registration_is_reported_once() -> None:
    events: list[RegistrationEvent] = []

    async def record(event: RegistrationEvent) -> None:
        events.append(event)

    async with StackPeer("registrar", lambda request: 403) as peer:
        ua = UserAgent(config(peer.aor))
        ua.on_registration(record)
        async with ua:
            failed = await ua.wait_registered(timeout=5)
            assert not isinstance(failed, RegistrationSucceeded)
            assert failed.status_code == 403 and failed.retry_at is None  # type: ignore[union-attr]
            assert ua.registration_state is RegState.FAILED
            await asyncio.sleep(0.2)
            assert len(peer.requests) == 1
        assert events[0] == failed


async def test_without_registration_configured() -> None:
    async with UserAgent(UserAgentConfig(aor="sip:alice@127.0.0.1:0")) as ua:
        assert ua.registration_state is None
        with pytest.raises(LocalProtocolError, match="does not register"):
            await ua.wait_registered(timeout=1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reg_id": True}, "reg_id needs instance_id"),
        ({"instance_id": "not-a-urn"}, "must be a URN"),
        ({"register_expires": 0}, "register_expires"),
        ({"register_retry_base": 10.0, "register_retry_max": 5.0}, "register_retry_base"),
    ],
)
def test_registration_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UserAgentConfig(aor=AOR, register=True, **settings)


def test_a_port_zero_aor_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="port 0"):
        UserAgentConfig(aor="sip:alice@127.0.0.1:0", registrar="sip:127.0.0.1")
    assert UserAgentConfig(aor=AOR, registrar="sip:127.0.0.1").registers
