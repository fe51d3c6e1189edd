"""sipimdn: an asyncio SIP stack for page-mode instant messaging with IMDN.

The public API is re-exported here; submodules prefixed with ``_`` are private.
"""

from __future__ import annotations

import logging

from .config import DisplayPrivacy, ListenEndpoint, UserAgentConfig
from .errors import (
    AuthenticationFailed,
    CpimError,
    ImdnError,
    LocalProtocolError,
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
from .ua import IncomingMessage, SentMessage, UserAgent
from .uri import Uri, parse_uri

# A library logs; the application decides where to (logging HOWTO, "Configuring Logging for a Library").
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

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
