"""Property tests of the user agent's building blocks."""

from __future__ import annotations

import asyncio
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn._pacing import DestinationQueue
from sipimdn.config import ListenEndpoint

endpoints = st.builds(
    ListenEndpoint,
    transport=st.sampled_from(["udp", "tcp", "tls"]),
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a))),
    ),
    port=st.integers(0, 65535),
)


@settings(max_examples=300, deadline=None)
@given(endpoints)
def test_listen_endpoint_str_parses_back(endpoint: ListenEndpoint) -> None:
    assert ListenEndpoint.parse(str(endpoint)) == endpoint


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), min_size=1, max_size=25))
def test_destination_queue_one_holder_per_key_in_fifo_order(jobs: list[tuple[str, int]]) -> None:
    async def run() -> None:
        queue = DestinationQueue()
        holders: dict[str, int] = {}
        started: dict[str, list[int]] = {}

        async def job(index: int, key: str, yields: int) -> None:
            async with queue.turn(key):
                holders[key] = holders.get(key, 0) + 1
                assert holders[key] == 1
                started.setdefault(key, []).append(index)
                for _ in range(yields):
                    await asyncio.sleep(0)
                holders[key] -= 1

        tasks = [asyncio.ensure_future(job(i, key, y)) for i, (key, y) in enumerate(jobs)]
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        for order in started.values():
            assert order == sorted(order)
        assert len(queue) == 0

    asyncio.run(run())
