"""Intermediary roles of RFC 5438 §8: store-and-forward, URI-list exploder, a minimal registrar.

Sans-IO building blocks (no asyncio; they take ``now`` and offer
``get_timer``/``handle_timer``): :class:`StoreAndForward`,
:class:`ListExploder`, :class:`Registrar`, the CPIM rewriting helpers of
:mod:`.rewrite`, and the parked-message records and in-memory store.
:class:`Intermediary` runs them all on a :class:`~sipimdn.stack.SipStack`;
it and :class:`SqliteParkedStore` are imported on first use of their names
(PEP 562), so importing the building blocks loads no asyncio, sqlite3 or socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy
from .exploder import (
    ExploderConfig,
    ExploderEvent,
    Fanout,
    ListExploder,
    MemberCopyDue,
    NotificationsReady,
    ReplyPath,
    UriList,
)
from .forward import (
    RETRYABLE_STATUSES,
    ForwardConfig,
    ForwardDue,
    ForwardEvent,
    MessageDeferred,
    MessageFailed,
    MessageForwarded,
    NotificationDue,
    StoreAndForward,
)
from .registrar import Binding, RegisterResult, Registrar
from .rewrite import add_original_to, add_record_route, pop_imdn_route, replace_to
from .store import (
    DropParked,
    ImdnOrigin,
    MemoryParkedStore,
    ParkedMessage,
    ParkedOp,
    ParkedStore,
    PutParked,
)

if TYPE_CHECKING:
    from ._receive import RequestRouted
    from .config import IntermediaryConfig
    from .service import Intermediary
    from .sqlite import SqliteParkedStore

_LAZY = {
    "Intermediary": ".service",
    "IntermediaryConfig": ".config",
    "RequestRouted": "._receive",
    "SqliteParkedStore": ".sqlite",
}

if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = [
    "RETRYABLE_STATUSES",
    "Binding",
    "DropParked",
    "ExploderConfig",
    "ExploderEvent",
    "Fanout",
    "ForwardConfig",
    "ForwardDue",
    "ForwardEvent",
    "ImdnOrigin",
    "Intermediary",
    "IntermediaryConfig",
    "ListExploder",
    "MemberCopyDue",
    "MemoryParkedStore",
    "MessageDeferred",
    "MessageFailed",
    "MessageForwarded",
    "NotificationDue",
    "NotificationsReady",
    "ParkedMessage",
    "ParkedOp",
    "ParkedStore",
    "PutParked",
    "RegisterResult",
    "Registrar",
    "ReplyPath",
    "RequestRouted",
    "SqliteParkedStore",
    "StoreAndForward",
    "UriList",
    "add_original_to",
    "add_record_route",
    "pop_imdn_route",
    "replace_to",
]
