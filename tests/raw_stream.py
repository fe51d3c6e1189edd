"""A raw TCP client for attacks on a stream listener, that still reads the answer sent before a reset.

asyncio's streams lose it: once a write fails with ECONNRESET (the stack closed with our unread
bytes in its buffer, so its kernel sent a reset), the transport is torn down and a
``StreamReader`` raises the error before returning the data it holds. The kernel keeps what
arrived before the reset readable, so this client uses the socket directly: it writes until the
peer hangs up, then reads every byte that arrived until EOF or the reset.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

__all__ = ["RawStream"]


class RawStream:
    """A non-blocking TCP socket connected to ``(host, port)``."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setblocking(False)
        self.hung_up = False

    async def send(self, chunks: Iterable[bytes], pause: float = 0.0) -> int:
        """Write each chunk (yielding to the loop, and pausing ``pause`` s, between them) until
        the peer hangs up; returns the bytes written."""
        loop = asyncio.get_running_loop()
        sent = 0
        for chunk in chunks:
            try:
                await loop.sock_sendall(self.sock, chunk)
            except (ConnectionError, BrokenPipeError):
                self.hung_up = True
                break
            sent += len(chunk)
            await asyncio.sleep(pause)
        return sent

    async def read_until_closed(self, timeout: float = 3.0) -> bytes:
        """Every byte the peer sent before it closed (EOF or reset); TimeoutError if it never does."""
        loop = asyncio.get_running_loop()
        data = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await loop.sock_recv(self.sock, 65536)
                except ConnectionError:
                    return data
                if not chunk:
                    return data
                data += chunk

    def close(self) -> None:
        self.sock.close()
