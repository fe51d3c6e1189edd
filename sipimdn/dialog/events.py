"""Events the transaction layer reports to its user (frozen, slotted, past-tense)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from ..message import Request, Response
from ..transport.flow import Flow

__all__ = [
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "TransactionKey",
    "TransactionTimedOut",
    "TransportFailed",
]


class TransactionKey(NamedTuple):
    """Identifies one transaction (RFC 3261 §17.1.3 for clients, §17.2.3 for servers).

    Treat it as opaque: hash it, compare it, pass it back to the layer. (A NamedTuple rather than a
    frozen dataclass: the layer hashes each key several times per message, and a tuple hashes in C.)
    """

    #: True for our client transactions, False for server transactions.
    client: bool
    #: The top Via branch (or, for an RFC 2543 request without the magic cookie, the fields that
    #: identify it joined together).
    branch: str
    #: The request method (CSeq method for responses).
    method: str
    #: Server transactions: the top Via sent-by "host:port" (§17.2.3); empty for clients.
    sent_by: str = ""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request arrived; a server transaction now waits for ``respond(key, ...)``.

    Retransmissions of the same request never produce this event again.
    """

    #: Pass it to ``TransactionLayer.respond``.
    key: TransactionKey
    #: The request, its top Via already carrying received/rport (RFC 3581).
    request: Request
    #: Where it came from.
    flow: Flow


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to one of our requests arrived (each provisional, and exactly one final)."""

    #: The key ``send_request`` returned.
    key: TransactionKey
    #: The response.
    response: Response
    #: Where it came from.
    flow: Flow

    @property
    def final(self) -> bool:
        """True for 200-699."""
        return self.response.status_code >= 200


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer F fired before a final response: treat as 408 (RFC 3261 §8.1.3.1)."""

    #: The key ``send_request`` returned.
    key: TransactionKey


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport could not carry a transaction's message: treat as 503 (§8.1.3.1).

    For a client transaction this ends it; for a server transaction the response was lost.
    """

    #: The client or server transaction hit.
    key: TransactionKey
    #: What the transport said.
    reason: str


Event: TypeAlias = RequestReceived | ResponseReceived | TransactionTimedOut | TransportFailed
