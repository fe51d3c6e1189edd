"""What the command line prints when things go wrong or when asked to show more: one-line errors
with hints, ``--version``, ``-v``/``-vv`` logging, ``--trace`` and progress lines; and the
``sipimdn.wire`` logger behind ``--trace``."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import logging
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_ua import CLI, ENV, _json_lines, _stop, listener

from sipimdn import cli_output
from sipimdn.cli import logging_to_stderr
from sipimdn.cli_output import Printer
from sipimdn.dialog.factory import build_request
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.events import (
    DispositionChanged,
    NotificationAbandoned,
    NotificationAccepted,
    NotificationRejected,
    NotificationsDeclined,
    NotificationSent,
    RegistrationExpired,
    RegistrationFailed,
    RegistrationSucceeded,
    TrackingEnded,
    Unregistered,
)
from sipimdn.imdn.tracker import DeclineReason, RejectReason
from sipimdn.imdn.vocabulary import DispositionState, Kind, Status
from sipimdn.stack import SipStack
from sipimdn.ua import IncomingMessage

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d"


def _run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], check=False, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@contextmanager
def silent_udp_port() -> Iterator[int]:
    """A bound UDP socket that never reads: requests to it go unanswered (and draw no ICMP error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_version_is_the_distributions() -> None:
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sipimdn {importlib.metadata.version('sipimdn')}"


SEND = ["send", "--aor", "sip:alice@127.0.0.1:0", "--text", "x"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*SEND, "--to", "bob@127.0.0.1"], "did you mean sip:bob@127.0.0.1?"),
        ([*SEND, "--to", "tel:+15551234"], "give a sip: or sips: URI"),
        ([*SEND, "--to", "sip:bob@127.0.0.1", "--wait", "-1"], "must be a positive number of seconds"),
        ([*SEND, "--to", "sip:bob@127.0.0.1", "--wait", "0"], "must be a positive number of seconds"),
        ([*SEND, "--to", "sip:bob@127.0.0.1", "--wait", "nan"], "must be a positive number of seconds"),
        (["send", "--aor", "alice@127.0.0.1", "--to", "sip:b@127.0.0.1", "--text", "x"], "no scheme"),
        (["listen", "--aor", "sip:b@127.0.0.1", "--register-expires", "0"], "binding lifetime"),
        (["listen", "--aor", "sip:b@127.0.0.1", "--auto-display", "-2"], "positive number of seconds"),
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(argv: list[str], expected: str) -> None:
    line = _one_line_error(_run(*argv), 2)
    assert line.startswith("sipimdn") and ": error: " in line
    assert expected in line
    assert line.endswith("--help)")


def test_port_in_use_is_one_line_with_a_hint() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        line = _one_line_error(
            _run("listen", "--aor", "sip:b@127.0.0.1", "--listen", f"udp:127.0.0.1:{port}"), 1
        )
    assert line.startswith(f"sipimdn listen: error: cannot bind UDP 127.0.0.1:{port}: Address already in use")
    assert "hint: " in line and "--listen" in line


def test_unopenable_store_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "no" / "such" / "dir" / "s.db"
    line = _one_line_error(_run(*SEND, "--to", "sip:bob@127.0.0.1:9", "--store", str(store)), 1)
    assert line.startswith("sipimdn send: error: cannot open store") and "--store" in line


def test_missing_certificate_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    line = _one_line_error(_run(*SEND, "--to", "sip:bob@127.0.0.1:9", "--cert", str(missing)), 2)
    assert f"cannot load --cert {missing}: No such file or directory" in line


def test_tls_handshake_failure_hints_at_ca(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = ["--cert", str(cert_file), "--key", str(key_file)]
    with listener(*tls, aor="sips:bob@127.0.0.1:0", listen="tls:127.0.0.1:0") as (proc, listening):
        # No --ca: the listener's certificate cannot be verified.
        result = _run(*SEND, "--to", listening["aor"], "--notify", "", "--wait", "5", "--json")
        _stop(proc)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    failed = _json_lines(result.stdout)[-1]
    assert failed["event"] == "failed"
    assert "TLS handshake with 127.0.0.1:" in failed["error"]
    assert "TLS TLS" not in failed["error"] and "tls TLS" not in failed["error"]
    assert "--ca" in failed["hint"]


def test_send_trace_shows_each_message_in_full() -> None:
    with listener() as (proc, listening):
        result = _run(*SEND, "--to", listening["aor"], "--notify", "", "--wait", "5", "--trace")
        _, _events = _stop(proc)
    assert result.returncode == 0, result.stdout + result.stderr
    blocks = re.split(rf"^-{{47}} ({TIME})\n", result.stderr, flags=re.MULTILINE)
    assert blocks[0] == ""
    traced = [(blocks[i], blocks[i + 1]) for i in range(1, len(blocks), 2)]
    heads = [block.split("\n", 1)[0] for _, block in traced]
    port = listening["aor"].rsplit(":", 1)[1]
    assert re.fullmatch(
        rf"UDP message sent \((\d+) bytes\) to 127\.0\.0\.1:{port} from 127\.0\.0\.1:\d+:", heads[0]
    )
    assert re.fullmatch(
        rf"UDP message received \(\d+ bytes\) from 127\.0\.0\.1:{port} to 127\.0\.0\.1:\d+:", heads[1]
    )
    sent = traced[0][1].split("\n", 2)[2]
    assert sent.startswith(f"MESSAGE {listening['aor']} SIP/2.0\n")
    assert "\nCall-ID: " in sent and "\n\nx" in sent  # headers, blank line, body
    size = int(re.search(r"\((\d+) bytes\)", heads[0]).group(1))  # type: ignore[union-attr]
    assert len(sent.rstrip("\n").replace("\n", "\r\n").encode()) in (size, size - 2)
    assert traced[1][1].split("\n", 2)[2].startswith("SIP/2.0 200 OK\n")
    assert "done: MESSAGE -> 200" in result.stdout  # the events are unchanged, on stdout


def test_listen_trace_goes_to_stderr_and_json_stays_parseable() -> None:
    with listener("--trace") as (proc, listening):
        result = _run(*SEND, "--to", listening["aor"], "--notify", "", "--wait", "5")
        proc.send_signal(signal.SIGINT)
        out, stderr = proc.communicate(timeout=15)
    events = _json_lines(out)
    assert result.returncode == 0 and proc.returncode == 0
    assert [e["event"] for e in events][-2:] == ["message", "stopped"]
    assert re.search(
        r"^UDP message received \(\d+ bytes\) from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:\d+:$",
        stderr,
        re.MULTILINE,
    )
    assert re.search(r"^UDP message sent \(\d+ bytes\) to .*:\n\nSIP/2\.0 200 OK$", stderr, re.MULTILINE)


def test_retransmissions_show_as_progress_lines_and_v_logs_them() -> None:
    with silent_udp_port() as port:
        quiet = _run(*SEND, "--to", f"sip:bob@127.0.0.1:{port}", "--notify", "", "--wait", "2.5")
        verbose = _run(*SEND, "--to", f"sip:bob@127.0.0.1:{port}", "--notify", "", "--wait", "0.8", "-v")
    assert quiet.returncode == 1 and "no final response in time" in quiet.stdout
    # From the second retransmission on (1.5 s with default timers): no line for a peer that is just slow;
    # none after the outcome (the close grace may retransmit once more).
    peer = f"sip:bob@127.0.0.1:{port} (UDP 127.0.0.1:{port})"
    expected = f"sipimdn send: no answer from {peer} yet, retransmitting MESSAGE (2)"
    assert quiet.stderr.splitlines() == [expected]
    assert verbose.returncode == 1
    logged = [line for line in verbose.stderr.splitlines() if " sipimdn.dialog.layer: " in line]
    assert logged, verbose.stderr  # (1) at 0.5 s; (2) may follow during the close grace
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO sipimdn\.dialog\.layer: no answer from "
        rf"sip:bob@127\.0\.0\.1:{port} \(UDP 127\.0\.0\.1:{port}\) yet, retransmitting MESSAGE \(1\)",
        logged[0],
    )
    assert "sipimdn send: no answer" not in verbose.stderr  # not printed twice


def test_waiting_on_a_stream_transport_shows_progress() -> None:
    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = _run(
            *SEND,
            "--to",
            f"sip:bob@127.0.0.1:{port}",
            "--transport",
            "tcp",
            "--notify",
            "",
            "--wait",
            "1.5",
            "--json",
        )
    assert result.returncode == 1
    assert _json_lines(result.stdout)[-1]["event"] == "timeout"
    assert result.stderr.splitlines() == [
        f"sipimdn send: no answer from sip:bob@127.0.0.1:{port} yet after 1 s, waiting"
    ]


def test_v_and_vv_set_the_level_and_print_level_and_logger_name() -> None:
    log = logging.getLogger("sipimdn.test.cli")
    for verbosity, shown in ((0, {"WARNING"}), (1, {"WARNING", "INFO"}), (2, {"WARNING", "INFO", "DEBUG"})):
        out = io.StringIO()
        with logging_to_stderr(verbosity, stream=out):
            log.debug("d")
            log.info("i")
            log.warning("w")
            logging.getLogger("sipimdn.wire").debug("never here: --trace shows the wire")
        lines = out.getvalue().splitlines()
        assert {line.split(" ")[2] for line in lines} == shown
        assert all(" sipimdn.test.cli: " in line for line in lines)
    # Nothing is left installed once the command has run.
    assert logging.getLogger("sipimdn").level == logging.NOTSET
    assert logging.getLogger("sipimdn.wire").propagate


def test_the_package_logger_has_a_null_handler() -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("sipimdn").handlers)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def wire() -> Iterator[_Records]:
    logger = logging.getLogger("sipimdn.wire")
    handler = _Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


async def _exchange() -> tuple[int, int]:
    """alice's stack sends bob's one MESSAGE over UDP; returns (alice's port, bob's port)."""
    timers = TimerConfig(t1=0.05, t2=0.4, t4=0.2)
    async with SipStack(timers=timers) as alice, SipStack(timers=timers) as bob:
        bob.on_request(lambda incoming: incoming.respond(200))
        bob_port = bob.endpoints[0][1][1]
        request = build_request(
            "MESSAGE",
            f"sip:bob@127.0.0.1:{bob_port}",
            "<sip:alice@example.com>",
            "<sip:bob@example.com>",
            body=b"hi",
            content_type="text/plain",
        )
        response = await alice.send_request(request)
        assert response.status_code == 200
        return alice.endpoints[0][1][1], bob_port


async def test_wire_logger_carries_every_message_with_its_parts(wire: _Records) -> None:
    alice_port, bob_port = await _exchange()
    seen = [
        (r.sip_direction, r.sip_peer[1], r.sip_local[1], r.sip_data.split(b" ", 1)[0])  # type: ignore[attr-defined]
        for r in wire.records
    ]
    assert sorted(seen) == sorted(
        [
            ("sent", bob_port, alice_port, b"MESSAGE"),
            ("received", alice_port, bob_port, b"MESSAGE"),
            ("sent", alice_port, bob_port, b"SIP/2.0"),
            ("received", bob_port, alice_port, b"SIP/2.0"),
        ]
    )
    message = wire.records[0].getMessage()
    assert message.startswith(f"UDP sent {len(wire.records[0].sip_data)} bytes to 127.0.0.1:")  # type: ignore[attr-defined]
    assert "\nMESSAGE sip:bob@127.0.0.1:" in message and "\r" not in message


async def test_wire_logging_off_costs_no_record(monkeypatch: pytest.MonkeyPatch) -> None:
    import sipimdn.stack

    def boom(*args: object) -> None:
        raise AssertionError("log_wire called with the wire logger off")

    monkeypatch.setattr(sipimdn.stack, "log_wire", boom)
    assert not logging.getLogger("sipimdn.wire").isEnabledFor(logging.DEBUG)
    await _exchange()


def test_trace_escapes_control_characters() -> None:
    from sipimdn._wirelog import printable_message

    assert (
        printable_message(b"MESSAGE x\r\nSubject: \x1b[2Jhi\x07\r\n\r\n\xff")
        == "MESSAGE x\nSubject: \\x1b[2Jhi\\x07\n\n\\xff"
    )


# -- the printer: the lines of a short delay in one write, nothing lost or reordered ----------


class _Writes(io.StringIO):
    """A text stream that records each write and each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


async def test_printer_writes_the_lines_of_its_delay_at_once_when_it_ends() -> None:
    out = _Writes()
    printer = Printer(as_json=False, stream=out, delay=0.05)
    printer.line("one")
    await asyncio.sleep(0)
    printer.emit("x", "two", ignored=1)
    await asyncio.sleep(0.01)  # loop turns go by: the lines still wait
    printer.emit_dataclass(Unregistered(aor="sip:bob@example.com", confirmed=True))
    assert out.writes == []
    await asyncio.sleep(0.1)
    assert out.writes == ["one\ntwo\nsip:bob@example.com unregistered\n"]
    assert out.flushes == 1
    printer.line("three")  # the next line starts the next delay
    assert out.writes[1:] == []
    await asyncio.sleep(0.1)
    assert out.getvalue().splitlines() == ["one", "two", "sip:bob@example.com unregistered", "three"]
    assert out.flushes == 2


async def test_printer_default_delay_is_tens_of_milliseconds() -> None:
    """What ``listen --json | jq`` waits at most for an event: well under a second."""
    assert 0.005 <= cli_output.FLUSH_DELAY <= 0.1
    out = _Writes()
    printer = Printer(as_json=True, stream=out)
    printer.emit("message", "", text="hi")
    assert out.writes == []
    await asyncio.sleep(cli_output.FLUSH_DELAY * 3)
    assert out.writes == ['{"event": "message", "text": "hi"}\n']


async def test_printer_flush_writes_what_is_buffered_and_leaves_no_empty_write() -> None:
    out = _Writes()
    printer = Printer(as_json=True, stream=out, delay=0.01)
    printer.emit("stopped", "stopped")
    printer.flush()  # as the commands do before they return
    assert out.writes == ['{"event": "stopped"}\n']
    await asyncio.sleep(0.03)  # the cancelled timer writes nothing
    assert out.writes == ['{"event": "stopped"}\n'] and out.flushes == 1
    printer.line("after")  # a new delay begins
    await asyncio.sleep(0.03)
    assert out.writes[-1] == "after\n"


async def test_printer_buffer_is_bounded_a_full_one_is_written_at_once() -> None:
    out = _Writes()
    printer = Printer(as_json=False, stream=out, delay=60.0, max_size=10)
    printer.line("abcd")
    printer.line("efg")
    assert out.writes == []  # 7 characters held
    printer.line("hij")  # 10: written now, without waiting for the minute
    assert out.writes == ["abcd\nefg\nhij\n"]
    printer.line("a line longer than the bound")  # alone over the bound: at once too
    assert out.writes[1:] == ["a line longer than the bound\n"]
    printer.line("k")
    assert out.writes[2:] == []
    printer.flush()
    assert out.getvalue() == "abcd\nefg\nhij\na line longer than the bound\nk\n"


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.text(alphabet="abc xyz", min_size=0, max_size=7).map(lambda t: ("line", t)),
            st.sampled_from([("wait", ""), ("flush", ""), ("turn", "")]),
        ),
        max_size=25,
    )
)
def test_printer_keeps_every_line_in_order_whatever_flushes_them(steps: list[tuple[str, str]]) -> None:
    """Lines written by the timer, by a full buffer and by explicit flushes, interleaved: the
    stream ends up with every line once, in the order printed, each write whole lines."""
    out = _Writes()

    async def run() -> None:
        printer = Printer(as_json=False, stream=out, delay=0.002, max_size=12)
        for kind, text in steps:
            if kind == "line":
                printer.line(text)
            elif kind == "wait":
                await asyncio.sleep(0.005)
            elif kind == "turn":
                await asyncio.sleep(0)
            else:
                printer.flush()
        printer.flush()

    asyncio.run(run())
    printed = [text for kind, text in steps if kind == "line"]
    assert out.getvalue() == "".join(f"{text}\n" for text in printed)
    assert all(write.endswith("\n") for write in out.writes)
    assert "" not in out.writes


async def test_a_log_record_on_stderr_comes_after_the_lines_printed_before_it() -> None:
    """``listen > log 2>&1``: one file behind both streams; a warning does not overtake the
    events printed before it (nor does a progress line)."""
    shared = _Writes()
    printer = Printer(as_json=False, stream=shared, delay=60.0)
    with logging_to_stderr(0, stream=shared), cli_output._flushed_before_logging(printer):
        printer.line("message one")
        logging.getLogger("sipimdn.test").warning("something odd")
        printer.line("message two")
        cli_output._Progress("listen", shared, before=printer.flush).say("still waiting")
        printer.line("message three")
    printer.flush()
    lines = shared.getvalue().splitlines()
    assert lines[0] == "message one"
    assert lines[1].endswith("WARNING sipimdn.test: something odd")
    assert lines[2:] == ["message two", "sipimdn listen: still waiting", "message three"]
    # Out of the context the handlers no longer flush the printer.
    with logging_to_stderr(0, stream=shared):
        printer.line("later")
        logging.getLogger("sipimdn.test").warning("after")
    assert shared.getvalue().splitlines()[-1].endswith("after")
    printer.flush()
    assert shared.getvalue().splitlines()[-1] == "later"


async def test_a_log_record_from_another_thread_leaves_the_printer_to_its_loop() -> None:
    """The store's worker thread may log (a failed write): that record goes out, but the
    printer's buffer and timer stay the loop's (no flush from the worker's thread)."""
    shared = _Writes()
    printer = Printer(as_json=False, stream=shared, delay=60.0)
    with logging_to_stderr(0, stream=shared), cli_output._flushed_before_logging(printer):
        printer.line("held")
        worker = threading.Thread(target=lambda: logging.getLogger("sipimdn.test").warning("from the worker"))
        worker.start()
        worker.join(5.0)
        written = shared.getvalue().splitlines()
        assert len(written) == 1 and written[0].endswith("WARNING sipimdn.test: from the worker")
        logging.getLogger("sipimdn.test").warning("from the loop")  # the loop's own: "held" first
    lines = shared.getvalue().splitlines()
    assert len(lines) == 3 and lines[1] == "held" and lines[2].endswith("from the loop")


class _Terminal(_Writes):
    def isatty(self) -> bool:
        return True


async def test_printer_on_a_terminal_writes_each_line_at_once() -> None:
    out = _Terminal()
    printer = Printer(as_json=False, stream=out)
    printer.line("a")
    printer.emit("b", "b")
    assert out.writes == ["a\n", "b\n"] and out.flushes == 2
    await asyncio.sleep(cli_output.FLUSH_DELAY * 2)
    assert out.writes == ["a\n", "b\n"]


def test_printer_outside_a_loop_writes_each_line_at_once() -> None:
    out = _Writes()
    printer = Printer(as_json=False, stream=out)
    printer.line("a")
    assert out.writes == ["a\n"]
    printer.emit("b", "b")
    assert out.writes == ["a\n", "b\n"]


_LIBRARY_EVENTS = [
    DispositionChanged(message_id="m1", recipient="sip:bob@b.example", previous=DispositionState.PENDING,
                       state=DispositionState.DELIVERED, kind="delivery", status="delivered", sip_status=None,
                       at=1.5),
    NotificationAbandoned(notification_id="n1", message_id="m1", reason="no answer"),
    NotificationAccepted(message_id="m1", recipient="sip:bob@b.example", kind="display", status="displayed",
                         notification_id=None, changed=True),
    NotificationRejected(message_id="m1", reason=RejectReason.UNKNOWN_MESSAGE, kind="delivery",
                         status="delivered", sender="sip:eve@e.example", detail="x"),
    NotificationSent(notification_id="n1", message_id="m1", kind=Kind.DELIVERY, status=Status.DELIVERED,
                     to="sip:alice@a.example", sip_status=200, attempt=2),
    NotificationsDeclined(message_id="m1", sender="sip:alice@a.example", kinds=("display", "delivery"),
                          reason=DeclineReason.ROUTE_TOO_LONG),
    RegistrationExpired(aor="sip:bob@b.example"),
    RegistrationFailed(aor="sip:bob@b.example", status_code=None, reason="timeout", retry_at=3.0),
    RegistrationSucceeded(aor="sip:bob@b.example", expires=3600, refresh_at=1800.0, refreshed=False),
    TrackingEnded(message_id="m1", states=(("sip:bob@b.example", DispositionState.DELIVERED),)),
    Unregistered(aor="sip:bob@b.example", confirmed=False),
]


@pytest.mark.parametrize("event", _LIBRARY_EVENTS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("as_json", [False, True])
def test_emit_dataclass_prints_what_emit_with_every_field_prints(event: object, as_json: bool) -> None:
    """Differential: ``emit_dataclass`` (builds only what it prints) against ``emit`` given the
    readable line and every field, as the commands printed library events before."""
    fields = cli_output._jsonable(event)
    reference, fast = io.StringIO(), io.StringIO()
    Printer(as_json=as_json, stream=reference).emit(
        cli_output._event_name(event), cli_output._describe(event), **fields
    )
    Printer(as_json=as_json, stream=fast).emit_dataclass(event)
    assert fast.getvalue() == reference.getvalue()
    assert fast.getvalue().count("\n") == 1


def _message_line_before(message: IncomingMessage) -> str:
    """The readable line of a received message, as ``listen`` built it inline before."""
    return (
        f"message from {message.sender}"
        + (f" (asserted: {asserted})" if (asserted := cli_output._asserted(message)) is not None else "")
        + f": {message.text!r}"
        + (f" (notifications requested: {', '.join(sorted(message.notify))})" if message.notify else "")
    )


@given(
    sender=st.text(min_size=1, max_size=20),
    body=st.binary(max_size=30),
    charset=st.sampled_from(["utf-8", "latin-1", "no-such-charset"]),
    notify=st.frozensets(st.sampled_from(["positive-delivery", "negative-delivery", "display"])),
    asserted=st.none() | st.text(max_size=20),
    withheld=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_message_line_is_the_line_listen_printed_before(
    *, sender: str, body: bytes, charset: str, notify: frozenset[str], asserted: str | None, withheld: bool
) -> None:
    message = IncomingMessage(
        sender=sender, sender_name=None, recipient="sip:bob@b.example", cpim_from=None, cpim_to=(),
        content_type="text/plain", content_params={"charset": charset}, body=body, subject=None,
        message_id=None, datetime=None, notify=notify, transport="udp", source=("127.0.0.1", 5060),
        request=build_request("MESSAGE", "sip:bob@b.example", "<sip:a@a.example>", "<sip:bob@b.example>"),
        asserted_identity=asserted, identity_withheld=withheld,
    )  # fmt: skip
    assert cli_output._message_line(message) == _message_line_before(message)
