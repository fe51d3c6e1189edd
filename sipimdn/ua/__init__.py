"""The user agent: what applications embed.

A minimal receiver and sender on loopback::

    from sipimdn import IncomingMessage, UserAgent, UserAgentConfig

    async with UserAgent(UserAgentConfig(aor="sip:bob@127.0.0.1:0")) as bob:

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            print(message.sender, message.text)  # returning None answers 200
            await message.mark_displayed()       # "displayed", if it was asked for

        async with UserAgent(UserAgentConfig(aor="sip:alice@127.0.0.1:0")) as alice:
            sent = await alice.send_message(bob.aor, "hi", notify={"positive-delivery", "display"})
            await sent.final_response()                        # 200 OK
            await sent.await_disposition("displayed", timeout=5)

Public names: :class:`UserAgent`, :class:`IncomingMessage` (what ``on_message``
handlers get; ``message.reply(...)`` answers with a new message),
:class:`SentMessage` (what ``send_message`` returns), :class:`Answer` and
:class:`Decision` (a handler's answer, see ``HandlerResult``) and
:class:`UserAgentStats` (what ``ua.stats()`` returns). The ``on_*`` methods
return the handler they are given (decorators leave the function as it
is); ``ua.remove_handler(handler)`` unregisters it. Events are in
:mod:`sipimdn.events`, the configuration in :mod:`sipimdn.config`.

Behind a registrar and proxy (docs/ARCHITECTURE.md, "The user agent")::

    config = UserAgentConfig(
        aor="sip:alice@example.com", outbound_proxy="sip:proxy.example.com;lr",
        register=True, credentials=(Credentials("alice", password, realm="example.com"),),
    )
    async with UserAgent(config) as alice:
        await alice.wait_registered(timeout=10)   # RegistrationSucceeded, or the failure
        sent = await alice.send_message("sip:bob@example.com", "hi", notify={"display"})
        await sent.final_response()                # AuthenticationFailed if our password is refused
"""

from __future__ import annotations

from ._agent import UserAgent
from ._composing import Composer
from ._deadline import Answer, Decision, HandlerResult
from .incoming import IncomingMessage
from .outgoing import SentMessage
from .stats import UserAgentStats

__all__ = [
    "Answer",
    "Composer",
    "Decision",
    "HandlerResult",
    "IncomingMessage",
    "SentMessage",
    "UserAgent",
    "UserAgentStats",
]
