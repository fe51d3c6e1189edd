"""sipimdn.dialog: the non-INVITE transaction layer and the request factory, sans-IO.

What it holds: the client and server non-INVITE transactions of RFC 3261 §17.1.2 and §17.2.2
(``transaction``); the layer that matches messages to them, stamps and routes by Via and answers
unreadable requests statelessly (``layer``); the events it reports (``events``); and the
builders of tags, branches, Call-IDs and out-of-dialog requests (``factory``). There is no
dialog state: MESSAGE (RFC 3428) and REGISTER are sent outside any dialog. Every input takes
``now``; outputs are drained (``next_event()``, ``messages_to_send()``) and the earliest deadline
is ``get_timer()``. Nothing here imports asyncio, sqlite3 or socket:
:class:`~sipimdn.stack.SipStack` drives it from the event loop.
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
