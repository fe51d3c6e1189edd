"""The RFC 3428 §8 per-destination queue, now shared with the intermediary: see :mod:`sipimdn._pacing`."""

from __future__ import annotations

from .._pacing import DestinationKey, DestinationQueue

__all__ = ["DestinationKey", "DestinationQueue"]
