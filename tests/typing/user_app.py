"""A small application written against sipimdn's typed API, as a user would (checked by mypy --strict).

tests/test_typed_api.py runs mypy on this file as it is (no error) and on a copy with one typo per
marked line (a ``typo:`` comment saying what to replace), each of which must be an error on exactly that line.
"""

from __future__ import annotations

from sipimdn import IncomingMessage, UserAgent, UserAgentConfig
from sipimdn.events import DispositionEvent, NotificationEvent, NotificationSent
from sipimdn.imdn.vocabulary import Kind, Status
from sipimdn.ua import Answer, HandlerResult, SentMessage


async def main() -> None:
    async with UserAgent(UserAgentConfig(aor="sip:bot@127.0.0.1:0")) as ua:

        @ua.on_message
        async def answer(message: IncomingMessage) -> HandlerResult:
            if message.text == "later":
                return Answer.ACCEPTED  # typo: ACCEPTED -> ACCEPTD
            await message.report("display", "displayed")  # typo: "display", -> "dispaly",
            await message.report(Kind.DELIVERY, "failed")  # typo: "failed" -> "faild"
            await message.mark_displayed()
            await message.reply("pong", notify={"display"})  # typo: "display" -> "dispaly"
            return None

        @ua.on_notification
        async def notified(event: NotificationEvent) -> None:
            if isinstance(event, NotificationSent) and event.kind is Kind.DISPLAY:
                print(event.status is Status.DISPLAYED)  # typo: DISPLAYED -> DISPLAYD

        @ua.on_disposition
        async def followed(event: DispositionEvent) -> None:
            print(event.message_id)

        sent: SentMessage = await ua.send_message(
            "sip:bob@127.0.0.1:5070",
            "hi",
            notify={"positive-delivery", "display"},  # typo: "display" -> "displayed"
        )
        await ua.report_disposition(sent.message_id, "delivery", "error")  # typo: "error" -> "eror"
        await sent.final_response()
        ua.remove_handler(answer)
        ua.remove_handler(notified)
        ua.remove_handler(followed)
        assert ua.stats().messages_sent == 1
