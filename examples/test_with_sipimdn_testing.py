"""Testing a service that embeds the user agent, with sipimdn.testing: copy this into your tests.

    pip install sipimdn pytest pytest-asyncio trustme   # trustme: only for the TLS case
    pytest examples/test_with_sipimdn_testing.py

The service under test here is ``Autoresponder``; yours would be imported from your package. Each
test puts it on one user agent of a loopback pair (``bob``) and drives it from the other
(``alice``), through the public API only, with real SIP between them over loopback sockets.

Three ways to get the pair: ``async with ua_pair()`` inside a test; the ``sipimdn_pair`` fixture
(parametrized over transports); the fixture with per-test options (configuration overrides).
"""

from __future__ import annotations

import importlib.util

import pytest

from sipimdn import IncomingMessage, UserAgent
from sipimdn.config import DisplayPrivacy
from sipimdn.testing import UaPair, record_messages, ua_pair, wait_disposition

# In your project this line goes in the top-level conftest.py; here it keeps the file standalone.
pytest_plugins = ["sipimdn.testing.pytest_plugin"]


class Autoresponder:
    """The service under test: marks every message displayed and answers it with a text of its own."""

    def __init__(self, ua: UserAgent, reply: str) -> None:
        self.ua = ua
        self.reply = reply
        ua.on_message(self._received)

    async def _received(self, message: IncomingMessage) -> None:
        await message.mark_displayed()  # "displayed" goes back if the sender asked for it
        # Answering does not wait for the reply to be sent: the user agent runs it as a task.
        self.ua.spawn(self.ua.send_message(message.cpim_from or message.sender, self.reply))


@pytest.mark.asyncio
async def test_replies_and_reports_display() -> None:
    async with ua_pair() as (alice, bob):  # UDP; both closed at the end of the block
        Autoresponder(bob, "I am away")
        replies = record_messages(alice)  # record before sending: nothing is replayed
        sent = await alice.send_message(bob.aor, "Hello", notify={"positive-delivery", "display"})

        assert (await sent.final_response()).status_code == 200
        reply = await replies.next()  # raises WaitTimeout (a TimeoutError) after 5 s
        assert reply.text == "I am away"
        assert reply.sender == bob.aor
        await wait_disposition(sent, "displayed")  # AssertionError if it ends failed/forbidden


_TLS = pytest.param(
    "tls",
    marks=pytest.mark.skipif(importlib.util.find_spec("trustme") is None, reason="TLS needs trustme"),
)


@pytest.mark.asyncio
@pytest.mark.parametrize("sipimdn_pair", ["udp", "tcp", _TLS], indirect=True)
async def test_replies_over_every_transport(sipimdn_pair: UaPair) -> None:
    alice, bob = sipimdn_pair
    Autoresponder(bob, "pong")
    replies = record_messages(alice)
    await alice.send_message(bob.aor, "ping")
    assert (await replies.next()).text == "pong"
    await replies.assert_nothing(within=0.2)  # one reply per message, no more


_BOB_FORBIDS_DISPLAY = {"bob": {"display_privacy": DisplayPrivacy.FORBIDDEN}}


@pytest.mark.asyncio
# Options of ua_pair for this test (in a project whose conftest.py enables the plugin, the marker
# @pytest.mark.sipimdn_pair(bob={...}) says the same).
@pytest.mark.parametrize("sipimdn_pair", [_BOB_FORBIDS_DISPLAY], indirect=True)
async def test_display_refused_by_the_users_privacy_setting(sipimdn_pair: UaPair) -> None:
    alice, bob = sipimdn_pair
    Autoresponder(bob, "noted")
    sent = await alice.send_message(bob.aor, "Did you read this?", notify={"display"})
    # The service calls mark_displayed, but bob's configuration answers every display request
    # with "forbidden" (RFC 5438 §7.2.1.2): that is what alice learns.
    assert await wait_disposition(sent, "forbidden") == "forbidden"
