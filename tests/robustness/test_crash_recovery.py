"""kill -9 and restart on the same SQLite store: nothing owed is lost, nothing reaches the
application twice, the states agree.

Each user agent under test runs in its own process (``crash_peer.py``) and SIGKILLs itself at
the exact point under test; the test then restarts it on the same store file and port.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from robust_helpers import listen, port_of, settle

from sipimdn import UserAgent, cpim, imdn
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.dialog.factory import build_request
from sipimdn.dialog.transaction import TimerConfig
from sipimdn.errors import TransactionTimeout, TransportError
from sipimdn.events import DispositionChanged, DispositionState
from sipimdn.message import Request
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage

PEER = str(Path(__file__).with_name("crash_peer.py"))
Event = dict[str, Any]
Agent = tuple[UserAgent, list[IncomingMessage], list[DispositionChanged]]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_RUNNING: list[Peer] = []


@pytest.fixture(autouse=True)
async def no_stray_peers() -> AsyncIterator[None]:
    """Whatever a test did (a failed assertion before its cleanup), its peer processes end with it."""
    yield
    while _RUNNING:
        peer = _RUNNING.pop()
        if peer.process.returncode is None:
            peer.process.kill()  # this test's own child, by its PID
            await peer.process.wait()
        peer._reader.cancel()


class Peer:
    """One run of crash_peer.py; its JSON events are collected as they are printed."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[Event] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Peer:
        process = await asyncio.create_subprocess_exec(
            sys.executable, PEER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        peer = cls(process)
        _RUNNING.append(peer)
        await peer.wait_for(lambda e: e["event"] == "ready", 15)
        return peer

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.events.append(json.loads(line))

    def of(self, event: str) -> list[Event]:
        return [e for e in self.events if e["event"] == event]

    async def wait_for(self, match: Callable[[Event], bool], timeout: float) -> Event:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events:
                if match(event):
                    return event
            if loop.time() > deadline or (self._reader.done() and self.process.returncode is not None):
                stderr = b""
                if self.process.returncode is not None and self.process.stderr is not None:
                    stderr = await self.process.stderr.read()
                raise AssertionError(f"no matching event; got {self.events}; stderr {stderr[-2000:]!r}")
            await asyncio.sleep(0.02)

    async def died(self, timeout: float = 10) -> int:
        """Wait for the process to end; returns its return code (-9 after SIGKILL)."""
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        await self._reader
        return code

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await self.died(10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader


@asynccontextmanager
async def agent(name: str, handler_delay: float = 0.0, **extra: Any) -> AsyncIterator[Agent]:
    """An in-test user agent with short timers and fast IMDN retries; its application takes
    ``handler_delay`` seconds to accept each message."""
    config = UserAgentConfig(
        aor=f"sip:{name}@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),), udp_implies_tcp=False,
        t1=0.02, t2=0.16, t4=0.1, imdn_retry_base=0.2, imdn_retry_cap=0.4, imdn_max_attempts=40,
        imdn_park_base=0.2, imdn_park_cap=0.4, **extra)
    received: list[IncomingMessage] = []
    changes: list[DispositionChanged] = []
    ua = UserAgent(config)

    async def on_message(message: IncomingMessage) -> None:
        received.append(message)
        await asyncio.sleep(handler_delay)

    async def on_disposition(event: object) -> None:
        if isinstance(event, DispositionChanged):
            changes.append(event)

    ua.on_message(on_message)
    ua.on_disposition(on_disposition)
    async with ua:
        yield ua, received, changes


async def test_receiver_killed_after_answering_still_sends_what_it_owes(tmp_path: Path) -> None:
    """bob answers 200 and dies before his delivered IMDN goes out; restarted, he sends it once."""
    store = str(tmp_path / "bob.sqlite")
    port = free_udp_port()
    bob_args = ("--aor", f"sip:bob@127.0.0.1:{port}", "--port", str(port), "--store", store)
    async with asyncio.timeout(60), agent("alice") as (alice, _, changes):
        bob = await Peer.start(*bob_args, "--crash-after-answer")
        handle = await alice.send_message(f"sip:bob@127.0.0.1:{port}", "survive this",
                                          notify={"positive-delivery"})
        assert (await handle.final_response()).status_code == 200  # answered, then killed
        assert await bob.died() == -signal.SIGKILL
        assert [e["text"] for e in bob.of("message")] == ["survive this"]
        assert bob.of("notification_sent") == []  # nothing went out before the kill
        assert handle.state is DispositionState.ACCEPTED
        bob = await Peer.start(*bob_args)
        try:
            # Restarted bob sends what he owes at once (retries start at 0.2 s): 4 s is plenty.
            assert await handle.await_disposition("delivered", timeout=4) is DispositionState.DELIVERED
            await bob.wait_for(lambda e: e["event"] == "notification_sent" and e["sip_status"] == 200, 5)
            await asyncio.sleep(0.5)
            assert bob.of("message") == []  # the application is not handed the message again
            assert len(bob.of("notification_sent")) == 1
            assert [c.state for c in changes if c.message_id == handle.message_id] == [
                DispositionState.ACCEPTED, DispositionState.DELIVERED]
        finally:
            await bob.stop()


async def test_sender_killed_with_notifications_in_flight_gets_them_after_restart(tmp_path: Path) -> None:
    """alice dies the moment bob's IMDN reaches her; bob retries; restarted alice applies it once.

    bob's application takes 0.3 s to accept, so alice's send is on disk when the IMDN comes (the
    race where it is not is the next test)."""
    store = str(tmp_path / "alice.sqlite")
    port = free_udp_port()
    alice_args = ("--aor", f"sip:alice@127.0.0.1:{port}", "--port", str(port), "--store", store)
    async with asyncio.timeout(60), agent("bob", handler_delay=0.3) as (bob, received, _):
        alice = await Peer.start(*alice_args, "--crash-on-imdn", "--send-to", bob.aor, "--text", "in flight",
                                 "--notify", "positive-delivery")
        sent = await alice.wait_for(lambda e: e["event"] == "sent", 10)
        assert await alice.died() == -signal.SIGKILL  # bob's delivered IMDN arrived: killed
        # bob answers before he sends the IMDN, but alice handles a request inline and reports
        # the 200 from her send task: whether "accepted" is printed before the kill is a race.
        assert [e["state"] for e in alice.of("disposition")] in ([], ["accepted"])
        alice = await Peer.start(*alice_args)
        try:
            got = await alice.wait_for(lambda e: e["event"] == "disposition" and e["state"] == "delivered",
                                       15)
            assert got["id"] == sent["id"]
            await asyncio.sleep(0.5)
            assert len(alice.of("disposition")) == 1  # applied once, after the restart
            assert alice.of("rejected") == []
            assert [m.text for m in received] == ["in flight"]  # bob's application saw it once
        finally:
            await alice.stop()


async def test_sender_killed_by_an_immediate_notification_still_applies_it(tmp_path: Path) -> None:
    """A fast peer sends its IMDN before even answering the IM; alice dies on it; restarted, she must
    still know the message."""
    store = str(tmp_path / "alice.sqlite")
    port = free_udp_port()
    alice_args = ("--aor", f"sip:alice@127.0.0.1:{port}", "--port", str(port), "--store", store)
    bob = SipStack(listen(Transport.UDP), timers=TimerConfig(t1=0.02, t2=0.16, t4=0.1))
    imdns: list[int] = []

    async def eager(incoming: IncomingRequest) -> None:
        im = cpim.parse(incoming.request.body)
        note = imdn.build_imdn(im, kind="delivery", status="delivered", now=time.time())
        alice_uri = str(incoming.request.from_.uri)
        request = build_request("MESSAGE", alice_uri, f"<{bob_uri}>", f"<{alice_uri}>",
                                body=note.to_bytes(), content_type="message/cpim")
        sending = asyncio.create_task(retrying(request))
        await asyncio.sleep(0)  # the IMDN leaves first ...
        incoming.respond(200)  # ... then the answer
        imdns.append(await sending)

    async def retrying(request: Request) -> int:
        for _ in range(40):  # until restarted alice answers (new branch per attempt)
            try:
                return (await bob.send_request(request)).status_code
            except (TransportError, TransactionTimeout):
                await asyncio.sleep(0.2)
        return 0

    bob.on_request(eager)
    async with asyncio.timeout(60), bob:
        bob_uri = f"sip:bob@127.0.0.1:{port_of(bob, Transport.UDP)}"
        # A slow disk (0.3 s per write) makes the race certain: the IMDN always beats the write.
        alice = await Peer.start(*alice_args, "--crash-on-imdn", "--slow-store", "0.3", "--send-to", bob_uri,
                                 "--text", "eager", "--notify", "positive-delivery")
        sent = await alice.wait_for(lambda e: e["event"] == "sent", 10)
        assert await alice.died() == -signal.SIGKILL
        alice = await Peer.start(*alice_args)
        try:
            assert await settle(lambda: imdns == [200], 4)
            await asyncio.sleep(0.3)
            assert alice.of("rejected") == []
            assert [(e["id"], e["state"]) for e in alice.of("disposition")] == [(sent["id"], "delivered")]
        finally:
            await alice.stop()


async def test_both_killed_and_restarted(tmp_path: Path) -> None:
    """bob dies after answering, alice dies while bob's resumed IMDN is in flight; both restart."""
    alice_store, bob_store = str(tmp_path / "alice.sqlite"), str(tmp_path / "bob.sqlite")
    alice_port, bob_port = free_udp_port(), free_udp_port()
    alice_args = ("--aor", f"sip:alice@127.0.0.1:{alice_port}", "--port", str(alice_port), "--store",
                  alice_store)
    bob_args = ("--aor", f"sip:bob@127.0.0.1:{bob_port}", "--port", str(bob_port), "--store", bob_store)
    async with asyncio.timeout(90):
        bob = await Peer.start(*bob_args, "--crash-after-answer")
        alice = await Peer.start(*alice_args, "--crash-on-imdn", "--send-to", f"sip:bob@127.0.0.1:{bob_port}",
                                 "--text", "twice unlucky", "--notify", "positive-delivery,display")
        answered = await alice.wait_for(lambda e: e["event"] == "sent", 10)
        assert await bob.died() == -signal.SIGKILL
        bob = await Peer.start(*bob_args)  # owes "delivered": sends it, which kills alice
        assert await alice.died(timeout=4) == -signal.SIGKILL
        alice = await Peer.start(*alice_args)
        try:
            await alice.wait_for(lambda e: e["event"] == "disposition" and e["state"] == "delivered", 4)
            assert await settle(lambda: any(e["sip_status"] == 200 for e in bob.of("notification_sent")), 5)
            await asyncio.sleep(0.5)
            assert [e["state"] for e in alice.of("disposition")] == ["delivered"]
            assert bob.of("message") == []  # delivered to bob's application in its first run only
            assert all(e["id"] == answered["id"] for e in alice.of("disposition"))
        finally:
            await alice.stop()
            await bob.stop()
