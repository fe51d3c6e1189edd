"""Every example in examples/ runs, against each other, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_receive_and_send_examples_talk_to_each_other() -> None:
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "receive_messages.py"),
            "--listen",
            "udp:127.0.0.1:0",
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert receiver.stdout is not None
        first = receiver.stdout.readline()
        assert first.startswith("listening as sip:bob@127.0.0.1:")
        bob = first.split()[-1]
        sender = subprocess.run(
            [sys.executable, str(EXAMPLES / "send_message.py"), "--to", bob, "--text", "hi from the example"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=ENV,
        )
        assert sender.returncode == 0, sender.stdout + sender.stderr
        assert "answer: 200 OK" in sender.stdout
        assert "delivered: yes" in sender.stdout
        assert "displayed: yes" in sender.stdout
        out, err = receiver.communicate(timeout=15)
        assert receiver.returncode == 0, err
        assert "hi from the example" in out
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(10)


def test_send_example_fails_without_a_receiver() -> None:
    sender = subprocess.run(
        [sys.executable, str(EXAMPLES / "send_message.py"), "--to", "sip:bob@127.0.0.1:9", "--wait", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert sender.returncode == 1
    assert "not sent" in sender.stdout
