"""Shared fixtures and helpers for the whole test suite."""

from __future__ import annotations

from _peers import IN_CI, require_binary
from _postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

__all__ = ["IN_CI", "require_binary"]
