"""Two ``sipimdn listen`` workers behind Kamailio's dispatcher, sharing one public AOR and one
PostgreSQL store: round-robin, failover when a worker is killed, OPTIONS probes.

Everything is a real process: Kamailio (tests/kamailio/dispatcher.cfg.tmpl, the configuration
docs/scale-out.md shows), two ``python -m sipimdn listen --json`` workers and PostgreSQL
(tests/_postgres.py). The sender is a raw UDP socket (tests/kamailio/rawsip.py) talking to
Kamailio only; which worker got a message is read from the workers' own ``--json`` output.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from _postgres import PostgresServer
from kamailio.dispatcher import (
    Dispatcher,
    DispatcherSettings,
    Worker,
    options_probe,
    render_template,
    workers_behind_dispatcher,
)
from kamailio.rawsip import RawClient, RawMessage, new_branch, new_tag

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parent.parent

#: Kamailio tries the next worker after this much silence; probes run every second.
SETTINGS = DispatcherSettings(ping_interval=1, failover_timeout_ms=2500)


@pytest.fixture
def behind_dispatcher(
    tmp_path: Path, postgres_server: PostgresServer
) -> Iterator[tuple[Dispatcher, list[Worker], PostgresServer, str]]:
    url = postgres_server.create_database()
    extra = ["--store", url]
    with workers_behind_dispatcher(tmp_path, 2, settings=SETTINGS, extra=extra) as (dispatcher, workers):
        yield dispatcher, workers, postgres_server, urlsplit(url).path.lstrip("/")


class Sender:
    """Alice at a raw UDP socket, sending through the dispatcher and answering IMDNs 200."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.client = RawClient("udp", (dispatcher.host, dispatcher.port))
        host, port = self.client.local
        self.aor = f"sip:alice@{host}:{port}"
        self.notifications: list[RawMessage] = []

    def close(self) -> None:
        self.client.sock.close()

    def message(self, text: str, message_id: str) -> tuple[str, bytes]:
        """A CPIM MESSAGE to the public AOR asking for positive-delivery; (Call-ID, bytes)."""
        call_id = f"{secrets.token_hex(8)}@alice"
        aor = self.dispatcher.aor
        cpim = (
            f"From: <{self.aor}>\r\n"
            f"To: <{aor}>\r\n"
            f"DateTime: {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\r\n"
            "NS: imdn <urn:ietf:params:imdn>\r\n"
            f"imdn.Message-ID: {message_id}\r\n"
            "imdn.Disposition-Notification: positive-delivery\r\n"
            "\r\n"
            "Content-Type: text/plain;charset=UTF-8\r\n"
            "\r\n"
            f"{text}"
        ).encode()
        head = (
            f"MESSAGE {aor} SIP/2.0\r\n"
            f"Via: {self.client.via(new_branch())}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <{self.aor}>;tag={new_tag()}\r\n"
            f"To: <{aor}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 MESSAGE\r\n"
            "Content-Type: message/cpim\r\n"
            f"Content-Length: {len(cpim)}\r\n\r\n"
        ).encode()
        return call_id, head + cpim

    def send(self, text: str, message_id: str | None = None, timeout: float = 10.0) -> int:
        """Send one MESSAGE; return the final status (IMDNs arriving meanwhile are answered)."""
        call_id, data = self.message(text, message_id or f"m-{secrets.token_hex(6)}")
        self.client.send(data)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.receive(deadline - time.monotonic())
            if reply.status_code is not None and reply.get("Call-ID") == call_id and reply.status_code >= 200:
                return reply.status_code

    def receive(self, timeout: float) -> RawMessage:
        """The next message that is not an IMDN (those are answered 200 and kept)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._next(deadline - time.monotonic())
            if message.method != "MESSAGE":
                return message

    def _next(self, timeout: float) -> RawMessage:
        message = self.client.recv(max(0.01, timeout))
        if message.method == "MESSAGE":
            self.notifications.append(message)
            self.client.send(_ok(message), self.client.last_peer)
        return message

    def wait_notifications(self, count: int, timeout: float) -> list[RawMessage]:
        """Answer IMDNs until ``count`` have arrived in all (bounded); return them."""
        deadline = time.monotonic() + timeout
        while len(self.notifications) < count and time.monotonic() < deadline:
            try:
                self._next(deadline - time.monotonic())
            except TimeoutError:
                break
        return self.notifications


def _ok(request: RawMessage) -> bytes:
    lines = ["SIP/2.0 200 OK"]
    lines += [f"Via: {value}" for value in request.get_all("Via")]
    lines += [
        f"From: {request.get('From')}",
        f"To: {request.get('To')};tag={new_tag()}",
        f"Call-ID: {request.get('Call-ID')}",
        f"CSeq: {request.get('CSeq')}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _texts(worker: Worker) -> list[str]:
    return [event["text"] for event in worker.messages()]


def test_consecutive_messages_alternate_between_the_workers(
    behind_dispatcher: tuple[Dispatcher, list[Worker], PostgresServer, str],
) -> None:
    dispatcher, (w1, w2), postgres, database = behind_dispatcher
    sender = Sender(dispatcher)
    try:
        texts = [f"message {i}" for i in range(6)]
        ids = [f"alternate-{i}-{secrets.token_hex(4)}" for i in range(6)]
        assert [sender.send(text, mid) for text, mid in zip(texts, ids, strict=True)] == [200] * 6
        got1, got2 = w1.wait_messages(3, 10), w2.wait_messages(3, 10)
        # Round-robin: consecutive requests land on different workers, whichever went first.
        assert sorted([_texts(w1), _texts(w2)]) == [texts[0::2], texts[1::2]], (got1, got2)
        for worker in (w1, w2):
            for event in worker.messages():
                assert event["to"] == dispatcher.aor  # the public AOR, not the worker's address
                assert event["notify"] == ["positive-delivery"]
        # Each worker sent its delivered IMDNs through Kamailio back to the sender.
        notifications = sender.wait_notifications(6, 15)
        assert len(notifications) == 6
        bodies = b"".join(n.body for n in notifications)
        assert all(mid.encode() in bodies for mid in ids)
        assert bodies.count(b"<delivered/>") == 6
    finally:
        sender.close()
    # Both workers keep their Message-ID dedup entries in the one shared database.
    assert postgres.psql("SELECT count(*) FROM sipimdn_seen", database) == "6"


def test_a_killed_worker_is_bypassed_and_the_survivor_answers_everything(
    behind_dispatcher: tuple[Dispatcher, list[Worker], PostgresServer, str],
) -> None:
    dispatcher, (w1, w2), _, _ = behind_dispatcher
    sender = Sender(dispatcher)
    started = time.monotonic()
    try:
        w1.kill()  # SIGKILL: no goodbye, the dispatcher must find out by itself
        # The next two requests: round-robin gives one of them to the dead worker; Kamailio
        # hears nothing for the failover timeout and relays it to the survivor instead
        # (unless a probe has already marked the dead one inactive: then it is not tried).
        assert [sender.send(f"right after the kill {i}", timeout=15) for i in range(2)] == [200, 200]
        # The probes mark the dead worker inactive within an interval plus a probe timeout.
        dead, alive = (Dispatcher.destination_uri(w.address) for w in (w1, w2))
        states = dispatcher.wait_for_states({dead: "I", alive: "A"}, timeout=10)
        assert states[dead].startswith("I") and states[alive].startswith("A")
        before = time.monotonic()
        assert [sender.send(f"after detection {i}", timeout=5) for i in range(6)] == [200] * 6
        assert time.monotonic() - before < 5  # no request waits for the dead worker any more
        w2.wait_messages(8, 10)
        texts = _texts(w2)
        assert [t for t in texts if t.startswith("right after")] == [
            f"right after the kill {i}" for i in (0, 1)
        ]
        assert [t for t in texts if t.startswith("after detection")] == [
            f"after detection {i}" for i in range(6)
        ]
        log = dispatcher.log_text()
        # Either the request given to the dead worker failed over, or a probe had already
        # marked it down (then round-robin skipped it): both are in Kamailio's log.
        assert f"failed over to worker {alive}" in log or "worker down" in log, dispatcher.log_tail()
        # The last worker dies too: Kamailio says so at once, with a time to come back.
        w2.kill()
        dispatcher.wait_for_states({dead: "I", alive: "I"}, timeout=10)
        call_id, data = sender.message("nobody home", "nobody-home")
        sender.client.send(data)
        reply = sender.receive(5)
        assert (reply.status_code, reply.get("Call-ID")) == (503, call_id)
        assert reply.get("Retry-After") == "5"
    finally:
        sender.close()
    assert time.monotonic() - started < 30


def test_a_worker_answering_5xx_is_failed_over_to_the_next(tmp_path: Path) -> None:
    """w1 answers every MESSAGE 503 (it cannot take it): Kamailio relays each to w2 instead."""
    with workers_behind_dispatcher(tmp_path, 2, settings=SETTINGS, per_worker=[["--status", "503"]]) as (
        dispatcher,
        (w1, w2),
    ):
        sender = Sender(dispatcher)
        try:
            statuses = [sender.send(f"refused by one {i}") for i in range(4)]
        finally:
            sender.close()
        assert statuses == [200] * 4  # the sender never sees the 503
        w1.wait_messages(2, 5)
        w2.wait_messages(4, 5)
        assert _texts(w2) == [f"refused by one {i}" for i in range(4)]
        # Round-robin still gave w1 every other one first; it answered 503 and Kamailio moved on.
        assert [e["answer"] for e in w1.messages()] == [503, 503]
        assert dispatcher.log_text().count("failed over to worker") == 2


def test_options_probes_are_answered_200_cheaply_and_reach_neither_the_app_nor_the_store(
    behind_dispatcher: tuple[Dispatcher, list[Worker], PostgresServer, str],
) -> None:
    dispatcher, (w1, w2), postgres, database = behind_dispatcher
    # Kamailio's own probes answered: it started the workers inactive and made both active.
    assert all(flags.startswith("A") for flags in dispatcher.destinations().values())
    assert len(dispatcher.destinations()) == 2
    cpu_before = _cpu_seconds(w1.process.pid)
    probes = 300
    answers = [options_probe(w1.port, timeout=2.0) for _ in range(probes)]
    cpu = _cpu_seconds(w1.process.pid) - cpu_before
    assert answers == [200] * probes
    # Cheap: under 1 ms of the worker's CPU per probe (about 0.26 ms on a loaded 2-core machine).
    assert cpu / probes < 0.001, f"{cpu / probes * 1e6:.0f} µs of CPU per probe"
    # Not a message: nothing printed, nothing stored (Kamailio's own probes included).
    assert w1.messages() == [] and w2.messages() == []
    tables = postgres.psql(
        "SELECT count(*) FROM sipimdn_seen UNION ALL SELECT count(*) FROM sipimdn_received", database
    )
    assert tables.split() == ["0", "0"]


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The example values docs/scale-out.md fills the template with.
GUIDE_VALUES = {
    "DEBUG": "2",
    "CHILDREN": "8",
    "DOMAIN": "example.com",
    "SERVICE_USER": "chat",
    "SET_ID": "1",
    "HOST": "192.0.2.10",
    "PORT": "5060",
    "MODULE_PATH": "/usr/lib/x86_64-linux-gnu/kamailio/modules/",
    "CTL_SOCKET": "/run/kamailio/kamailio_ctl",
    "LIST_FILE": "/etc/kamailio/dispatcher.list",
    "PING_INTERVAL": "5",
    "FAILOVER_TIMEOUT_MS": "3000",
}


def test_the_deployment_guide_shows_the_tested_configuration() -> None:
    """docs/scale-out.md shows this template, not a copy that could drift from what is tested."""
    guide = (REPO / "docs" / "scale-out.md").read_text()
    block = guide.split("<!-- dispatcher.cfg begin -->", 1)[1].split("<!-- dispatcher.cfg end -->", 1)[0]
    shown = block.strip().removeprefix("```").removesuffix("```").strip("\n")
    assert shown == render_template(GUIDE_VALUES).strip("\n")
