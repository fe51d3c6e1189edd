"""examples/store_and_forward.py from the command line, against real user agents on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from test_intermediary_support import DOMAIN, register, ua_config, until

from sipimdn.events import DispositionState
from sipimdn.ua import IncomingMessage, UserAgent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@asynccontextmanager
async def example(script: str, *args: str) -> AsyncIterator[tuple[str, list[str]]]:
    """Run an example; yield its URI and the lines it printed so far (kept up to date)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        "--listen",
        "udp:127.0.0.1:0",
        "--run-for",
        "30",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        assert first.startswith("listening as sip:imdn@127.0.0.1:"), first
        uri = first.split()[-1]

        async def read() -> None:
            assert process.stdout is not None
            while line := await process.stdout.readline():
                lines.append(line.decode().rstrip())

        reader = asyncio.create_task(read())
        yield uri, lines
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        if "reader" in locals():
            await asyncio.wait_for(reader, 5)
    assert process.returncode == 0, (await process.stderr.read()).decode() if process.stderr else ""


async def test_store_and_forward_example_holds_until_the_recipient_registers(tmp_path: Path) -> None:
    store = str(tmp_path / "held.sqlite")
    bob_uri = f"sip:bob@{DOMAIN}"
    args = ("--domain", DOMAIN, "--retry", "60", "--expiry", "120", "--store", store)
    async with (
        example("store_and_forward.py", *args) as (uri, lines),
        UserAgent(ua_config("alice", outbound_proxy=uri)) as alice,
        UserAgent(ua_config("bob", aor=bob_uri)) as bob,
    ):
        inbox: list[IncomingMessage] = []

        async def keep(message: IncomingMessage) -> None:
            inbox.append(message)

        bob.on_message(keep)
        sent = await alice.send_message(bob_uri, "held for you", notify=["positive-delivery", "processing"])
        assert (await asyncio.wait_for(sent.final_response(), 5)).status_code == 202
        await until(lambda: any(line.startswith("held for sip:bob@") for line in lines))
        assert not inbox
        await register(bob_uri, bob.contact_uri(), uri)
        await until(lambda: bool(inbox))
        await sent.await_disposition(DispositionState.DELIVERED, timeout=5)
        await until(lambda: any("imdn-route (202)" in line for line in lines))
        assert any(line.startswith("notifying ") and "processing stored" in line for line in lines)
