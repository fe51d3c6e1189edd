"""WallClockTimer: the one loop timer the UA and the intermediary keep for their sans-IO cores."""

from __future__ import annotations

import asyncio
import time

from sipimdn._walltimer import WallClockTimer


async def test_fires_once_not_before_the_deadline_and_reports_at_least_it() -> None:
    fired: list[float] = []
    timer = WallClockTimer(fired.append)
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
    timer = WallClockTimer(fired.append)
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
