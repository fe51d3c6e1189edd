"""The Python floor: a raw asyncio responder that answers every MESSAGE with 200, no SIP library.

Not SIP-correct on purpose: it copies the Via, From, To, Call-ID and CSeq lines of the
request into a ``SIP/2.0 200 OK`` (adding a To tag), and that is all. Whatever a real stack
spends above this per message is the price of parsing, transactions and the application
layer; this is the least any asyncio program pays to receive a datagram and send one back.

    python bench/floor_responder.py [--uvloop] [--host 127.0.0.1]

Listens on UDP and TCP on one free port, prints ``READY {"udp": port, "tcp": port}`` and
runs until SIGTERM, then prints ``STATS {"answered": n}``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import signal
import socket
from typing import cast

_COPIED = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")
_TO = (b"to:", b"t:")
_STATUS = b"SIP/2.0 200 OK\r\n"
_TAIL = b"Content-Length: 0\r\n\r\n"

#: Requests answered, for the STATS line (a one-element list: no `global` in the hot path).
answered = [0]


def answer(head: bytes) -> bytes:
    """A 200 for the request whose header section is ``head`` (without the blank line)."""
    out = [_STATUS]
    for line in head.split(b"\r\n")[1:]:
        lower = line[:9].lower()
        if lower.startswith(_COPIED):
            tag = b";tag=floor" if lower.startswith(_TO) and b";tag=" not in line else b""
            out.append(line + tag + b"\r\n")
    out.append(_TAIL)
    return b"".join(out)


class Udp(asyncio.DatagramProtocol):
    """Answers every datagram that looks like a request."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b"SIP/"):
            return  # a response: nothing to do
        head = data.split(b"\r\n\r\n", 1)[0]
        self.transport.sendto(answer(head), addr)
        answered[0] += 1


class Tcp(asyncio.Protocol):
    """Frames requests by Content-Length (the least a stream needs) and answers each."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        replies = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            skip = 17
            if at < 0:
                at = lower.find(b"\r\nl:")
                skip = 4
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + skip : stop if stop >= 0 else len(lower)].strip() or b"0")
            total = end + 4 + length
            if len(buffer) < total:
                break
            buffer = buffer[total:]
            if head.startswith(b"SIP/"):
                continue
            replies.append(answer(head))
        self.buffer = buffer
        if replies:
            self.transport.write(b"".join(replies))
            answered[0] += len(replies)


async def main(host: str) -> None:
    loop = asyncio.get_running_loop()
    # UDP and TCP on one port number, as SIP listens (RFC 3261 §18.2.1). The kernel's free UDP port
    # can be taken for TCP (a connection's local port): then try another UDP port, a bounded number
    # of times.
    for attempt in range(20):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        try:
            server = await loop.create_server(Tcp, host, port)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or attempt == 19:
                raise
            continue
        break
    await loop.create_datagram_endpoint(Udp, sock=sock)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY " + json.dumps({"udp": port, "tcp": port}), flush=True)
    await stop.wait()
    server.close()
    print("STATS " + json.dumps({"answered": answered[0]}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.host))
    else:
        asyncio.run(main(args.host))
