"""The exception hierarchy shared by every layer of sipimdn.

Shape (after h11's ``_util.py``): every protocol error carries the SIP status a
UAS should answer with (``status_code``) and a human reason. Errors raised by
our own code about our own misuse are *local*; errors about what a peer sent
are *remote*. Entry points that take peer data (``parse_message``,
``StreamFramer``, ``cpim.parse``, ``imdn.parse_notification``) raise remote
errors; builders raise local ones. Any other exception escaping is a bug.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "CpimError",
    "ImdnError",
    "IsComposingError",
    "LocalProtocolError",
    "MessageNotTracked",
    "ProtocolError",
    "RemoteProtocolError",
    "SipError",
    "SipParseError",
    "StoreError",
    "TransactionTimeout",
    "TransportError",
]


class SipError(Exception):
    """Base class of every error sipimdn raises on purpose."""


class ProtocolError(SipError):
    """Something broke the protocol.

    ``status_code`` is the SIP response a UAS should send when the error is
    about a request it received (400 unless a subclass or caller says
    otherwise); ``reason`` is the human explanation, also usable as a
    reason phrase.
    """

    status_code: int = 400

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        return f"{self.reason} (SIP {self.status_code})"


class LocalProtocolError(ProtocolError):
    """We were asked to build or send something the protocol does not allow."""


class MessageNotTracked(LocalProtocolError):
    """No worker tracks the sent message awaited (``UserAgent.await_disposition``).

    Either it was never tracked (``last_state`` is None), or it was while the caller
    waited and its record is gone now: its tracking ended and its final record expired
    from the store before it was read, so the state it ended in is unknown (it is
    ``last_state`` or later on the disposition path).
    """

    def __init__(self, message_id: str, last_state: object | None = None) -> None:
        if last_state is None:
            reason = f"no message {message_id!r} is tracked"
        else:
            reason = (
                f"message {message_id!r} is no longer tracked (last seen {last_state}): "
                "its tracking ended and its final state expired before it was read"
            )
        super().__init__(reason)
        #: The Message-ID awaited.
        self.message_id = message_id
        #: The last :class:`~sipimdn.imdn.vocabulary.DispositionState` read while waiting, if any.
        self.last_state = last_state


class RemoteProtocolError(ProtocolError):
    """A peer sent something the protocol does not allow."""


class SipParseError(RemoteProtocolError):
    """A SIP message (or part of one) could not be parsed.

    ``status_code`` is 400 for bad syntax, 505 for an unsupported SIP
    version, 513 when the message exceeds a size limit and 413 when the
    body alone does.
    """


class CpimError(RemoteProtocolError):
    """A message/cpim document is malformed (RFC 3862)."""


class ImdnError(RemoteProtocolError):
    """A message/imdn+xml document or an IMDN CPIM header is malformed (RFC 5438)."""


class TransactionTimeout(SipError):
    """A client transaction ended without a final response (Timer F); treat as 408."""

    status_code = 408


class TransportError(SipError):
    """A message could not be sent or a connection failed; treat as 503."""

    status_code = 503


class AuthenticationFailed(SipError):
    """Our credentials were rejected, or a challenge could not be answered."""


class StoreError(SipError):
    """The persistent store failed."""


class IsComposingError(RemoteProtocolError):
    """An application/im-iscomposing+xml document is malformed (RFC 3994); 413 when too large."""
