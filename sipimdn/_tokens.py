"""Random hex tokens for protocol identifiers, drawn from a pool of operating-system randomness.

``secrets.token_hex`` asks the kernel for each token (one ``getrandom`` system call), which on
the receive and notification paths costs as much as a good part of a transaction. Here the
kernel's randomness (``os.urandom``, what ``secrets`` uses) is fetched in blocks of 4 KiB and
handed out in slices: every token still consists of bytes from the operating system's CSPRNG,
each byte given out once, so a token carries exactly the entropy ``secrets.token_hex`` of the
same size would (RFC 3261 §19.3 wants tags cryptographically random; §8.1.1.7 branches unique).

Slices are taken under a lock (threads may ask at once), and a forked child starts from a fresh
block (``os.register_at_fork``), so no two processes or threads ever get the same bytes. No I/O
beyond ``os.urandom``. Sans-IO cores may use it; other identifier factories can adopt it.
"""

from __future__ import annotations

import os
import secrets
import threading

__all__ = ["token_hex"]

#: Random bytes fetched from the kernel at a time.
_BLOCK = 4096
#: Larger requests go straight to ``secrets`` (they are rare and would waste the block).
_MAX_POOLED = 64


class _Pool:
    __slots__ = ("_hex", "_lock", "_pos")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._pos = 0

    def token_hex(self, nbytes: int) -> str:
        if not 0 < nbytes <= _MAX_POOLED:
            return secrets.token_hex(nbytes)
        want = 2 * nbytes
        with self._lock:
            pos = self._pos
            end = pos + want
            if end > len(self._hex):
                self._hex = os.urandom(_BLOCK).hex()
                pos, end = 0, want
            self._pos = end
            return self._hex[pos:end]

    def forget(self) -> None:
        """Drop the block (in a forked child: the parent hands out the same bytes)."""
        self._lock = threading.Lock()
        self._hex = ""
        self._pos = 0


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.forget)


#: ``token_hex(nbytes)``: ``nbytes`` random bytes from the operating system's CSPRNG, as
#: ``2 * nbytes`` hex digits (what ``secrets.token_hex(nbytes)`` gives, without a system call per
#: token).
token_hex = _POOL.token_hex
