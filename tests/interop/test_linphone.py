"""liblinphone (Debian linphone-cli, linphone-daemon) against sipimdn's UserAgent.

Topology and why: tests/interop/linphone/peers.py. alice is liblinphone and tester is
sipimdn's UserAgent (in this process); both register with a Kamailio registrar, which
routes every MESSAGE and IMDN between them by location; sipimdn uses it as outbound proxy.

liblinphone 5.1's January bug (its CPIM parser stores the month 0-based, then refuses a month
below 1): it rejects any CPIM whose DateTime is in January (488). sipimdn stamps DateTime
with the current time, so in January the ``not_january`` fixture moves the user agent's wall
clock (only its own modules' view of ``time.time``) 31 days on; the rest of the year it changes
nothing.

liblinphone sends a display notification only when a client marks the chat room read,
which linphone-daemon never does: the display test runs alice in ``lpreader``
(linphone/lpreader.c, built against liblinphone-dev), which does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.events import DispositionChanged, DispositionEvent, DispositionState, NotificationRejected
from sipimdn.iscomposing import ChangeCause, ComposingState, ComposingStateChanged
from sipimdn.registration import RegistrationSucceeded
from sipimdn.ua import IncomingMessage

from .linphone.peers import LinphoneDaemon, LinphoneReader, Registrar
from .sipp import LOOPBACK

pytestmark = pytest.mark.interop

UA_USER = "tester"
UA_AOR = f"sip:{UA_USER}@{LOOPBACK}"
ALICE = f"sip:alice@{LOOPBACK}"


@dataclass
class Topology:
    """Kamailio, liblinphone as alice, and sipimdn's UserAgent as tester, all running."""

    registrar: Registrar
    alice: LinphoneDaemon | LinphoneReader
    ua: UserAgent
    received: list[IncomingMessage] = field(default_factory=list)
    dispositions: list[DispositionEvent] = field(default_factory=list)

    async def next_message(self, timeout: float = 10.0) -> IncomingMessage:
        """The first message sipimdn handed to the application (waits, bounded)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.received and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert self.received, self.describe()
        return self.received[0]

    @property
    def daemon(self) -> LinphoneDaemon:
        """alice, when run in linphone-daemon."""
        assert isinstance(self.alice, LinphoneDaemon)
        return self.alice

    def describe(self) -> str:
        return (
            f"{self.alice.describe()}\n--- kamailio (tail) ---\n{self.registrar.log_text()[-3000:]}\n"
            f"--- sipimdn dispositions ---\n{self.dispositions}"
        )


@pytest.fixture(autouse=True)
def not_january(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the DateTime sipimdn sends out of January, which liblinphone 5.1 rejects."""
    if datetime.now(UTC).month != 1:
        return
    import sipimdn.ua._agent as agent
    import sipimdn.ua._wire as wire

    shifted = types.SimpleNamespace(time=lambda: time.time() + 31 * 86400)
    for module in (agent, wire):
        monkeypatch.setattr(module, "time", shifted)


@pytest.fixture
async def topology(
    tmp_path: Path, kamailio_binary: str, linphone_daemon_binary: str
) -> AsyncIterator[Callable[..., Awaitable[Topology]]]:
    """Builds the topology, liblinphone with CPIM on or off, alice in linphone-daemon or (given
    ``reader``, the lpreader program) in lpreader; tears everything down by PID."""
    kamailio, daemon = kamailio_binary, linphone_daemon_binary
    registrars: list[Registrar] = []
    daemons: list[LinphoneDaemon | LinphoneReader] = []
    agents: list[UserAgent] = []

    async def build(cpim: bool, reader: Path | None = None) -> Topology:
        registrar = Registrar(kamailio, tmp_path / "kamailio")
        registrars.append(registrar)
        await asyncio.to_thread(registrar.start_on_free_port)
        alice: LinphoneDaemon | LinphoneReader
        if reader is None:
            alice = LinphoneDaemon(
                daemon, tmp_path / "alice", user="alice", registrar_port=registrar.port, cpim=cpim
            )
        else:
            alice = LinphoneReader(
                reader, tmp_path / "alice", user="alice", registrar_port=registrar.port, cpim=cpim
            )
        daemons.append(alice)
        await asyncio.to_thread(alice.start)
        config = UserAgentConfig(
            aor=UA_AOR,
            listen=(ListenEndpoint("udp", LOOPBACK, 0),),  # registered: nobody needs the port first
            udp_implies_tcp=False,
            outbound_proxy=f"sip:{LOOPBACK}:{registrar.port};lr",
            register=True,
            register_expires=600,
            store_path=":memory:",
        )
        ua = UserAgent(config)
        await ua.start()
        agents.append(ua)
        registered = await ua.wait_registered(timeout=10)
        assert isinstance(registered, RegistrationSucceeded), f"{registered}\n{registrar.log_text()[-3000:]}"
        built = Topology(registrar, alice, ua)

        async def on_message(message: IncomingMessage) -> None:
            built.received.append(message)

        async def on_disposition(event: DispositionEvent) -> None:
            built.dispositions.append(event)

        ua.on_message(on_message)
        ua.on_disposition(on_disposition)
        return built

    yield build
    for ua in agents:
        await ua.close()
    for alice in daemons:
        await asyncio.to_thread(alice.stop)
    for registrar in registrars:
        registrar.stop()


async def test_linphone_display_notification_moves_sipimdn_to_displayed(
    topology: Callable[..., Awaitable[Topology]], lpreader_program: Path
) -> None:
    """sipimdn -> liblinphone asking for delivery and display: liblinphone's delivered IMDN,
    then, once lpreader marks the room read, its display IMDN: the handle reaches displayed."""
    net = await topology(True, reader=lpreader_program)
    assert isinstance(net.alice, LinphoneReader)
    handle = await net.ua.send_message(ALICE, "Please read me", notify={"positive-delivery", "display"})
    response = await asyncio.wait_for(handle.final_response(), 15)
    assert response.status_code == 200, net.describe()
    await handle.await_disposition("displayed", timeout=15)
    assert handle.reached("displayed"), net.describe()
    assert net.alice.read_ids() == [handle.message_id], net.describe()
    changes = [event.state for event in net.dispositions if isinstance(event, DispositionChanged)]
    # liblinphone sends its delivered IMDN before its 200 OK, so "accepted" may be skipped.
    in_order = [DispositionState.ACCEPTED, DispositionState.DELIVERED, DispositionState.DISPLAYED]
    assert changes in (in_order, in_order[1:]), net.describe()


async def test_linphone_cpim_message_gets_sipimdn_delivered_then_displayed(
    topology: Callable[..., Awaitable[Topology]],
) -> None:
    """liblinphone -> sipimdn: CPIM asking for delivery and display; liblinphone accepts
    sipimdn's delivered IMDN (DeliveredToUser), then its displayed IMDN (Displayed)."""
    net = await topology(True)
    message_id = await asyncio.to_thread(net.daemon.send_message, UA_AOR, "Hello sipimdn")
    message = await net.next_message()
    assert message.text.strip() == "Hello sipimdn", net.describe()
    assert message.message_id == message_id
    assert {"positive-delivery", "display"} <= set(message.notify), net.describe()
    state = await asyncio.to_thread(net.daemon.wait_message_state, message_id, "DeliveredToUser", 10.0)
    assert state == "DeliveredToUser", net.describe()
    await message.mark_displayed()
    state = await asyncio.to_thread(net.daemon.wait_message_state, message_id, "Displayed", 10.0)
    assert state == "Displayed", net.describe()


async def test_sipimdn_message_reaches_delivered_through_linphone_imdn(
    topology: Callable[..., Awaitable[Topology]],
) -> None:
    """sipimdn -> liblinphone: liblinphone's deflated, loosely formed delivered IMDN (which it
    sends before its 200 OK) moves the handle to delivered."""
    net = await topology(True)
    handle = await net.ua.send_message(ALICE, "Hello liblinphone", notify={"positive-delivery", "display"})
    response = await asyncio.wait_for(handle.final_response(), 15)
    assert response.status_code == 200, net.describe()
    await handle.await_disposition("delivered", timeout=10)
    assert handle.reached("delivered"), net.describe()
    received = await asyncio.to_thread(net.daemon.wait_received, 1, 5.0)
    assert [event.get("Content") for event in received] == ['"Hello liblinphone"'], net.describe()
    assert received[0].get("Id") == handle.message_id
    # What sipimdn had to take: liblinphone logs the IMDN it sent, deflated.
    assert "Content-Encoding: deflate" in net.alice.log_text(), net.describe()


async def test_plain_text_both_ways_with_linphone_cpim_off(
    topology: Callable[..., Awaitable[Topology]],
) -> None:
    """liblinphone with CPIM off: text/plain both ways. Its unsolicited delivered IMDN for
    our plain message is keyed by our Call-ID, which is no message id of ours: it must be
    reported as rejected and change no state."""
    net = await topology(False)
    handle = await net.ua.send_message(ALICE, "plain hello", cpim=False)
    response = await asyncio.wait_for(handle.final_response(), 15)
    assert response.status_code == 200, net.describe()
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline and not any(
        isinstance(event, NotificationRejected) for event in net.dispositions
    ):
        await asyncio.sleep(0.05)
    rejected = [event for event in net.dispositions if isinstance(event, NotificationRejected)]
    assert rejected, net.describe()
    assert rejected[0].message_id != handle.message_id
    assert handle.state is DispositionState.ACCEPTED, net.describe()
    received = await asyncio.to_thread(net.daemon.wait_received, 1, 5.0)
    assert [event.get("Content") for event in received] == ['"plain hello"'], net.describe()

    await asyncio.to_thread(net.daemon.send_message, UA_AOR, "plain from liblinphone")
    message = await net.next_message()
    assert message.content_type.startswith("text/plain"), net.describe()
    assert message.text.strip() == "plain from liblinphone"
    assert not message.notify


@pytest.mark.parametrize("cpim", [True, False], ids=["cpim", "bare"])
async def test_linphone_composing_indications_surface_as_events(
    topology: Callable[..., Awaitable[Topology]], lpreader_program: Path, cpim: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """liblinphone -> sipimdn: the user types (linphone_chat_room_compose), liblinphone sends
    is-composing "active" (in message/cpim, deflated, when CPIM is on; bare otherwise),
    sipimdn answers 200, raises an active event and delivers no message."""
    net = await topology(cpim, reader=lpreader_program)
    assert isinstance(net.alice, LinphoneReader)
    events: list[ComposingStateChanged] = []

    async def on_composing(event: ComposingStateChanged) -> None:
        events.append(event)

    net.ua.on_composing(on_composing)
    caplog.set_level(logging.DEBUG, logger="sipimdn.wire")  # every message, in full
    await asyncio.to_thread(net.alice.compose, UA_AOR)
    deadline = asyncio.get_running_loop().time() + 10
    while not events and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert events, net.describe()
    first = events[0]
    assert first.state is ComposingState.ACTIVE, net.describe()
    assert first.sender == ALICE
    assert first.cause is ChangeCause.INDICATION
    assert net.received == []  # an indication is never delivered as a message
    # How it came: in message/cpim (deflated, as liblinphone sends its CPIM) or bare.
    wire = [bytes(r.sip_data) for r in caplog.records if getattr(r, "sip_direction", None) == "received"]
    received = [data for data in wire if data.startswith(b"MESSAGE ")]
    assert received, net.describe()
    wanted = b"Content-Type: message/cpim" if cpim else b"Content-Type: application/im-iscomposing+xml"
    assert wanted in received[0], received[0][:600]
