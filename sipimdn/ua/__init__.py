"""The user agent: what applications embed (``async with UserAgent(config) as ua``)."""

from __future__ import annotations

from ._agent import Registration, UserAgent
from ._deadline import Decision
from .incoming import IncomingMessage
from .outgoing import SentMessage

__all__ = ["Decision", "IncomingMessage", "Registration", "SentMessage", "UserAgent"]
