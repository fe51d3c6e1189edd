"""Composition indications (RFC 3994) in the user agent: the receiver's events, the composers.

Receiving: an indication (bare, or the inner entity of message/cpim) is
answered 200 by the receive path, is never delivered as a message and never
owes an IMDN; it feeds one sans-IO :class:`~sipimdn.iscomposing.ComposingReceiver`
whose state changes reach the ``on_composing`` handlers. A content message
from a sender ends that sender's active state (RFC 3994 §3.3), and an active
state that is not refreshed in time ends with a ``timeout`` change.

Sending: :meth:`ComposingPath._composer` gives one :class:`Composer` per peer,
each driving a sans-IO :class:`~sipimdn.iscomposing.ComposingSender`. Their
deadlines and the receiver's share the user agent's one timer (see
``AgentCore._pump``); each indication is its own MESSAGE, queued with the
peer's other MESSAGEs (RFC 3428 §8).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable

from ..errors import LocalProtocolError, SipParseError, TransactionTimeout, TransportError
from ..imdn.tracker import PEER_NO_CPIM
from ..iscomposing import ComposingSender, ComposingState, IsComposing
from ..uri import Uri
from . import _wire
from ._send import SendPath, _AuthRefused

__all__ = ["Composer", "ComposingPath"]

_log = logging.getLogger("sipimdn.ua")


def _wall(now: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(now, tz=_dt.UTC)


class Composer:
    """Our composing state towards one peer (RFC 3994 §3.2), from ``UserAgent.composing(peer)``.

    Call :meth:`keystroke` whenever the user edits the draft: the first one
    sends ``active``, later ones only push the idle timeout back; while
    active, ``active`` is sent again every ``refresh`` seconds; after
    ``idle_timeout`` seconds without a keystroke ``idle`` is sent. Sending a
    message to the peer ends the active state with no ``idle`` indication
    (the message says it). :meth:`stop` sends ``idle`` at once.
    """

    def __init__(self, agent: ComposingPath, peer: str, core: ComposingSender, cpim: bool | None) -> None:
        self._agent = agent
        #: The peer's URI.
        self.peer = peer
        self._core = core
        self._cpim = cpim
        # Set when the peer refused an indication (415, 488, 501...): it does not take them,
        # so the composer keeps its state but sends nothing more.
        self._refused = False

    @property
    def state(self) -> ComposingState:
        """``active`` or ``idle``."""
        return self._core.state

    @property
    def refused(self) -> bool:
        """True once the peer refused an indication (a 4xx/5xx/6xx other than 401/407, 408 and
        503): nothing more is sent to it from this composer."""
        return self._refused

    def keystroke(self) -> None:
        """The user edited the draft."""
        self._agent._composer_input(self, self._core.keystroke)

    def stop(self) -> None:
        """The user abandoned the draft: ``idle`` now (nothing is sent when already idle)."""
        self._agent._composer_input(self, self._core.stop)


class ComposingPath(SendPath):
    """Receive and send composition indications."""

    # -- receiving ---------------------------------------------------------------------------

    def _composing_received(self, sender: str, indication: IsComposing) -> None:
        """An indication from ``sender`` was answered 200: update its state, tell the handlers."""
        self._composing_rx.receive(sender, indication, time.time())
        self._composing_events()
        self._pump()

    def _composing_message_from(self, sender: str) -> None:
        """A content message from ``sender`` arrived: it is no longer composing (RFC 3994 §3.3)."""
        self._composing_rx.message_received(sender, time.time())
        self._composing_events()

    def _composing_events(self) -> None:
        rx = self._composing_rx
        while (event := rx.next_event()) is not None:
            self._fire(self._composing_handlers, event)

    # -- sending -----------------------------------------------------------------------------

    def _composer(
        self,
        peer: str,
        *,
        content_type: str | None,
        refresh: int,
        idle_timeout: float,
        cpim: bool | None,
    ) -> Composer:
        self._require_stack()
        try:
            target = Uri.parse(peer)
        except SipParseError as exc:
            raise LocalProtocolError(f"cannot compose to {peer!r}: {exc.reason}") from None
        if target.scheme not in ("sip", "sips"):
            raise LocalProtocolError(f"cannot compose to a {target.scheme}: URI")
        composer = self._composers.get(peer)
        if composer is None:
            core = ComposingSender(
                refresh=refresh, idle_timeout=idle_timeout, content_type=content_type, wall_time=_wall
            )
            composer = Composer(self, peer, core, cpim)
            self._composers[peer] = composer
        return composer

    def _composer_input(self, composer: Composer, step: Callable[[float], None]) -> None:
        if self._closed:
            raise LocalProtocolError("user agent is closed")
        step(time.time())
        self._after_composer(composer)
        self._pump()

    def _after_composer(self, composer: Composer) -> None:
        """Send what the composer queued; keep it referenced while it has deadlines."""
        core = composer._core
        while (indication := core.next_indication()) is not None:
            if not composer._refused:
                self._spawn_wire(self._send_indication(composer, indication))
        if core.get_timer() is None:
            self._active_composers.pop(composer.peer, None)
        else:
            # Held while active, so the idle indication still goes out if the
            # application dropped its reference meanwhile.
            self._active_composers[composer.peer] = composer

    def _composing_message_sent(self, to: str) -> None:
        composer = self._composers.get(to)
        if composer is not None:
            composer._core.message_sent(time.time())
            self._after_composer(composer)

    def _composing_deadline(self) -> float | None:
        # Asked by every pump: the earliest deadline without building lists (usually no composer).
        at = self._composing_rx.get_timer()
        for composer in self._active_composers.values():
            deadline = composer._core.get_timer()
            if deadline is not None and (at is None or deadline < at):
                at = deadline
        return at

    def _composing_timer(self, now: float) -> None:
        self._composing_rx.handle_timer(now)
        self._composing_events()
        for composer in list(self._active_composers.values()):
            composer._core.handle_timer(now)
            self._after_composer(composer)

    async def _send_indication(self, composer: Composer, indication: IsComposing) -> None:
        peer = composer.peer
        use_cpim = composer._cpim
        if use_cpim is None:
            tracker = self._require_tracker()
            use_cpim = self.config.use_cpim and PEER_NO_CPIM not in tracker.peer_flags(peer)
        request = _wire.build_composing_request(self, peer, indication, use_cpim=use_cpim, now=time.time())
        try:
            response = await self._transact(Uri.parse(peer), request, peer)
        except (TransactionTimeout, TransportError) as exc:
            _log.info("%s indication to %s failed: %s", indication.state, peer, exc)
            return
        except _AuthRefused as refused:
            _log.info("%s indication to %s refused: %s", indication.state, peer, refused.error)
            return
        status = response.status_code
        if 200 <= status < 300:
            return
        if status not in (408, 503) and not composer._refused:
            # RFC 3994 §3.2 leaves it to the composer; a peer that refused one indication
            # (415 from a text-only client, say) would refuse every keystroke's.
            composer._refused = True
            _log.info("%s refused a composing indication (%d): sending it no more", peer, status)
        else:
            _log.info("%s indication to %s answered %d", indication.state, peer, status)


