"""Measure and profile the SipStack receive path: server CPU per MESSAGE(CPIM) -> 200 over UDP.

    python tools/profile_stack.py run [--count 20000] [--window 64] [--repeat 3] [--servers stack,floor]
    python tools/profile_stack.py run --servers stack@/tmp/old,stack@/tmp/new,floor   # before/after
    python tools/profile_stack.py rate --rate 10000 --seconds 10 [--server stack]
    python tools/profile_stack.py profile [--count 20000] [--out /tmp/stack.prof] [--top 35]
    python tools/profile_stack.py serve stack|floor|ua|ua-pd [--profile OUT]
    python tools/profile_stack.py run --servers ua,ua-pd,floor          # the UserAgent receive path
    python tools/profile_stack.py run --servers ua-pd@/tmp/old,ua-pd --paced 600 --seconds 5  # fixed rate
    python tools/profile_stack.py profile --server ua-pd [--sort cumtime]
    python tools/profile_stack.py rate --server ua-pd+gc --rate 2000 --gc-log /tmp/gc   # GC pauses
    python tools/profile_stack.py run --servers ua+gc,listen@/tmp/old,listen --paced 3000 --seconds 5
    python tools/profile_stack.py run --servers listen@/tmp/old,listen --sipp 3000 --seconds 5  # SIPp load

``serve`` runs one responder in this process: ``stack`` is a bare ``SipStack`` whose synchronous
handler answers every request 200; ``floor`` is a raw asyncio responder that copies the
Via/From/To/Call-ID/CSeq lines into a 200 with no SIP library (the floor any Python responder pays);
``ua`` is a ``UserAgent`` (default SQLite ``:memory:`` store) whose async ``on_message`` handler
does nothing, fed CPIM messages that request no notification (bench/run.py's receive part);
``ua-pd`` is the same UserAgent fed messages that request positive-delivery, each from its own
sender: a message counts as done once its 200 *and* its delivered IMDN arrived, and the client
answers every IMDN 200, so the figure covers the whole exchange (bench/run.py's
positive-delivery part); ``ua-pd-silent`` is that server with a client that never answers the
IMDNs (a message is done with its 200; the IMDN transactions time out and the tracker parks the
silent destination). It prints ``READY <port>`` and stops on SIGTERM. ``listen`` and ``listen-pd``
(``run``/``rate`` only) are ``python -u -m sipimdn listen`` as bench/run.py runs it, its text output
into a log file, fed the load of ``ua`` and ``ua-pd``: the command line's cost beside the embedded one.
A ``+gc`` suffix on a server (``ua+gc``, ``ua-pd+gc@DIR``) applies
``sipimdn._gc.tune_for_throughput()`` once it listens (what ``sipimdn listen`` does); ``--gc-log DIR``
on ``run``/``rate`` records every collection's pause (``gc.callbacks``) and the tracked objects by
type at the end of the load, and prints a summary.
``PROFILE_STACK_LOOP_COUNTS=FILE`` counts the loop's iterations, the tasks and callbacks it
schedules (by name) and the loop thread's CPU against the process's, into ``FILE.<server pid>``.
``PROFILE_STACK_TRACE=FILE`` (UserAgent servers, paced load) logs every store batch (operations,
seconds in the worker), every event-loop stall over 20 ms and the answers slower than 50 ms by
send time, on one monotonic clock, to ``FILE.<server pid>`` and ``FILE.<server pid>.client``.
``PROFILE_STACK_STORE=PATH`` gives the UserAgent servers that SQLite file (WAL) instead of
``:memory:``: each server process appends its pid to PATH, and prints the file's and its WAL's
size on stop.

``run`` starts each server in a child process (pinned to CPU 1 when there are two cores, the
client to CPU 0), sends ``count`` pre-built MESSAGEs with a ~600-byte CPIM body, each with a unique
branch and Call-ID, keeping at most ``window`` unanswered, and reads the server's utime+stime
from /proc/<pid>/stat around the load (after a warm-up). The client is a plain non-blocking
socket, so its own cost is not counted. Rounds alternate between servers so load drift on a shared
machine hits both; the median per server and the ratio stack/floor are printed.

``rate`` offers a fixed rate (paced in 1 ms slots) for ``seconds`` and reports achieved rate,
failures (no final answer after retransmissions at 0.5/1/2/4 s, as Timer E would), retransmissions
and p50/p99/max latency, and the server's CPU per message split by thread from
/proc/<pid>/task: the event loop's thread and the others (a UserAgent's store worker).

``profile`` runs the stack server under cProfile with the same load and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import heapq
import json
import os
import pstats
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# -- the responders -------------------------------------------------------------------------------

_COPIED = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")


class _Floor(asyncio.DatagramProtocol):
    """Answers each request datagram with a 200 made of its copied lines; no parsing beyond that."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(b"SIP/"):
            return
        out = [b"SIP/2.0 200 OK\r\n"]
        for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            lower = line[:9].lower()
            if lower.startswith(_COPIED):
                tag = b";tag=floor" if lower.startswith((b"to:", b"t:")) and b";tag=" not in line else b""
                out.append(line + tag + b"\r\n")
        out.append(b"Content-Length: 0\r\n\r\n")
        self.transport.sendto(b"".join(out), addr)


class _GcLog:
    """Every collection's pause (``gc.callbacks``) and, on demand, the tracked objects by type."""

    def __init__(self) -> None:
        # (generation, wall ms, CPU ms of this thread, collected): on a shared machine the wall
        # time includes preemption, the CPU time is what the pause would be on a core of its own.
        self.pauses: list[tuple[int, float, float, int]] = []
        self.histogram: list[tuple[str, int]] = []
        self.big: list[tuple[str, int]] = []
        self.full_ms = 0.0
        self.visits = 0
        self.young: dict[str, int] | None = {} if os.environ.get("PROFILE_STACK_GC_YOUNG") else None
        self.young_collections = 0
        self.tracked = 0
        self.listening_at = 0  # pauses before this index happened during start-up
        self.rss_kib: dict[str, int] = {}
        self._started = (0.0, 0.0)
        gc.callbacks.append(self._callback)

    def listening(self) -> None:
        """The responder listens: later pauses are the load's; RSS now is the baseline."""
        self.listening_at = len(self.pauses)
        self.rss_kib["listening"] = _rss_kib()["VmRSS"]

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and self.young is not None and info["generation"] == 0:
            # PROFILE_STACK_GC_YOUNG: what the young collections find alive (and walk), by type.
            self.young_collections += 1
            if self.young_collections % 10 == 0:
                for obj in gc.get_objects(0):
                    name = type(obj).__qualname__
                    self.young[name] = self.young.get(name, 0) + 1
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
        else:
            wall = (time.perf_counter() - self._started[0]) * 1e3
            cpu = (time.thread_time() - self._started[1]) * 1e3
            self.pauses.append((info["generation"], wall, cpu, info["collected"]))

    def snapshot(self) -> None:
        """Count the tracked objects by type (while the load's state is still alive); RSS and peak."""
        rss = _rss_kib()
        self.rss_kib["end"], self.rss_kib["peak"] = rss["VmRSS"], rss["VmHWM"]
        counts: dict[str, int] = {}
        objects = gc.get_objects()
        self.tracked = len(objects)
        for obj in objects:
            name = type(obj).__qualname__
            counts[name] = counts.get(name, 0) + 1
        # The containers a full collection spends its time in: those holding many references,
        # tracked or not (an OrderedDict, a deque or a list is walked entry by entry even when
        # every entry is untracked), named by the attribute that holds them.
        big: list[tuple[int, str]] = []
        self.visits = 0
        for obj in objects:
            size = len(gc.get_referents(obj))  # what the collector's traversal visits
            self.visits += size
            if size >= 1000:
                sample = next(iter(obj.items()), None) if isinstance(obj, dict) else None
                big.append((size, f"{type(obj).__qualname__} {_holder(obj, objects)} e.g. {sample!r:.160}"))
        del objects
        self.histogram = sorted(counts.items(), key=lambda kv: -kv[1])[:25]
        self.big = [(name, size) for size, name in sorted(big, reverse=True)[:15]]
        # What a full collection costs now, the load's state still alive (CPU ms of this thread).
        started = time.thread_time()
        gc.collect()
        self.full_ms = (time.thread_time() - started) * 1e3

    def dump(self, path: str) -> None:
        gc.callbacks.remove(self._callback)
        data = {"pauses": self.pauses[self.listening_at:], "startup_pauses": self.pauses[:self.listening_at],
                "tracked": self.tracked, "histogram": self.histogram,
                "big": self.big, "full_collection_ms": self.full_ms, "visits": self.visits,
                "young": sorted((self.young or {}).items(), key=lambda kv: -kv[1])[:40],
                "young_sampled": self.young_collections // 10, "rss_kib": self.rss_kib,
                "frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold()}
        Path(path).write_text(json.dumps(data))


def _holder(obj: object, objects: list[object]) -> str:
    """``Class.attribute`` of the first object found holding ``obj`` in its ``__dict__`` or slots."""
    ident = id(obj)
    for owner in gc.get_referrers(obj):
        if owner is objects:
            continue
        names = [n for n in getattr(type(owner), "__slots__", ()) if id(getattr(owner, n, None)) == ident]
        fields = getattr(owner, "__dict__", None)
        if isinstance(fields, dict):
            names += [n for n, v in fields.items() if v is obj]
        if type(owner).__name__ == "cell":  # a closure's variable: the function and the name
            for closure in gc.get_referrers(owner):
                for function in gc.get_referrers(closure) if isinstance(closure, tuple) else ():
                    code = getattr(function, "__code__", None)
                    if code is not None and function.__closure__ is closure:
                        name = code.co_freevars[closure.index(owner)]
                        return f"closure {function.__module__}.{function.__qualname__}:{name}"
        if isinstance(owner, dict):  # an instance's own __dict__ or a table: the key
            names += [f"[{k!r}]" for k, v in owner.items() if v is obj][:1]
        if names:
            return f"{type(owner).__qualname__}.{names[0]}"
    held = {type(o).__qualname__ for o in gc.get_referrers(obj) if o is not objects}
    return "held by " + ",".join(sorted(held))


def _rss_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


_GC_LOG: _GcLog | None = None


class _Trace:
    """PROFILE_STACK_TRACE=FILE: every store batch (when, operations submitted and written,
    seconds in the worker) and every loop stall over 20 ms (when, how late), monotonic times
    the client's latencies can be lined up with; written to FILE.<server pid> on exit (the
    client's answers slower than 50 ms, by send time, to FILE.<server pid>.client)."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, int, int, float]] = []
        self.stalls: list[tuple[float, float]] = []
        from sipimdn.ua import _persist  # noqa: PLC0415 - diagnosis only

        original = _persist.StoreWriter._apply
        coalesce = _persist.coalesce
        batches = self.batches

        def traced(writer: object, batch: list[list[object]], *inline: object) -> object:
            started = time.perf_counter()
            submitted = sum(len(ops) for ops in batch)
            written = len(coalesce([op for ops in batch for op in ops]))  # type: ignore[misc]
            through = original(writer, batch, *inline)  # type: ignore[arg-type]
            batches.append((started, submitted, written, time.perf_counter() - started))
            return through

        _persist.StoreWriter._apply = traced  # type: ignore[method-assign,assignment]

    async def watch(self) -> None:
        """Record how late a 10 ms sleep wakes up, when over 20 ms."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            late = time.perf_counter() - before - 0.01
            if late > 0.02:
                self.stalls.append((before, late))

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps({"batches": self.batches, "stalls": self.stalls}))


_TRACE: _Trace | None = None


class _LoopCounts:
    """PROFILE_STACK_LOOP_COUNTS=FILE: how the loop spends its turns, for a count per message.
    Counts loop iterations, tasks created (by coroutine), callbacks scheduled (call_soon,
    call_at, call_soon_threadsafe, by callback), and the loop thread's CPU against the
    process's (the rest is the store's worker thread), written as JSON to FILE.<server pid>
    on exit. Totals include the client's warm-up: divide by warm-up + count messages."""

    def __init__(self) -> None:
        import collections  # noqa: PLC0415 - diagnosis only

        self.counts: collections.Counter[str] = collections.Counter()
        counts = self.counts
        loop_class = asyncio.BaseEventLoop
        run_once = loop_class._run_once  # type: ignore[attr-defined]

        def counted_run_once(loop: asyncio.BaseEventLoop) -> None:
            counts["loop iterations"] += 1
            run_once(loop)

        def counting(name: str, method: Any) -> Any:
            def wrapper(loop: asyncio.BaseEventLoop, first: Any, *args: Any, **kwargs: Any) -> Any:
                target = first if name != "call_at" else args[0]
                what = getattr(target, "__qualname__", type(target).__name__)
                counts[f"{name} {what}"] += 1
                return method(loop, first, *args, **kwargs)

            return wrapper

        loop_class._run_once = counted_run_once  # type: ignore[attr-defined]
        for name in ("create_task", "call_soon", "call_at", "call_soon_threadsafe"):
            setattr(loop_class, name, counting(name, getattr(loop_class, name)))

    def dump(self, path: str) -> None:
        out = dict(self.counts.most_common())
        out["loop thread cpu ms"] = round(time.thread_time() * 1000)
        out["process cpu ms"] = round(time.process_time() * 1000)
        Path(path).write_text(json.dumps(out, indent=1))


_LOOP_COUNTS: _LoopCounts | None = None


def _listening() -> None:
    """Called once a responder listens: the ``+gc`` servers tune the collector now."""
    if os.environ.get("PROFILE_STACK_GC_TUNED"):
        from sipimdn._gc import THROUGHPUT_THRESHOLDS, tune_for_throughput  # noqa: PLC0415 - tuned only

        given = os.environ.get("PROFILE_STACK_GC_THRESHOLDS")  # e.g. "10000,10,100": a sweep
        a, b, c = (int(x) for x in given.split(",")) if given else THROUGHPUT_THRESHOLDS
        tune_for_throughput((a, b, c))
    if _GC_LOG is not None:
        _GC_LOG.listening()


async def _serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "floor":
        transport, _ = await loop.create_datagram_endpoint(_Floor, local_addr=(HOST, 0))
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        _listening()
        print(f"READY {sock.getsockname()[1]}", flush=True)
        await stop.wait()
        transport.close()
        return
    if kind in ("ua", "ua-pd"):
        await _serve_ua(stop)
        return
    from sipimdn.stack import IncomingRequest, SipStack  # noqa: PLC0415 - the floor must not import it

    async with SipStack() as stack:

        def answer(incoming: IncomingRequest) -> None:
            incoming.respond(200)

        stack.on_request(answer)
        _listening()
        print(f"READY {stack.endpoints[0][1][1]}", flush=True)
        await _wait_for_stop(stop)


async def _wait_for_stop(stop: asyncio.Event) -> None:
    await stop.wait()
    if _GC_LOG is not None:
        _GC_LOG.snapshot()


async def _serve_ua(stop: asyncio.Event) -> None:
    from sipimdn import ListenEndpoint, UserAgent, UserAgentConfig  # noqa: PLC0415

    # A benchmark, not a deployment: every message comes from one address, which the per-address
    # notification limits (no reflection, RFC 5438 §14) would throttle. Older trees (KIND@DIR) may
    # not have those settings.
    known = {field.name for field in dataclasses.fields(UserAgentConfig)}
    lifted = {"imdn_rate_limit": 1 << 30, "imdn_byte_budget": 1 << 40}
    store_path = os.environ.get("PROFILE_STACK_STORE")
    if store_path:
        store_path = f"{store_path}.{os.getpid()}"
    config = UserAgentConfig(
        aor=f"sip:bob@{HOST}:0",
        listen=(ListenEndpoint("udp", HOST, 0),),
        store_path=store_path or ":memory:",
        **{name: value for name, value in lifted.items() if name in known},
    )
    async with UserAgent(config) as ua:

        @ua.on_message
        async def nothing(message: object) -> None:
            return None

        port = next(e.port for e in ua.endpoints if e.transport == "udp")
        _listening()
        watcher = asyncio.ensure_future(_TRACE.watch()) if _TRACE is not None else None
        print(f"READY {port}", flush=True)
        await _wait_for_stop(stop)
        if watcher is not None:
            watcher.cancel()
        if store_path:
            sizes = {p: os.path.getsize(p) for p in (store_path, f"{store_path}-wal") if os.path.exists(p)}
            print(f"STORE {json.dumps(sizes)}", file=sys.stderr, flush=True)


def serve(kind: str, profile: str | None) -> None:
    """Run one responder until SIGTERM."""
    global _GC_LOG  # noqa: PLW0603 - one responder per process
    if os.environ.get("PROFILE_STACK_NO_GC"):  # diagnosis only: how much of the cost is the cyclic GC
        gc.disable()
    gc_log = os.environ.get("PROFILE_STACK_GC_LOG")
    if gc_log:
        _GC_LOG = _GcLog()
    global _TRACE  # noqa: PLW0603 - one responder per process
    trace = os.environ.get("PROFILE_STACK_TRACE")
    if trace:
        _TRACE = _Trace()
    global _LOOP_COUNTS  # noqa: PLW0603 - one responder per process
    loop_counts = os.environ.get("PROFILE_STACK_LOOP_COUNTS")
    if loop_counts:
        _LOOP_COUNTS = _LoopCounts()
    # CPU time, not wall time: on a shared machine wall time charges preemption to whatever
    # call happened to be running (typically sendto, which wakes the peer).
    # PROFILE_STACK_THREAD_TIME: the event loop's thread only (process time also charges the
    # store's worker thread to whatever the loop happened to be running).
    clock = time.thread_time if os.environ.get("PROFILE_STACK_THREAD_TIME") else time.process_time
    profiler = cProfile.Profile(clock) if profile else None
    if profiler is not None:
        profiler.enable()
    asyncio.run(_serve(kind))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    if _GC_LOG is not None and gc_log:
        _GC_LOG.dump(gc_log)
    if _TRACE is not None and trace:
        _TRACE.dump(f"{trace}.{os.getpid()}")
    if _LOOP_COUNTS is not None and loop_counts:
        _LOOP_COUNTS.dump(f"{loop_counts}.{os.getpid()}")


# -- the load -------------------------------------------------------------------------------------

_CPIM_TEXT = ("Hello from the load client. " * 15)[:420]


def build_messages(count: int, port: int, local_port: int, run_id: str, kind: str = "stack") -> list[bytes]:
    """``count`` MESSAGE datagrams (CPIM body ~600 bytes), unique branch, Call-ID and tag each.

    For ``ua`` no notification is requested; for ``ua-pd`` positive-delivery is, and each
    message comes from its own sender (alice-<i>, at the client's address), as in the SIPp
    scenario: one sender would measure the per-destination queue and the IMDN rate limit.
    """
    out = []
    for i in range(count):
        user = f"alice-{i}" if kind in ("ua-pd", "ua-pd-silent") else "alice"
        notify = "" if kind == "ua" else "imdn.Disposition-Notification: positive-delivery\r\n"
        cpim = (
            f"From: <sip:{user}@{HOST}:{local_port}>\r\n"
            f"To: <sip:bob@{HOST}>\r\n"
            "DateTime: 2026-06-15T10:00:00Z\r\n"
            "NS: imdn <urn:ietf:params:imdn>\r\n"
            f"imdn.Message-ID: {run_id}{i:08d}\r\n"
            f"{notify}"
            "\r\n"
            "Content-Type: text/plain;charset=UTF-8\r\n"
            "\r\n"
            f"{_CPIM_TEXT}\r\n"
        ).encode()
        head = (
            f"MESSAGE sip:bob@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK{run_id}{i:08d};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{user}@{HOST}:{local_port}>;tag={run_id}{i}\r\n"
            f"To: <sip:bob@{HOST}:{port}>\r\n"
            f"Call-ID: c{i:08d}-{run_id}\r\n"
            "CSeq: 1 MESSAGE\r\n"
            "Content-Type: message/cpim\r\n"
            f"Content-Length: {len(cpim)}\r\n"
            "\r\n"
        ).encode()
        out.append(head + cpim)
    return out


_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*c(\d{8})-")
_STATUS = re.compile(rb"SIP/2\.0 (\d{3}) ")
_IMDN_OF = re.compile(rb"<message-id>[0-9a-z]*?(\d{8})</message-id>")
_COPIED_LINES = re.compile(rb"(?im)^(?:via|v|from|f|to|t|call-id|i|cseq)[ \t]*:.*$")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of each thread of ``pid`` (by thread id), from /proc."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()
        times[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


def _thread_split(pid: int, before: dict[int, float], answered: int) -> dict[str, float]:
    """CPU per answered message of the loop's thread (the process's first) and of all others
    (the store's worker, chiefly), since ``before``."""
    after = thread_cpu_seconds(pid)
    loop = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(t - before.get(tid, 0.0) for tid, t in after.items() if tid != pid)
    per = max(1, answered) / 1e6
    return {"loop_thread_us_per_msg": loop / per, "other_threads_us_per_msg": others / per}


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def _answer_imdn(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> int | None:
    """Answer a request (an IMDN from ``ua-pd``) 200; return the index of the IM it is about."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = [m.group(0).rstrip(b"\r") for m in _COPIED_LINES.finditer(head)]
    lines = [line + b";tag=load" if line[:3].lower() in (b"to:", b"t: ", b"t:<") else line for line in lines]
    sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n", addr)
    match = _IMDN_OF.search(data)
    return None if match is None else int(match.group(1))


def _drain(sock: socket.socket, answered: list[float], sent_at: list[float], now: float,
           imdns: list[bool] | None = None) -> int:
    """Read every waiting response; returns how many messages are now done.

    Without ``imdns`` a message is done with its final response; with it (``ua-pd``) requests
    are IMDNs, answered 200, and a message is done once both its 2xx and its IMDN arrived.
    """
    got = 0
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except BlockingIOError:
            return got
        if imdns is not None and not data.startswith(b"SIP/2.0 "):
            index = _answer_imdn(sock, data, addr)
            if index is not None and index < len(imdns) and not imdns[index]:
                imdns[index] = True
                if answered[index] > 0:
                    got += 1
            continue
        status = _STATUS.match(data)
        match = _CALL_ID.search(data)
        if status is None or match is None or int(status.group(1)) < 200:
            continue
        index = int(match.group(1))
        if index < len(answered) and answered[index] == 0.0:
            answered[index] = now - sent_at[index]
            if imdns is None or imdns[index]:
                got += 1


def _run_id(kind: str) -> str:
    return f"{os.getpid():x}{int(time.time()) % 100000:x}{kind}"


def windowed(  # noqa: PLR0917 - a command-line helper
    port: int, pid: int, count: int, window: int, warmup: int, kind: str = "stack"
) -> dict[str, float]:
    """Send ``warmup + count`` messages, at most ``window`` unanswered; server CPU over ``count``."""
    sock = _socket()
    total = warmup + count
    messages = build_messages(total, port, sock.getsockname()[1], _run_id("w"), kind)
    imdns = [False] * total if kind == "ua-pd" else None
    sent_at = [0.0] * total
    answered = [0.0] * total
    target = (HOST, port)
    next_index = done = 0
    cpu0 = wall0 = 0.0
    deadline = time.monotonic() + 60 + count / 500
    while done < total and time.monotonic() < deadline:
        if next_index == warmup and done == warmup:
            cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        limit = warmup if done < warmup else total
        while next_index < limit and next_index - done < window:
            sent_at[next_index] = time.perf_counter()
            sock.sendto(messages[next_index], target)
            next_index += 1
        select.select([sock], [], [], 0.5)
        done += _drain(sock, answered, sent_at, time.perf_counter(), imdns)
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds(pid) - cpu0
    sock.close()
    measured = [a for a in answered[warmup:] if a > 0]
    measured.sort()
    return {
        "answered": len(measured), "failed": count - len(measured),
        "cpu_us_per_msg": cpu / count * 1e6, "rate": len(measured) / wall if wall else 0.0,
        "p50_ms": measured[len(measured) // 2] * 1e3 if measured else 0.0,
        "p99_ms": measured[int(len(measured) * 0.99)] * 1e3 if measured else 0.0,
    }


def paced(port: int, pid: int, rate: float, seconds: float, kind: str = "stack") -> dict[str, float]:
    """Offer ``rate`` messages/s for ``seconds``, retransmitting unanswered ones at 0.5/1/2/4 s."""
    sock = _socket()
    total = int(rate * seconds)
    messages = build_messages(total, port, sock.getsockname()[1], _run_id("r"), kind)
    imdns = [False] * total if kind == "ua-pd" else None
    sent_at = [0.0] * total
    answered = [0.0] * total
    retransmissions = 0
    pending: list[tuple[float, int, float]] = []  # heap of (next retransmission, index, interval)
    target = (HOST, port)
    cpu0 = cpu_seconds(pid)
    threads0 = thread_cpu_seconds(pid)
    start = time.perf_counter()
    next_index = done = 0
    give_up = start + seconds + 10
    while done < total:
        now = time.perf_counter()
        if now > give_up:
            break
        due = min(total, int((now - start) * rate) + 1)
        while next_index < due:
            sent_at[next_index] = time.perf_counter()
            sock.sendto(messages[next_index], target)
            heapq.heappush(pending, (sent_at[next_index] + 0.5, next_index, 0.5))
            next_index += 1
        done += _drain(sock, answered, sent_at, time.perf_counter(), imdns)
        while pending and pending[0][0] <= now:
            _, index, interval = heapq.heappop(pending)
            if answered[index] or interval >= 4.0:
                continue  # answered, or gave up (counted as failed)
            sock.sendto(messages[index], target)
            retransmissions += 1
            heapq.heappush(pending, (now + 2 * interval, index, 2 * interval))
        select.select([sock], [], [], 0.0005)
    if imdns is not None:  # the IMDNs of the last messages, answered before the CPU is read
        settle = time.perf_counter() + 5
        while not all(imdns) and time.perf_counter() < settle:
            select.select([sock], [], [], 0.05)
            _drain(sock, answered, sent_at, time.perf_counter(), imdns)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0
    sock.close()
    latencies = sorted(a for a in answered if a > 0)
    threads = _thread_split(pid, threads0, len(latencies))
    if os.environ.get("PROFILE_STACK_TRACE"):  # when the slow answers were sent (see _Trace)
        slow = [(round(sent_at[i], 3), round(a * 1e3, 1)) for i, a in enumerate(answered) if a > 0.05]
        Path(f"{os.environ['PROFILE_STACK_TRACE']}.{pid}.client").write_text(
            json.dumps({"start": start, "slow": slow}))
    return {
        "offered": rate, "sent": total, "answered": len(latencies), "failed": total - len(latencies),
        "retransmissions": retransmissions, "achieved_rate": len(latencies) / wall,
        "cpu_us_per_msg": cpu / max(1, len(latencies)) * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else 0.0,
        "max_ms": latencies[-1] * 1e3 if latencies else 0.0,
        **threads,
    }


# -- orchestration --------------------------------------------------------------------------------

def _pin(command: list[str], cpu: str) -> list[str]:
    if len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", cpu, *command]
    return command


#: ``sipimdn listen``'s per-destination notification budgets lifted, as in bench/load/scenarios.py:
#: every message of the load comes from one address.
_LISTEN_BUDGETS = ("--imdn-rate-limit", str(1 << 30), "--imdn-byte-budget", str(1 << 40))


def _free_port() -> int:
    """A port free for both UDP and TCP on HOST (``listen`` takes the same one for both)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((HOST, 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind((HOST, port))
            except OSError:
                continue
            return int(port)
        finally:
            udp.close()
            tcp.close()
    raise RuntimeError("no port free for both UDP and TCP")


class Server:
    """A responder child process (``serve``, or ``python -m sipimdn listen``) and its port."""

    def __init__(self, spec: str, profile: str | None = None, gc_log: str | None = None) -> None:
        # "stack", "floor", "ua", "ua-pd", or "KIND@DIR": the code imported from DIR (e.g. an unpacked older
        # commit, `git archive REV sipimdn | tar -x -C DIR`) for before/after figures in one run.
        # "KIND+gc": the collector tuned once the server listens (see _listening).
        # "listen" / "listen-pd": `python -u -m sipimdn listen` as bench/run.py runs it (text output
        # into a log file), fed the load of "ua" / "ua-pd".
        kind, _, path = spec.partition("@")
        kind, _, tuned = kind.partition("+")
        self.kind = kind
        self.gc_log = gc_log
        env = dict(os.environ)
        if path:
            env["PYTHONPATH"] = path
        self._log: Any = None
        if kind in ("listen", "listen-pd"):
            self.kind = "ua" if kind == "listen" else "ua-pd"
            self._start_listen(env, path)
            return
        if tuned == "gc":
            env["PROFILE_STACK_GC_TUNED"] = "1"
        if gc_log:
            env["PROFILE_STACK_GC_LOG"] = gc_log
        serve_kind = "ua-pd" if kind == "ua-pd-silent" else kind  # the same server, a silent client
        command = [sys.executable, __file__, "serve", serve_kind]
        if profile:
            command += ["--profile", profile]
        self.process = subprocess.Popen(_pin(command, "1"), stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.process.kill()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.port = int(line.split()[1])

    def _start_listen(self, env: dict[str, str], path: str) -> None:
        import tempfile  # noqa: PLC0415 - the listen server only

        self.port = _free_port()
        command = [
            sys.executable, "-u", "-m", "sipimdn", "listen", "--aor", f"sip:bob@{HOST}:{self.port}",
            "--listen", f"udp:{HOST}:{self.port}", "--listen", f"tcp:{HOST}:{self.port}", *_LISTEN_BUDGETS,
        ]  # fmt: skip
        self._log = tempfile.NamedTemporaryFile(prefix="profile-listen-", suffix=".log")  # noqa: SIM115
        # `-m` puts the working directory first on sys.path: run from DIR so DIR's sipimdn is the one.
        cwd = path.split(os.pathsep, maxsplit=1)[0] or None
        self.process = subprocess.Popen(
            _pin(command, "1"), stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            if b" listening on " in Path(self._log.name).read_bytes():
                return
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError(f"listen did not start: {Path(self._log.name).read_bytes()[-2000:]!r}")

    @property
    def pid(self) -> int:
        """The process whose CPU is read (taskset execs, so it is the same pid)."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()

    def gc_summary(self) -> dict[str, float] | None:
        """Pauses per generation (count, max and total ms), tracked objects; None without a GC log."""
        if not self.gc_log or not Path(self.gc_log).exists():
            return None
        data = json.loads(Path(self.gc_log).read_text())
        pauses = data["pauses"]
        out: dict[str, float] = {"tracked": data["tracked"], "frozen": data["frozen"]}
        out.update({f"rss_{k}_mib": v / 1024 for k, v in data["rss_kib"].items()})
        out["cycles_collected"] = sum(p[3] for p in pauses)
        for generation in (0, 1, 2):
            ms = sorted(p[2] for p in pauses if p[0] == generation)
            out[f"gen{generation}_n"] = len(ms)
            out[f"gen{generation}_max_cpu_ms"] = ms[-1] if ms else 0.0
            out[f"gen{generation}_total_cpu_ms"] = sum(ms)
        out["max_wall_ms"] = max((p[1] for p in pauses), default=0.0)
        out["over_10ms_cpu"] = sum(1 for p in pauses if p[2] > 10)
        out["over_10ms_wall"] = sum(1 for p in pauses if p[1] > 10)
        return out


def _pin_self() -> None:
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {0})


def _show(figures: dict[str, float]) -> str:
    return json.dumps({k: round(v, 2) for k, v in figures.items()})


def cmd_run(args: argparse.Namespace) -> None:
    _pin_self()
    kinds = args.servers.split(",")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    servers = {k: Server(k, gc_log=_gc_log_path(args, k)) for k in kinds}
    try:
        if args.paced or args.sipp:
            for server in servers.values():
                windowed(server.port, server.pid, args.warmup, 32, 0, server.kind)  # warm-up
        for round_ in range(args.repeat):
            for kind in kinds:
                server = servers[kind]
                if args.sipp:
                    figures = sipp_round(server, args.sipp, args.seconds)
                elif args.paced:
                    figures = paced(server.port, server.pid, args.paced, args.seconds, server.kind)
                else:
                    figures = windowed(
                        server.port, server.pid, args.count, args.window, args.warmup, server.kind
                    )
                results[kind].append(figures)
                print(f"round {round_ + 1} {kind} {_show(figures)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    for kind, server in servers.items():
        summary = server.gc_summary()
        if summary is not None:
            print(f"gc {kind} {_show(summary)}")
    for kind, server in servers.items():
        trace = _trace_summary(server.pid)
        if trace is not None:
            print(f"trace {kind} {trace}")
    medians = {k: statistics.median(r["cpu_us_per_msg"] for r in results[k]) for k in kinds}
    for kind in kinds:
        print(f"median {kind} cpu_us_per_msg={medians[kind]:.1f}")
    if "floor" in medians:
        for kind in kinds:
            if kind != "floor":
                print(f"ratio {kind}/floor = {medians[kind] / medians['floor']:.2f}")


def sipp_round(server: Server, rate: int, seconds: float) -> dict[str, float]:
    """SIPp offering ``rate`` calls/s for ``seconds`` as bench/run.py's receive (``ua``, ``listen``) or
    positive-delivery (``ua-pd``, ``listen-pd``) step does; the server's CPU per successful call."""
    import tempfile  # noqa: PLC0415 - SIPp rounds only

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from load import sipp_load  # noqa: PLC0415 - the benchmark's SIPp driver

    binary = sipp_load.sipp_binary()
    if binary is None:
        raise SystemExit("sipp is not installed")
    pd = server.kind == "ua-pd"
    with tempfile.TemporaryDirectory(prefix="profile-sipp-") as logs:
        step = sipp_load.run_uac(
            binary, "uac_cpim_pd.xml" if pd else "uac_cpim.xml", (HOST, server.port), "udp", rate, seconds,
            Path(logs), lambda: cpu_seconds(server.pid), ooc_scenario="ooc_imdn_ack.xml" if pd else None,
        )  # fmt: skip
    return {
        "offered": rate, "successful": step.successful, "failed": step.failed,
        "retransmissions": step.retransmissions, "achieved_rate": step.achieved,
        "cpu_us_per_msg": step.cpu_us_per_msg,
    }


def _trace_summary(pid: int) -> str | None:
    """The last paced round of PROFILE_STACK_TRACE in brief: the largest store batches, the
    longest loop stalls and in which seconds of the round the slow answers were sent."""
    base = os.environ.get("PROFILE_STACK_TRACE")
    if not base or not Path(f"{base}.{pid}").exists() or not Path(f"{base}.{pid}.client").exists():
        return None
    server = json.loads(Path(f"{base}.{pid}").read_text())
    client = json.loads(Path(f"{base}.{pid}.client").read_text())
    start = client["start"]
    batches = [b for b in server["batches"] if b[0] >= start]
    largest = sorted(batches, key=lambda b: -b[1])[:3]
    stalls = sorted((s for s in server["stalls"] if s[0] >= start), key=lambda s: -s[1])[:4]
    slow: dict[int, int] = {}
    for sent, _ in client["slow"]:
        second = int(sent - start)
        slow[second] = slow.get(second, 0) + 1
    return (
        f"batches={len(batches)} largest(ops,ms,at_s)="
        f"{[(b[1], round(b[3] * 1e3, 1), round(b[0] - start, 1)) for b in largest]} "
        f"stalls(ms,at_s)={[(round(s[1] * 1e3, 1), round(s[0] - start, 1)) for s in stalls]} "
        f"answers_over_50ms_by_second={sorted(slow.items())}"
    )


def _gc_log_path(args: argparse.Namespace, spec: str) -> str | None:
    if not args.gc_log:
        return None
    Path(args.gc_log).mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9+_-]", "_", spec)
    return str(Path(args.gc_log) / f"{name}-{os.getpid()}.json")


def cmd_rate(args: argparse.Namespace) -> None:
    _pin_self()
    server = Server(args.server, gc_log=_gc_log_path(args, args.server))
    try:
        windowed(server.port, server.pid, 2000, 32, 0, server.kind)  # warm-up
        print(_show(paced(server.port, server.pid, args.rate, args.seconds, server.kind)))
    finally:
        server.stop()
    summary = server.gc_summary()
    if summary is not None:
        print(f"gc {_show(summary)}")


def cmd_profile(args: argparse.Namespace) -> None:
    _pin_self()
    server = Server(args.server, profile=args.out)
    try:
        if args.rate:
            print(json.dumps(paced(server.port, server.pid, args.rate, args.count / args.rate, server.kind)))
        else:
            figures = windowed(server.port, server.pid, args.count, args.window, args.warmup, server.kind)
            print(json.dumps(figures))
    finally:
        server.stop()
    stats = pstats.Stats(args.out)
    stats.sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("kind", choices=["stack", "floor", "ua", "ua-pd"])
    p.add_argument("--profile")
    p = sub.add_parser("run")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--servers", default="stack,floor",
                   help="comma-separated: stack, floor, ua, ua-pd, ua-pd-silent, listen, listen-pd, "
                        "KIND+gc, KIND@DIR")
    p.add_argument("--gc-log", help="directory for per-server GC pause logs (summary printed)")
    p.add_argument("--paced", type=float, default=0.0,
                   help="offer this rate for --seconds per round (as `rate` does) instead of windowed")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--sipp", type=int, default=0,
                   help="SIPp offers this rate for --seconds per round (bench/run.py's scenarios)")
    p = sub.add_parser("rate")
    p.add_argument("--rate", type=float, default=10000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--server", default="stack",
                   help="stack, floor, ua, ua-pd, listen, listen-pd, KIND+gc or KIND@DIR")
    p.add_argument("--gc-log", help="directory for the server's GC pause log (summary printed)")
    p = sub.add_parser("profile")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--server", default="stack", help="stack, ua, ua-pd or KIND@DIR")
    p.add_argument("--rate", type=float, default=0.0, help="paced at this rate instead of windowed")
    p.add_argument("--out", default="/tmp/stack.prof")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--sort", default="tottime")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.kind, args.profile)
    elif args.command == "run":
        cmd_run(args)
    elif args.command == "rate":
        cmd_rate(args)
    else:
        cmd_profile(args)


if __name__ == "__main__":
    main()
