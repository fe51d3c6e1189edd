"""Pooled random tokens (sipimdn._entropy): the shape of secrets.token_hex, never a slot twice."""

from __future__ import annotations

import os
import threading

import pytest

from sipimdn import _entropy
from sipimdn._entropy import token_hex


@pytest.mark.parametrize("nbytes", [1, 6, 8, 12, 16, 17, 32])
def test_shape_is_that_of_secrets_token_hex(nbytes: int) -> None:
    token = token_hex(nbytes)
    assert len(token) == 2 * nbytes
    assert int(token, 16) >= 0


def test_tokens_across_refills_are_all_distinct() -> None:
    # Several pools' worth: 128-bit tokens repeat only if bytes were handed out twice.
    tokens = [token_hex(16) for _ in range(5 * _entropy._POOL_BYTES // _entropy._SLOT)]
    assert len(set(tokens)) == len(tokens)


def test_threads_never_share_a_slot() -> None:
    per_thread: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        for _ in range(2000):
            into.append(token_hex(16))

    threads = [threading.Thread(target=draw, args=(into,)) for into in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    tokens = [t for into in per_thread for t in into]
    assert len(tokens) == 8000 and len(set(tokens)) == len(tokens)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_the_parents_pool() -> None:
    token_hex(16)  # the parent's pool is filled and partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next token and leave at once
        os.write(write, token_hex(16).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != token_hex(16)
