"""CoreTimer: the one loop timer each asyncio adapter keeps for its sans-IO core (wall or loop clock)."""

from __future__ import annotations

import asyncio
import time

from sipimdn._coretimer import CoreTimer


async def test_fires_once_not_before_the_deadline_and_reports_at_least_it() -> None:
    fired: list[float] = []
    timer = CoreTimer(fired.append)
    at = time.time() + 0.05
    timer.arm(at)
    timer.arm(at)  # the same deadline again: kept, not re-armed
    await asyncio.sleep(0.02)
    assert fired == []
    for _ in range(100):
        if fired:
            break
        await asyncio.sleep(0.01)
    assert len(fired) == 1 and fired[0] >= at
    await asyncio.sleep(0.05)
    assert len(fired) == 1


async def test_rearming_replaces_and_none_or_cancel_disarms() -> None:
    fired: list[float] = []
    timer = CoreTimer(fired.append)
    timer.arm(time.time() + 0.03)
    timer.arm(time.time() + 10)  # later: the earlier arming is gone
    await asyncio.sleep(0.08)
    assert fired == []
    timer.arm(None)
    timer.arm(time.time() + 0.01)
    timer.cancel()
    await asyncio.sleep(0.05)
    assert fired == []
    timer.arm(time.time() - 1)  # already past: fires at once, with the current time
    await asyncio.sleep(0.02)
    assert len(fired) == 1 and fired[0] >= time.time() - 0.5


async def test_loop_clock_slots_and_lazy_rearming() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    timer = CoreTimer(fired.append, clock=None, slot=0.02, lazy=True)
    deadline = loop.time() + 0.031
    timer.arm(deadline)
    armed = timer.at
    assert armed is not None and deadline <= armed < deadline + 0.02 + 1e-9  # rounded up to a slot
    timer.arm(deadline + 0.5)  # later: lazy keeps the earlier handle
    timer.arm(None)  # nothing due: lazy keeps it too
    assert timer.at == armed
    timer.arm(deadline - 0.02)  # earlier: moves
    earlier = timer.at
    assert earlier is not None and earlier < armed
    for _ in range(100):
        if fired:
            break
        await asyncio.sleep(0.01)
    assert len(fired) == 1 and fired[0] >= earlier and timer.at is None


async def test_exact_deadline_with_slot_zero_and_a_later_one_replaces_when_not_lazy() -> None:
    loop = asyncio.get_running_loop()
    timer = CoreTimer(lambda now: None, clock=None)
    at = loop.time() + 5.0001
    timer.arm(at)
    assert timer.at == at
    timer.arm(at + 1)
    assert timer.at == at + 1
    timer.cancel()
    assert timer.at is None
