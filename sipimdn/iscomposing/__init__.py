"""Message composition indications (RFC 3994): the application/im-iscomposing+xml codec and the
sans-IO composer and receiver state machines; no I/O.

A MESSAGE carrying an indication is answered 200 and is never delivered as a message nor owes an
IMDN. The body may be bare or the inner entity of message/cpim (:func:`composing_from_cpim`).
"""

from __future__ import annotations

from ..errors import IsComposingError
from .codec import (
    CONTENT_TYPE,
    MAX_DOCUMENT_SIZE,
    XML_NS,
    ComposingState,
    IsComposing,
    build_iscomposing,
    composing_from_content,
    composing_from_cpim,
    is_composing_type,
    parse_iscomposing,
)
from .state import (
    DEFAULT_GRACE,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_REFRESH,
    MIN_REFRESH,
    ChangeCause,
    ComposingReceiver,
    ComposingSender,
    ComposingStateChanged,
)

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_GRACE",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_REFRESH",
    "MAX_DOCUMENT_SIZE",
    "MIN_REFRESH",
    "XML_NS",
    "ChangeCause",
    "ComposingReceiver",
    "ComposingSender",
    "ComposingState",
    "ComposingStateChanged",
    "IsComposing",
    "IsComposingError",
    "build_iscomposing",
    "composing_from_content",
    "composing_from_cpim",
    "is_composing_type",
    "parse_iscomposing",
]
