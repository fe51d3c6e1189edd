"""Wireshark's SIP dissector, an independent decoder, reads what we send without complaint.

Two user agents exchange a message, its 200, and delivery and display notifications (each a
MESSAGE with a message/cpim body and its 200) on loopback while tshark captures their two ports.
Every frame must decode as SIP, with no malformed-packet mark and no expert warning or error; the
requests and responses, Call-IDs, CSeqs and Content-Lengths Wireshark reads must be the ones we
sent. Wireshark 4.0 has no CPIM dissector, so the bodies (CPIM around plain text or IMDN XML) are
checked by our own codec tests, not here.

Capturing needs root (or CAP_NET_RAW): scripts/test runs as root in CI.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _peers import IN_CI, require_binary
from ua_helpers import ua_config

from sipimdn import IncomingMessage, UserAgent

pytestmark = pytest.mark.interop

# Wireshark's expert severities (epan/proto.h): PI_WARN and PI_ERROR.
_WARN = 0x00600000


def _start_capture(tshark: str, ports: list[int], pcap: Path) -> subprocess.Popen[str]:
    capture_filter = "host 127.0.0.1 and (" + " or ".join(f"port {port}" for port in ports) + ")"
    proc = subprocess.Popen(
        [tshark, "-i", "lo", "-f", capture_filter, "-w", str(pcap), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    # tshark prints "Capturing on 'Loopback: lo'" before its dumpcap runs, then "Capture started."
    # once it does; a signal between the two is lost. Start the exchange only after the second
    # (or, for a tshark that does not print it, 2 s after the first).
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    seen = ""
    announced: float | None = None
    try:
        while "Capture started" not in seen:
            if announced is not None and time.monotonic() - announced > 2:
                break
            if not selector.select(1 if announced is not None else 20) or proc.poll() is not None:
                if announced is not None and proc.poll() is None:
                    continue
                _stop(proc)
                raise AssertionError(f"tshark did not start capturing: {seen}")
            seen += proc.stderr.readline()
            if announced is None and "Capturing on" in seen:
                announced = time.monotonic()
    finally:
        selector.close()
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT (tshark finishes the file), SIGKILL if it does not end in 20 s."""
    if proc.poll() is None:
        time.sleep(1)  # dumpcap hands packets over in batches: let the last ones reach the file
        proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


def _decode(tshark: str, pcap: Path, ports: list[int]) -> list[dict[str, str]]:
    fields = [
        "frame.number",
        "sip.Method",
        "sip.Status-Code",
        "sip.Call-ID",
        "sip.CSeq",
        "sip.Content-Length",
        "sip.Content-Type",
        "sip.resend",
        "_ws.malformed",
        "_ws.expert.severity",
    ]
    decode_as: list[str] = []
    for port in ports:
        decode_as += ["-d", f"udp.port=={port},sip", "-d", f"tcp.port=={port},sip"]
    result = subprocess.run(
        [
            tshark,
            "-r",
            str(pcap),
            *decode_as,
            "-Y",
            "sip or _ws.malformed or _ws.expert",
            "-T",
            "fields",
            *(arg for name in fields for arg in ("-e", name)),
            "-E",
            "separator=|",
            "-E",
            "occurrence=a",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [dict(zip(fields, line.split("|"), strict=True)) for line in result.stdout.splitlines()]


def _not_sip(tshark: str, pcap: Path, ports: list[int]) -> list[str]:
    """Frames with a payload Wireshark did not read as SIP."""
    decode_as: list[str] = []
    for port in ports:
        decode_as += ["-d", f"udp.port=={port},sip", "-d", f"tcp.port=={port},sip"]
    result = subprocess.run(
        [tshark, "-r", str(pcap), *decode_as, "-Y", "(udp or tcp.len > 0) and not sip"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_wireshark_decodes_our_sip_without_warnings(transport: str, tmp_path: Path) -> None:
    tshark = require_binary("tshark")
    if os.geteuid() != 0:
        message = "capturing on the loopback interface needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    pcap = tmp_path / "exchange.pcapng"
    async with (
        UserAgent(ua_config("bob", transport)) as bob,
        UserAgent(ua_config("alice", transport)) as alice,
    ):

        @bob.on_message
        async def read(message: IncomingMessage) -> None:
            await message.mark_displayed()

        ports = [bob.endpoints[0].port, alice.endpoints[0].port]
        capture = _start_capture(tshark, ports, pcap)
        try:
            handle = await alice.send_message(
                bob.aor, "hello, Wireshark", notify={"positive-delivery", "display"}
            )
            assert (await handle.final_response()).status_code == 200
            await handle.await_disposition("displayed", timeout=10)
        finally:
            _stop(capture)
    rows = _decode(tshark, pcap, ports)
    assert not _not_sip(tshark, pcap, ports)

    complaints = [
        row
        for row in rows
        if row["_ws.malformed"] or any(int(s, 0) >= _WARN for s in row["_ws.expert.severity"].split(",") if s)
    ]
    assert not complaints, complaints
    requests = [row for row in rows if row["sip.Method"]]
    responses = [row for row in rows if row["sip.Status-Code"]]
    # The message and its two notifications, each answered 200 once (loopback: no retransmission).
    assert [row["sip.Method"] for row in requests] == ["MESSAGE"] * 3
    assert [row["sip.Status-Code"] for row in responses] == ["200"] * 3
    assert {row["sip.Content-Type"] for row in requests} == {"message/cpim"}
    assert all(int(row["sip.Content-Length"]) > 0 for row in requests)
    assert {row["sip.Content-Length"] for row in responses} == {"0"}
    assert sorted(row["sip.Call-ID"] for row in requests) == sorted(row["sip.Call-ID"] for row in responses)
    assert {row["sip.CSeq"].split()[1] for row in rows if row["sip.CSeq"]} == {"MESSAGE"}
    assert not [row for row in rows if "1" in row["sip.resend"].split(",")]  # Wireshark saw none twice
