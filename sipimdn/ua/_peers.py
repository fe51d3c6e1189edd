"""Per-peer capability memory (peers.md pain points 2 and 3).

Plain servers (Asterisk, VoIP.ms) answer 415 to ``message/cpim``; some peers
answer 415 to every IMDN and a naive stack then retries notifications
forever. What we learn from such answers is remembered per peer so the next
message goes out in a form the peer takes, and notifications stop instead
of looping. Sans-IO: plain dictionaries, keyed by :func:`peer_key`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PeerCapabilities", "PeerRecord", "peer_key"]


def peer_key(scheme: str, user: str | None, host: str) -> str:
    """The identity a capability is remembered under: ``scheme:user@host``.

    Ports and parameters are left out on purpose: a peer keeps its software
    whichever port or transport we reach it on, and liblinphone drops ports
    from identities anyway (interop-linphone.md §1).
    """
    who = f"{user}@" if user else ""
    return f"{scheme.lower()}:{who}{host.lower()}"


@dataclass(slots=True)
class PeerRecord:
    """What we know about one peer."""

    #: The peer answered 415 to ``message/cpim``: send it ``text/plain``.
    rejects_cpim: bool = False
    #: The peer answered 415 to an IMDN: send it no more notifications.
    rejects_imdn: bool = False


class PeerCapabilities:
    """Remembers which peers reject CPIM and which reject IMDNs."""

    def __init__(self, *, cpim_fallback: bool = True) -> None:
        self._cpim_fallback = cpim_fallback
        self._peers: dict[str, PeerRecord] = {}

    def _record(self, peer: str) -> PeerRecord:
        record = self._peers.get(peer)
        if record is None:
            record = self._peers[peer] = PeerRecord()
        return record

    def use_cpim(self, peer: str) -> bool:
        """Whether a message to ``peer`` should be wrapped in ``message/cpim``."""
        record = self._peers.get(peer)
        return record is None or not record.rejects_cpim

    def may_fall_back(self, peer: str) -> bool:
        """Whether a 415 to CPIM from ``peer`` should be retried as ``text/plain``."""
        return self._cpim_fallback

    def note_cpim_rejected(self, peer: str) -> None:
        """``peer`` answered 415 to ``message/cpim``; remembered only if fallback is on."""
        if self._cpim_fallback:
            self._record(peer).rejects_cpim = True

    def imdn_allowed(self, peer: str) -> bool:
        """Whether we may still send notifications to ``peer``."""
        record = self._peers.get(peer)
        return record is None or not record.rejects_imdn

    def note_imdn_rejected(self, peer: str) -> None:
        """``peer`` answered 415 to an IMDN: stop sending it notifications."""
        self._record(peer).rejects_imdn = True

    def known(self) -> dict[str, PeerRecord]:
        """A copy of every peer with something remembered (for persistence and logs)."""
        return {peer: PeerRecord(r.rejects_cpim, r.rejects_imdn) for peer, r in self._peers.items()}
