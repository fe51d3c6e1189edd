"""A user agent in its own process for the crash tests: prints one JSON object per event and can
kill itself with SIGKILL at a precise point (fault injection).

    python crash_peer.py --aor sip:bob@127.0.0.1:PORT --port PORT --store FILE [--crash-after-answer]
    python crash_peer.py --aor ... --port ... --store ... --send-to URI --text T [--crash-on-imdn]

--crash-after-answer   SIGKILL right after the 2xx to an IM left the socket, so the process dies
                       after answering and before any IMDN it owes can go out.
--crash-on-imdn        SIGKILL when an IMDN MESSAGE arrives, before the user agent reads it: the
                       sender dies while its notifications are in flight.
--slow-store SECONDS   every store write takes this much longer (a slow disk): the store worker
                       thread sleeps before each batch, the event loop does not wait.

The hooks wrap the stack's ``IncomingRequest.respond`` and the request handler the agent gives it;
nothing else is changed, so what survives the kill is exactly what the store held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from sipimdn import UserAgent
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.events import DispositionChanged, NotificationRejected, NotificationSent
from sipimdn.stack import IncomingRequest, RequestHandler, SipStack
from sipimdn.store import SqliteStore, StoreOp
from sipimdn.ua import IncomingMessage


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def die() -> None:
    emit(event="killed")
    os.kill(os.getpid(), signal.SIGKILL)


def install_crash_after_answer() -> None:
    original = IncomingRequest.respond

    def respond(self: IncomingRequest, status: int, *args: Any, **kwargs: Any) -> bool:
        sent = original(self, status, *args, **kwargs)
        body = self.request.body
        if sent and 200 <= status < 300 and b"message/imdn+xml" not in body:
            die()  # the 2xx was written to the socket synchronously (UDP sendto)
        return sent

    IncomingRequest.respond = respond  # type: ignore[method-assign]


def install_slow_store(delay: float) -> None:
    original = SqliteStore.apply

    def apply(self: SqliteStore, ops: Sequence[StoreOp]) -> None:
        time.sleep(delay)
        original(self, ops)

    SqliteStore.apply = apply  # type: ignore[method-assign]


def install_crash_on_imdn() -> None:
    original = SipStack.on_request

    def on_request(self: SipStack, handler: RequestHandler) -> Callable[[], None]:
        def crash_first(incoming: IncomingRequest) -> object:
            if b"message/imdn+xml" in incoming.request.body:
                die()  # before the user agent reads it
            return handler(incoming)

        return original(self, crash_first)

    SipStack.on_request = on_request  # type: ignore[method-assign]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aor", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--send-to")
    parser.add_argument("--text", default="hello")
    parser.add_argument("--notify", default="positive-delivery")
    parser.add_argument("--crash-after-answer", action="store_true")
    parser.add_argument("--crash-on-imdn", action="store_true")
    parser.add_argument("--slow-store", type=float, default=0.0)
    args = parser.parse_args()
    if args.crash_after_answer:
        install_crash_after_answer()
    if args.crash_on_imdn:
        install_crash_on_imdn()
    if args.slow_store:
        install_slow_store(args.slow_store)
    config = UserAgentConfig(
        aor=args.aor, listen=(ListenEndpoint("udp", "127.0.0.1", args.port),), udp_implies_tcp=False,
        store_path=args.store, t1=0.02, t2=0.16, t4=0.1,
        imdn_retry_base=0.2, imdn_retry_cap=0.4, imdn_max_attempts=40, imdn_park_base=0.2, imdn_park_cap=0.4,
    )
    agent = UserAgent(config)

    async def on_message(message: IncomingMessage) -> None:
        emit(event="message", id=message.message_id, text=message.text)

    async def on_disposition(event: object) -> None:
        if isinstance(event, DispositionChanged):
            emit(event="disposition", id=event.message_id, state=str(event.state))
        elif isinstance(event, NotificationRejected):
            emit(event="rejected", id=event.message_id, reason=str(event.reason))

    async def on_notification(event: object) -> None:
        if isinstance(event, NotificationSent):
            emit(event="notification_sent", id=event.message_id, status=event.status,
                 sip_status=event.sip_status, attempt=event.attempt)

    agent.on_message(on_message)
    agent.on_disposition(on_disposition)  # before start: nothing resumed from the store is missed
    agent.on_notification(on_notification)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with agent:
        emit(event="ready")
        if args.send_to:
            handle = await agent.send_message(args.send_to, args.text, notify=set(args.notify.split(",")))
            emit(event="sent", id=handle.message_id)
            response = await handle.final_response()
            emit(event="answered", id=handle.message_id, status=response.status_code)
        await stop.wait()
    emit(event="stopped")


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
