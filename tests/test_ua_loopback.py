"""Two user agents on loopback: message -> 2xx -> delivered -> displayed, and what goes wrong."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from _peers import needs_ipv6
from ua_helpers import RawPeer, Recorder, Tls, make_tls, ua_config

from sipimdn import LocalProtocolError, TransportError, UserAgent
from sipimdn.events import (
    DispositionChanged,
    DispositionState,
    NotificationAccepted,
    NotificationRejected,
    NotificationSent,
)
from sipimdn.imdn import build_im, build_notification
from sipimdn.imdn.tracker import PEER_NO_CPIM
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.store import MemoryStore
from sipimdn.transport.base import ListenSpec
from sipimdn.transport.flow import Transport
from sipimdn.ua import IncomingMessage

S = DispositionState
BOTH = {"positive-delivery", "display"}


@pytest.fixture(scope="module")
def tls() -> Tls:
    return make_tls()


@pytest.mark.parametrize(
    ("transport", "host"),
    [
        ("udp", "127.0.0.1"),
        ("tcp", "127.0.0.1"),
        ("tls", "127.0.0.1"),
        pytest.param("udp", "::1", marks=needs_ipv6),
        pytest.param("tls", "::1", marks=needs_ipv6),
    ],
)
async def test_message_accepted_delivered_displayed(transport: str, host: str, tls: Tls) -> None:
    use_tls = tls if transport == "tls" else None
    bob_seen: list[IncomingMessage] = []
    alice_events = Recorder()
    async with (
        UserAgent(ua_config("bob", transport, use_tls, host)) as bob,
        UserAgent(ua_config("alice", transport, use_tls, host)) as alice,
    ):

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            bob_seen.append(message)

        alice.on_disposition(alice_events)
        handle = await alice.send_message(bob.aor, "hello Bob ✓", notify=BOTH, subject="hi")
        assert handle.state is S.PENDING
        response = await asyncio.wait_for(handle.final_response(), 5)
        assert response.status_code == 200
        assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
        # Step by step: the 2xx made it accepted, the automatic IMDN delivered.
        assert alice_events.states(handle.message_id) == [S.ACCEPTED, S.DELIVERED]
        (message,) = bob_seen
        assert message.text == "hello Bob ✓"
        assert message.content_type == "text/plain"
        assert message.subject == "hi"
        assert message.message_id == handle.message_id
        assert message.notify == frozenset(BOTH)
        assert message.transport == transport
        assert message.sender == alice.aor
        assert message.cpim_from == alice.aor
        assert message.request.method == "MESSAGE"
        assert message.datetime is not None
        assert await message.mark_displayed() is True
        assert await handle.await_disposition("displayed", timeout=5) is S.DISPLAYED
        assert alice_events.states(handle.message_id) == [S.ACCEPTED, S.DELIVERED, S.DISPLAYED]
        accepted = alice_events.of(NotificationAccepted)
        assert [(e.kind, e.status) for e in accepted] == [("delivery", "delivered"), ("display", "displayed")]
        assert not alice_events.of(NotificationRejected)


async def test_manual_delivery_report_and_late_delivered_changes_nothing() -> None:
    seen: list[IncomingMessage] = []
    events = Recorder()
    async with (
        UserAgent(ua_config("bob", auto_delivery=False)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            seen.append(message)

        alice.on_disposition(events)
        handle = await alice.send_message(bob.aor, "x", notify=BOTH)
        assert (await handle.final_response()).status_code == 200
        assert handle.state is S.ACCEPTED
        assert await seen[0].mark_displayed()
        assert await handle.await_disposition("displayed", timeout=5) is S.DISPLAYED
        # Nothing automatic: a delivered IMDN owed at the answer would have reached alice
        # before the displayed one (bob's IMDNs to her leave in the order owed, RFC 3428 §8).
        await events.wait_for(DispositionChanged, count=2)
        assert events.states(handle.message_id) == [S.ACCEPTED, S.DISPLAYED]
        # A delivered arriving after displayed moves nothing back (the tracker may
        # even have stopped tracking the message: displayed is final).
        seen_events = len(events.events)
        assert await seen[0].report("delivery", "delivered")
        await events.wait_for_more(seen_events)
        await asyncio.sleep(0.1)
        assert S(handle.state) is S.DISPLAYED  # (re-read: mypy keeps the narrowing of an earlier assert)
        assert events.states(handle.message_id) == [S.ACCEPTED, S.DISPLAYED]


@pytest.mark.parametrize(("answer", "state"), [(202, S.DELIVERED), (486, S.FAILED), (603, S.FAILED)])
async def test_handler_decides_the_final_response(answer: int, state: DispositionState) -> None:
    events = Recorder()
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> int:
            await asyncio.sleep(0.01)
            return 200 if message.text == "later" else answer

        alice.on_disposition(events)
        handle = await alice.send_message(bob.aor, "x", notify={"positive-delivery", "negative-delivery"})
        response = await asyncio.wait_for(handle.final_response(), 5)
        assert response.status_code == answer
        if answer < 300:
            # 202 is still a 2xx: accepted, then delivered by the automatic IMDN.
            assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
        else:
            assert handle.state is S.FAILED
            # Never a notification after a non-2xx answer (RFC 5438 §7.2.1.1). A later event on
            # the same path: the delivered IMDN of a message sent after it, which bob sends
            # after any IMDN he owed before (one at a time, in order: RFC 3428 §8).
            later = await alice.send_message(bob.aor, "later", notify={"positive-delivery"})
            assert await later.await_disposition("delivered", timeout=5) is S.DELIVERED
            accepted = await events.wait_for(NotificationAccepted)
            assert [e.message_id for e in accepted] == [later.message_id]
        assert events.states(handle.message_id)[-1] is state


async def test_slow_handler_hits_the_deadline_and_the_stack_answers() -> None:
    finished = asyncio.Event()
    async with (
        UserAgent(ua_config("bob", handler_deadline=0.2)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def slow(message: IncomingMessage) -> int:
            await asyncio.sleep(1.0)
            finished.set()
            return 486  # too late to count

        start = time.monotonic()
        handle = await alice.send_message(bob.aor, "x", notify={"positive-delivery"})
        response = await asyncio.wait_for(handle.final_response(), 5)
        elapsed = time.monotonic() - start
        assert response.status_code == 202  # config.deadline_status
        assert elapsed < 0.9
        await asyncio.wait_for(finished.wait(), 3)
        assert handle.state in (S.ACCEPTED, S.DELIVERED)


async def test_deadline_applies_to_the_slow_message_only_among_fast_ones() -> None:
    # Messages answered in time leave the deadline queue at once; the slow one still waiting
    # behind and ahead of them gets the deadline status at its own deadline, and only it.
    release = asyncio.Event()
    async with (
        UserAgent(ua_config("bob", handler_deadline=0.3)) as bob,
        UserAgent(ua_config("alice")) as alice,
    ):

        @bob.on_message
        async def decide(message: IncomingMessage) -> int:
            if message.text == "slow":
                await release.wait()
                return 486  # too late to count
            return 200

        fast_before = await alice.send_message(bob.aor, "fast")
        assert (await asyncio.wait_for(fast_before.final_response(), 5)).status_code == 200
        start = time.monotonic()
        slow = await alice.send_message(bob.aor, "slow")
        fast_after = [await alice.send_message(bob.aor, "fast") for _ in range(3)]
        for handle in fast_after:
            assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
        assert (await asyncio.wait_for(slow.final_response(), 5)).status_code == 202
        assert time.monotonic() - start >= 0.25
        release.set()
        assert bob._deadlines is not None and len(bob._deadlines) == 0


async def test_no_handler_means_not_delivered() -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:
        handle = await alice.send_message(bob.aor, "x")
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 480
        assert handle.state is S.FAILED


async def test_duplicate_cpim_message_is_answered_but_handed_up_once() -> None:
    seen: list[IncomingMessage] = []
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob")) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> int:
                seen.append(message)
                return 202

            host, port = bob.endpoints[0].host, bob.endpoints[0].port
            sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
            body = build_im(
                from_=sender, to=bob.aor, body=b"once", now=time.time(), message_id="dup-1"
            ).to_bytes()
            statuses = []
            for _ in range(3):  # new transactions (new branch and Call-ID), same sender and Message-ID
                data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="message/cpim", body=body)
                statuses.append((await raw.transact(data, branch, (host, port))).status_code)
            assert statuses == [202, 202, 202]  # the duplicate gets the first copy's answer
            assert [m.text for m in seen] == ["once"]
    finally:
        raw.close()


async def test_plain_text_duplicate_is_recognised_by_transaction_identity() -> None:
    seen: list[str] = []
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob")) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                seen.append(message.text)

            dest = (bob.endpoints[0].host, bob.endpoints[0].port)
            for cseq, text in ((1, "one"), (1, "one"), (2, "two")):
                data, branch = raw.request_bytes(
                    "MESSAGE",
                    bob.aor,
                    call_id="same-call",
                    cseq=cseq,
                    content_type="text/plain",
                    body=text.encode(),
                )
                assert (await raw.transact(data, branch, dest)).status_code == 200
            # Same Call-ID, From tag and CSeq again: not handed up twice; a new CSeq is a new message.
            assert seen == ["one", "two"]
    finally:
        raw.close()


async def test_forged_imdns_change_nothing() -> None:
    events = Recorder()
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                return None

            alice.on_disposition(events)
            handle = await alice.send_message(bob.aor, "x", notify=BOTH)
            assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
            dest = (alice.endpoints[0].host, alice.endpoints[0].port)
            mallory = f"sip:mallory@{raw.address[0]}:{raw.address[1]}"
            forged = [
                # the right Message-ID from the wrong sender (RFC 5438 §14.1)
                (handle.message_id, mallory, mallory),
                # the right sender, but a Message-ID we never sent (RFC 5438 §7.1.2)
                ("never-sent", bob.aor, bob.aor),
            ]
            for message_id, sip_from, recipient in forged:
                xml = build_notification(
                    message_id=message_id,
                    datetime="2024-01-01T00:00:00Z",
                    kind="display",
                    status="displayed",
                    recipient_uri=recipient,
                )
                data, branch = raw.request_bytes(
                    "MESSAGE", alice.aor, from_uri=sip_from, content_type="message/imdn+xml", body=xml
                )
                # Answered 200 either way: no oracle for guessing Message-IDs.
                assert (await raw.transact(data, branch, dest)).status_code == 200
            rejected = await events.wait_for(NotificationRejected, count=2)
            assert {str(e.reason) for e in rejected} == {"not-a-recipient", "unknown-message"}
            assert handle.state is S.DELIVERED
            assert events.states(handle.message_id) == [S.ACCEPTED, S.DELIVERED]
    finally:
        raw.close()


async def test_415_to_cpim_falls_back_to_text_plain_once_and_is_remembered() -> None:
    received = []

    async def plain_only(incoming: IncomingRequest) -> None:
        request = incoming.request
        received.append(request)
        ctype = request.content_type
        if ctype is not None and ctype.mime == "message/cpim":
            incoming.respond(415, None, [("Accept", "text/plain")])
        else:
            incoming.respond(200)

    async with SipStack([ListenSpec(Transport.UDP, "127.0.0.1", 0)]) as server:
        server.on_request(plain_only)
        _, (host, port) = server.endpoints[0]
        peer = f"sip:plain@{host}:{port}"
        async with UserAgent(ua_config("alice")) as alice:
            handle = await alice.send_message(peer, "hello", notify={"positive-delivery"})
            assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
            assert handle.notify == frozenset()  # text/plain cannot carry requests
            first, retry = received
            assert first.content_type is not None and first.content_type.mime == "message/cpim"
            assert retry.content_type is not None and retry.content_type.mime == "text/plain"
            assert retry.body == b"hello"
            assert retry.call_id == first.call_id
            assert retry.cseq.number == first.cseq.number + 1
            assert PEER_NO_CPIM in alice.tracker.peer_flags(peer)
            # Remembered: the next message goes out as text/plain straight away.
            second = await alice.send_message(peer, "again", notify={"positive-delivery"})
            assert (await asyncio.wait_for(second.final_response(), 5)).status_code == 200
            assert len(received) == 3
            assert received[2].content_type is not None and received[2].content_type.mime == "text/plain"


async def test_options_invite_and_unsupported_bodies() -> None:
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob")) as bob:
            dest = (bob.endpoints[0].host, bob.endpoints[0].port)
            data, branch = raw.request_bytes("OPTIONS", bob.aor)
            options = await raw.transact(data, branch, dest)
            assert options.status_code == 200
            assert "MESSAGE" in (options.headers.get("Allow") or "")
            assert "message/cpim" in (options.headers.get("Accept") or "")
            data, branch = raw.request_bytes("SUBSCRIBE", bob.aor)
            refused = await raw.transact(data, branch, dest)
            assert refused.status_code == 405
            assert "MESSAGE" in (refused.headers.get("Allow") or "")
            data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="application/json", body=b"{}")
            unsupported = await raw.transact(data, branch, dest)
            assert unsupported.status_code == 415
            assert "text/plain" in (unsupported.headers.get("Accept") or "")
            data, branch = raw.request_bytes(
                "MESSAGE", bob.aor, content_type="text/plain", body=b"x", extra=["Require: foo, bar"]
            )
            required = await raw.transact(data, branch, dest)
            assert required.status_code == 420
            assert required.headers.get("Unsupported") == "foo, bar"
            data, branch = raw.request_bytes(
                "MESSAGE", bob.aor, content_type="text/plain", body=b"x", extra=["Content-Encoding: br"]
            )
            coded = await raw.transact(data, branch, dest)
            assert coded.status_code == 415
            assert "deflate" in (coded.headers.get("Accept-Encoding") or "")
    finally:
        raw.close()


async def test_remove_handler_unregisters() -> None:
    seen: list[str] = []
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            seen.append(message.text)

        assert receive.__name__ == "receive"  # the decorator returns the function itself
        assert (await (await alice.send_message(bob.aor, "one")).final_response()).status_code == 200
        assert bob.remove_handler(receive) is True
        assert bob.remove_handler(receive) is False  # idempotent
        assert (await (await alice.send_message(bob.aor, "two")).final_response()).status_code == 480
        assert seen == ["one"]


async def test_notification_sent_events_on_the_receiving_side() -> None:
    sent = Recorder()
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            return None

        bob.on_notification(sent)
        handle = await alice.send_message(bob.aor, "x", notify={"positive-delivery"})
        assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
        (event,) = await sent.wait_for(NotificationSent)
        assert (event.message_id, event.kind, event.status, event.sip_status) == (
            handle.message_id,
            "delivery",
            "delivered",
            200,
        )
        assert event.to == alice.aor


async def test_per_destination_queue_keeps_order_under_load() -> None:
    seen: list[str] = []
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> None:
            seen.append(message.text)

        handles = [await alice.send_message(bob.aor, f"m{i}") for i in range(20)]
        responses = await asyncio.wait_for(asyncio.gather(*(h.final_response() for h in handles)), 10)
        assert [r.status_code for r in responses] == [200] * 20
        # RFC 3428 §8: one transaction at a time to bob, so they arrive in order.
        assert seen == [f"m{i}" for i in range(20)]


async def test_state_is_only_moved_by_the_tracker_events() -> None:
    """A DispositionChanged for a message is the only way its handle changes."""
    events = Recorder()
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:
        bob.on_message(_accept)
        alice.on_disposition(events)
        handle = await alice.send_message(bob.aor, "x", notify={"positive-delivery"})
        await handle.await_disposition("delivered", timeout=5)
        changes = [e for e in events.of(DispositionChanged) if e.message_id == handle.message_id]
        assert changes[-1].state is handle.state


async def _accept(message: IncomingMessage) -> None:
    return None


async def test_failing_callbacks_are_logged_and_change_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:
        bob.on_message(_accept)

        @alice.on_disposition
        async def broken(event: object) -> None:
            raise RuntimeError("application bug")

        handle = await alice.send_message(bob.aor, "x", notify={"positive-delivery"})
        assert await handle.await_disposition("delivered", timeout=5) is S.DELIVERED
        async with asyncio.timeout(5):  # the failing handler task runs and its error is logged
            while "application bug" not in caplog.text:
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("answer", [408, 180, "yes"])
async def test_invalid_handler_answers_become_500(answer: object) -> None:
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice")) as alice:

        @bob.on_message
        async def receive(message: IncomingMessage) -> object:
            return answer

        handle = await alice.send_message(bob.aor, "x")
        assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 500


async def test_start_failure_is_reported_and_cleans_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        ua = UserAgent(ua_config("bob", port=port))
        with pytest.raises(TransportError):
            await ua.start()
        with pytest.raises(LocalProtocolError):
            await ua.send_message("sip:alice@127.0.0.1:9", "x")
        await ua.close()  # harmless after a failed start


async def test_using_a_user_agent_outside_async_with_is_refused() -> None:
    ua = UserAgent(ua_config("bob"))
    with pytest.raises(LocalProtocolError):
        await ua.send_message("sip:alice@127.0.0.1:9", "x")
    with pytest.raises(LocalProtocolError):
        await ua.mark_displayed("m")
    async with ua:
        with pytest.raises(LocalProtocolError):
            await ua.start()
        with pytest.raises(LocalProtocolError):
            await ua.send_message("sip:alice@127.0.0.1:9", "x", notify={"bogus"})
        with pytest.raises(LocalProtocolError):
            await ua.send_message("sip:alice@127.0.0.1:9", "x", notify={"display"}, cpim=False)
        for bad in ("not a uri", "tel:+123", "sip:"):
            with pytest.raises(LocalProtocolError):
                await ua.send_message(bad, "x")


async def test_retransmission_never_reaches_the_handler() -> None:
    seen: list[str] = []
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob")) as bob:

            @bob.on_message
            async def receive(message: IncomingMessage) -> None:
                seen.append(message.text)

            dest = (bob.endpoints[0].host, bob.endpoints[0].port)
            data, branch = raw.request_bytes("MESSAGE", bob.aor, content_type="text/plain", body=b"once")
            first = await raw.transact(data, branch, dest)
            again = await raw.transact(data, branch, dest)  # same branch: a retransmission
            assert (first.status_code, again.status_code) == (200, 200)
            assert again.to.tag == first.to.tag
            assert seen == ["once"]
    finally:
        raw.close()


async def test_invite_gets_405_and_its_ack_is_absorbed() -> None:
    raw = await RawPeer.open()
    try:
        async with UserAgent(ua_config("bob")) as bob:
            dest = (bob.endpoints[0].host, bob.endpoints[0].port)
            data, branch = raw.request_bytes("INVITE", bob.aor, call_id="inv-1")
            refused = await raw.transact(data, branch, dest)
            assert refused.status_code == 405
            assert "MESSAGE" in (refused.headers.get("Allow") or "")
            ack, _ = raw.request_bytes("ACK", bob.aor, call_id="inv-1")
            assert raw.transport is not None
            raw.transport.sendto(ack, dest)
            # A later event: bob's answer to an OPTIONS sent after the ACK from the same
            # socket. Anything answering the ACK would have been sent before it.
            probe, probe_branch = raw.request_bytes("OPTIONS", bob.aor)
            raw.transport.sendto(probe, dest)
            async with asyncio.timeout(5):
                answer = await raw.responses.get()
            assert answer.top_via.branch == probe_branch  # nothing answered the ACK
    finally:
        raw.close()


async def test_a_store_passed_in_is_used_and_left_open() -> None:
    store = MemoryStore()
    async with UserAgent(ua_config("bob")) as bob, UserAgent(ua_config("alice"), store=store) as alice:
        bob.on_message(_accept)
        handle = await alice.send_message(bob.aor, "x", notify={"negative-delivery"})
        assert (await handle.final_response()).status_code == 200
    # Still awaiting a possible failure notice: the record is in the store, which is still usable.
    sent = store.load(time.time()).sent
    assert [record.message_id for record in sent] == [handle.message_id]
