"""The ``sipimdn.wire`` logger: every SIP message as it leaves and enters the stack.

The stack calls :func:`log_wire` where bytes cross the transport boundary, only after checking
``wire_log.isEnabledFor(logging.DEBUG)``, so the hot path pays one check when the logger is off.
Each record's message is a one-line summary followed by the whole message; the record also
carries the parts as attributes (``sip_direction`` "sent" or "received", ``sip_transport``
"UDP"/"TCP"/"TLS", ``sip_peer`` and ``sip_local`` (host, port) or None, ``sip_data`` the bytes),
which :class:`TraceFormatter` lays out as SIPp's ``-trace_msg`` does.
"""

from __future__ import annotations

import datetime
import logging
import re

from .transport.flow import Address, Flow

__all__ = ["WIRE_LOGGER", "TraceFormatter", "log_wire", "printable_message", "wire_log"]

#: Name of the logger carrying the full messages (DEBUG level).
WIRE_LOGGER = "sipimdn.wire"

wire_log = logging.getLogger(WIRE_LOGGER)

# C0 controls but tab, LF and CR; DEL; C1 controls. A peer's bytes must not drive the terminal.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _address(address: Address | None) -> str:
    if address is None:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def printable_message(data: bytes) -> str:
    """``data`` as text for a log or terminal: UTF-8 (undecodable bytes as ``\\xNN``), CRLF as
    newlines, control characters escaped."""
    text = data.decode("utf-8", "backslashreplace").replace("\r\n", "\n")
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def log_wire(direction: str, data: bytes, flow: Flow) -> None:
    """Log one message ``direction`` ("sent" or "received") along ``flow`` at DEBUG.

    Callers check ``wire_log.isEnabledFor(logging.DEBUG)`` first.
    """
    preposition = "to" if direction == "sent" else "from"
    wire_log.debug(
        "%s %s %d bytes %s %s\n%s",
        flow.transport.value,
        direction,
        len(data),
        preposition,
        _address(flow.remote),
        printable_message(data),
        extra={
            "sip_direction": direction,
            "sip_transport": flow.transport.value,
            "sip_peer": flow.remote,
            "sip_local": flow.local,
            "sip_data": data,
        },
    )


class TraceFormatter(logging.Formatter):
    """Formats ``sipimdn.wire`` records as SIPp's ``-trace_msg`` does: a dashed line with the
    time, then transport, direction, size and both ends, then the message as sent."""

    def format(self, record: logging.LogRecord) -> str:
        """The trace block for one wire record (other records: their plain message)."""
        data: bytes | None = getattr(record, "sip_data", None)
        if data is None:
            return record.getMessage()
        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        direction: str = getattr(record, "sip_direction", "?")
        peer = _address(getattr(record, "sip_peer", None))
        local_address = getattr(record, "sip_local", None)
        ends = f"to {peer}" if direction == "sent" else f"from {peer}"
        if local_address is not None:  # unknown for the first message on a connection being opened
            ends += f" {'from' if direction == 'sent' else 'to'} {_address(local_address)}"
        head = f"{getattr(record, 'sip_transport', '?')} message {direction} ({len(data)} bytes) {ends}"
        body = printable_message(data).rstrip("\n")
        return f"{'-' * 47} {when.isoformat(sep=' ', timespec='microseconds')}\n{head}:\n\n{body}\n"
