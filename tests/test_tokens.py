"""Pooled random tokens (sipimdn._tokens): well-formed, never handed out twice, fork- and thread-safe."""

from __future__ import annotations

import os
import re
import threading

import pytest

from sipimdn import _tokens
from sipimdn._tokens import token_hex
from sipimdn.dialog.factory import MAGIC_COOKIE, new_branch, new_call_id, new_tag


@pytest.mark.parametrize("nbytes", [1, 8, 12, 16, 64, 65, 200])
def test_tokens_are_hex_of_the_asked_size(nbytes: int) -> None:
    tokens = [token_hex(nbytes) for _ in range(50)]
    assert all(re.fullmatch(f"[0-9a-f]{{{2 * nbytes}}}", token) for token in tokens)


def test_refills_never_repeat_a_token() -> None:
    # Well over one 4 KiB block of 12-byte tokens: each comes from bytes handed out once.
    tokens = [token_hex(12) for _ in range(3000)]
    assert len(set(tokens)) == len(tokens)


def test_identifiers_use_the_pool() -> None:
    branch = new_branch()
    assert branch.startswith(MAGIC_COOKIE) and re.fullmatch("[0-9a-f]{24}", branch[len(MAGIC_COOKIE):])
    assert re.fullmatch("[0-9a-f]{16}", new_tag())
    assert re.fullmatch("[0-9a-f]{32}@h.example", new_call_id("h.example"))


def test_threads_get_distinct_tokens() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        for _ in range(2000):
            out.append(token_hex(8))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    tokens = [token for out in results for token in out]
    assert len(tokens) == 8000 and len(set(tokens)) == 8000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_does_not_repeat_the_parents_tokens() -> None:
    token_hex(8)  # the parent holds a partly used block
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, "".join(token_hex(8) for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(token_hex(8) for _ in range(20))
    assert len(child) == len(parent) == 320
    assert child != parent


def test_the_pool_is_dropped_in_a_child() -> None:
    pool = _tokens._Pool()
    first = pool.token_hex(8)
    pool.forget()
    assert pool.token_hex(8) != first
