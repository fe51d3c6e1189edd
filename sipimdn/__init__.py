"""sipimdn: an asyncio SIP stack for page-mode instant messaging with IMDN.

The public API is re-exported here; submodules prefixed with ``_`` are private.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "CpimError",
    "ImdnError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SipError",
    "SipParseError",
    "StoreError",
    "TransactionTimeout",
    "TransportError",
    "__version__",
]
