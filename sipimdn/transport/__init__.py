"""sipimdn.transport: asyncio adapters that move SIP bytes over UDP, TCP and TLS.

``Flow`` and ``Transport`` (``flow``) are plain data shared with the sans-IO layers; ``select`` picks
the next hop; ``manager`` owns the sockets and the connection table.
"""

from __future__ import annotations

from .base import ConnectionCounters, ListenSpec, TransportConfig, TransportUser
from .flow import Address, Flow, Transport
from .manager import TransportManager
from .select import Target, resolve, target_for_uri

__all__ = [
    "Address",
    "ConnectionCounters",
    "Flow",
    "ListenSpec",
    "Target",
    "Transport",
    "TransportConfig",
    "TransportManager",
    "TransportUser",
    "resolve",
    "target_for_uri",
]
