"""The ``listen``, ``send`` and ``demo`` subcommands, run as real processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

CLI = [sys.executable, "-m", "sipimdn"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


#: Bytes read from a child's stdout past the last line :func:`_read_line` returned.
_UNREAD: weakref.WeakKeyDictionary[IO[str], bytes] = weakref.WeakKeyDictionary()


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's stdout, bounded in time ('' at the end of the output).

    Reads the pipe's descriptor itself: the printer writes the lines of a short delay at once,
    and lines a text stream had buffered would be invisible to select(). What was read past the
    line waits for the next call, or for :func:`_unread` before the rest is read another way.
    """
    fd = stream.fileno()
    data = _UNREAD.pop(stream, b"")
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            _UNREAD[stream] = data
            raise TimeoutError("the child printed no line in time")
        chunk = os.read(fd, 65536)
        if not chunk:
            return data.decode()
        data += chunk
    line, _, rest = data.partition(b"\n")
    if rest:
        _UNREAD[stream] = rest
    return line.decode() + "\n"


def _unread(stream: IO[str]) -> str:
    """What :func:`_read_line` read from ``stream`` past the lines it returned (then forgotten)."""
    return _UNREAD.pop(stream, b"").decode()


@contextmanager
def listener(
    *extra: str, aor: str = "sip:bob@127.0.0.1:0", listen: str = "udp:127.0.0.1:0"
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """``sipimdn listen --json`` on a free UDP port; yields the process and its "listening" event."""
    proc = subprocess.Popen(
        [*CLI, "listen", "--aor", aor, "--listen", listen, "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, 15)
        if not line:
            proc.wait(10)
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"listen exited with {proc.returncode} before listening: {stderr}")
        first = json.loads(line)
        assert first["event"] == "listening"
        yield proc, first
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _send(
    to: str, *extra: str, wait: str = "5", aor: str = "sip:alice@127.0.0.1:0", listen: str = "udp:127.0.0.1:0"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *CLI,
            "send",
            "--aor",
            aor,
            "--listen",
            listen,
            "--to",
            to,
            "--text",
            "hello from the CLI",
            "--wait",
            wait,
            "--json",
            *extra,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )


def _stop(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[int, list[dict[str, Any]]]:
    proc.send_signal(signum)
    unread = _unread(proc.stdout) if proc.stdout is not None else ""
    out, _ = proc.communicate(timeout=15)
    return proc.returncode, _json_lines(unread + out)


def test_listen_and_send_exchange_a_message_and_its_notifications() -> None:
    with listener("--auto-display", "0.1") as (proc, listening):
        bob = listening["aor"]
        assert bob.startswith("sip:bob@127.0.0.1:") and not bob.endswith(":0")
        result = _send(bob, "--notify", "positive-delivery,display")
        assert result.returncode == 0, result.stdout + result.stderr
        events = _json_lines(result.stdout)
        kinds = [e["event"] for e in events]
        assert kinds[0] == "sent"
        response = next(e for e in events if e["event"] == "response")
        assert response["status"] == 200
        states = [e["state"] for e in events if e["event"] == "disposition-changed"]
        assert states == ["accepted", "delivered", "displayed"]
        assert events[-1] == {"event": "done", "ok": True}
        time.sleep(0.3)
        code, listen_events = _stop(proc)
    assert code == 0
    message = next(e for e in listen_events if e["event"] == "message")
    assert message["text"] == "hello from the CLI"
    assert message["notify"] == ["display", "positive-delivery"]
    assert message["message_id"] == events[0]["message_id"]
    sent = [e for e in listen_events if e["event"] == "notification-sent"]
    assert sorted((e["kind"], e["status"], e["sip_status"]) for e in sent) == [
        ("delivery", "delivered", 200),
        ("display", "displayed", 200),
    ]
    assert listen_events[-1]["event"] == "stopped"


def test_send_exits_1_when_a_requested_notification_does_not_come() -> None:
    with listener() as (proc, listening):  # no --auto-display: "displayed" never comes
        result = _send(listening["aor"], "--notify", "positive-delivery,display", wait="1.5")
        assert result.returncode == 1
        events = _json_lines(result.stdout)
        assert [e["state"] for e in events if e["event"] == "disposition-changed"] == [
            "accepted",
            "delivered",
        ]
        assert events[-1] == {"event": "timeout", "waiting_for": "displayed"}
        code, _ = _stop(proc, signal.SIGTERM)
    assert code == 0


def test_listen_status_refuses_and_send_reports_it() -> None:
    with listener("--status", "486") as (proc, listening):
        result = _send(listening["aor"])
        assert result.returncode == 1
        response = next(e for e in _json_lines(result.stdout) if e["event"] == "response")
        assert response["status"] == 486
        code, events = _stop(proc)
    assert code == 0
    assert next(e for e in events if e["event"] == "message")["answer"] == 486


def test_send_without_notifications_succeeds_on_2xx() -> None:
    with listener() as (proc, listening):
        result = _send(listening["aor"], "--notify", "")
        assert result.returncode == 0, result.stdout + result.stderr
        _stop(proc)


def test_send_to_nobody_fails_cleanly() -> None:
    result = _send("sip:nobody@127.0.0.1:9", wait="3")
    assert result.returncode == 1
    last = _json_lines(result.stdout)[-1]
    assert last["event"] in {"failed", "timeout"}


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "--aor", "sip:a@127.0.0.1", "--to", "sip:b@127.0.0.1", "--text", "x", "--notify", "bogus"],
        ["listen", "--aor", "sip:b@127.0.0.1", "--listen", "sctp:127.0.0.1:1"],
        ["listen", "--aor", "sip:b@127.0.0.1", "--status", "180"],
        ["listen", "--aor", "sip:b@127.0.0.1", "--dedup-max", "0"],
        ["listen", "--aor", "sip:b@127.0.0.1", "--dedup-max", "many"],
        ["listen", "--aor", "sip:b@127.0.0.1", "--imdn-rate-limit", "-1"],
        ["listen", "--aor", "sip:b@127.0.0.1", "--trusted-asserter", "10.0.0.1:5060"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    result = subprocess.run([*CLI, *argv], check=False, capture_output=True, text=True, timeout=30, env=ENV)
    assert result.returncode == 2
    assert "error" in result.stderr


def test_listen_takes_its_limits() -> None:
    """``--dedup-max`` and the notification budgets are accepted (and bad values refused above);
    messages and their notifications still flow with a cap of one."""
    with listener("--dedup-max", "1", "--imdn-rate-limit", "1000", "--imdn-byte-budget", "1000000") as (
        proc,
        listening,
    ):
        for _ in range(2):  # two fresh Message-IDs with a cap of one: the first is evicted
            result = _send(listening["aor"], "--notify", "positive-delivery")
            assert result.returncode == 0, result.stdout + result.stderr
            states = [e["state"] for e in _json_lines(result.stdout) if e["event"] == "disposition-changed"]
            assert states == ["accepted", "delivered"]
        code, listen_events = _stop(proc)
    assert code == 0
    assert len([e for e in listen_events if e["event"] == "message"]) == 2


def test_demo_prints_the_three_stages() -> None:
    result = subprocess.run([*CLI, "demo"], check=False, capture_output=True, text=True, timeout=30, env=ENV)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for stage in ("1/3 accepted", "2/3 delivered", "3/3 displayed"):
        assert stage in out
    assert out.index("1/3") < out.index("2/3") < out.index("3/3")
    assert "MESSAGE -> 200 -> delivered -> displayed" in out


def test_demo_json_lines_parse() -> None:
    result = subprocess.run(
        [*CLI, "demo", "--json"], check=False, capture_output=True, text=True, timeout=30, env=ENV
    )
    assert result.returncode == 0, result.stderr
    events = _json_lines(result.stdout)
    assert events[0]["event"] == "demo"
    assert [e["state"] for e in events if e["event"] == "disposition-changed"] == [
        "accepted",
        "delivered",
        "displayed",
    ]
    assert events[-1] == {"event": "done", "ok": True}


def test_listen_and_send_over_tls(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ["--cert", str(cert_file), "--key", str(key_file), "--ca", str(ca_file)]
    with listener(*tls, "--auto-display", "0.1", aor="sips:bob@127.0.0.1:0", listen="tls:127.0.0.1:0") as (
        proc,
        listening,
    ):
        assert listening["endpoints"][0].startswith("tls:127.0.0.1:")
        result = _send(
            listening["aor"],
            *tls,
            "--notify",
            "positive-delivery,display",
            aor="sips:alice@127.0.0.1:0",
            listen="tls:127.0.0.1:0",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        states = [e["state"] for e in _json_lines(result.stdout) if e["event"] == "disposition-changed"]
        assert states == ["accepted", "delivered", "displayed"]
        code, events = _stop(proc)
    assert code == 0
    assert next(e for e in events if e["event"] == "message")["transport"] == "tls"


def test_send_text_output_is_readable() -> None:
    with listener("--auto-display", "0.1") as (proc, listening):
        result = subprocess.run(
            [
                *CLI,
                "send",
                "--aor",
                "sip:alice@127.0.0.1:0",
                "--to",
                listening["aor"],
                "--text",
                "plain output",
                "--notify",
                "positive-delivery,display",
                "--wait",
                "5",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=ENV,
        )
        _stop(proc)
    assert result.returncode == 0, result.stderr
    assert "pending -> accepted (SIP 200)" in result.stdout
    assert "accepted -> delivered (delivery notification: delivered)" in result.stdout
    assert "delivered -> displayed (display notification: displayed)" in result.stdout
    assert result.stdout.rstrip().endswith("done: MESSAGE -> 200 -> delivered -> displayed")


def test_send_with_a_portless_aor_gets_its_notifications_back() -> None:
    # The everyday invocation: --aor without a port, an ephemeral listen port.
    with listener("--auto-display", "0.1") as (proc, listening):
        result = _send(listening["aor"], "--notify", "positive-delivery,display", aor="sip:alice@127.0.0.1")
        assert result.returncode == 0, result.stdout + result.stderr
        sent = _json_lines(result.stdout)[0]
        assert sent["aor"].startswith("sip:alice@127.0.0.1:")
        assert sent["aor"] != "sip:alice@127.0.0.1:0"
        _stop(proc)


def test_cli_refuses_a_password_on_the_command_line() -> None:
    result = subprocess.run(
        [*CLI, "send", "--aor", "sip:a@127.0.0.1", "--to", "sip:b@127.0.0.1", "--text", "x",
         "--username", "a", "--password", "hunter2"],
        check=False, capture_output=True, text=True, timeout=30, env=ENV,
    )
    assert result.returncode == 2
    assert "--password-file" in result.stderr and "SIPIMDN_PASSWORD" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_username_without_a_password_is_a_usage_error(tmp_path: Path) -> None:
    argv = [*CLI, "listen", "--aor", "sip:b@127.0.0.1", "--username", "b"]
    env = {k: v for k, v in ENV.items() if k != "SIPIMDN_PASSWORD"}
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2 and "SIPIMDN_PASSWORD" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    result = subprocess.run(
        [*argv, "--password-file", str(empty)],
        check=False, capture_output=True, text=True, timeout=30, env=env,
    )
    assert result.returncode == 2 and "is empty" in result.stderr
    result = subprocess.run(
        [*argv, "--password-file", str(tmp_path / "missing")],
        check=False, capture_output=True, text=True, timeout=30, env=env,
    )
    assert result.returncode == 2 and "cannot read password file" in result.stderr


def test_password_from_file_and_environment_reach_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sipimdn.cli import build_parser
    from sipimdn.cli_ua import _config

    secret = tmp_path / "pw"
    secret.write_text("from-file\nsecond line ignored\n")
    parser = build_parser()
    base = ["listen", "--aor", "sip:b@example.test", "--username", "b", "--register"]
    base += ["--proxy", "sip:127.0.0.1;lr"]
    monkeypatch.setenv("SIPIMDN_PASSWORD", "from-env")
    args = parser.parse_args([*base, "--password-file", str(secret)])
    assert "from-file" not in repr(vars(args))  # what argparse/tracebacks would print
    config = _config(args, "udp:127.0.0.1:0")
    (credentials,) = config.credentials
    assert (credentials.username, credentials.password) == ("b", "from-file")  # the file wins
    assert config.registers and config.outbound_proxy == "sip:127.0.0.1;lr"
    assert config.aor == "sip:b@example.test"
    (credentials,) = _config(parser.parse_args(base), "udp:127.0.0.1:0").credentials
    assert credentials.password == "from-env"


def test_send_list_flag_reaches_send_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from sipimdn import cli_ua
    from sipimdn.cli import build_parser

    parser = build_parser()
    base = ["send", "--aor", "sip:a@127.0.0.1:0", "--to", "sip:friends@127.0.0.1:9", "--text", "x"]
    assert parser.parse_args(base).to_list is False
    args = parser.parse_args([*base, "--list", "--notify", "", "--wait", "0.5"])
    assert args.to_list is True
    seen: list[dict[str, Any]] = []
    original = cli_ua.UserAgent.send_message

    async def spy(self: Any, to: str, body: str | bytes, **kw: Any) -> Any:
        seen.append(kw)
        return await original(self, to, body, **kw)

    monkeypatch.setattr(cli_ua.UserAgent, "send_message", spy)
    out = io.StringIO()
    # Nobody listens at port 9: the run times out after --wait, having sent once.
    printer = cli_ua.Printer(as_json=True, stream=out)
    asyncio.run(asyncio.wait_for(cli_ua._send(args, printer, cli_ua._Progress("send")), 20))
    printer.flush()  # as run_send does when the loop is over
    assert [kw["to_list"] for kw in seen] == [True]
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events[:1] == ["sent"]


def test_send_finds_the_listener_through_dns_srv(tmp_path: Path) -> None:
    """RFC 3263: ``send --dns-server`` to a SIP URI in the test domain reaches the UA its SRV names."""
    pytest.importorskip("dns.asyncresolver")  # the dns extra; scripts/test installs it for CI
    from _dnsmasq import DOMAIN, dnsmasq

    with listener("--auto-display", "0.1", aor=f"sip:bob@{DOMAIN}") as (proc, listening):
        port = int(listening["endpoints"][0].rsplit(":", 1)[1])
        records = [f"--srv-host=_sip._udp.{DOMAIN},bob-host.{DOMAIN},{port},0,10",
                   f"--host-record=bob-host.{DOMAIN},127.0.0.1"]
        with dnsmasq(records, tmp_path) as server:
            result = _send(f"sip:bob@{DOMAIN}", "--dns-server", server.address,
                           "--notify", "positive-delivery,display")
            asked = server.queries()
        assert result.returncode == 0, result.stdout + result.stderr
        events = _json_lines(result.stdout)
        assert [e["state"] for e in events if e["event"] == "disposition-changed"] == [
            "accepted", "delivered", "displayed",
        ]
        assert any(q.startswith(f"query[SRV] _sip._udp.{DOMAIN}") for q in asked), asked
        code, listen_events = _stop(proc)
    assert code == 0
    assert next(e for e in listen_events if e["event"] == "message")["to"] == f"sip:bob@{DOMAIN}"


def test_send_rejects_a_dns_server_that_is_not_an_address() -> None:
    result = _send("sip:bob@example.com", "--dns-server", "ns.example.com")
    assert result.returncode == 2
    assert "not an IP address" in result.stderr


def test_listen_prints_composing_events() -> None:
    from sipimdn.iscomposing import CONTENT_TYPE, build_iscomposing

    async def indicate(bob: str) -> None:
        from ua_helpers import StackPeer

        async with StackPeer("alice") as alice:
            for document in (build_iscomposing("active", content_type="text/plain", refresh=90),
                             build_iscomposing("idle")):
                assert (await alice.send_message(bob, CONTENT_TYPE, document)).status_code == 200

    with listener() as (proc, listening):
        asyncio.run(indicate(listening["aor"]))
        assert proc.stdout is not None
        first = _read_line(proc.stdout, 10)  # printed as the indication arrives
        proc.send_signal(signal.SIGINT)
        # With what the read above took past its line.
        rest = _unread(proc.stdout) + proc.stdout.read()
        code = proc.wait(15)
    assert code == 0
    events = _json_lines(first + rest)
    composing = [e for e in events if e["event"] == "composing"]
    assert [(e["state"], e["content_type"], e["refresh"]) for e in composing] == [
        ("active", "text/plain", 90), ("idle", "text/plain", None),
    ]
    assert composing[0]["from"].startswith("sip:alice@127.0.0.1:")
    assert not any(e["event"] == "message" for e in events)


def test_listen_shows_the_identity_a_trusted_proxy_asserts() -> None:
    """``--trusted-asserter``: P-Asserted-Identity from that address is believed (RFC 3325 §9.1)
    and printed beside the From; ``Privacy: id`` (§9.3) prints it as withheld."""
    from sipimdn.dialog.factory import build_request

    async def send(bob: str) -> None:
        from ua_helpers import StackPeer

        async with StackPeer("alice") as alice:
            for privacy in ((), (("Privacy", "id"),)):
                headers = [("P-Asserted-Identity", "<sip:alice.real@ims.example.com>"), *privacy]
                request = build_request("MESSAGE", bob, f"<{alice.aor}>", f"<{bob}>", headers=headers,
                                        body=b"hi", content_type="text/plain")
                assert (await alice.stack.send_request(request)).status_code == 200

    with listener("--trusted-asserter", "127.0.0.1") as (proc, listening):
        asyncio.run(send(listening["aor"]))
        code, events = _stop(proc)
    assert code == 0
    messages = [e for e in events if e["event"] == "message"]
    assert [e["asserted_identity"] for e in messages] == ["sip:alice.real@ims.example.com", "withheld"]
    assert all(e["from"].startswith("sip:alice@127.0.0.1:") for e in messages)


async def _send_plain(bob: str, texts: list[str]) -> None:
    """Send each text to ``bob`` in a text/plain MESSAGE from a bare stack, all at once; each answered 200."""
    from ua_helpers import StackPeer

    from sipimdn.dialog.factory import build_request

    async with StackPeer("alice") as alice:

        async def one(text: str) -> None:
            request = build_request("MESSAGE", bob, f"<{alice.aor}>", f"<{bob}>", body=text.encode(),
                                    content_type="text/plain")
            assert (await alice.stack.send_request(request)).status_code == 200

        await asyncio.gather(*(one(text) for text in texts))


def test_listen_json_prints_each_event_promptly_not_at_exit() -> None:
    """``listen --json | jq``: each message's line reaches the reader while listen runs, within a
    bounded time of the 200 (the printer holds a line for tens of milliseconds at most)."""
    with listener() as (proc, listening):
        assert proc.stdout is not None
        for n in range(3):
            asyncio.run(_send_plain(listening["aor"], [f"prompt {n}"]))
            answered = time.monotonic()
            event = json.loads(_read_line(proc.stdout, 5))
            waited = time.monotonic() - answered
            assert (event["event"], event["text"]) == ("message", f"prompt {n}")
            assert proc.poll() is None  # printed while running, not at exit
            assert waited < 2.0, waited  # the printer's delay, give or take a loaded machine
        code, rest = _stop(proc)
    assert code == 0
    assert [e["event"] for e in rest] == ["stopped"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_listen_text_output_loses_nothing_when_stopped_right_after_a_burst(signum: int) -> None:
    """Default text output, as users run it: a burst of messages, then the signal at once; every
    message's line is there, and ``stopped`` last."""
    proc = subprocess.Popen(
        [*CLI, "listen", "--aor", "sip:bob@127.0.0.1:0", "--listen", "udp:127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = _read_line(proc.stdout, 15)
        assert " listening on " in first, first
        bob = first.split(" listening on ", 1)[0]
        texts = [f"burst {n}" for n in range(40)]
        asyncio.run(_send_plain(bob, texts))
        proc.send_signal(signum)
        unread = _unread(proc.stdout)
        out, err = proc.communicate(timeout=15)
        out = unread + out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "stopped"
    alice = "message from sip:alice@127.0.0.1:"
    received = [line.rsplit(": ", 1)[1] for line in lines if line.startswith(alice)]
    assert sorted(received) == sorted(repr(text) for text in texts)
    assert len(lines) == len(texts) + 1
