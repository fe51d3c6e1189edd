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


async def test_bad_options_exit_2() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "store_and_forward.py"),
        "--listen",
        "tls:127.0.0.1:0",
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"tls_server_context" in err


async def test_tls_listener_from_certificate_files(tmp_path: Path) -> None:
    import ssl

    import trustme

    from sipimdn.dialog.factory import build_request
    from sipimdn.stack import SipStack
    from sipimdn.transport.flow import Transport
    from sipimdn.transport.select import Target

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "store_and_forward.py"),
        "--listen",
        "tls:127.0.0.1:0",
        "--tls-cert",
        str(pem),
        "--run-for",
        "20",
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        uri = first.split()[-1]
        assert uri.endswith(";transport=tls")
        port = int(uri.split(":")[2].split(";")[0])
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(client)
        from sipimdn.transport.base import TransportConfig

        async with SipStack(transport_config=TransportConfig(client_ssl_context=client)) as stack:
            options = build_request("OPTIONS", uri, "<sip:probe@127.0.0.1>", f"<{uri}>")
            answer = await stack.send_request(options, Target(Transport.TLS, "127.0.0.1", port, "127.0.0.1"))
            assert answer.status_code == 200
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
