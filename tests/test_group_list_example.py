"""examples/group_list.py from the command line: three real members, the sender sees each."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from test_intermediary_support import ua_config, until
from test_store_and_forward_example import example

from sipimdn.events import DispositionChanged, DispositionState
from sipimdn.ua import IncomingMessage, UserAgent

LIST = "sip:friends@sipimdn.test"


async def test_group_list_example_explodes_and_aggregates() -> None:
    async with AsyncExitStack() as stack:
        members = [await stack.enter_async_context(UserAgent(ua_config(n))) for n in ("bob", "carol", "dave")]
        received: list[IncomingMessage] = []

        async def keep(message: IncomingMessage) -> None:
            received.append(message)

        for member in members:
            member.on_message(keep)
        member_args = [arg for m in members for arg in ("--member", m.aor)]
        uri, lines = await stack.enter_async_context(
            example("group_list.py", "--list", LIST, "--window", "5", *member_args)
        )
        alice = await stack.enter_async_context(UserAgent(ua_config("alice", outbound_proxy=uri)))
        events: list[object] = []

        async def record(event: object) -> None:
            events.append(event)

        alice.on_disposition(record)
        # "display" too: with positive-delivery alone the sender's tracker stops tracking the
        # list once its first member is delivered (reported to the tracker's owner).
        sent = await alice.send_message(LIST, "hi all", notify=["positive-delivery", "display"])
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: len(received) == 3)

        def delivered() -> set[str]:
            return {
                e.recipient
                for e in events
                if isinstance(e, DispositionChanged) and e.state is DispositionState.DELIVERED
            }

        await until(lambda: delivered() >= {m.aor for m in members})
        assert any("list (202)" in line for line in lines)
