"""The user agent: what applications embed (``async with UserAgent(config) as ua``)."""

from __future__ import annotations

__all__: list[str] = []
