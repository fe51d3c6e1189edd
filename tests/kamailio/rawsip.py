"""A deliberately tiny SIP client for driving Kamailio from tests, independent of sipimdn's core.

Requests are built as text in the test; this module only moves bytes over
UDP, TCP or TLS on 127.0.0.1 and splits what comes back into start line,
headers and body, with a timeout on every read.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from dataclasses import dataclass

__all__ = ["RawClient", "RawMessage", "new_branch", "new_tag"]


def new_branch() -> str:
    """A fresh RFC 3261 branch."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    """A fresh From/To tag."""
    return secrets.token_hex(6)


@dataclass
class RawMessage:
    """A received SIP message, split but not interpreted."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_code(self) -> int | None:
        """The status of a response, None for a request."""
        if not self.start_line.startswith("SIP/2.0 "):
            return None
        return int(self.start_line.split(" ", 2)[1])

    @property
    def method(self) -> str | None:
        """The method of a request, None for a response."""
        return None if self.status_code is not None else self.start_line.split(" ", 1)[0]

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive, no compact forms needed here)."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        """The first value of header ``name``."""
        values = self.get_all(name)
        return values[0] if values else None


def _parse(data: bytes) -> RawMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return RawMessage(lines[0], headers, body)


class RawClient:
    """One local SIP endpoint: a UDP socket, or a TCP/TLS connection to the server."""

    def __init__(
        self,
        transport: str,
        server: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.transport = transport.lower()
        self.server = server
        self._buffer = b""
        sock: socket.socket
        if self.transport == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
        else:
            sock = socket.create_connection(server, timeout=5.0)
            if self.transport == "tls":
                if ssl_context is None:
                    raise ValueError("TLS needs an ssl_context")
                sock = ssl_context.wrap_socket(sock, server_hostname=server[0])
        self.sock = sock
        self.local = sock.getsockname()[:2]

    @property
    def via_transport(self) -> str:
        """The transport token for Via."""
        return self.transport.upper()

    def contact_uri(self, user: str) -> str:
        """A Contact URI naming this endpoint."""
        host, port = self.local
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{user}@{host}:{port}{suffix}"

    def via(self, branch: str | None = None) -> str:
        """A Via value for a request sent from here."""
        host, port = self.local
        return f"SIP/2.0/{self.via_transport} {host}:{port};branch={branch or new_branch()};rport"

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        """Send one message (to the server unless ``to`` is given; UDP only)."""
        if self.transport == "udp":
            self.sock.sendto(data, to or self.server)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> RawMessage:
        """The next message; raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if self.transport == "udp":
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no SIP message received")
                self.sock.settimeout(remaining)
                try:
                    data, self.last_peer = self.sock.recvfrom(65535)
                except TimeoutError:
                    raise TimeoutError("no SIP message received") from None
                if data.strip():  # ignore keep-alives
                    return _parse(data)
        while True:
            message = self._take_from_buffer()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no SIP message received")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65535)
            except TimeoutError:
                raise TimeoutError("no SIP message received") from None
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk

    def recv_final(self, timeout: float = 5.0) -> RawMessage:
        """Skip provisional responses; return the first final response."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if message.status_code is not None and message.status_code >= 200:
                return message

    def _take_from_buffer(self) -> RawMessage | None:
        self._buffer = self._buffer.lstrip(b"\r\n")
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = _parse(self._buffer[: end + 4])
        length = int(head.get("Content-Length") or head.get("l") or "0")
        total = end + 4 + length
        if len(self._buffer) < total:
            return None
        data, self._buffer = self._buffer[:total], self._buffer[total:]
        return _parse(data)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
