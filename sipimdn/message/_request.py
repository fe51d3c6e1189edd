"""A SIP request (RFC 3261 §7.1): ``Request``, its method, Request-URI and start line."""

from __future__ import annotations

from collections.abc import Iterable

from .. import _abnf
from ..errors import LocalProtocolError, SipParseError
from ..headers import CSeq
from ..uri import Uri
from ._base import Message
from ._rows import Headers

__all__ = ["Request"]


class Request(Message):
    """A SIP request: method, Request-URI, headers and body (bytes)."""

    __slots__ = ("_uri", "_uri_text", "method")

    def __init__(
        self,
        method: str,
        uri: Uri | str,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        if _abnf.METHOD_RE.fullmatch(method) is None:
            raise LocalProtocolError(f"invalid method {method!r}")
        self.method = method
        self.uri = uri if isinstance(uri, Uri) else Uri.parse(uri)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers or ())
        self.body = bytes(body)

    @classmethod
    def _parsed(cls, method: str, uri: Uri, uri_text: str, headers: Headers, body: bytes) -> Request:
        self = cls.__new__(cls)
        self.method = method
        self._uri = uri
        self._uri_text = uri_text
        self.headers = headers
        self.body = body
        return self

    @property
    def uri(self) -> Uri:
        """The Request-URI."""
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self._uri_text = str(value)

    @property
    def cseq(self) -> CSeq:
        """CSeq; its method must equal the request method (§8.1.1.5)."""
        value = self._cseq()
        if value.method != self.method:
            raise SipParseError(f"CSeq method {value.method} does not match request method {self.method}")
        return value

    def copy(self) -> Request:
        """An independent copy: header changes on it do not touch this one."""
        return Request._parsed(self.method, self._uri, self._uri_text, self.headers.copy(), self.body)

    def _start_line(self) -> str:
        return f"{self.method} {self._uri_text} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_text}>"
