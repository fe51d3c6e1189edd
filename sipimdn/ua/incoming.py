"""The received-message object handed to ``on_message`` handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import LocalProtocolError
from ..imdn.vocabulary import DispositionRequest, Kind, KindName, NotifyName, Status, StatusName
from .outgoing import SentMessage

if TYPE_CHECKING:
    from ..cpim import CpimMessage
    from ..message import Request

__all__ = ["IncomingMessage"]

# (message_id, sender, kind, status) -> whether an IMDN is now owed
_Reporter = Callable[[str, str, str, str], Awaitable[bool]]
# (to, body, content_type, notify, subject, transport) -> the reply's handle
_Replier = Callable[[str, str | bytes, str, frozenset[str], str | None, str | None], Awaitable[SentMessage]]


@dataclass(eq=False, kw_only=True)
class IncomingMessage:
    """One instant message received in a MESSAGE request.

    For ``message/cpim`` bodies ``content_type`` and ``body`` are the
    *encapsulated* ones; the CPIM envelope is in :attr:`cpim`.
    """

    #: SIP From URI of the request: what the sender claims (see ``asserted_identity``).
    sender: str
    #: Display name from the SIP From header, if any.
    sender_name: str | None
    #: SIP To URI of the request.
    recipient: str
    #: CPIM From URI (None for text/plain).
    cpim_from: str | None
    #: CPIM To URIs (empty for text/plain).
    cpim_to: tuple[str, ...]
    #: Media type of the content, lower case, without parameters (``"text/plain"``).
    content_type: str
    #: Parameters of the content's media type (``{"charset": "utf-8"}``).
    content_params: dict[str, str]
    #: The content as bytes, inflated if it came with Content-Encoding.
    body: bytes
    #: Subject (CPIM Subject, else SIP Subject), if any.
    subject: str | None
    #: CPIM imdn.Message-ID, if any.
    message_id: str | None
    #: CPIM DateTime as received (raw text), if any.
    datetime: str | None
    #: The notifications requested (``"positive-delivery"``, ``"negative-delivery"``, ``"display"``...).
    notify: frozenset[str]
    #: ``"udp"``, ``"tcp"`` or ``"tls"``.
    transport: str
    #: The peer's address as (host, port).
    source: tuple[str, int]
    #: The raw SIP request.
    request: Request
    #: The parsed CPIM envelope, if the body was ``message/cpim``.
    cpim: CpimMessage | None = None
    #: Who really sent it, as a trusted proxy asserted (P-Asserted-Identity, RFC 3325 §9.1):
    #: the sip/sips URI, else the tel URI. None unless the request came from one of
    #: ``UserAgentConfig.trusted_asserters`` with a well-formed value; ``sender`` and
    #: ``cpim_from`` are whatever the sender wrote.
    asserted_identity: str | None = None
    #: Every asserted URI (one, or a sip/sips and a tel URI), sip/sips first; empty when none.
    asserted_identities: tuple[str, ...] = ()
    #: The asserted identity came with ``Privacy: id`` (RFC 3325 §9.3): the sender asked to
    #: keep it from the other party. Use it (access control, blocking) but do not show it to
    #: the user; the user agent does not log it.
    identity_withheld: bool = False
    _report: _Reporter | None = field(default=None, repr=False)
    _reply: _Replier | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The body decoded with its charset (UTF-8 by default); undecodable bytes are replaced."""
        charset = self.content_params.get("charset", "utf-8")
        try:
            return self.body.decode(charset, "replace")
        except LookupError:
            return self.body.decode("utf-8", "replace")

    def _identity(self) -> str:
        return self.cpim_from or self.sender

    async def mark_displayed(self) -> bool:
        """Report that the message was shown to the user.

        Sends the display notification if one was requested (subject to the
        display privacy setting). It may be called inside the ``on_message``
        handler, before the answer is decided: the notification then leaves
        once the message is answered with a 2xx, and never after a refusal.
        Returns True if a notification is (or will be) owed.
        """
        return await self.report("display", "displayed")

    async def reply(
        self,
        body: str | bytes,
        *,
        content_type: str = "text/plain;charset=utf-8",
        notify: Iterable[DispositionRequest | NotifyName] = (),
        subject: str | None = None,
        transport: str | None = None,
    ) -> SentMessage:
        """Send an instant message back to the sender (its SIP From URI); return its handle.

        The same as ``ua.send_message(message.sender, body, ...)`` on the user
        agent that received this message: a new MESSAGE, outside any dialog
        (RFC 3428 §4), with its own Message-ID. It may be called inside the
        ``on_message`` handler (the reply does not wait for this message's
        answer) or later, from a :meth:`~sipimdn.ua.UserAgent.spawn` task.
        """
        if self._reply is None:
            raise LocalProtocolError("this message was not received by a user agent: nothing to reply with")
        return await self._reply(self.sender, body, content_type, frozenset(notify), subject, transport)

    async def report(self, kind: Kind | KindName, status: Status | StatusName) -> bool:
        """Report an outcome RFC 5438 lets the recipient report.

        ``kind`` ``"delivery"`` with ``"failed"``, ``"forbidden"`` or
        ``"error"`` (only after a 2xx answer: never a negative delivery after
        a non-2xx, RFC 5438 §7.2.1.1), or ``"display"`` with ``"displayed"``,
        ``"forbidden"`` or ``"error"``. Returns True if a notification is now
        owed, False if nothing is (not requested, the same already owed,
        policy): exactly what the tracker decided, so True means it is sent
        and False that nothing is. Inside ``on_message``, before the answer,
        the decision is the same and the notification leaves with the 2xx
        (never after a refusal).
        """
        if self.message_id is None or self._report is None:
            return False
        return await self._report(self.message_id, self._identity(), kind, status)
