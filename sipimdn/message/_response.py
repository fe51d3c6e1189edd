"""SIP responses (RFC 3261 §7.2, §8.2.6, §21): ``Response``, ``make_response``, reason phrases.

``make_response`` builds a response to a request as a UAS does (§8.2.6): every Via, From,
Call-ID and CSeq copied verbatim, To with a tag added (§8.2.6.2), Timestamp into a 100
(§8.2.6.1). ``REASON_PHRASES`` holds the default phrase of each status code (§21 and the IANA
registry); ``safe_reason_phrase`` makes any text fit for a status line (§25.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..errors import LocalProtocolError
from ._base import Message, _missing
from ._request import Request
from ._rows import HeaderRow, Headers

__all__ = ["REASON_PHRASES", "Response", "make_response", "safe_reason_phrase"]

#: Default reason phrases (RFC 3261 §21 and the IANA response code registry).
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}


def safe_reason_phrase(text: str, default: str = "Error") -> str:
    """``text`` fit for a status line (RFC 3261 §25.1 Reason-Phrase): whitespace runs and line
    breaks become one space, at most 100 characters; ``default`` when nothing is left."""
    return " ".join(text.split())[:100] or default


class Response(Message):
    """A SIP response: status code, reason phrase, headers and body (bytes)."""

    __slots__ = ("reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        if not 100 <= status_code <= 699:
            raise LocalProtocolError(f"status code {status_code} outside 100-699")
        if reason is not None and ("\r" in reason or "\n" in reason):
            raise LocalProtocolError("line break in reason phrase")
        self.status_code = status_code
        self.reason = reason if reason is not None else REASON_PHRASES.get(status_code, "")
        self.headers = headers if isinstance(headers, Headers) else Headers(headers or ())
        self.body = bytes(body)

    @classmethod
    def _parsed(cls, status_code: int, reason: str, headers: Headers, body: bytes) -> Response:
        self = cls.__new__(cls)
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.body = body
        return self

    def copy(self) -> Response:
        """An independent copy: header changes on it do not touch this one."""
        return Response._parsed(self.status_code, self.reason, self.headers.copy(), self.body)

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status_code} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status_code} {self.reason}>"


# What a response copies from its request besides the Via rows (§8.2.6.2),
# in the order it is written; Timestamp only into a 100 (§8.2.6.1).
_COPIED_ORDER = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_COPIED = frozenset(("from", "to", "call-id", "cseq", "timestamp"))


def _unfolded(row: HeaderRow) -> HeaderRow:
    """A folded row written back on one line (its value is already unfolded)."""
    return (row[0], row[1], row[2], f"{row[1]}: {row[2]}")


def _derived_to_tag(request: Request) -> str:
    """A To tag that is the same for every response to the same request.

    Derived from Call-ID, From tag and the top Via branch, so a stateless
    element (RFC 3261 §8.2.7) and a retransmitted request get the same tag.
    """
    branch = request.top_via.branch or ""
    material = f"{request.call_id}\x00{request.from_.tag or ''}\x00{branch}\x00{request.cseq.number}"
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def make_response(
    request: Request,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
) -> Response:
    """Build a response to ``request`` as RFC 3261 §8.2.6 says.

    Copies every Via (in order), From, Call-ID and CSeq verbatim, and To; if
    To has no tag and the status is above 100, adds ``to_tag`` or, when none
    is given, a tag derived from the request so that every response to it
    carries the same one. A 100 copies Timestamp (§8.2.6.1).
    Raises ``SipParseError`` if the request lacks a header the response needs.
    """
    # One pass over the request's rows: every Via row and the first row of
    # each other copied header, reused as they are (already checked when
    # they were parsed or added), so the response repeats the request's
    # spelling byte for byte. This runs for every final response.
    rows: list[HeaderRow] = []
    first: dict[str, HeaderRow] = {}
    for row in request.headers._rows:
        key = row[0]
        if key == "via":
            rows.append(row)
        elif key in _COPIED and key not in first:
            first[key] = row
    if not rows:
        raise _missing("Via")
    for key, label in _COPIED_ORDER:
        found = first.get(key)
        if found is None:
            raise _missing(label)
        row = found
        if key == "to" and status_code > 100 and request.to.tag is None:
            tag = to_tag if to_tag is not None else _derived_to_tag(request)
            if "\r" in tag or "\n" in tag or "\x00" in tag:
                raise LocalProtocolError(f"line break or NUL in the To tag {tag!r}")
            # Append to the received text so the To URI stays byte-identical.
            value = f"{row[2]};tag={tag}"
            row = (key, row[1], value, f"{row[1]}: {value}")
        elif "\n" in row[3]:
            row = _unfolded(row)
        rows.append(row)
    if status_code == 100:
        timestamp = first.get("timestamp")
        if timestamp is not None:
            rows.append(_unfolded(timestamp) if "\n" in timestamp[3] else timestamp)
    # (checked last, as the Response constructor did, so a bad request is
    # reported first whatever the caller passed)
    if not 100 <= status_code <= 699:
        raise LocalProtocolError(f"status code {status_code} outside 100-699")
    if reason is None:
        reason = REASON_PHRASES.get(status_code, "")
    elif "\r" in reason or "\n" in reason:
        raise LocalProtocolError("line break in reason phrase")
    return Response._parsed(status_code, reason, Headers.from_rows(rows), b"")
