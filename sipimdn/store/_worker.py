"""The default name of a worker among the processes sharing a store."""

from __future__ import annotations

import os
import socket

__all__ = ["default_worker_id"]


def default_worker_id() -> str:
    """``host:pid``: unique among the workers sharing a database while they run."""
    return f"{socket.gethostname()}:{os.getpid()}"
