"""Unguessable hex tokens from the operating system's CSPRNG, drawn a few kilobytes at a time.

``secrets.token_hex`` asks the kernel for every token (one ``getrandom`` system call each);
the stack makes a few per message (Message-IDs of notifications, branches, tags, Call-IDs).
:func:`token_hex` takes the same bytes (``os.urandom``, what ``secrets`` uses) from a pool
filled 4 KiB at a time: one system call per 256 tokens. Each token's bytes are handed out
once: a slot of the pool is claimed with ``next()`` on an :func:`itertools.count` (atomic
under the GIL), so threads never share one, and a forked child starts with a fresh pool
(``os.register_at_fork``), never the parent's remaining bytes.
"""

from __future__ import annotations

import itertools
import os
import secrets

__all__ = ["token_hex"]

#: Bytes per slot: the largest token served from the pool (``secrets.token_hex`` beyond it).
_SLOT = 16
#: Bytes per refill (one ``os.urandom`` call).
_POOL_BYTES = 4096

# (bytes, slot counter): replaced whole when used up, so a slot claimed from one pool is never
# claimed again, whichever thread refills.
_pool: tuple[bytes, itertools.count[int]] = (b"", itertools.count())


def token_hex(nbytes: int = 16) -> str:
    """``nbytes`` random bytes as hex, like :func:`secrets.token_hex` (``nbytes`` at most 16
    comes from the pool)."""
    if not 0 < nbytes <= _SLOT:
        return secrets.token_hex(nbytes)
    while True:
        data, slots = _pool
        start = next(slots) * _SLOT
        if start < len(data):
            return data[start : start + nbytes].hex()
        _refill(data)


def _refill(used_up: bytes) -> None:
    global _pool  # noqa: PLW0603 - the one pool of the process
    if _pool[0] is used_up:  # (another thread may have refilled meanwhile)
        _pool = (os.urandom(_POOL_BYTES), itertools.count())


def _forget_in_child() -> None:
    global _pool  # noqa: PLW0603 - the one pool of the process
    _pool = (b"", itertools.count())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
