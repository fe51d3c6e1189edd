"""The user agent and the ``sipimdn listen`` CLI on a PostgreSQL store (tests/_postgres.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _postgres import require_postgres
from test_cli_ua import _send, listener
from ua_helpers import ua_config

from sipimdn import UserAgent
from sipimdn.events import DispositionState
from sipimdn.store import open_store
from sipimdn.store.postgres import SCHEMA_VERSION, PostgresStore
from sipimdn.ua import IncomingMessage

CLI = [sys.executable, "-m", "sipimdn"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def test_delivery_notification_with_the_receiver_on_postgres(postgres_url: str) -> None:
    """Alice asks for positive-delivery; bob keeps his state in PostgreSQL; the IMDN arrives."""
    bob_store = PostgresStore(postgres_url, worker_id="bob-1")
    received: list[IncomingMessage] = []
    try:
        bob_ua = UserAgent(ua_config("bob"), store=bob_store)
        async with UserAgent(ua_config("alice")) as alice, bob_ua as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                received.append(message)

            handle = await alice.send_message(bob.aor, "hello", notify={"positive-delivery", "display"})
            state = await handle.await_disposition("delivered", timeout=10)
            assert state is DispositionState.DELIVERED
        # Bob's obligations were in PostgreSQL: the message (still owed "displayed") and its dedup entry.
        snapshot = bob_store.load(0.0)
        message_id = received[0].message_id
        assert [r.message_id for r in snapshot.received] == [message_id]
        assert [s.message_id for s in snapshot.seen] == [message_id]
    finally:
        bob_store.close()


async def test_ua_restarted_on_the_same_database_marks_displayed(postgres_url: str) -> None:
    """Bob stops before showing the message; a new bob on the same database sends "displayed"."""
    received: list[IncomingMessage] = []
    async with UserAgent(ua_config("alice")) as alice:
        first = open_store(postgres_url, worker_id="bob")
        try:
            async with UserAgent(ua_config("bob"), store=first) as bob:

                @bob.on_message
                async def receive(message: IncomingMessage) -> None:
                    received.append(message)

                handle = await alice.send_message(bob.aor, "read me later", notify={"display"})
                assert (await handle.final_response()).status_code == 200
        finally:
            first.close()
        again = open_store(postgres_url, worker_id="bob")
        try:
            async with UserAgent(ua_config("bob"), store=again) as bob_again:
                assert await bob_again.mark_displayed(received[0].message_id or "") is True
                assert await handle.await_disposition("displayed", timeout=10) is DispositionState.DISPLAYED
        finally:
            again.close()


def test_listen_on_postgres_receives(postgres_url: str) -> None:
    with listener("--store", postgres_url, "--worker-id", "bob-cli") as (proc, listening):
        result = _send(listening["aor"], "--notify", "positive-delivery")
        assert result.returncode == 0, result.stdout + result.stderr
        proc.terminate()
        proc.wait(15)
    store = PostgresStore(postgres_url)
    try:
        # The CLI's worker created the schema and recorded the message for dedup.
        assert store.schema_version == SCHEMA_VERSION
        assert len(store.load(0.0).seen) == 1
    finally:
        store.close()


def test_listen_with_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    require_postgres()
    url = f"postgresql://postgres:hunter2@/sipimdn?host={tmp_path}"  # no server there
    result = subprocess.run(
        [*CLI, "listen", "--aor", "sip:bob@127.0.0.1", "--listen", "udp:127.0.0.1:0", "--store", url],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sipimdn listen: error: cannot open store"), result.stderr
    assert "hunter2" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("store", "message"),
    [("mysql://u@h/db", "unsupported"), ("postgresql://u@h:notaport/db", "bad PostgreSQL URL")],
)
def test_config_rejects_a_store_url_it_cannot_use(store: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ua_config("bob", store_path=store)


def test_config_worker_id() -> None:
    assert ua_config("bob").worker_id is None
    assert ua_config("bob", worker_id="w7").worker_id == "w7"
    with pytest.raises(ValueError, match="worker_id"):
        ua_config("bob", worker_id="bad\nname")


async def test_working_set_reads_received_records_back_from_postgres(postgres_url: str) -> None:
    """Bob keeps 20 received records in memory, the rest in PostgreSQL: an early message is read
    back and marked displayed, before and after a restart (which loads the working set only)."""
    received: list[IncomingMessage] = []
    unlimited = {"imdn_rate_limit": 10**6, "imdn_byte_budget": 10**9}
    delivered, displayed = DispositionState.DELIVERED, DispositionState.DISPLAYED
    async with UserAgent(ua_config("alice")) as alice:
        first = open_store(postgres_url, worker_id="bob")
        try:
            async with UserAgent(ua_config("bob", working_set_max=20, **unlimited), store=first) as bob:

                @bob.on_message
                async def receive(message: IncomingMessage) -> None:
                    received.append(message)

                handles = [
                    await alice.send_message(bob.aor, f"m{n}", notify={"positive-delivery", "display"})
                    for n in range(100)
                ]
                for handle in handles:
                    assert await handle.await_disposition("delivered", timeout=10) is delivered
                assert bob.stats().working_set_evictions >= 80 and bob.tracker.tracked_received <= 20
                assert await bob.mark_displayed(received[0].message_id or "") is True
                assert await handles[0].await_disposition("displayed", timeout=10) is displayed
        finally:
            first.close()
        again = open_store(postgres_url, worker_id="bob")
        try:
            async with UserAgent(ua_config("bob", working_set_max=20, **unlimited), store=again) as bob_again:
                assert bob_again.tracker.tracked_received == 20
                assert await bob_again.mark_displayed(received[1].message_id or "") is True
                assert await handles[1].await_disposition("displayed", timeout=10) is displayed
        finally:
            again.close()
