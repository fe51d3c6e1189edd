"""examples/behind_proxy.py run as a process against Kamailio, bob being a UserAgent in this process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from kamailio.harness import Kamailio, kamailio  # noqa: F401  (fixture)

from sipimdn import IncomingMessage, UserAgent, UserAgentConfig
from sipimdn.auth import Credentials
from sipimdn.config import ListenEndpoint
from sipimdn.events import RegistrationSucceeded

pytestmark = pytest.mark.interop

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "behind_proxy.py"


async def run_example(server: Kamailio, password: str, transport: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "SIPIMDN_PASSWORD"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE),
        "--aor", f"sip:alice@{server.domain}",
        "--proxy", server.proxy_uri(transport),
        "--to", f"sip:bob@{server.domain}",
        "--expires", "60", "--wait", "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env | {"SIPIMDN_PASSWORD": password, "PYTHONUNBUFFERED": "1"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_example_registers_sends_and_prints_notifications(kamailio: Kamailio) -> None:  # noqa: F811
    config = UserAgentConfig(
        aor=f"sip:bob@{kamailio.domain}",
        listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
        outbound_proxy=kamailio.proxy_uri("udp"),
        register=True,
        credentials=(Credentials("bob", "bob-secret", realm=kamailio.domain),),
    )
    texts: list[str] = []
    async with UserAgent(config) as bob:

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            texts.append(message.text)
            bob.spawn(message.mark_displayed())

        assert isinstance(await bob.wait_registered(timeout=10), RegistrationSucceeded)
        code, out = await run_example(kamailio, "alice-secret", "tcp")
        assert code == 0, out
        assert "registered as sip:alice@sipimdn.test" in out
        assert "answer: 200" in out
        assert "delivered: yes" in out and "displayed: yes" in out
        assert out.count("notification: NotificationAccepted") == 2
        assert "registration: Unregistered" in out
        assert texts == ["Hello Bob, via the proxy"]

        code, out = await run_example(kamailio, "pw-not-alices-7731", "udp")
        assert code == 1, out
        assert "registration failed" in out and "rejected" in out
        assert "pw-not-alices-7731" not in out
        assert texts == ["Hello Bob, via the proxy"]
