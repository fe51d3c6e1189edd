"""The collector settings for a long-running agent: applied, nested, undone, and cycles still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from ua_helpers import ua_config

from sipimdn import UserAgent, UserAgentConfig
from sipimdn._gc import THROUGHPUT_THRESHOLDS, tune_for_throughput
from sipimdn.ua import IncomingMessage


@pytest.fixture(autouse=True)
def _collector_untouched() -> Iterator[None]:
    """Every test leaves the collector as it found it (the settings are process-wide)."""
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    yield
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_applied_and_undone() -> None:
    before = gc.get_threshold()
    release = tune_for_throughput()
    try:
        assert gc.get_threshold() == THROUGHPUT_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        release()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    release()  # a second call changes nothing
    assert gc.get_threshold() == before


def test_nested_calls_keep_the_first_settings_until_the_last_release() -> None:
    before = gc.get_threshold()
    outer = tune_for_throughput((900, 11, 500))
    inner = tune_for_throughput((5, 5, 5))
    assert gc.get_threshold() == (900, 11, 500)
    outer()
    outer()  # released twice: still counted once
    assert gc.get_threshold() == (900, 11, 500)
    inner()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_disabled_changes_nothing() -> None:
    before = gc.get_threshold()
    release = tune_for_throughput(enabled=False)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    release()
    assert gc.get_threshold() == before


@pytest.mark.parametrize("thresholds", [(0, 10, 10), (700, -1, 10), (700, 10)])
def test_bad_thresholds_are_refused(thresholds: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="three positive integers"):
        tune_for_throughput(thresholds)


def test_cycles_made_after_tuning_are_still_collected_without_an_explicit_collect() -> None:
    release = tune_for_throughput()
    try:
        first = _Node()
        first.other = first
        alive = weakref.ref(first)
        del first
        # Enough new container objects for several young collections at the tuned threshold.
        for _ in range(4 * THROUGHPUT_THRESHOLDS[0]):
            node = _Node()
            node.other = node
        del node
        assert alive() is None
    finally:
        release()


def test_objects_alive_while_frozen_are_collectable_again_after_release() -> None:
    # What lived at start-up (frozen) and became a cycle of garbage before the agent
    # stopped is collected once the settings are released (unfreeze).
    node = _Node()
    node.other = node
    alive = weakref.ref(node)
    release = tune_for_throughput()
    del node
    gc.collect()
    assert alive() is not None  # frozen: collections do not look at it
    release()
    gc.collect()
    assert alive() is None


def test_config_switch_defaults_off() -> None:
    assert UserAgentConfig(aor="sip:bob@127.0.0.1:0").gc_tuning is False


async def test_user_agent_tunes_while_running_and_restores_on_close() -> None:
    before = gc.get_threshold()
    received: list[str] = []
    async with (
        UserAgent(ua_config("bob", gc_tuning=True)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):
        assert gc.get_threshold() == THROUGHPUT_THRESHOLDS
        assert gc.get_freeze_count() > 0

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            received.append(message.text)

        handle = await alice.send_message(bob.aor, "hello", notify={"positive-delivery"})
        response = await asyncio.wait_for(handle.final_response(), 5)
        assert response.status_code == 200
        assert await handle.await_disposition("delivered", timeout=5) is not None
        assert received == ["hello"]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
