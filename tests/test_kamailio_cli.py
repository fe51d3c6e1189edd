"""``sipimdn listen`` and ``sipimdn send`` behind Kamailio: --register, --proxy, --username, passwords.

Bob's password comes from ``--password-file``, alice's from ``SIPIMDN_PASSWORD``;
both register and send through the proxy, which challenges REGISTER (401)
and MESSAGE (407).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from kamailio.harness import Kamailio, kamailio  # noqa: F401  (fixture)
from test_cli_ua import _read_line

pytestmark = pytest.mark.interop

CLI = [sys.executable, "-m", "sipimdn"]
ENV = {k: v for k, v in os.environ.items() if k != "SIPIMDN_PASSWORD"} | {"PYTHONUNBUFFERED": "1"}


def _events(stream: IO[str], until: str, timeout: float) -> list[dict[str, Any]]:
    """JSON lines from a child's stdout until one named ``until`` (bounded in time)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = _read_line(stream, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            break
        if not line:
            break
        seen.append(json.loads(line))
        if seen[-1]["event"] == until:
            return seen
    raise AssertionError(f"no {until!r} event in time; got {seen}")


def _proxy_args(server: Kamailio, user: str) -> list[str]:
    return [
        "--aor", f"sip:{user}@{server.domain}",
        "--listen", "udp:127.0.0.1:0",
        "--proxy", server.proxy_uri("tcp"),
        "--register", "--register-expires", "60",
        "--username", user,
        "--json",
    ]


@contextmanager
def bob_listening(server: Kamailio, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    secret = tmp_path / "bob.password"
    secret.write_text("bob-secret\n")
    secret.chmod(0o600)
    proc = subprocess.Popen(
        [*CLI, "listen", *_proxy_args(server, "bob"), "--password-file", str(secret), "--auto-display", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        assert proc.stdout is not None
        events = _events(proc.stdout, "registration-succeeded", 15)
        assert events[0]["event"] == "listening"
        assert events[-1]["expires"] == 60
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _send(server: Kamailio, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "send", *_proxy_args(server, "alice"), "--to", f"sip:bob@{server.domain}",
         "--text", "through the proxy", "--notify", "positive-delivery,display", "--wait", "15"],
        check=False, capture_output=True, text=True, timeout=60,
        env=ENV | {"SIPIMDN_PASSWORD": password},
    )


def test_cli_send_and_listen_register_and_authenticate(kamailio: Kamailio, tmp_path: Path) -> None:  # noqa: F811
    with bob_listening(kamailio, tmp_path) as bob:
        result = _send(kamailio, "alice-secret")
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        names = [e["event"] for e in events]
        assert names.index("registration-succeeded") < names.index("sent")
        assert {"event": "done", "ok": True} in [{k: e[k] for k in ("event", "ok") if k in e} for e in events]
        assert "unregistered" in names  # sent on exit, confirmed by the registrar
        assert next(e for e in events if e["event"] == "unregistered")["confirmed"] is True
        assert bob.stdout is not None
        message = _events(bob.stdout, "message", 5)[-1]
        assert message["text"] == "through the proxy"
    for secret in ("alice-secret", "bob-secret"):
        assert secret not in result.stdout + result.stderr
    # What Kamailio saw, from its own log (tests/kamailio/kamailio.cfg.tmpl): both users
    # registered after a 401, alice's MESSAGE was challenged (407), then relayed to bob's
    # binding and answered 200 by him; bob's two notifications came back the same way.
    _kamailio_saw(kamailio, "REGISTER from bob: challenging", "REGISTER from alice: challenging",
                  "REGISTERED user=bob ", "REGISTERED user=alice ", "MESSAGE from alice: challenging")
    assert any(" expires=60 " in line for line in _kamailio_saw(kamailio, "REGISTERED user=bob "))
    assert any(" expires=0 " in line for line in _kamailio_saw(kamailio, "REGISTERED user=alice "))
    (relayed,) = _kamailio_saw(kamailio, "RELAYING MESSAGE from=alice to=bob ")
    assert "ctype=message/cpim" in relayed
    imdns = _kamailio_saw(kamailio, "RELAYING MESSAGE from=bob to=alice ", count=2)
    assert len(imdns) == 2, imdns  # delivered and displayed
    for line in (relayed, *imdns):
        call_id = line.split("call-id=")[1].split()[0]
        _kamailio_saw(kamailio, f"RELAYED-REPLY 200 to MESSAGE call-id={call_id}")


def _kamailio_saw(server: Kamailio, *needles: str, count: int = 1, timeout: float = 5.0) -> list[str]:
    """Kamailio log lines holding each needle, waiting (bounded) until each shows ``count``
    times (its log may lag our processes by a moment); the lines of the last needle."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_text().splitlines()
        found = [[line for line in log if needle in line] for needle in needles]
        if all(len(lines) >= count for lines in found):
            return found[-1]
        if time.monotonic() > deadline:
            missing = [n for n, lines in zip(needles, found, strict=True) if len(lines) < count]
            raise AssertionError(f"Kamailio never logged {missing}:\n{server.log_tail()}")
        time.sleep(0.05)


def test_cli_wrong_password_is_a_clear_failure(kamailio: Kamailio) -> None:  # noqa: F811
    result = _send(kamailio, "not-alices-password")
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    (failed,) = [e for e in events if e["event"] == "failed"]
    assert failed["stage"] == "registration" and failed["status"] == 401, failed
    assert "rejected" in failed["error"]
    assert "sent" not in [e["event"] for e in events]  # nothing sent unregistered
    assert "not-alices-password" not in result.stdout + result.stderr

