"""sipimdn.dialog: the transaction user layer, sans-IO.

Non-INVITE transactions (``transaction``), the layer that matches and routes them (``layer``), its
events (``events``) and builders of identifiers and out-of-dialog requests (``factory``).
"""

from __future__ import annotations

from .events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionKey,
    TransactionTimedOut,
    TransportFailed,
)
from .factory import build_request, new_branch, new_call_id, new_tag, stamp_via
from .layer import Outgoing, TransactionLayer
from .transaction import ClientTransaction, ServerTransaction, TimerConfig, TxInput, TxState

__all__ = [
    "ClientTransaction",
    "Event",
    "Outgoing",
    "RequestReceived",
    "ResponseReceived",
    "ServerTransaction",
    "TimerConfig",
    "TransactionKey",
    "TransactionLayer",
    "TransactionTimedOut",
    "TransportFailed",
    "TxInput",
    "TxState",
    "build_request",
    "new_branch",
    "new_call_id",
    "new_tag",
    "stamp_via",
]
