"""RFC 5438 §14: forged messages must not turn a user agent into a reflector.

A forger sends bob MESSAGEs asking for delivery notifications, each with a From naming a silent
host (a UDP socket that never answers) under a fresh user part. Without per-destination budgets
bob answered every one with a notification transaction of its own, retransmitted over UDP and
retried: 16 times the forger's packets and 26 times its bytes reached the silent host. Now the
destination (its address, whatever the user part) gets one notification transaction at a time
until it proves alive, is parked when it stays silent, and what is suppressed is counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from robust_helpers import listen, port_of, settle

from sipimdn import UserAgent, cpim, imdn
from sipimdn.config import ListenEndpoint, UserAgentConfig
from sipimdn.dialog.factory import build_request
from sipimdn.events import NotificationsDeclined
from sipimdn.stack import IncomingRequest, SipStack
from sipimdn.transport.flow import Transport

NOW = "2026-01-01T00:00:00.000Z"
FORGED = 30
#: The most packets one non-INVITE transaction sends over UDP with these timers (RFC 3261
#: §17.1.2.2: Timer E from T1 doubling to T2, until Timer F at 64*T1): 0, .05, .15, .35, .75,
#: then every .4 s until 3.2 s.
ONE_TRANSACTION = 11


@dataclass
class Silent(asyncio.DatagramProtocol):
    """A host that receives and never answers; counts what reaches it."""

    packets: int = 0
    bytes: int = 0

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.packets += 1
        self.bytes += len(data)


def forged_im(victim: str, to: str) -> bytes:
    return cpim.build_message(
        [("From", f"<{victim}>"), ("To", f"<{to}>"), ("NS", "imdn <urn:ietf:params:imdn>"),
         ("imdn.Message-ID", imdn.new_message_id()), ("DateTime", NOW),
         ("imdn.Disposition-Notification", "positive-delivery")],
        content_type="text/plain; charset=utf-8", body=b"hello").to_bytes()


async def test_forged_messages_aimed_at_a_silent_host_are_not_amplified() -> None:
    loop = asyncio.get_running_loop()
    transport, silent = await loop.create_datagram_endpoint(Silent, local_addr=("127.0.0.1", 0))
    silent_port = transport.get_extra_info("sockname")[1]
    forger = SipStack(listen(Transport.UDP))
    answered: list[IncomingRequest] = []
    honest = SipStack(listen(Transport.UDP))

    def answer(incoming: IncomingRequest) -> None:
        answered.append(incoming)
        incoming.respond(200)

    honest.on_request(answer)
    declined: list[NotificationsDeclined] = []
    config = UserAgentConfig(
        aor="sip:bob@127.0.0.1:0", listen=(ListenEndpoint("udp", "127.0.0.1", 0),), udp_implies_tcp=False,
        t1=0.05, t2=0.4, t4=0.2,  # a notification transaction times out after 64*T1 = 3.2 s
    )
    bob = UserAgent(config)

    async def on_notification(event: object) -> None:
        if isinstance(event, NotificationsDeclined):
            declined.append(event)

    bob.on_notification(on_notification)

    @bob.on_message
    async def receive(message: object) -> None:
        pass  # accepted: 200, and the delivery notification is owed
    try:
        async with asyncio.timeout(30), forger, honest, bob:
            attack = 0

            async def forge(index: int) -> None:
                nonlocal attack
                victim = f"sip:victim{index}@127.0.0.1:{silent_port}"
                request = build_request("MESSAGE", bob.aor, f"<{victim}>", f"<{bob.aor}>",
                                        body=forged_im(victim, bob.aor), content_type="message/cpim")
                attack += len(request.to_bytes())
                assert (await forger.send_request(request)).status_code == 200

            await asyncio.gather(*(forge(i) for i in range(FORGED)))
            # The first notification's transaction runs its course (3.2 s) and a little more.
            await asyncio.sleep(4.5)
            assert silent.packets > 0  # bob did try: the first notification is a real one
            # Bounded: one transaction for the whole attack, fewer bytes than the attack itself
            # (the old code ran one per forged message, each retried: many times the attack).
            assert silent.packets <= ONE_TRANSACTION, (silent.packets, silent.bytes, attack)
            assert silent.bytes < attack, (silent.packets, silent.bytes, attack)
            victim = f"sip:victim0@127.0.0.1:{silent_port}"
            assert bob.tracker.destination_parked_until(victim, time.time()) is not None
            # While parked, new requests to that address are declined and counted.
            before = bob.tracker.notifications_suppressed
            packets = silent.packets
            await asyncio.gather(*(forge(i) for i in range(FORGED, FORGED + 5)))
            assert await settle(lambda: bob.tracker.notifications_suppressed == before + 5, 3)
            assert [str(e.reason) for e in declined][-5:] == ["destination-silent"] * 5
            await asyncio.sleep(0.5)
            assert silent.packets == packets
            # An honest peer elsewhere is not affected: its notification goes out and is answered.
            honest_uri = f"sip:alice@127.0.0.1:{port_of(honest, Transport.UDP)}"
            request = build_request("MESSAGE", bob.aor, f"<{honest_uri}>", f"<{bob.aor}>",
                                    body=forged_im(honest_uri, bob.aor), content_type="message/cpim")
            assert (await forger.send_request(request)).status_code == 200
            assert await settle(lambda: len(answered) == 1, 3)
    finally:
        transport.close()

