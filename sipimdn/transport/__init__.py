"""sipimdn.transport: asyncio adapters that move SIP bytes over UDP, TCP and TLS.

``Flow``, ``Target``, ``Transport`` and ``SendKind`` (``flow``) are plain data shared with the sans-IO
layers, and the only names imported with the package; ``select`` (next-hop choice and DNS),
``base`` (configuration) and ``manager`` (the sockets and the connection table) are imported on
first use of their names (PEP 562), so the sans-IO layers can use ``flow`` without loading
asyncio, ssl or socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .flow import Address, Flow, SendKind, Target, Transport

if TYPE_CHECKING:
    from .base import ConnectionCounters, ListenSpec, TransportConfig, TransportUser
    from .manager import TransportManager
    from .select import resolve, target_for_uri

_LAZY = {
    "ConnectionCounters": ".base",
    "ListenSpec": ".base",
    "TransportConfig": ".base",
    "TransportUser": ".base",
    "TransportManager": ".manager",
    "resolve": ".select",
    "target_for_uri": ".select",
}

if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = [
    "Address",
    "ConnectionCounters",
    "Flow",
    "ListenSpec",
    "SendKind",
    "Target",
    "Transport",
    "TransportConfig",
    "TransportManager",
    "TransportUser",
    "resolve",
    "target_for_uri",
]
