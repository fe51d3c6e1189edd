"""Several user agent processes ("workers") sharing one PostgreSQL store (tests/_postgres.py).

In one event loop for speed: each worker is a UserAgent with its own PostgresStore connection,
worker id and port, exactly as separate processes would be (they share nothing but the
database). A raw UDP peer plays the other side, so a copy or a notification can be sent to
whichever worker the test chooses, as a round-robin balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from _postgres import PostgresServer, require_postgres
from ua_helpers import RawPeer, Recorder, ua_config

from sipimdn import UserAgent, cpim, imdn
from sipimdn.errors import MessageNotTracked, StoreError
from sipimdn.events import DispositionChanged, DispositionState, NotificationRejected
from sipimdn.message import Request
from sipimdn.store import Snapshot, StoreOp
from sipimdn.store.postgres import PostgresStore
from sipimdn.ua import IncomingMessage

LEASE = 2.0


@asynccontextmanager
async def worker(url: str, name: str, aor: str = "bob", **extra: object) -> AsyncIterator[UserAgent]:
    store = PostgresStore(url, worker_id=name, lease=LEASE)
    try:
        async with UserAgent(ua_config(aor, worker_lease=LEASE, **extra), store=store) as ua:
            yield ua
    finally:
        store.close()


def dest(ua: UserAgent) -> tuple[str, int]:
    return ua.endpoints[0].host, ua.endpoints[0].port


def im_bytes(raw: RawPeer, to: str, message_id: str, call_id: str) -> tuple[bytes, str]:
    sender = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
    body = imdn.build_im(
        from_=sender, to=to, body=b"hi", now=time.time(), message_id=message_id, notify={"positive-delivery"}
    ).to_bytes()
    return raw.request_bytes("MESSAGE", to, content_type="message/cpim", body=body, call_id=call_id)


def imdn_bytes(raw: RawPeer, to: str, about: str) -> tuple[bytes, str]:
    """A delivered IMDN from the raw peer about ``about`` (a message ``to`` supposedly sent)."""
    peer = f"sip:raw@{raw.address[0]}:{raw.address[1]}"
    im = imdn.build_im(
        from_=to, to=peer, body=b"x", now=time.time(), message_id=about, notify={"positive-delivery"}
    )
    report = imdn.build_imdn(im, kind="delivery", status="delivered", now=time.time()).to_bytes()
    return raw.request_bytes("MESSAGE", to, content_type="message/cpim", body=report)


async def next_request(raw: RawPeer, timeout: float = 10.0) -> Request:
    return await asyncio.wait_for(raw.requests.get(), timeout)


def answer(raw: RawPeer, request: Request, to: tuple[str, int], status: int = 200) -> None:
    """A minimal final response to ``request`` (the raw peer's own transaction user)."""
    lines = [
        f"SIP/2.0 {status} OK",
        *(f"Via: {v}" for v in request.headers.get_all("Via")),
        f"From: {request.headers.get('From')}",
        f"To: {request.headers.get('To')};tag=raw",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.cseq.number} {request.method}",
        "Content-Length: 0",
    ]
    assert raw.transport is not None
    raw.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), to)


def notified(request: Request) -> imdn.Notification:
    return imdn.parse_notification(cpim.parse(request.body).body)


async def test_a_copy_sent_to_another_worker_is_not_handed_up_again(postgres_url: str) -> None:
    """Same Message-ID, new Call-ID, other worker: a duplicate, answered as the first copy was,
    without the application."""
    seen: dict[str, list[str]] = {"w1": [], "w2": []}
    raw = await RawPeer.open()
    try:
        async with worker(postgres_url, "w1") as w1, worker(postgres_url, "w2") as w2:
            for name, ua in (("w1", w1), ("w2", w2)):

                @ua.on_message
                async def got(message: IncomingMessage, name: str = name) -> None:
                    seen[name].append(message.message_id or "")

            data, branch = im_bytes(raw, w1.aor, "shared-1", "call-one")
            assert (await raw.transact(data, branch, dest(w1))).status_code == 200
            again, branch = im_bytes(raw, w2.aor, "shared-1", "call-two")
            resent = await raw.transact(again, branch, dest(w2))
            assert resent.status_code == 200  # the answer w1 gave the first copy
            # A new message to w2 is handed up there: dedup is by Message-ID, not by worker.
            other, branch = im_bytes(raw, w2.aor, "shared-2", "call-three")
            assert (await raw.transact(other, branch, dest(w2))).status_code == 200
        assert seen == {"w1": ["shared-1"], "w2": ["shared-2"]}
    finally:
        raw.close()


async def test_a_notification_reaching_another_worker_updates_the_sender(postgres_url: str) -> None:
    """Alice on w1 sends; the delivered IMDN lands on w2; w1's handle wakes, and w2 can await it."""
    raw = await RawPeer.open()
    events = Recorder()
    try:
        async with (
            worker(postgres_url, "w1", aor="alice") as w1,
            worker(postgres_url, "w2", aor="alice") as w2,
        ):
            w1.on_disposition(events)
            target = f"sip:bob@{raw.address[0]}:{raw.address[1]}"
            handle = await w1.send_message(target, "hello", notify={"positive-delivery"})
            request = await next_request(raw)
            answer(raw, request, dest(w1))
            assert (await handle.final_response()).status_code == 200
            im = cpim.parse(request.body)
            report = imdn.build_imdn(im, kind="delivery", status="delivered", now=time.time()).to_bytes()
            data, branch = raw.request_bytes(
                "MESSAGE", w2.aor, from_uri=target, content_type="message/cpim", body=report
            )
            assert (await raw.transact(data, branch, dest(w2))).status_code == 200
            # w2 did not send it: its owner w1 applies the notification and its handle wakes.
            state = await handle.await_disposition("delivered", timeout=10)
            assert state is DispositionState.DELIVERED
            # Any worker can wait on it by Message-ID (w2 reads the final record w1 kept).
            assert (
                await w2.await_disposition(handle.message_id, "delivered", 10) is DispositionState.DELIVERED
            )
            changes = [e for e in events.of(DispositionChanged) if e.state is DispositionState.DELIVERED]
            assert [e.event_id for e in changes] == [f"{handle.message_id} {target} delivered"]
    finally:
        raw.close()


async def test_a_forwarded_notification_keeps_its_asserted_identity(postgres_url: str) -> None:
    """The identity a trusted proxy asserted (RFC 3325 §9.1) travels with a notification forwarded
    to the worker that sent the message: asserted as a third party, the From naming the recipient
    does not help it there either; asserted as the recipient, it is applied."""
    raw = await RawPeer.open()
    events = Recorder()
    trusted = {"trusted_asserters": ("127.0.0.1",)}
    try:
        async with (
            worker(postgres_url, "w1", aor="alice", **trusted) as w1,
            worker(postgres_url, "w2", aor="alice", **trusted) as w2,
        ):
            w1.on_disposition(events)
            target = f"sip:bob@{raw.address[0]}:{raw.address[1]}"
            handle = await w1.send_message(target, "hello", notify={"positive-delivery"})
            request = await next_request(raw)
            answer(raw, request, dest(w1))
            assert (await handle.final_response()).status_code == 200
            im = cpim.parse(request.body)
            for asserted in ("sip:mallory@evil.example", target):
                report = imdn.build_imdn(im, kind="delivery", status="delivered", now=time.time()).to_bytes()
                data, branch = raw.request_bytes(
                    "MESSAGE", w2.aor, from_uri=target, content_type="message/cpim", body=report,
                    extra=[f"P-Asserted-Identity: <{asserted}>"],
                )
                assert (await raw.transact(data, branch, dest(w2))).status_code == 200
                if asserted != target:
                    (rejected,) = await events.wait_for(NotificationRejected, timeout=10)
                    assert rejected.reason == "not-a-recipient"
                    assert rejected.sender == asserted and "asserted by a trusted proxy" in rejected.detail
                    assert handle.state is DispositionState.ACCEPTED
            assert await handle.await_disposition("delivered", timeout=10) is DispositionState.DELIVERED
    finally:
        raw.close()


async def test_a_survivor_takes_over_what_a_stopped_worker_owed_and_awaited(postgres_url: str) -> None:
    """w1 owes a delivered IMDN (unanswered, in flight) and awaits one; it stops renewing.
    Within the lease w2 owns both: it sends the IMDN and applies the notification w1 awaited."""
    raw = await RawPeer.open()
    try:
        async with worker(postgres_url, "w2", aor="bob") as w2:
            async with worker(postgres_url, "w1", aor="bob") as w1:

                @w1.on_message
                async def accept(message: IncomingMessage) -> None:
                    return None

                data, branch = im_bytes(raw, w1.aor, "owed-1", "call-owed")
                assert (await raw.transact(data, branch, dest(w1))).status_code == 200
                first = await next_request(raw)  # w1's IMDN: left unanswered
                assert notified(first).message_id == "owed-1"
                target = f"sip:carol@{raw.address[0]}:{raw.address[1]}"
                handle = await w1.send_message(target, "later", notify={"positive-delivery"})
                sent = await next_request(raw)
                while sent.call_id == first.call_id:  # a retransmission of the IMDN
                    sent = await next_request(raw)
                answer(raw, sent, dest(w1))
                assert (await handle.final_response()).status_code == 200
            # w1 stopped (its records stay, owned by it, until its lease runs out).
            started = time.monotonic()
            while True:
                request = await next_request(raw, timeout=4 * LEASE)
                if request.body and b"imdn+xml" in request.body and notified(request).message_id == "owed-1":
                    break
            assert time.monotonic() - started < 1.25 * LEASE + 2
            answer(raw, request, dest(w2))
            # The message w1 awaited is w2's now: its notification is applied there.
            report = imdn.build_imdn(
                cpim.parse(sent.body), kind="delivery", status="delivered", now=time.time()
            ).to_bytes()
            data, branch = raw.request_bytes(
                "MESSAGE", w2.aor, from_uri=target, content_type="message/cpim", body=report
            )
            assert (await raw.transact(data, branch, dest(w2))).status_code == 200
            state = await w2.await_disposition(handle.message_id, "delivered", 10)
            assert state is DispositionState.DELIVERED
    finally:
        raw.close()


async def test_database_gone_mid_run_is_503_with_retry_after_then_recovers() -> None:
    """No 2xx whose obligations are not stored: while the database is down a new MESSAGE gets
    503 with Retry-After (the dedup claim fails); once it is back, messages are taken again."""
    server = PostgresServer(require_postgres())
    raw = await RawPeer.open()
    seen: list[str] = []
    try:
        server.start()
        url = server.create_database()
        async with worker(url, "w1") as w1:

            @w1.on_message
            async def got(message: IncomingMessage) -> None:
                seen.append(message.message_id or "")

            data, branch = im_bytes(raw, w1.aor, "before", "call-before")
            assert (await raw.transact(data, branch, dest(w1))).status_code == 200
            await asyncio.to_thread(server.stop)
            data, branch = im_bytes(raw, w1.aor, "during", "call-during")
            refused = await raw.transact(data, branch, dest(w1), timeout=10)
            assert refused.status_code == 503 and refused.headers.get("Retry-After") == "5"
            # An IMDN about a message this worker did not send cannot be kept for its sender
            # either: 503 too, so the peer sends it again (never a 200 for a lost notification).
            imdn_data, imdn_branch = imdn_bytes(raw, w1.aor, "sent-elsewhere")
            assert (await raw.transact(imdn_data, imdn_branch, dest(w1), timeout=10)).status_code == 503
            await asyncio.to_thread(server.start)
            imdn_data, imdn_branch = imdn_bytes(raw, w1.aor, "sent-elsewhere")
            assert (await raw.transact(imdn_data, imdn_branch, dest(w1), timeout=10)).status_code == 200
            # The sender retries after Retry-After: received now, handed up once.
            data, branch = im_bytes(raw, w1.aor, "during", "call-retry")
            assert (await raw.transact(data, branch, dest(w1), timeout=10)).status_code == 200
        assert seen == ["before", "during"]
    finally:
        raw.close()
        await asyncio.to_thread(server.destroy)


class _Failing(PostgresStore):
    """A PostgreSQL store whose writes fail while ``failing`` is set (claims still work)."""

    failing = False

    def apply_owned(self, ops: Sequence[StoreOp]) -> tuple[StoreOp, ...]:
        if self.failing:  # every write goes through here (apply too)
            raise StoreError("store write failed: injected")
        return super().apply_owned(ops)


async def test_a_2xx_whose_records_cannot_be_stored_is_a_503_and_the_retry_is_taken(
    postgres_url: str,
) -> None:
    """The database goes away between the claim and the answer's write: 503, nothing owed; the
    claim is released when the store is back, so the retry is received afresh and answered 200
    with its delivered IMDN (the handler saw it twice: at least once across the outage)."""
    store = _Failing(postgres_url, worker_id="w1", lease=LEASE)
    raw = await RawPeer.open()
    seen: list[str] = []
    try:
        async with UserAgent(ua_config("bob", worker_lease=LEASE), store=store) as w1:

            @w1.on_message
            async def got(message: IncomingMessage) -> None:
                seen.append(message.message_id or "")
                store.failing = len(seen) == 1

            data, branch = im_bytes(raw, w1.aor, "unstored", "call-one")
            refused = await raw.transact(data, branch, dest(w1), timeout=10)
            assert refused.status_code == 503 and refused.headers.get("Retry-After") == "5"
            assert w1.tracker.owed() == ()
            store.failing = False
            status = 0
            for attempt in range(20):  # the claim is released on the next lease tick
                data, branch = im_bytes(raw, w1.aor, "unstored", f"call-retry-{attempt}")
                status = (await raw.transact(data, branch, dest(w1), timeout=10)).status_code
                if status == 200:
                    break
                await asyncio.sleep(LEASE / 4)
            assert status == 200
            request = await next_request(raw)
            while b"imdn+xml" not in request.body:
                request = await next_request(raw)
            assert notified(request).message_id == "unstored"
        assert seen == ["unstored", "unstored"]
    finally:
        raw.close()
        store.close()


async def test_a_claim_left_unanswered_by_a_dead_worker_is_taken_over(postgres_url: str) -> None:
    """w1 claims a message and dies while its handler decides: the copy the sender retries on w2
    is a duplicate (202) while w1 could still answer, then, once the claim is abandoned
    (worker_lease + handler_deadline), w2 receives it: accepted, handed up, notified."""
    raw = await RawPeer.open()
    w2_seen: list[str] = []
    entered = asyncio.Event()
    try:
        async with worker(postgres_url, "w2") as w2:

            @w2.on_message
            async def got(message: IncomingMessage) -> None:
                w2_seen.append(message.message_id or "")

            async with worker(postgres_url, "w1", handler_deadline=30.0, close_grace=0.1) as w1:

                @w1.on_message
                async def hold(message: IncomingMessage) -> None:
                    entered.set()
                    await asyncio.Event().wait()  # never decides

                data, _ = im_bytes(raw, w1.aor, "orphan-1", "call-first")
                assert raw.transport is not None
                raw.transport.sendto(data, dest(w1))
                await asyncio.wait_for(entered.wait(), 10)
                claimed_at = time.monotonic()
                data, branch = im_bytes(raw, w2.aor, "orphan-1", "call-early")
                assert (await raw.transact(data, branch, dest(w2))).status_code == 202
            status, attempt = 0, 0
            while status != 200 and time.monotonic() - claimed_at < 15:
                attempt += 1
                data, branch = im_bytes(raw, w2.aor, "orphan-1", f"call-retry-{attempt}")
                status = (await raw.transact(data, branch, dest(w2))).status_code
                if status != 200:
                    await asyncio.sleep(0.5)
            assert status == 200
            assert time.monotonic() - claimed_at >= w2.config.worker_lease + w2.config.handler_deadline - 1
            assert w2_seen == ["orphan-1"]
            request = await next_request(raw)
            while b"imdn+xml" not in request.body:
                request = await next_request(raw)
            assert notified(request).message_id == "orphan-1"
    finally:
        raw.close()


class _CutOff(PostgresStore):
    """A PostgreSQL store whose worker is cut off from the database while ``cut_off`` is set:
    its writes, lease renewals and take-overs fail, as over a broken network."""

    cut_off = False

    def _check(self) -> None:
        if self.cut_off:
            raise StoreError("store unreachable: injected")

    def apply_owned(self, ops: Sequence[StoreOp]) -> tuple[StoreOp, ...]:
        self._check()
        return super().apply_owned(ops)

    def renew_leases(self) -> int:
        self._check()
        return super().renew_leases()

    def take_over(self, now: float, limit: int = 1000) -> Snapshot:
        self._check()
        return super().take_over(now, limit)


def _from(request: Request, ua: UserAgent) -> bool:
    return request.top_via.port == dest(ua)[1]


async def test_a_worker_cut_off_past_its_lease_leaves_what_it_lost_to_the_survivor(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """w1 owes a delivered IMDN (its first attempt unanswered) and awaits one, then is cut
    off from the database for longer than its lease. w2 takes both over and sends the IMDN.
    w1 sends it no more: not while unsure of its lease, and not once back, when it finds both
    records lost (its writes of them fenced off, or its late renewal), stops tracking them,
    logs and counts it; its handle then follows the record w2 owns."""
    raw = await RawPeer.open()
    store = _CutOff(postgres_url, worker_id="w1", lease=LEASE)
    # Short SIP timers: w1's unanswered IMDN transaction ends (Timer F) and is due again
    # while it is cut off, which is when it must not go out.
    fast = {"t1": 0.05, "imdn_park_base": 0.5}
    try:
        async with (
            worker(postgres_url, "w2", aor="bob") as w2,
            UserAgent(ua_config("bob", worker_lease=LEASE, **fast), store=store) as w1,
        ):

            @w1.on_message
            async def accept(message: IncomingMessage) -> None:
                return None

            data, branch = im_bytes(raw, w1.aor, "owed-1", "call-owed")
            assert (await raw.transact(data, branch, dest(w1))).status_code == 200
            first = await next_request(raw)  # w1's IMDN: left unanswered
            assert notified(first).message_id == "owed-1"
            target = f"sip:carol@{raw.address[0]}:{raw.address[1]}"
            handle = await w1.send_message(target, "later", notify={"positive-delivery"})
            sent = await next_request(raw)
            while sent.call_id == first.call_id:  # a retransmission of the IMDN
                sent = await next_request(raw)
            answer(raw, sent, dest(w1))
            assert (await handle.final_response()).status_code == 200

            store.cut_off = True
            cut_at = time.monotonic()
            late: list[Request] = []  # IMDN transactions w1 started after it was cut off

            def note(request: Request) -> None:
                if _from(request, w1) and request.call_id != first.call_id and b"imdn+xml" in request.body:
                    late.append(request)

            while True:  # w2 takes over within about 1.25 leases, and sends the IMDN
                request = await next_request(raw, timeout=4 * LEASE)
                note(request)
                if _from(request, w2) and b"imdn+xml" in request.body:
                    break
            assert notified(request).message_id == "owed-1"
            assert time.monotonic() - cut_at < 1.25 * LEASE + 2
            answer(raw, request, dest(w2))  # delivered: w2 is done with it
            # w1 stays cut off past its IMDN's Timer F (3.2 s) and retry, then comes back.
            while time.monotonic() - cut_at < 4.5:
                with contextlib.suppress(TimeoutError):
                    note(await next_request(raw, timeout=0.2))
            store.cut_off = False
            for _ in range(100):
                if w1.stats().records_lost == 2:
                    break
                with contextlib.suppress(TimeoutError):
                    note(await next_request(raw, timeout=0.1))
            assert w1.stats().records_lost == 2
            assert w1.tracker.owed() == () and w1.tracker.sent(handle.message_id) is None
            # Back and sure of its lease again, w1 still sends nothing about them.
            back = time.monotonic()
            while time.monotonic() - back < 2.0:
                with contextlib.suppress(TimeoutError):
                    note(await next_request(raw, timeout=0.2))
            assert late == []
            lost = [r for r in caplog.records if "now belong to another worker" in r.getMessage()]
            assert lost and all(r.levelname == "WARNING" for r in lost)
            # The message w1 awaited is w2's now: its notification is applied there, and w1's
            # handle follows the record in the store.
            report = imdn.build_imdn(
                cpim.parse(sent.body), kind="delivery", status="delivered", now=time.time()
            ).to_bytes()
            data, branch = raw.request_bytes(
                "MESSAGE", w2.aor, from_uri=target, content_type="message/cpim", body=report
            )
            assert (await raw.transact(data, branch, dest(w2))).status_code == 200
            assert await handle.await_disposition("delivered", 10) is DispositionState.DELIVERED
            state = await w1.await_disposition(handle.message_id, "delivered", 10)
            assert state is DispositionState.DELIVERED
    finally:
        raw.close()
        store.close()


async def test_waiting_from_another_worker_when_tracking_ends_or_its_record_is_gone(
    postgres_url: str,
) -> None:
    """w2 waits on messages w1 sent. One ends tracking delivered while displayed was awaited:
    w2 returns that final state as soon as w1 writes it (not when the record expires). The
    other's record vanishes while w2 waits (purged): a MessageNotTracked saying what was read."""
    raw = await RawPeer.open()
    target = f"sip:carol@{raw.address[0]}:{raw.address[1]}"
    try:
        async with (
            worker(postgres_url, "w2") as w2,
            worker(postgres_url, "w1", state_expiry=3.0) as w1,
        ):
            ended = await w1.send_message(target, "one", notify={"positive-delivery", "display"})
            request = await next_request(raw)
            answer(raw, request, dest(w1))
            report = imdn.build_imdn(
                cpim.parse(request.body), kind="delivery", status="delivered", now=time.time()
            ).to_bytes()
            data, branch = raw.request_bytes(
                "MESSAGE", w1.aor, from_uri=target, content_type="message/cpim", body=report
            )
            assert (await raw.transact(data, branch, dest(w1))).status_code == 200
            assert await w2.await_disposition(ended.message_id, "delivered", 10) is DispositionState.DELIVERED
            started = time.monotonic()
            assert await w2.await_disposition(ended.message_id, "displayed", 20) is DispositionState.DELIVERED
            assert time.monotonic() - started < 3.0 + 2  # w1's tracking deadline, not the record's expiry
            assert ended.tracking_ended

            gone = await w1.send_message(target, "two", notify={"positive-delivery"})
            answer(raw, await next_request(raw), dest(w1))
            assert (await gone.final_response()).status_code == 200
            waiting = asyncio.ensure_future(w2.await_disposition(gone.message_id, "delivered", 20))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            cleaner = PostgresStore(postgres_url, worker_id="cleaner")
            try:
                assert await asyncio.to_thread(cleaner.purge, time.time() + 10**9) > 0
            finally:
                cleaner.close()
            with pytest.raises(MessageNotTracked) as error:
                await asyncio.wait_for(waiting, 5)
            assert error.value.last_state is DispositionState.ACCEPTED
    finally:
        raw.close()
