"""What waiting on a sent message's disposition gives once its tracking ends.

A wait returns as soon as the state reaches the target or can no longer: a terminal state
(``expired`` when no positive news came before the tracking deadline), or the state tracking
ended in (``delivered`` when a display notification was awaited and never came). A Message-ID
nobody tracks is a typed error, :class:`~sipimdn.errors.MessageNotTracked`. The same over a
store several workers share is in test_ua_workers.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from ua_helpers import ua_config

from sipimdn import UserAgent
from sipimdn.errors import LocalProtocolError, MessageNotTracked
from sipimdn.events import DispositionState as S
from sipimdn.ua import IncomingMessage

#: Seconds the sender tracks a message (its state_expiry).
TRACKING = 1.5


async def _accept(message: IncomingMessage) -> None:
    return None


async def test_tracking_ended_short_of_the_target_returns_the_final_state() -> None:
    """Delivered, display never comes: waiting for displayed returns delivered when tracking
    ends (not never), and the handle says tracking ended."""
    async with (
        UserAgent(ua_config("bob")) as bob,
        UserAgent(ua_config("alice", state_expiry=TRACKING)) as alice,
    ):
        bob.on_message(_accept)
        handle = await alice.send_message(bob.aor, "hi", notify={"positive-delivery", "display"})
        assert await handle.await_disposition("delivered", 5) is S.DELIVERED
        assert not handle.tracking_ended
        started = time.monotonic()
        assert await alice.await_disposition(handle.message_id, "displayed", 10) is S.DELIVERED
        assert time.monotonic() - started < TRACKING + 2
        assert handle.tracking_ended and not handle.reached("displayed")
        # Ended: a new wait on the handle returns at once, the same final state.
        assert await handle.await_disposition("displayed", 0.5) is S.DELIVERED
        # This worker's store dropped the record with its tracking: nobody tracks it now.
        with pytest.raises(MessageNotTracked) as gone:
            await alice.await_disposition(handle.message_id, "displayed", 1)
        assert gone.value.message_id == handle.message_id and gone.value.last_state is None


async def test_no_positive_news_before_the_deadline_is_expired() -> None:
    """Accepted, but the delivered notification never comes: expired (terminal)."""
    async with (
        UserAgent(ua_config("bob", auto_delivery=False)) as bob,
        UserAgent(ua_config("alice", state_expiry=TRACKING)) as alice,
    ):
        bob.on_message(_accept)
        handle = await alice.send_message(bob.aor, "hi", notify={"positive-delivery"})
        assert (await handle.final_response()).status_code == 200
        assert await handle.await_disposition("delivered", 10) is S.EXPIRED
        assert handle.tracking_ended


async def test_a_message_id_nobody_tracks_is_a_typed_error() -> None:
    async with UserAgent(ua_config("alice")) as alice:
        with pytest.raises(MessageNotTracked) as unknown:
            await asyncio.wait_for(alice.await_disposition("never-sent", "delivered", 5), 5)
        assert unknown.value.last_state is None and "never-sent" in str(unknown.value)
        assert isinstance(unknown.value, LocalProtocolError)  # what it raised before, still caught
