"""The store writer's worker thread: one thread, calls in the order handed over, futures settled."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future

import pytest

from sipimdn.ua._persist import _Worker


def test_posted_and_submitted_calls_run_in_order_on_one_thread() -> None:
    worker = _Worker("test-store")
    seen: list[tuple[int, str]] = []
    futures: list[Future[int]] = []
    for n in range(50):
        if n % 3:
            worker.post(lambda n=n: seen.append((n, threading.current_thread().name)))
        else:
            futures.append(worker.submit(lambda n=n: seen.append((n, threading.current_thread().name)) or n))
    worker.shutdown(wait=True)
    assert [n for n, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-store"}
    assert [f.result(timeout=0) for f in futures] == list(range(0, 50, 3))


def test_submit_passes_keywords_and_carries_the_exception() -> None:
    worker = _Worker("test-store")
    assert worker.submit(lambda a, *, b: a - b, 5, b=2).result(timeout=10) == 3
    failed = worker.submit(lambda: 1 // 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=10)
    worker.shutdown()


def test_a_failing_post_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    worker = _Worker("test-store")
    with caplog.at_level(logging.ERROR, logger="sipimdn.ua.store"):
        worker.post(lambda: 1 // 0)
        assert worker.submit(lambda: "after").result(timeout=10) == "after"
    worker.shutdown()
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_shutdown_refuses_new_work_and_may_cancel_what_has_not_started() -> None:
    worker = _Worker("test-store")
    gate, running = threading.Event(), threading.Event()
    started = worker.submit(lambda: running.set() or gate.wait(10))
    waiting = worker.submit(lambda: "never")
    assert running.wait(10)
    worker.shutdown(wait=False, cancel_futures=True)
    gate.set()
    worker.shutdown(wait=True)
    assert started.result(timeout=0) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        worker.post(print)


async def test_run_in_executor_uses_it() -> None:
    worker = _Worker("test-store")
    name = await asyncio.get_running_loop().run_in_executor(worker, lambda: threading.current_thread().name)
    assert name == "test-store"
    worker.shutdown()
