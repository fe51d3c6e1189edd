"""What ``IncomingMessage.report()`` answers is what happens on the wire, both ways.

True means the notification is sent; False means nothing is sent. A report
made inside ``on_message`` (before the answer) follows the same rule as one
made after it: RFC 5438 §7.2.1.1 lets ``forbidden``/``error`` answer either
delivery request, ``delivered`` needs positive-delivery and ``failed``
negative-delivery.
"""

from __future__ import annotations

from ua_helpers import Recorder, ua_config

from sipimdn import UserAgent
from sipimdn.config import DisplayPrivacy
from sipimdn.events import NotificationAccepted
from sipimdn.ua import IncomingMessage


async def test_early_forbidden_report_for_a_positive_delivery_request_is_sent_and_says_so() -> None:
    answers: list[bool] = []
    notes = Recorder()
    async with (
        UserAgent(ua_config("bob", auto_delivery=False)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def refuse(message: IncomingMessage) -> None:
            answers.append(await message.report("delivery", "forbidden"))

        alice.on_disposition(notes)
        sent = await alice.send_message(bob.aor, "x", notify={"positive-delivery"})
        accepted = await notes.wait_for(NotificationAccepted)
        assert answers == [True]
        assert [(a.message_id, a.kind, a.status) for a in accepted] == [
            (sent.message_id, "delivery", "forbidden")
        ]
        assert await sent.await_disposition("forbidden", timeout=5) == "forbidden"


async def test_a_report_answered_false_sends_nothing() -> None:
    answers: list[tuple[str, bool]] = []
    notes = Recorder()
    async with (
        UserAgent(ua_config("bob", auto_delivery=False)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def report(message: IncomingMessage) -> None:
            if message.text == "first":
                # Only display was requested: no delivery notification may be sent.
                answers.append(("first", await message.report("delivery", "forbidden")))
            else:
                answers.append(("second", await message.report("delivery", "delivered")))

        alice.on_disposition(notes)
        first = await alice.send_message(bob.aor, "first", notify={"display"})
        await first.final_response()
        second = await alice.send_message(bob.aor, "second", notify={"positive-delivery"})
        # The second message's notification is the later event that proves the first sent nothing:
        # bob owed (and sent) anything for the first before he even received the second.
        accepted = await notes.wait_for(NotificationAccepted)
        assert answers == [("first", False), ("second", True)]
        assert [(a.message_id, a.status) for a in accepted] == [(second.message_id, "delivered")]
        assert first.state == "accepted"


async def test_report_after_the_answer_follows_the_same_rule() -> None:
    received: list[IncomingMessage] = []
    notes = Recorder()
    async with (
        UserAgent(ua_config("bob", auto_delivery=False)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def keep(message: IncomingMessage) -> None:
            received.append(message)

        alice.on_disposition(notes)
        sent = await alice.send_message(bob.aor, "x", notify={"positive-delivery"})
        await sent.final_response()
        assert await received[0].report("delivery", "forbidden") is True
        accepted = await notes.wait_for(NotificationAccepted)
        assert [(a.message_id, a.status) for a in accepted] == [(sent.message_id, "forbidden")]


async def test_mark_displayed_in_the_handler_under_privacy_forbidden_is_false_not_an_error() -> None:
    """The privacy setting answers display requests with forbidden: mark_displayed owes nothing."""
    answers: list[bool] = []
    notes = Recorder()
    async with (
        UserAgent(ua_config("bob", display_privacy=DisplayPrivacy.FORBIDDEN)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            answers.append(await message.mark_displayed())

        alice.on_disposition(notes)
        sent = await alice.send_message(bob.aor, "x", notify={"display"})
        assert (await sent.final_response()).status_code == 200
        accepted = await notes.wait_for(NotificationAccepted)
        assert answers == [False]
        assert [(a.kind, a.status) for a in accepted] == [("display", "forbidden")]
