"""Our own small load client: fixed offered rate, per-request latency in microseconds.

SIPp's response times have 1 ms granularity (about 4 ms in practice here), too coarse for a
responder that answers in a few hundred microseconds. This client, one process and one
thread with non-blocking sockets and ``select``, sends MESSAGEs (the same CPIM body as the
SIPp load scenario) at a fixed rate over UDP, or over one TCP or TLS connection, and takes
each latency from the request's *scheduled* send time to the arrival of its 200, so a
stalled responder is charged for the requests it delayed (no coordinated omission).

    python bench/load/latency_client.py udp 127.0.0.1 5060 --rate 1000 --duration 5

Prints one JSON object: sent, answered, non-200 answers, achieved rate, latency p50/p90/p99/max (us).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import socket
import ssl
import time
from collections import deque
from typing import Any

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*lat-\d+-(\d+)", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE)

_CPIM = (
    "From: <sip:alice@{host}:{port}>\r\n"
    "To: <sip:bob@{rhost}:{rport}>\r\n"
    "DateTime: 2026-06-15T10:00:00Z\r\n"
    "NS: imdn <urn:ietf:params:imdn>\r\n"
    "imdn.Message-ID: lat-{pid}-{i}\r\n"
    "\r\n"
    "Content-Type: text/plain;charset=UTF-8\r\n"
    "\r\n"
    "Hello in CPIM from the latency client, message {i}.\r\n"
)


def request(transport: str, host: str, port: int, rhost: str, rport: int, i: int) -> bytes:  # noqa: PLR0917
    """The i-th MESSAGE, with a Call-ID and branch of its own."""
    pid = os.getpid()
    body = _CPIM.format(host=host, port=port, rhost=rhost, rport=rport, pid=pid, i=i).encode()
    head = (
        f"MESSAGE sip:bob@{rhost}:{rport} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch=z9hG4bKlat{pid}x{i};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@{host}:{port}>;tag=lat{pid}x{i}\r\n"
        f"To: <sip:bob@{rhost}:{rport}>\r\n"
        f"Call-ID: lat-{pid}-{i}\r\n"
        "CSeq: 1 MESSAGE\r\n"
        "Content-Type: message/cpim\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def run(  # noqa: PLR0917
    transport: str, rhost: str, rport: int, rate: float, duration: float, drain: float = 3.0
) -> dict[str, Any]:
    """Offer ``rate`` MESSAGEs/s for ``duration`` s; wait up to ``drain`` s for the last answers."""
    total = max(1, int(rate * duration))
    interval = 1.0 / rate
    if transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.connect((rhost, rport))
    else:
        raw = socket.create_connection((rhost, rport), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if transport == "tls":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # a benchmark of throughput, not of trust
            sock = context.wrap_socket(raw)
        else:
            sock = raw
    sock.setblocking(False)
    host, port = sock.getsockname()[:2]
    scheduled = [0.0] * total
    latencies: list[float] = []
    other = 0
    pending: set[int] = set()
    buffer = b""
    # Stream requests not yet written: chunks, sent 64 KiB at a time (O(n) when the peer lags).
    out: deque[bytes] = deque()
    sent = 0
    start = time.perf_counter()
    end = start + duration + drain
    while True:
        now = time.perf_counter()
        while sent < total and start + sent * interval <= now:
            scheduled[sent] = start + sent * interval
            pending.add(sent)
            data = request(transport, host, port, rhost, rport, sent)
            if transport == "udp":
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    sock.send(data)  # a lost one is counted as unanswered
            else:
                out.append(data)
            sent += 1
        if out:
            try:
                parts: list[bytes] = []
                size = 0
                while out and size < 65536:
                    parts.append(out.popleft())
                    size += len(parts[-1])
                chunk = b"".join(parts)
                try:
                    written = sock.send(chunk)
                except BaseException:
                    out.appendleft(chunk)
                    raise
                if written < len(chunk):
                    out.appendleft(chunk[written:])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        if sent >= total and not pending:
            break
        if now > end:
            break
        wait = max(0.0, start + sent * interval - now) if sent < total else 0.05
        pending_tls = transport == "tls" and isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        readable, _, _ = select.select(
            [sock], [sock] if out else [], [], 0 if pending_tls else min(wait, 0.05)
        )
        if not readable and not pending_tls:
            continue
        chunks: list[bytes] = []
        while True:
            try:
                if transport == "udp":
                    chunks.append(b"\r\n" + sock.recv(65536))  # one datagram = one response
                else:
                    data = sock.recv(262144)
                    if not data:
                        end = 0.0  # closed by the peer
                        break
                    chunks.append(data)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, ConnectionRefusedError):
                break
        arrived = time.perf_counter()
        if transport == "udp":
            messages = chunks
        else:
            buffer += b"".join(chunks)
            messages = []
            while (cut := buffer.find(b"\r\n\r\n")) >= 0:
                head = b"\r\n" + buffer[:cut]
                length_match = _LENGTH.search(head)
                length = int(length_match.group(1)) if length_match else 0
                if len(buffer) < cut + 4 + length:
                    break
                messages.append(head)
                buffer = buffer[cut + 4 + length :]
        for message in messages:
            match = _CALL_ID.search(message)
            if match is None:
                continue
            index = int(match.group(1))
            if index not in pending:
                continue  # a retransmitted answer
            if b"SIP/2.0 1" in message[:12]:
                continue  # provisional
            pending.discard(index)
            if message[2:14] == b"SIP/2.0 200 ":
                latencies.append((arrived - scheduled[index]) * 1e6)
            else:
                other += 1
    wall = time.perf_counter() - start
    sock.close()
    latencies.sort()

    def pct(fraction: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]

    return {
        "transport": transport,
        "offered": rate,
        "sent": sent,
        "answered": len(latencies),
        "non_200": other,
        "unanswered": len(pending),
        "achieved": len(latencies) / min(wall, duration + 0.001) if latencies else 0.0,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": latencies[-1] if latencies else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("transport", choices=["udp", "tcp", "tls"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(run(args.transport, args.host, args.port, args.rate, args.duration)), flush=True)


if __name__ == "__main__":
    main()
