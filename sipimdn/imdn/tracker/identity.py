"""Identity of the URIs a notification names: one key per address of record.

The tracker matches a notification's senders and recipient URIs against the
recipients of the message it is about; peers write the same identity in
several ways (``im:`` in CPIM, ``sip:`` in SIP, escaped or not, with or
without a port), so every URI is compared through :func:`identity_key`.
"""

from __future__ import annotations

from ...uri import identity_key

__all__ = ["identity_key", "is_anonymous"]


def is_anonymous(uri: str | None) -> bool:
    """True for RFC 3323 style anonymous identities (``anonymous@anonymous.invalid``) and non-URIs."""
    key = identity_key(uri)
    if key is None:
        return True
    user, _, host = key.partition(":")[2].rpartition("@")
    return user.lower() == "anonymous" or host.endswith(".invalid") or host == "invalid"
