"""Soak client for the positive-delivery path: how long after the 200 the delivered IMDN leaves.

One process, one thread, one non-blocking UDP socket on loopback. It offers MESSAGEs at a fixed
rate, each with a CPIM body asking for a delivered notification (RFC 5438 §6.2:
``imdn.Disposition-Notification: positive-delivery``, the same body as
``bench/sipp_scenarios/uac_cpim_pd.xml``) and each from its own sender URI (``alice-<n>``: a UA
keeps one MESSAGE transaction in flight per destination URI, RFC 3428 §8, so one sender would
measure that queue instead of the receive path). It answers every IMDN MESSAGE it receives with
200 (RFC 3428 §7), and records per message:

- the latency of the 200, from the request's *scheduled* send time (a stalled responder is
  charged for the requests it delayed: no coordinated omission, as ``latency_client.py``);
- the delay from the 200's arrival to the arrival of its delivered IMDN, matched by the IMDN's
  ``<message-id>`` (RFC 5438 §7.2.1.1).

Arrival times are the kernel's receive timestamps (``SO_TIMESTAMPNS`` on Linux) when available,
so a client descheduled for a moment does not fold two datagrams into one instant; otherwise the
time the client read them.

    python bench/load/soak_client.py 127.0.0.1 5060 --rate 1000 --duration 600

Prints one JSON object: counts (sent, 200s, other answers, IMDNs, IMDNs whose status is not
``delivered``, messages whose IMDN never came within the grace period or came later than
``--late-ms`` after the 200, retransmissions seen), percentiles p50/p99/p99.9/max of both delays
overall and per time window, and how late the client itself sent (p99, max): the share of the
200's latency that is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import socket
import struct
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Any

# -- building and reading the datagrams (pure functions) ---------------------------------------

_CPIM = (
    "From: <sip:alice-{i}@{host}:{port}>\r\n"
    "To: <sip:bob@{rhost}:{rport}>\r\n"
    "DateTime: 2026-06-15T10:00:00Z\r\n"
    "NS: imdn <urn:ietf:params:imdn>\r\n"
    "imdn.Message-ID: {tag}-{i}\r\n"
    "imdn.Disposition-Notification: positive-delivery\r\n"
    "\r\n"
    "Content-Type: text/plain;charset=UTF-8\r\n"
    "\r\n"
    "Hello in CPIM from the soak client, message {i}; please confirm delivery.\r\n"
)


def pd_request(tag: str, i: int, local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """The i-th MESSAGE asking for positive-delivery; Call-ID ``<tag>-<i>``, Message-ID the same."""
    host, port = local
    rhost, rport = remote
    body = _CPIM.format(host=host, port=port, rhost=rhost, rport=rport, tag=tag, i=i).encode()
    head = (
        f"MESSAGE sip:bob@{rhost}:{rport} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{tag}x{i};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice-{i}@{host}:{port}>;tag=s{i}\r\n"
        f"To: <sip:bob@{rhost}:{rport}>\r\n"
        f"Call-ID: {tag}-{i}\r\n"
        "CSeq: 1 MESSAGE\r\n"
        "Content-Type: message/cpim\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class Answer:
    """A response to one of our MESSAGEs."""

    index: int
    status: int


@dataclass(frozen=True)
class Notification:
    """An IMDN MESSAGE: its transaction (Call-ID, CSeq), the message it is about, its status."""

    call_id: str
    cseq: str
    index: int | None  # None: its <message-id> is not one of this run's
    kind: str  # "delivery-notification", "display-notification", ... or "" when absent
    status: str  # "delivered", "failed", ... or "" when absent


_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length"}
_XML_NAME = rb"(?:[A-Za-z_][\w.-]*:)?"
_MESSAGE_ID = re.compile(rb"<" + _XML_NAME + rb"message-id>\s*([^<\s]*)\s*</")
_KIND = re.compile(rb"<" + _XML_NAME + rb"((?:delivery|display|processing)-notification)\b")
_STATUS = re.compile(rb"<" + _XML_NAME + rb"status>\s*<" + _XML_NAME + rb"([\w-]+)")


def _headers(head: bytes) -> list[tuple[str, str]]:
    """Header fields of a message head (start line excluded), names lower-case and expanded."""
    fields: list[tuple[str, str]] = []
    for raw in head.decode("utf-8", "replace").split("\r\n")[1:]:
        if raw[:1] in (" ", "\t") and fields:  # folded continuation (RFC 3261 §7.3.1)
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {raw.strip()}")
            continue
        name, colon, value = raw.partition(":")
        if not colon:
            continue
        key = name.strip().lower()
        fields.append((_COMPACT.get(key, key), value.strip()))
    return fields


def _field(fields: list[tuple[str, str]], name: str) -> str:
    return next((value for key, value in fields if key == name), "")


def message_index(message_id: str, tag: str) -> int | None:
    """n when ``message_id`` is ``<tag>-<n>`` (one of this run's messages), else None."""
    prefix = tag + "-"
    if not message_id.startswith(prefix):
        return None
    rest = message_id[len(prefix) :]
    return int(rest) if rest.isdigit() else None


def classify(datagram: bytes, tag: str) -> Answer | Notification | None:
    """What a datagram from the responder is: an answer to our MESSAGE ``<tag>-<n>``, an IMDN
    MESSAGE, or None (anything else: a provisional answer, another method, garbage)."""
    cut = datagram.find(b"\r\n\r\n")
    head = datagram if cut < 0 else datagram[:cut]
    body = b"" if cut < 0 else datagram[cut + 4 :]
    if head.startswith(b"SIP/2.0 "):
        code = head[8:11]
        if not code.isdigit() or code[:1] == b"1":
            return None
        index = message_index(_field(_headers(head), "call-id"), tag)
        return None if index is None else Answer(index, int(code))
    if not head.startswith(b"MESSAGE "):
        return None
    fields = _headers(head)
    found = _MESSAGE_ID.search(body)
    kind = _KIND.search(body)
    status = _STATUS.search(body)
    return Notification(
        call_id=_field(fields, "call-id"),
        cseq=_field(fields, "cseq"),
        index=message_index(found.group(1).decode("utf-8", "replace"), tag) if found else None,
        kind=kind.group(1).decode() if kind else "",
        status=status.group(1).decode() if status else "",
    )


def ok_response(request: bytes, to_tag: str) -> bytes:
    """The 200 answering a request (RFC 3261 §8.2.6.2): its Via fields in order, From, To (with
    ``to_tag`` added when it has none), Call-ID and CSeq, no body."""
    cut = request.find(b"\r\n\r\n")
    fields = _headers(request if cut < 0 else request[:cut])
    lines = ["SIP/2.0 200 OK"]
    lines += [f"Via: {value}" for key, value in fields if key == "via"]
    to = _field(fields, "to")
    if ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={to_tag}"
    lines += [
        f"From: {_field(fields, 'from')}",
        f"To: {to}",
        f"Call-ID: {_field(fields, 'call-id')}",
        f"CSeq: {_field(fields, 'cseq')}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- what the run saw (sans-IO: times are passed in) --------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99, p99.9 and max (nearest rank) of ``values``, in the same unit; zeros when empty."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for name, fraction in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
        if ordered:
            rank = max(1, math.ceil(fraction * len(ordered) - 1e-9))  # nearest rank
            out[name] = ordered[min(len(ordered), rank) - 1]
        else:
            out[name] = 0.0
    out["max"] = ordered[-1] if ordered else 0.0
    return out


class Tally:
    """Per-message times and the run's counts. ``capacity`` bounds everything it keeps."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        nan = float("nan")
        self.scheduled = array("d", [nan]) * capacity
        self.answered_at = array("d", [nan]) * capacity
        self.notified_at = array("d", [nan]) * capacity
        self.status = array("H", [0]) * capacity  # the final answer's code
        self.sent = 0
        self.ok = 0
        self.other_answers = 0
        self.answer_retransmissions = 0  # a final answer again for a message already answered
        self.imdns = 0  # distinct IMDN transactions received
        self.imdn_retransmissions = 0  # the same IMDN transaction again (our 200 late or lost)
        self.imdn_duplicates = 0  # a second IMDN transaction about a message already notified
        self.imdn_not_delivered = 0  # a delivery notification whose status is not "delivered"
        self.imdn_other = 0  # an IMDN of another kind, or about no message of this run
        self.notified = 0  # messages with their (first) delivery notification
        self.imdn_read_first = 0  # the IMDN was read from the socket before its message's answer
        self.read_first_examples: list[int] = []  # the first few such messages (their numbers)
        self.transactions_dropped = 0  # IMDN transactions beyond the bound on remembered ones
        self._transactions: set[tuple[str, str]] = set()
        self._transaction_limit = 4 * capacity + 64

    def on_sent(self, index: int, scheduled: float) -> None:
        self.scheduled[index] = scheduled
        self.sent = max(self.sent, index + 1)

    def on_answer(self, answer: Answer, at: float) -> None:
        index = answer.index
        if not 0 <= index < self.sent:
            return
        if not math.isnan(self.answered_at[index]):  # answered before
            self.answer_retransmissions += 1
            return
        self.answered_at[index] = at
        self.status[index] = answer.status
        if answer.status == 200:
            self.ok += 1
        else:
            self.other_answers += 1

    def on_notification(self, note: Notification, at: float) -> bool:
        """Record an IMDN; True when it is a new transaction (a retransmission gets the same 200
        again but counts once)."""
        key = (note.call_id, note.cseq)
        if key in self._transactions:
            self.imdn_retransmissions += 1
            return False
        if len(self._transactions) >= self._transaction_limit:
            self.transactions_dropped += 1
        else:
            self._transactions.add(key)
        self.imdns += 1
        index = note.index
        if note.kind != "delivery-notification" or index is None or not 0 <= index < self.sent:
            self.imdn_other += 1
            return True
        if note.status != "delivered":
            self.imdn_not_delivered += 1
        if not math.isnan(self.notified_at[index]):
            self.imdn_duplicates += 1
            return True
        self.notified_at[index] = at
        self.notified += 1
        if math.isnan(self.answered_at[index]):
            self.imdn_read_first += 1
            if len(self.read_first_examples) < 10:
                self.read_first_examples.append(index)
        return True

    def complete(self) -> bool:
        """Every message sent so far has its final answer, and as many have their IMDN as got a 200."""
        return self.ok + self.other_answers >= self.sent and self.notified >= self.ok

    def summary(self, window: float, start: float, late_ms: float = 100.0) -> dict[str, Any]:
        """Counts, percentiles (us, ms) and per-window figures, ``window`` seconds each from
        ``start``; ``imdn_late`` counts delivered IMDNs later than ``late_ms`` after their 200."""
        latencies: list[float] = []
        delays: list[float] = []
        never = before_200 = without_200 = late = 0
        buckets: dict[int, tuple[list[float], list[float]]] = {}
        for index in range(self.sent):
            scheduled, answered, notified = (
                self.scheduled[index],
                self.answered_at[index],
                self.notified_at[index],
            )
            slot = buckets.setdefault(int((scheduled - start) // window) if window > 0 else 0, ([], []))
            if not math.isnan(answered):
                latency = (answered - scheduled) * 1e6
                latencies.append(latency)
                slot[0].append(latency)
            if math.isnan(notified):
                if self.status[index] == 200:  # a 200 and no IMDN (none is owed after an error)
                    never += 1
                continue
            if math.isnan(answered):
                without_200 += 1
                continue
            if notified < answered:
                before_200 += 1
            delay = max(0.0, notified - answered) * 1e3
            if delay > late_ms:
                late += 1
            delays.append(delay)
            slot[1].append(delay)
        windows = []
        for slot_index in sorted(buckets):
            lat, delays_in = buckets[slot_index]
            windows.append(
                {
                    "from_s": round(slot_index * window, 3),
                    "answered": len(lat),
                    "imdns": len(delays_in),
                    "ok_p99_us": round(percentiles(lat)["p99"], 1),
                    "imdn_after_200_p999_ms": round(percentiles(delays_in)["p999"], 3),
                    "imdn_after_200_max_ms": round(percentiles(delays_in)["max"], 3),
                }
            )
        ok_pct = percentiles(latencies)
        imdn_pct = percentiles(delays)
        return {
            "sent": self.sent,
            "ok": self.ok,
            "other_answers": self.other_answers,
            "unanswered": self.sent - self.ok - self.other_answers,
            "imdns": self.imdns,
            "imdn_not_delivered": self.imdn_not_delivered,
            "imdn_never": never,
            "imdn_late": late,
            "late_ms": late_ms,
            "imdn_duplicates": self.imdn_duplicates,
            "imdn_other": self.imdn_other,
            "imdn_before_200": before_200,
            "imdn_read_first": self.imdn_read_first,
            "imdn_read_first_examples": list(self.read_first_examples),
            "imdn_without_200": without_200,
            "answer_retransmissions": self.answer_retransmissions,
            "imdn_retransmissions": self.imdn_retransmissions,
            "transactions_dropped": self.transactions_dropped,
            **{f"ok_{k}_us": round(v, 1) for k, v in ok_pct.items()},
            **{f"imdn_after_200_{k}_ms": round(v, 3) for k, v in imdn_pct.items()},
            "window_s": window,
            "windows": windows,
        }


# -- the socket loop ----------------------------------------------------------------------------

#: Linux's SO_TIMESTAMPNS (asm-generic/socket.h; the value of x86, ARM, RISC-V and most others).
#: The socket module does not export it; on other systems the client falls back to its own clock.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")


def _kernel_timestamps(sock: socket.socket) -> bool:
    if not sys.platform.startswith("linux") or os.uname().machine not in (
        "x86_64", "aarch64", "armv7l", "riscv64", "i686", "s390x", "ppc64le",
    ):  # fmt: skip
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def wall_offset(samples: int = 5) -> float:
    """``time.time() - time.perf_counter()`` from the tightest of a few paired reads, so a
    preemption between two reads does not shift it."""
    best_gap, best = math.inf, 0.0
    for _ in range(samples):
        before = time.perf_counter()
        wall = time.time()
        after = time.perf_counter()
        if after - before < best_gap:
            best_gap, best = after - before, wall - (before + after) / 2
    return best


def run(
    rhost: str,
    rport: int,
    rate: float,
    duration: float,
    *,
    grace: float = 5.0,
    window: float = 60.0,
    late_ms: float = 100.0,
) -> dict[str, Any]:
    """Offer ``rate`` MESSAGEs/s for ``duration`` s; then wait up to ``grace`` s for the last
    answers and IMDNs (answering IMDNs all along)."""
    total = max(1, int(rate * duration))
    interval = 1.0 / rate
    tag = f"soak{os.getpid()}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.connect((rhost, rport))
    sock.setblocking(False)
    kernel_time = _kernel_timestamps(sock)
    ancillary = socket.CMSG_SPACE(_TIMESPEC.size)
    local = sock.getsockname()[:2]
    tally = Tally(total)
    send_errors = 0
    answers_unsent = 0
    # How late the client itself sent each request: the part of a 200's latency that is ours.
    send_lag = array("d", bytes(8 * total))
    # Every time the tally keeps is wall-clock (CLOCK_REALTIME, the kernel timestamps' clock), so
    # the 200 and its IMDN are compared stamp to stamp. The schedule runs on perf_counter and
    # each scheduled time is mapped once, with an offset re-read every second (a slewing wall
    # clock then moves it by well under a millisecond between reads).
    offset = wall_offset()
    cpu_start = time.process_time()
    offset_at = start = time.perf_counter()
    wall_start = start + offset
    last_send_deadline = start + duration + grace
    sent = 0
    while True:
        now = time.perf_counter()
        if now - offset_at >= 1.0:
            offset, offset_at = wall_offset(), now
        while sent < total and start + sent * interval <= now:
            tally.on_sent(sent, start + sent * interval + offset)
            send_lag[sent] = time.perf_counter() - start - sent * interval
            try:
                sock.send(pd_request(tag, sent, local, (rhost, rport)))
            except (BlockingIOError, ConnectionRefusedError):
                send_errors += 1  # counted as unanswered
            sent += 1
        if sent >= total and (now > last_send_deadline or tally.complete()):
            break
        wait = max(0.0, start + sent * interval - now) if sent < total else 0.05
        readable, _, _ = select.select([sock], [], [], min(wait, 0.05))
        if not readable:
            continue
        while True:
            try:
                data, cmsgs, _flags, _addr = sock.recvmsg(65536, ancillary)
            except (BlockingIOError, ConnectionRefusedError):
                break
            at = time.time()
            if kernel_time:
                for level, kind, value in cmsgs:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                        seconds, nanos = _TIMESPEC.unpack_from(value)
                        at = seconds + nanos * 1e-9
            found = classify(data, tag)
            if isinstance(found, Answer):
                tally.on_answer(found, at)
            elif isinstance(found, Notification):
                tally.on_notification(found, at)
                try:
                    sock.send(ok_response(data, f"a{sent}"))
                except (BlockingIOError, ConnectionRefusedError):
                    answers_unsent += 1  # the responder retransmits the IMDN (RFC 3261 §17.1.2)
    wall = time.perf_counter() - start
    sock.close()
    result = tally.summary(window, wall_start, late_ms)
    lag = percentiles(list(send_lag[:sent]))
    result.update(
        send_lag_p99_us=round(lag["p99"] * 1e6, 1),
        send_lag_max_us=round(lag["max"] * 1e6, 1),
        client_cpu_s=round(time.process_time() - cpu_start, 2),
        offered=rate,
        seconds=duration,
        grace_s=grace,
        achieved=result["ok"] / max(min(wall, duration), 1e-3),
        send_errors=send_errors,
        answers_unsent=answers_unsent,
        kernel_timestamps=kernel_time,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to wait for the last IMDNs")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per reported time window")
    parser.add_argument("--late-ms", type=float, default=100.0, help="an IMDN later than this is late")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    result = run(
        args.host,
        args.port,
        args.rate,
        args.duration,
        grace=args.grace,
        window=args.window,
        late_ms=args.late_ms,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
