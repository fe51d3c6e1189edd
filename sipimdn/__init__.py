"""sipimdn: an asyncio SIP stack for page-mode instant messaging with IMDN.

The public API is re-exported here; submodules prefixed with ``_`` are private.

Importing ``sipimdn`` loads only the sans-IO SIP core (URIs, headers, messages, the parser, the
errors): ``from sipimdn import parse_message`` imports no asyncio, sqlite3 or socket. The user
agent and its configuration are imported on first use of their names (PEP 562).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import _lazy
from .errors import (
    AuthenticationFailed,
    CpimError,
    ImdnError,
    LocalProtocolError,
    MessageNotTracked,
    ProtocolError,
    RemoteProtocolError,
    SipError,
    SipParseError,
    StoreError,
    TransactionTimeout,
    TransportError,
)
from .headers import ContentType, CSeq, NameAddr, Via
from .message import Headers, Request, Response, make_response
from .parser import KeepAliveReceived, Limits, StreamFramer, parse_message, salvage_reply_headers
from .uri import Uri, parse_uri

if TYPE_CHECKING:
    from .config import DisplayPrivacy, ListenEndpoint, UserAgentConfig
    from .ua import IncomingMessage, SentMessage, UserAgent

# A library logs; the application decides where to (logging HOWTO, "Configuring Logging for a Library").
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

# The asyncio side (config imports ssl, hence socket), imported when first used.
_LAZY = {
    "DisplayPrivacy": ".config",
    "ListenEndpoint": ".config",
    "UserAgentConfig": ".config",
    "IncomingMessage": ".ua",
    "SentMessage": ".ua",
    "UserAgent": ".ua",
}

if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = [
    "AuthenticationFailed",
    "CSeq",
    "ContentType",
    "CpimError",
    "DisplayPrivacy",
    "Headers",
    "ImdnError",
    "IncomingMessage",
    "KeepAliveReceived",
    "Limits",
    "ListenEndpoint",
    "LocalProtocolError",
    "MessageNotTracked",
    "NameAddr",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "SentMessage",
    "SipError",
    "SipParseError",
    "StoreError",
    "StreamFramer",
    "TransactionTimeout",
    "TransportError",
    "Uri",
    "UserAgent",
    "UserAgentConfig",
    "Via",
    "__version__",
    "make_response",
    "parse_message",
    "parse_uri",
    "salvage_reply_headers",
]
