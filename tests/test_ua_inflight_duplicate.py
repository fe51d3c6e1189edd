"""A resend that arrives while the first copy is still being decided (RFC 3428 §7, RFC 5438 §6.3).

A sender whose first transaction failed (its 2xx was lost, its TCP connection broke) sends the
message again in a new transaction: same ``imdn.Message-ID``, new Call-ID and branch. If that copy
arrives while the application's handler is still deciding the first one, the application must
see the message once, and the resend must get the answer the first copy gets: a sender that only
hears the resend's answer must not be told 2xx for a message the application refused.

Real user agent on 127.0.0.1, raw UDP sender, public API only; the handler is held on an
``asyncio.Event`` so the resend is guaranteed to arrive while it runs.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from ua_helpers import RawPeer, ua_config

from sipimdn import UserAgent
from sipimdn.imdn import build_im
from sipimdn.ua import IncomingMessage


@pytest.mark.parametrize("decision", [200, 403])
async def test_resend_during_the_handler_is_handed_up_once_and_gets_the_same_answer(decision: int) -> None:
    seen: list[IncomingMessage] = []
    entered = asyncio.Event()
    release = asyncio.Event()
    raw = await RawPeer.open()
    try:
        # The handler deadline is far beyond the test: the answers below are the handler's.
        async with UserAgent(ua_config("bob", handler_deadline=30.0)) as bob:

            @bob.on_message
            async def hold(message: IncomingMessage) -> int:
                seen.append(message)
                entered.set()
                await release.wait()
                return decision

            dest = (bob.endpoints[0].host, bob.endpoints[0].port)
            sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
            body = build_im(
                from_=sender, to=bob.aor, body=b"once", now=time.time(), message_id="inflight-1",
                notify={"positive-delivery"},
            ).to_bytes()
            first, first_branch = raw.request_bytes(
                "MESSAGE", bob.aor, content_type="message/cpim", body=body, call_id="call-one"
            )
            second, second_branch = raw.request_bytes(
                "MESSAGE", bob.aor, content_type="message/cpim", body=body, call_id="call-two"
            )
            finals: dict[str, int] = {}

            async def final(branch: str) -> int:
                # One reader of the peer's responses, keeping every final by branch.
                while branch not in finals:
                    response = await raw.responses.get()
                    if response.status_code >= 200:
                        finals[response.top_via.branch] = response.status_code
                return finals[branch]

            assert raw.transport is not None
            async with asyncio.timeout(10):
                raw.transport.sendto(first, dest)
                await entered.wait()  # the first copy is in the handler, undecided
                raw.transport.sendto(second, dest)
                # The resend must not be answered before the first copy is decided. A later
                # event proves it reached bob: bob's answer to an OPTIONS sent after it from
                # the same socket (bob handles one socket's datagrams in arrival order).
                probe, probe_branch = raw.request_bytes("OPTIONS", bob.aor)
                raw.transport.sendto(probe, dest)
                assert await final(probe_branch) == 200
                assert second_branch not in finals, "resend answered before the first copy was decided"
                release.set()
                statuses = [await final(first_branch), await final(second_branch)]
            assert statuses == [decision, decision]
            assert [m.text for m in seen] == ["once"]
    finally:
        raw.close()


async def test_resends_waiting_for_the_first_answer_are_bounded() -> None:
    """A flood of copies of a message still being decided does not pile up: a few wait for
    its answer, the rest get the deadline status (202) at once. None is handed up again."""
    seen: list[IncomingMessage] = []
    entered = asyncio.Event()
    release = asyncio.Event()
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob", handler_deadline=30.0)) as bob:

            @bob.on_message
            async def hold(message: IncomingMessage) -> int:
                seen.append(message)
                entered.set()
                await release.wait()
                return 200

            dest = (bob.endpoints[0].host, bob.endpoints[0].port)
            sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
            body = build_im(from_=sender, to=bob.aor, body=b"once", now=time.time(),
                            message_id="flood-1").to_bytes()
            copies = [raw.request_bytes("MESSAGE", bob.aor, content_type="message/cpim", body=body)
                      for _ in range(21)]
            finals: dict[str, int] = {}

            async def final(branch: str) -> int:
                while branch not in finals:
                    response = await raw.responses.get()
                    if response.status_code >= 200:
                        finals[response.top_via.branch] = response.status_code
                return finals[branch]

            assert raw.transport is not None
            async with asyncio.timeout(10):
                raw.transport.sendto(copies[0][0], dest)
                await entered.wait()
                for data, _ in copies[1:]:
                    raw.transport.sendto(data, dest)
                probe, probe_branch = raw.request_bytes("OPTIONS", bob.aor)
                raw.transport.sendto(probe, dest)
                assert await final(probe_branch) == 200  # every copy was read before this
                early = [finals[b] for _, b in copies if b in finals]
                release.set()
                statuses = [await final(branch) for _, branch in copies]
            assert early == [202] * 12  # past the first 8 resends, answered at once
            assert statuses.count(200) == 9  # the first copy and the 8 that waited for it
            assert len(seen) == 1
    finally:
        raw.close()
