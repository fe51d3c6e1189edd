"""Intermediary roles of RFC 5438 §8: store-and-forward, URI-list exploder, a minimal registrar.

Sans-IO building blocks (no asyncio; they take ``now`` and offer
``get_timer``/``handle_timer``): :class:`StoreAndForward`,
:class:`ListExploder`, :class:`Registrar`, the CPIM rewriting helpers of
:mod:`.rewrite`, and the parked-message stores. :class:`Intermediary` runs
them all on a :class:`~sipimdn.stack.SipStack`.
"""

from __future__ import annotations

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
from .service import Intermediary, IntermediaryConfig, RequestRouted
from .store import (
    DropParked,
    ImdnOrigin,
    MemoryParkedStore,
    ParkedMessage,
    ParkedOp,
    ParkedStore,
    PutParked,
    SqliteParkedStore,
)

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
