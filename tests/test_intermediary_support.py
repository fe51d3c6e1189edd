"""Helpers shared by the intermediary tests (no tests here): registration, waiting, recording."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.intermediary import Intermediary, RequestRouted
from sipimdn.registration import RegistrationClient, RegistrationSettings, RegistrationSucceeded
from sipimdn.stack import SipStack

DOMAIN = "sipimdn.test"


async def register(aor: str, contact: str, registrar_uri: str, expires: int = 300) -> RegistrationSucceeded:
    """Bind ``contact`` to ``aor`` at ``registrar_uri`` with the library's registration client."""
    client = RegistrationClient(
        RegistrationSettings(aor=aor, contacts=(contact,), registrar_uri=registrar_uri, expires=expires)
    )
    async with SipStack() as stack:
        client.register(time.time())
        for outgoing in client.requests_to_send():
            response = await stack.send_request(outgoing.to_request())
            client.handle_response_message(response, time.time())
    event = client.next_event()
    assert isinstance(event, RegistrationSucceeded), event
    return event


def ua_config(name: str, **extra: Any) -> UserAgentConfig:
    """A loopback UDP user agent whose IMDNs follow IMDN-Record-Route (a trusted intermediary)."""
    settings: dict[str, Any] = {
        "aor": f"sip:{name}@127.0.0.1:0",
        "display_name": name.capitalize(),
        "listen": (ListenEndpoint("udp", "127.0.0.1", 0),),
        "trust_imdn_route": True,
        "handler_deadline": 1.0,
        "close_grace": 0.5,
    }
    return UserAgentConfig(**{**settings, **extra})


class Seen:
    """Records every event of an intermediary (and the requests it routed)."""

    def __init__(self, server: Intermediary) -> None:
        self.events: list[object] = []
        self._changed = asyncio.Event()
        server.on_event(self._add)

    def _add(self, event: object) -> None:
        self.events.append(event)
        self._changed.set()

    def routed(self, route: str) -> list[RequestRouted]:
        """Requests routed with that label, in order."""
        return [e for e in self.events if isinstance(e, RequestRouted) and e.route == route]

    def of(self, kind: type[Any]) -> list[Any]:
        """Events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait (bounded) until ``predicate()`` holds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; events: {self.events!r}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
