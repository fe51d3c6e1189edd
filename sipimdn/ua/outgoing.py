"""The handle returned by ``send_message``: Message-ID, final response, disposition state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..imdn.vocabulary import DispositionState, reached

if TYPE_CHECKING:
    from ..message import Response

__all__ = ["SentMessage", "reached"]

def _final(state: DispositionState) -> bool:
    return state not in (DispositionState.PENDING, DispositionState.ACCEPTED, DispositionState.DELIVERED)


@dataclass(eq=False)
class SentMessage:
    """What ``await ua.send_message(...)`` returns.

    ``state`` follows the recipient through ``pending -> accepted ->
    delivered -> displayed`` (or ``failed``/``forbidden``/``error``/
    ``expired``, or ``unsupported``: accepted, but sent without CPIM to a
    peer that does not take it, so no requested notification can come) and
    never moves back.
    """

    #: The CPIM imdn.Message-ID (also used as our key for text/plain messages).
    message_id: str
    #: The recipient URI.
    to: str
    #: The notifications requested (empty after a fallback to text/plain).
    notify: frozenset[str]
    #: Current disposition state of the recipient.
    state: DispositionState = DispositionState.PENDING
    _response: asyncio.Future[Response] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)
    _ended: bool = False

    def __post_init__(self) -> None:
        # Nobody may ever await the response: don't let a failure be "never retrieved".
        self._response.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def final_response(self) -> Response:
        """The final SIP response (after a CPIM -> text/plain fallback, the retry's).

        Raises :class:`~sipimdn.errors.TransactionTimeout` (Timer F) or
        :class:`~sipimdn.errors.TransportError` when no response came.
        """
        return await asyncio.shield(self._response)

    @property
    def response_done(self) -> bool:
        """True once the final response (or its failure) is known."""
        return self._response.done()

    @property
    def tracking_ended(self) -> bool:
        """True once tracking ended (the tracking deadline passed, or every notification
        requested came): ``state`` is final, whether or not it is terminal (``delivered``
        stays ``delivered`` when a display notification was requested but never came)."""
        return self._ended

    def reached(self, target: str | DispositionState) -> bool:
        """Whether the recipient is at ``target`` or beyond it (``displayed`` implies ``delivered``)."""
        return reached(self.state, DispositionState(target))

    async def await_disposition(
        self, target: str | DispositionState, timeout: float | None = None
    ) -> DispositionState:
        """Wait until the state reaches ``target`` or can no longer reach it; return the state.

        It can no longer when the state is terminal (``failed``, ``expired``...) or when
        tracking ended (:attr:`tracking_ended`): then the state returned is the one tracking
        ended in, which may fall short of ``target`` (``delivered`` when ``displayed`` was
        awaited and no display notification came before the tracking deadline). Check with
        :meth:`reached`. Raises :class:`TimeoutError` after ``timeout`` seconds.
        """
        wanted = DispositionState(target)

        def settled() -> bool:
            return reached(self.state, wanted) or _final(self.state) or self._ended

        async def wait() -> DispositionState:
            loop = asyncio.get_running_loop()
            while not settled():
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
            return self.state

        return await asyncio.wait_for(wait(), timeout)

    # -- driven by the user agent ----------------------------------------------------------

    def _set_state(self, state: DispositionState) -> None:
        self.state = state
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _set_ended(self) -> None:
        self._ended = True
        self._set_state(self.state)  # wakes the waiters: nothing will change any more

    def _set_notify(self, notify: frozenset[str]) -> None:
        self.notify = notify

    def _set_response(self, response: Response) -> None:
        if not self._response.done():
            self._response.set_result(response)

    def _set_failure(self, error: BaseException) -> None:
        if not self._response.done():
            self._response.set_exception(error)
