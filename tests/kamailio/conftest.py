"""Kamailio fixtures for tests placed in tests/kamailio/ (others import them from the harness)."""

from __future__ import annotations

from kamailio.harness import kamailio, kamailio_factory

__all__ = ["kamailio", "kamailio_factory"]
