"""Messages sent to a URI list through the user agent (RFC 5365, RFC 5438 §7.1.4).

The handle's ``state`` follows the target (the list) only; each member's news reaches the
disposition handlers with the member's URI, and ``to_list=True`` keeps the message tracked
after the first report settles everything requested.
"""

from __future__ import annotations

import asyncio
import time

from ua_helpers import Recorder, StackPeer, ua_config

from sipimdn import UserAgent
from sipimdn.cpim import parse as parse_cpim
from sipimdn.events import DispositionChanged, DispositionState, TrackingEnded
from sipimdn.imdn import build_imdn_message, make_notification

S = DispositionState
BOTH = {"positive-delivery", "display"}
CAROL = "sip:carol@members.example"
BOB = "sip:bob@members.example"


async def _list_reports(
    friends: StackPeer, alice: UserAgent, message_id: str, datetime: str, parts: list[tuple[str, str, str]]
) -> None:
    """The list server's aggregated IMDN: one part per (member, kind, status), From the list."""
    notes = [
        make_notification(
            message_id=message_id,
            datetime=datetime,
            kind=kind,
            status=status,
            recipient_uri=member,
            original_recipient_uri=friends.aor,
        )
        for member, kind, status in parts
    ]
    imdn = build_imdn_message(notes, from_=friends.aor, to=alice.aor, now=time.time())
    assert (await friends.send_message(alice.aor, "message/cpim", imdn.to_bytes())).status_code == 200


async def test_handle_state_follows_the_list_not_a_later_member() -> None:
    events = Recorder()
    async with StackPeer("friends", lambda r: 200) as friends, UserAgent(ua_config("alice")) as alice:
        alice.on_disposition(events)
        handle = await alice.send_message(friends.aor, "hi all", notify=BOTH, to_list=True)
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        date_time = parse_cpim(friends.requests[0].body).date_time
        assert date_time is not None
        # Carol has read it: the list's entry reaches displayed.
        await _list_reports(
            friends, alice, handle.message_id, date_time.raw,
            [(CAROL, "delivery", "delivered"), (CAROL, "display", "displayed")],
        )
        assert await handle.await_disposition("displayed", timeout=5) is S.DISPLAYED
        # Bob's delivery comes later: his own entry moves, the handle does not go back.
        bob_part = [(BOB, "delivery", "delivered")]
        await _list_reports(friends, alice, handle.message_id, date_time.raw, bob_part)

        def bob_changes() -> list[DispositionChanged]:
            return [e for e in events.of(DispositionChanged) if e.recipient == BOB]

        for _ in range(200):
            if bob_changes():
                break
            await asyncio.sleep(0.01)
        assert [e.state for e in bob_changes()] == [S.DELIVERED]
        assert handle.state is S.DISPLAYED
        # to_list=True: still tracked (members may report until the deadline), with both members.
        assert not events.of(TrackingEnded)
        record = alice.tracker.sent(handle.message_id)
        assert record is not None and record.intermediaries  # expect_members=True reached the tracker
        uris = {r.uri for r in record.recipients}
        assert {CAROL, BOB} <= uris


async def test_without_to_list_the_list_entry_still_drives_the_handle() -> None:
    async with StackPeer("friends", lambda r: 200) as friends, UserAgent(ua_config("alice")) as alice:
        handle = await alice.send_message(friends.aor, "hi", notify={"positive-delivery"})
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        record = alice.tracker.sent(handle.message_id)
        assert record is not None and not record.intermediaries
        date_time = parse_cpim(friends.requests[0].body).date_time
        assert date_time is not None
        carol_part = [(CAROL, "delivery", "delivered")]
        await _list_reports(friends, alice, handle.message_id, date_time.raw, carol_part)
        assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
