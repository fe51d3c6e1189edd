"""The user agent's application API: handler registration, reply, close with work in flight,
one clock for event times, the AOR's address family, UDP from a stream-only user agent, logs
naming the callback, and the stats snapshot."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, get_args

import pytest
from test_ua_register import registrar
from ua_helpers import StackPeer, ua_config

from sipimdn import IncomingMessage, UserAgent, UserAgentConfig
from sipimdn.config import ListenEndpoint
from sipimdn.errors import LocalProtocolError, TransactionTimeout
from sipimdn.events import DispositionChanged, NotificationSent, RegistrationEvent, RegistrationSucceeded
from sipimdn.imdn.vocabulary import DispositionRequest, Kind, KindName, NotifyName, Status, StatusName
from sipimdn.ua import Answer, UserAgentStats


def test_the_literal_names_are_the_vocabulary_values() -> None:
    assert set(get_args(KindName)) == {k.value for k in Kind}
    assert set(get_args(StatusName)) == {s.value for s in Status}
    assert set(get_args(NotifyName)) == {r.value for r in DispositionRequest}


# -- registration of handlers -----------------------------------------------------------------


async def test_decorators_return_what_they_decorate_and_remove_handler_stops_them() -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:
        changes: list[DispositionChanged] = []

        @alice.on_disposition
        async def follow(event: Any) -> None:
            if isinstance(event, DispositionChanged):
                changes.append(event)

        @bob.on_message
        async def take(message: IncomingMessage) -> Answer:
            return Answer.ACCEPTED

        assert callable(follow) and follow.__name__ == "follow"
        assert take.__name__ == "take"
        sent = await alice.send_message(bob.aor, "one")
        assert (await sent.final_response()).status_code == 202
        await asyncio.wait_for(_until(lambda: bool(changes)), 5)
        assert alice.remove_handler(follow) and not alice.remove_handler(follow)
        count = len(changes)
        assert bob.remove_handler(take)
        assert (await (await alice.send_message(bob.aor, "two")).final_response()).status_code == 480
        # The 480 changed the state of "two" (failed): nobody was told, the handler is gone.
        assert len(changes) == count


class _AsyncCallable:
    async def __call__(self, message: IncomingMessage) -> None:
        return None


class _SyncCallable:
    def __call__(self, message: IncomingMessage) -> None:
        return None


def _sync_handler(message: IncomingMessage) -> None:
    return None


async def test_a_handler_that_is_not_async_is_refused_at_registration() -> None:
    ua = UserAgent(ua_config("bob"))
    for handler in (_sync_handler, _SyncCallable(), lambda message: None):
        with pytest.raises(TypeError, match=r"not a coroutine function.*async def"):
            ua.on_message(handler)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="_sync_handler"):
        ua.on_disposition(_sync_handler)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="takes a callable"):
        ua.on_notification(42)  # type: ignore[type-var]
    instance = _AsyncCallable()
    assert ua.on_message(instance) is instance  # an object with an async __call__ is fine


# -- reply -------------------------------------------------------------------------------------


async def test_reply_sends_a_message_back_to_the_sender() -> None:
    received: asyncio.Queue[IncomingMessage] = asyncio.Queue()
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:
        replies: list[Any] = []

        @bob.on_message
        async def echo(message: IncomingMessage) -> None:
            replies.append(await message.reply(f"echo: {message.text}", notify={"positive-delivery"}))

        @alice.on_message
        async def inbox(message: IncomingMessage) -> None:
            await received.put(message)

        await alice.send_message(bob.aor, "ping")
        answer = await asyncio.wait_for(received.get(), 5)
        assert answer.text == "echo: ping" and answer.sender == bob.aor
        assert answer.notify == {"positive-delivery"}
        (handle,) = replies
        assert handle.to == alice.aor and (await handle.final_response()).status_code == 200
        assert await handle.await_disposition("delivered", timeout=5) == "delivered"


# -- close with work in flight ---------------------------------------------------------------


async def test_close_mid_work_waits_for_spawned_replies_within_the_grace() -> None:
    """An echo bot stopped (as on SIGTERM) while 20 replies are still being written loses none."""
    replies: list[str] = []
    all_replies = asyncio.Event()
    alice = UserAgent(ua_config("alice"))

    @alice.on_message
    async def inbox(message: IncomingMessage) -> None:
        replies.append(message.text)
        if len(replies) == 20:
            all_replies.set()

    async with alice:
        bob = UserAgent(ua_config("bob", close_grace=5.0))
        got = 0
        all_in = asyncio.Event()

        @bob.on_message
        async def echo(message: IncomingMessage) -> None:
            nonlocal got

            async def later() -> None:
                await asyncio.sleep(0.3)  # the slow part of the bot's work
                await message.reply(f"re: {message.text}")

            bob.spawn(later())
            got += 1
            if got == 20:
                all_in.set()

        async with bob:
            for n in range(20):
                await alice.send_message(bob.aor, str(n))
            await asyncio.wait_for(all_in.wait(), 10)
            # Leaving the block closes bob now, with every reply still sleeping.
        await asyncio.wait_for(all_replies.wait(), 5)
    assert sorted(replies) == sorted(f"re: {n}" for n in range(20))


async def test_tasks_outliving_the_grace_are_cancelled_and_named(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caplog.set_level(logging.WARNING, logger="sipimdn.ua")
    async with UserAgent(ua_config("bob", close_grace=0.2)) as bob:
        task = bob.spawn(forever(), name="nightly-report")
        started = time.monotonic()
    assert 0.15 <= time.monotonic() - started < 3
    assert cancelled.is_set() and task.cancelled()
    (line,) = [r.getMessage() for r in caplog.records if "grace" in r.getMessage()]
    assert "cancelling 1 spawned task(s)" in line and "nightly-report" in line


# -- logs --------------------------------------------------------------------------------------


async def test_a_failing_callback_is_logged_with_its_name_and_event(caplog: pytest.LogCaptureFixture) -> None:
    failed = asyncio.Event()

    class Broken:
        async def on_event(self, event: Any) -> None:
            failed.set()
            raise RuntimeError("boom")

    broken = Broken()
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def fails(message: IncomingMessage) -> None:
            raise ValueError("bad handler")

        alice.on_disposition(broken.on_event)
        sent = await alice.send_message(bob.aor, "x")
        assert (await sent.final_response()).status_code == 500
        await asyncio.wait_for(failed.wait(), 5)
        await asyncio.sleep(0.05)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    callback = next(m for m in messages if "Broken.on_event" in m)
    assert "DispositionChanged" in callback and sent.message_id in callback
    handler = next(m for m in messages if "fails" in m)
    assert "on_message handler" in handler and "test_ua_api" in handler and sent.message_id in handler


async def test_info_lines_for_messages_and_notifications(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sipimdn")
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            await message.mark_displayed()

        sent = await alice.send_message(bob.aor, "hello", notify={"positive-delivery", "display"})
        assert await sent.await_disposition("displayed", timeout=5) == "displayed"
        await asyncio.sleep(0.05)
        mid = sent.message_id
        info = [(r.name, r.getMessage()) for r in caplog.records if r.levelno == logging.INFO]
        request_call_id = next(m for _, m in info if m.startswith(f"sending message {mid}"))
        assert bob.aor in request_call_id and "Call-ID" in request_call_id
        assert "notifications asked: display, positive-delivery" in request_call_id
        assert any(m == f"message {mid} to {bob.aor} answered 200 OK" for _, m in info)
        received = next(m for _, m in info if m.startswith(f"received message {mid}"))
        assert alice.aor in received and "over UDP" in received
        assert any(m == f"answered message {mid} from {alice.aor}: 200" for _, m in info)
        for kind, status in (("delivery", "delivered"), ("display", "displayed")):
            about = f"{kind} notification '{status}' for message {mid}"
            assert any(m.startswith(f"sent {about} to ") and m.endswith(": 200") for _, m in info), kind
            assert any(m.startswith(f"received {about} from {bob.aor} over UDP") for _, m in info)
            assert any(m.startswith(f"accepted {about} from {bob.aor}") for _, m in info)
        assert {name for name, _ in info} <= {"sipimdn.ua", "sipimdn.stack", "sipimdn.transport"}


# -- clocks, address families, transports ----------------------------------------------------


async def test_registration_times_are_wall_clock_like_disposition_times() -> None:
    events: list[RegistrationEvent] = []

    async def record(event: RegistrationEvent) -> None:
        events.append(event)

    async with StackPeer("registrar", registrar(granted=40)) as peer:
        config = UserAgentConfig(
            aor="sip:alice@example.test",
            listen=(ListenEndpoint("udp", "127.0.0.1", 0),),
            outbound_proxy=peer.aor,
            register=True,
            register_expires=60,
            close_grace=1.0,
        )
        async with UserAgent(config) as ua:
            ua.on_registration(record)
            before = time.time()
            event = await ua.wait_registered(timeout=5)
    assert isinstance(event, RegistrationSucceeded)
    # Refreshed before the 40 s granted run out, counted on the wall clock (not the loop's).
    assert before < event.refresh_at < before + 40


async def test_an_aor_of_a_family_nobody_listens_on() -> None:
    ipv6_aor = UserAgentConfig(aor="sip:carol@[::1]:0")  # the default listener is 127.0.0.1
    with pytest.raises(LocalProtocolError, match=r"IPv6 address but the user agent listens only on udp:127"):
        async with UserAgent(ipv6_aor):
            pass


async def test_an_aor_of_another_family_with_a_port_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async with UserAgent(UserAgentConfig(aor="sip:carol@[2001:db8::1]:5060")) as ua:
        assert ua.aor == "sip:carol@[2001:db8::1]:5060"
    assert any(
        r.levelno == logging.WARNING and "IPv6 address but the user agent listens only" in r.getMessage()
        for r in caplog.records
    )


async def test_a_tcp_only_user_agent_reaches_a_udp_sender(caplog: pytest.LogCaptureFixture) -> None:
    """Bob listens on TCP only; Alice (UDP only) asks for a delivery notification: it reaches her."""
    caplog.set_level(logging.INFO, logger="sipimdn.ua")
    notified: list[NotificationSent] = []
    alice_config = ua_config("alice", udp_implies_tcp=False)
    async with UserAgent(ua_config("bob", "tcp")) as bob, UserAgent(alice_config) as alice:
        assert [e.transport for e in alice.endpoints] == ["udp"]
        assert [e.transport for e in bob.endpoints] == ["tcp"]  # the sending socket is not listed

        @bob.on_message
        async def accept(message: IncomingMessage) -> None:
            return None

        @bob.on_notification
        async def record(event: Any) -> None:
            if isinstance(event, NotificationSent):
                notified.append(event)

        sent = await alice.send_message(bob.aor, "over tcp", notify={"positive-delivery"}, transport="tcp")
        assert (await sent.final_response()).status_code == 200
        assert await sent.await_disposition("delivered", timeout=5) == "delivered"
        await asyncio.wait_for(_until(lambda: bool(notified)), 5)
        assert notified[0].sip_status == 200 and notified[0].kind is Kind.DELIVERY
        # The socket takes answers only: a request sent to it gets nothing back.
        line = next(r.getMessage() for r in caplog.records if "sending UDP requests from" in r.getMessage())
        port = int(line.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.settimeout(0.5)
            raw.sendto(_options_request(port), ("127.0.0.1", port))
            with pytest.raises(TimeoutError):
                raw.recvfrom(4096)


def _options_request(port: int) -> bytes:
    return (
        f"OPTIONS sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKsendonly1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        "Call-ID: sendonly-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


# -- stats -------------------------------------------------------------------------------------


async def test_stats_after_a_loopback_exchange() -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def show(message: IncomingMessage) -> None:
            if message.text != "unread":
                await message.mark_displayed()

        before = alice.stats()
        assert isinstance(before, UserAgentStats) and before.messages_sent == 0
        for n in range(3):
            sent = await alice.send_message(bob.aor, f"m{n}", notify={"positive-delivery", "display"})
            assert await sent.await_disposition("displayed", timeout=5) == "displayed"
        # Delivered, never displayed: still tracked on both sides (display may come later).
        unread = await alice.send_message(bob.aor, "unread", notify={"positive-delivery", "display"})
        assert await unread.await_disposition("delivered", timeout=5) == "delivered"
        await asyncio.wait_for(_until(lambda: alice.stats().notifications_accepted == 7), 5)
        await bob.flush()
        a, b = alice.stats(), bob.stats()
    assert (a.messages_sent, a.messages_received, b.messages_received) == (4, 0, 4)
    assert (b.notifications_sent, a.notifications_received, a.notifications_accepted) == (7, 7, 7)
    assert a.notifications_rejected == 0 and b.notifications_received == 0
    assert a.tracked_messages == 1 and b.owed_notifications == 0 and b.tracked_received >= 1
    assert b.store_writes >= 1 and 0 < b.store_write_max_seconds <= b.store_write_seconds
    assert 0 < b.store_write_mean_seconds <= b.store_write_max_seconds
    assert a.open_connections == 0 and a.duplicates_received == 0
    assert a.retransmissions == a.timeouts == a.transport_errors == 0


async def test_stats_count_retransmissions_and_timeouts() -> None:
    fast = {"t1": 0.02, "t2": 0.04}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        async with UserAgent(ua_config("alice", **fast)) as alice:
            sent = await alice.send_message(f"sip:bob@127.0.0.1:{port}", "anyone?", cpim=False)
            with pytest.raises(TransactionTimeout):
                await asyncio.wait_for(sent.final_response(), 10)
            stats = alice.stats()
    assert stats.timeouts == 1 and stats.retransmissions >= 5 and stats.transport_errors == 0


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)
