"""RateLimitedLog: one line per period, the lines held back counted on the next one written."""

from __future__ import annotations

import logging

import pytest

from sipimdn._ratelog import RateLimitedLog


def test_one_line_per_period_and_the_held_back_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.ratelog")
    caplog.set_level(logging.INFO, logger="test.ratelog")
    log = RateLimitedLog(logger, logging.WARNING, period=10.0)
    for step in range(25):  # t = 0.0, 0.5, ... 12.0
        log(step * 0.5, "refused %s", step)
    assert log.held == 4  # t = 10.5 .. 12.0, after the second line
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "refused 0"),
        ("WARNING", "refused 20 (19 more like this in the last 10 s)"),
    ]
