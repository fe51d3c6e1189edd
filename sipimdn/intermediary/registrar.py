"""A minimal sans-IO registrar (RFC 3261 §10.3) so recipients can come online by registering.

It keeps, per address of record (the REGISTER's To URI, compared with
:func:`~sipimdn.uri.identity_key`), the contacts and their expiry.
No authentication: this role exists so a store-and-forward intermediary
learns that a recipient became reachable (it answers ``Contact`` with the
granted ``expires`` per binding, like any registrar). ``Contact: *`` with
``Expires: 0`` removes every binding (§10.2.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import RemoteProtocolError, SipParseError
from ..message import Request
from ..uri import identity_key

__all__ = ["Binding", "RegisterResult", "Registrar"]


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact bound to an address of record."""

    aor: str
    """The address of record as registered (To URI)."""
    contact: str
    """Where requests for it go now."""
    expires_at: float
    """When the binding lapses."""
    registered_at: float
    """When it was last refreshed (newest first when looking up)."""


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What to answer and what changed."""

    headers: tuple[tuple[str, str], ...]
    """Headers of the 200 (one Contact per current binding)."""
    added: tuple[Binding, ...]
    """Bindings created or refreshed by this REGISTER."""


class Registrar:
    """Location service: ``register(request, now)`` and ``lookup(uri, now)``."""

    def __init__(
        self, *, default_expires: int = 3600, max_expires: int = 86400, min_expires: int = 1
    ) -> None:
        if not 1 <= min_expires <= default_expires <= max_expires:
            raise ValueError("need 1 <= min_expires <= default_expires <= max_expires")
        self.default_expires = default_expires
        self.max_expires = max_expires
        self.min_expires = min_expires
        self._bindings: dict[str, dict[str, Binding]] = {}

    def register(self, request: Request, now: float) -> RegisterResult:
        """Apply a REGISTER. Raises :class:`~sipimdn.errors.RemoteProtocolError` (400, 423) when malformed."""
        if request.method != "REGISTER":
            raise RemoteProtocolError(f"{request.method} is not REGISTER")
        aor = str(request.to.uri)
        key = identity_key(aor)
        if key is None:
            raise RemoteProtocolError(f"cannot register {aor}", 404)
        try:
            header_expires = request.expires
        except SipParseError as exc:
            raise RemoteProtocolError(exc.reason, 400) from None
        table = self._bindings.setdefault(key, {})
        added: list[Binding] = []
        if request.contact_is_wildcard:
            if header_expires != 0:
                raise RemoteProtocolError("Contact: * needs Expires: 0 (RFC 3261 §10.3 step 6)")
            table.clear()
        for contact in request.contact:
            raw = contact.params.get("expires")
            if raw is not None and not (raw.isascii() and raw.isdigit()):
                raise RemoteProtocolError(f"bad Contact expires {raw[:20]!r}")
            expires = int(raw) if raw is not None else header_expires
            expires = self.default_expires if expires is None else expires
            uri = str(contact.uri)
            if expires == 0:
                table.pop(uri, None)
                continue
            if expires < self.min_expires:
                raise RemoteProtocolError("Interval Too Brief", 423)
            expires = min(expires, self.max_expires)
            binding = Binding(aor, uri, now + expires, now)
            table[uri] = binding
            added.append(binding)
        current = self._live(key, now)
        headers = tuple(
            ("Contact", f"<{b.contact}>;expires={max(1, int(b.expires_at - now))}") for b in current
        )
        return RegisterResult(headers=headers, added=tuple(added))

    def lookup(self, uri: str, now: float) -> list[str]:
        """Contacts bound to ``uri``, most recently registered first."""
        key = identity_key(uri)
        return [] if key is None else [b.contact for b in self._live(key, now)]

    def bindings(self, now: float) -> Sequence[Binding]:
        """Every live binding."""
        return [b for key in list(self._bindings) for b in self._live(key, now)]

    def _live(self, key: str, now: float) -> list[Binding]:
        table = self._bindings.get(key, {})
        for uri, binding in list(table.items()):
            if binding.expires_at <= now:
                del table[uri]
        if not table:
            self._bindings.pop(key, None)
        return sorted(table.values(), key=lambda b: b.registered_at, reverse=True)
