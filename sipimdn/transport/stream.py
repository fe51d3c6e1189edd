"""One TCP or TLS connection: bytes in through the parser's framer, bytes out with a cap.

The connection only moves bytes and cuts them into messages; it knows nothing of transactions.
A framing error (a header that never ends, a message over the size limit, a missing
Content-Length) closes the connection: on a stream we cannot find the next message boundary.

It also keeps what the manager needs to decide which connection may be closed under pressure:
when the message being received started (a slowloris trickles one forever), and how many requests
crossed it without their final response yet (a connection carrying a transaction is not idle).
The requests are counted, not matched to transactions: those received are the framer's messages,
and for those sent the sender says what each message is (``SendKind``), as it alone knows.

Writes are coalesced when the owner gives a ``call_soon`` (the manager does): what is sent during
one turn of the event loop is queued and written with one ``transport.write`` at the end of the
``data_received`` that caused it, or by a callback scheduled at the first queued send, or at once
when ``COALESCE_BYTES`` are queued. On TLS each write costs a pass through asyncio's SSL protocol,
a TLS record and a ``send`` system call; answering a burst of pipelined requests one write each
took about a third of the bare stack's CPU per message. Order is kept (every byte goes through
the one queue), and the ``max_buffered`` cap counts queued bytes with the transport's unsent ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..errors import SipParseError, TransportError
from ..message import Request
from ..parser import KeepAliveReceived, Limits, StreamFramer
from .base import STREAM_READ_SIZE, limit_reads
from .flow import Address, Flow, SendKind, Transport

if TYPE_CHECKING:
    from ..message import Response

__all__ = ["COALESCE_BYTES", "StreamConnection"]

log = logging.getLogger(__name__)

#: Queued bytes that are written at once rather than at the end of the loop turn: a bound on the
#: memory held back and on how long the first answer of a large burst waits for the last.
COALESCE_BYTES = 65536


def _address(raw: object) -> Address | None:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return (str(raw[0]), int(raw[1]))
    return None


class StreamConnection(asyncio.Protocol):
    """A TCP/TLS connection in the manager's table.

    Outbound connections exist (``connected`` False) while connecting; what is sent meanwhile is
    queued, within the same byte cap, and flushed once the connection is made.

    ``call_soon`` (``loop.call_soon``) turns write coalescing on (see the module docstring);
    without it every ``send`` is written through at once.
    """

    def __init__(self, transport_kind: Transport, *, remote: Address, server_name: str | None,
                 limits: Limits | None, max_buffered: int, now: Callable[[], float],
                 on_message: Callable[[Request | Response, Flow], None],
                 on_bad_message: Callable[[bytes | None, SipParseError, Flow], None],
                 on_lost: Callable[[StreamConnection, TransportError | None], None],
                 on_made: Callable[[StreamConnection], None] | None = None,
                 transaction_window: float = 32.0,
                 call_soon: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.kind = transport_kind
        self.flow = Flow(transport_kind, remote, None, server_name)
        self.connected = False
        self.closed = False
        self._framer = StreamFramer(limits)
        self._max_buffered = max_buffered
        self._now = now
        self._on_message = on_message
        self._on_bad_message = on_bad_message
        self._on_lost = on_lost
        self._on_made = on_made
        self._transport: asyncio.Transport | None = None
        # Bytes not yet handed to the transport: queued while connecting, or coalesced.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._call_soon = call_soon
        self._flush_scheduled = False
        self._error: TransportError | None = None
        self._reported = False
        self.last_activity = now()
        #: When the first byte of the message still being received arrived (None: nothing buffered).
        self.message_started: float | None = None
        # Requests received not yet finally answered here, and sent not yet finally answered there.
        self._unanswered_in = 0
        self._unanswered_out = 0
        self._last_request = self.last_activity
        self._window = transaction_window

    # -- state the manager reads ------------------------------------------------------------------

    def busy(self, now: float) -> bool:
        """True if closing now could lose something: still connecting, bytes queued or unsent,
        a message half received, or a request that crossed it within ``transaction_window``
        seconds (64*T1) still without a final response. Past that window no non-INVITE
        transaction is alive, so a request never answered does not pin the connection for ever."""
        if not self.connected:
            return True
        if self._pending:
            # Coalesced bytes waiting for the end of the loop turn: hand them over now and judge
            # by what the transport could not send, as if they had been written at once.
            self._flush()
        if self._transport is not None and self._transport.get_write_buffer_size():
            return True
        if self._framer.buffered:
            return True
        waiting = self._unanswered_in or self._unanswered_out
        return bool(waiting) and now - self._last_request < self._window

    def _request_crossed(self, now: float) -> None:
        if now - self._last_request >= self._window:
            # Every transaction counted so far has ended by now, answered or not.
            self._unanswered_in = self._unanswered_out = 0
        self._last_request = now

    # -- sending --------------------------------------------------------------------------------

    def send(self, data: bytes, kind: SendKind = SendKind.OTHER) -> None:
        """Write ``data`` (or queue it until connected); raises TransportError if impossible.

        ``kind`` says what the message does to the requests waiting on this connection.
        """
        if self.closed:
            raise TransportError(f"{self.kind.value} connection to {self._peer()} is closed")
        self.last_activity = self._now()
        if kind is SendKind.REQUEST:
            self._request_crossed(self.last_activity)
            self._unanswered_out += 1
        elif kind is SendKind.FINAL_RESPONSE and self._unanswered_in:
            self._unanswered_in -= 1
        transport = self._transport
        if transport is None:
            if self._pending_bytes + len(data) > self._max_buffered:
                raise TransportError(f"more than {self._max_buffered} bytes queued for {self._peer()}")
            self._pending.append(data)
            self._pending_bytes += len(data)
            return
        queued = self._pending_bytes + len(data)
        if transport.get_write_buffer_size() + queued > self._max_buffered:
            # The peer stopped reading; holding more would let it grow our memory without bound.
            error = TransportError(f"{self._peer()} is not reading: over {self._max_buffered} bytes unsent")
            self.abort(error)
            raise error
        if self._call_soon is None:
            transport.write(data)
            return
        self._pending.append(data)
        self._pending_bytes = queued
        if queued >= COALESCE_BYTES:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        """Hand every queued byte to the transport in one write (nothing while not connected)."""
        transport = self._transport
        pending = self._pending
        if transport is None or not pending:
            return
        self._pending = []
        self._pending_bytes = 0
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Close gracefully (after flushing what is buffered); nobody is told of an error."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._flush()  # what was sent before the close goes out before it
            self._transport.close()
        else:
            self._report(None)

    def abort(self, error: TransportError | None = None) -> None:
        """Drop the connection at once; ``error`` is what pending users are told (None: nothing)."""
        if self.closed:
            return
        self.closed = True
        self._error = error
        self._pending.clear()
        self._pending_bytes = 0
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows and reports
        else:
            self._report(error)

    def connect_failed(self, error: TransportError) -> None:
        """The manager's connect attempt failed: report and forget what was queued."""
        self._pending.clear()
        self._pending_bytes = 0
        self.closed = True
        self._report(error)

    def _report(self, error: TransportError | None) -> None:
        if not self._reported:  # the owner hears about the end of a connection exactly once
            self._reported = True
            self._on_lost(self, error)

    def _peer(self) -> str:
        host, port = self.flow.remote
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: other event loops' transports (uvloop's TCPTransport, ...)
        # offer the asyncio.Transport methods without deriving from that class.
        self._transport = transport = cast(asyncio.Transport, transport)
        limit_reads(transport, STREAM_READ_SIZE)
        local = _address(transport.get_extra_info("sockname"))
        remote = _address(transport.get_extra_info("peername")) or self.flow.remote
        self.flow = Flow(self.kind, remote, local, self.flow.server_name)
        self.connected = True
        self.last_activity = self._now()
        if self.closed:  # closed while connecting
            transport.abort()
            return
        if self._on_made is not None:
            self._on_made(self)
            if self.closed:
                return
        if self._call_soon is not None:
            self._flush()
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for data in pending:
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.closed:  # closing after a framing error: the rest of the stream is noise
            return
        self._receive(data)
        if self._pending and not self.closed:
            self._flush()  # the answers given inline to what this chunk held, in one write

    def _receive(self, data: bytes) -> None:
        now = self.last_activity = self._now()
        framer = self._framer
        if not framer.buffered:
            self.message_started = now
        framer.feed(data)
        # Every event consumes at least one byte, so this bound is never reached by a correct framer.
        for _ in range(framer.buffered + 1):
            try:
                event = framer.next_event()
            except SipParseError as exc:
                # The framing is lost for good. Let the stack answer statelessly if it can read
                # the Via of what failed, then close once that answer is flushed.
                log.info("closing %s connection from %s: %s", self.kind.value, self._peer(), exc)
                self._on_bad_message(framer.failed_data, exc, self.flow)
                self._error = TransportError(f"bad stream from {self._peer()}: {exc.reason}")
                self.close()
                return
            if event is None:
                # What is left (if anything) began in this chunk when an event was cut from it.
                if not framer.buffered:
                    self.message_started = None
                elif self.message_started is None:
                    self.message_started = now
                return
            self.message_started = None
            if isinstance(event, KeepAliveReceived):
                if event.is_ping and self._transport is not None:
                    self._write_pong()
                continue
            if isinstance(event, Request):
                if event.method != "ACK":
                    self._request_crossed(now)
                    self._unanswered_in += 1
            elif event.status_code >= 200 and self._unanswered_out:
                self._unanswered_out -= 1
            self._on_message(event, self.flow)
            if self.closed:
                return

    def _write_pong(self) -> None:
        """RFC 5626 §4.4.1: answer a ping with a pong, in order with what is queued."""
        assert self._transport is not None
        if self._call_soon is None:
            self._transport.write(b"\r\n")
        else:
            self._pending.append(b"\r\n")
            self._pending_bytes += 2  # flushed when data_received returns

    def eof_received(self) -> bool | None:
        return None  # close our side too; a half-open SIP connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:  # we closed or aborted it: report what we decided then
            error = self._error
        elif exc is not None:
            error = TransportError(f"connection to {self._peer()} lost: {exc}")
        else:
            error = TransportError(f"connection closed by {self._peer()}")
        if self._framer.buffered:
            log.info("%s connection from %s ended in the middle of a message", self.kind.value, self._peer())
        self.closed = True
        self._pending.clear()  # nowhere to write them now
        self._pending_bytes = 0
        self._report(error)
