"""The wall-clock :class:`~sipimdn._coretimer.CoreTimer` under the name the user agent imports."""

from __future__ import annotations

from ._coretimer import CoreTimer as WallClockTimer

__all__ = ["WallClockTimer"]
