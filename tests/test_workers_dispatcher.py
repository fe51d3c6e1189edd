"""Several workers, one state, behind Kamailio's dispatcher: the end-to-end proof.

Two ``sipimdn listen`` workers serve one public AOR behind Kamailio's dispatcher (round-robin,
tests/kamailio/dispatcher.cfg.tmpl) and share one PostgreSQL database. A raw UDP sender sends
MESSAGEs asking for positive-delivery through Kamailio, resends some Message-IDs at once with
a new Call-ID (round-robin hands the copy to the other worker), and answers no IMDN for a while,
so they pile up as owed. Halfway, one worker gets SIGKILL and is not restarted; Kamailio fails
over and its probes mark the worker down. Then the sender answers. Every accepted message gets
its delivered IMDN (the dead worker's come from the survivor, which takes them over when the
dead worker's lease runs out), and no Message-ID reaches the application twice.

The crash window: a message whose claim (the cross-worker dedup entry) is taken by a worker
that dies before answering it is taken over after ``worker_lease + handler_deadline`` and may
then reach the application twice: at most the messages the dead worker was deciding when it
died. Here the sender waits for each answer and the kill falls between two of them: none.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from _postgres import PostgresServer
from kamailio.dispatcher import DispatcherSettings, workers_behind_dispatcher
from kamailio.rawsip import RawMessage
from test_kamailio_dispatcher import Sender, _ok

pytestmark = pytest.mark.interop

SETTINGS = DispatcherSettings(ping_interval=1, failover_timeout_ms=2500)
MESSAGES = 20
KILL_AT = 10
_ABOUT = re.compile(rb"<message-id>([^<]+)</message-id>")


class HoldingSender(Sender):
    """The tests' sender, but IMDNs are left unanswered while ``holding``."""

    holding = True

    def _next(self, timeout: float) -> RawMessage:
        message = self.client.recv(max(0.01, timeout))
        if message.method == "MESSAGE":
            self.notifications.append(message)
            if not self.holding:
                self.client.send(_ok(message), self.client.last_peer)
        return message


def test_every_accepted_message_is_notified_once_across_a_worker_crash(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    extra = ["--store", url, "--worker-lease", "2"]
    with workers_behind_dispatcher(tmp_path, 2, settings=SETTINGS, extra=extra) as (dispatcher, workers):
        w1, w2 = workers
        sender = HoldingSender(dispatcher)
        try:
            finals: dict[str, int] = {}
            for i in range(MESSAGES):
                if i == KILL_AT:
                    # First the printer's delay: the lines of the messages w1 took are written
                    # (a SIGKILL loses what a process holds, and listen holds lines for tens of ms).
                    time.sleep(0.2)
                    w1.kill()  # SIGKILL mid-run, not restarted
                mid = f"crash-{i}"
                finals[mid] = sender.send(f"message {i}", mid, timeout=15)
                if i % 4 == 0:
                    # A retry with a new Call-ID: round-robin gives it to the other worker.
                    assert sender.send(f"message {i} again", mid, timeout=15) == finals[mid]
            accepted = {mid for mid, status in finals.items() if 200 <= status < 300}
            assert accepted == set(finals)
            # What reached the sender so far includes IMDNs the dead worker sent: not counted.
            sender.wait_notifications(10**6, 0.5)
            sender.notifications.clear()
            sender.holding = False
            delivered: set[str] = set()
            deadline = time.monotonic() + 40
            while not accepted <= delivered and time.monotonic() < deadline:
                sender.wait_notifications(len(sender.notifications) + 1, deadline - time.monotonic())
                for note in sender.notifications:
                    found = _ABOUT.search(note.body)
                    if found and b"<delivered/>" in note.body:
                        delivered.add(found.group(1).decode())
            # From the survivor alone: its own and, taken over, the dead worker's.
            assert accepted <= delivered, sorted(accepted - delivered)
        finally:
            sender.close()
        handed_up = [event["message_id"] for worker in (w1, w2) for event in worker.messages()]
        assert sorted(handed_up) == sorted(finals), "a Message-ID reached the application twice (or never)"
        assert {event["message_id"] for event in w1.messages()}  # both took part before the kill
        assert {event["message_id"] for event in w2.messages()}
