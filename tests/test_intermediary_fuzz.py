"""Mutated MESSAGE bodies never break the intermediary: every one gets a deliberate final answer."""

from __future__ import annotations

import random
from typing import Any

from test_intermediary_support import DOMAIN

from sipimdn import imdn
from sipimdn.dialog.factory import build_request
from sipimdn.intermediary import Intermediary, IntermediaryConfig, UriList, add_record_route
from sipimdn.message import Request

LIST = f"sip:club@{DOMAIN}"


class FakeIncoming:
    """Stands in for IncomingRequest: records the final answer."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.responded: int | None = None

    def respond(self, status: int, reason: str | None = None, headers: Any = (), body: bytes = b"") -> bool:
        if self.responded is not None:
            return False
        self.responded = status
        return True


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.4 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.6 and out:
            del out[rng.randrange(len(out)) :]
        elif choice < 0.8:
            pos = rng.randrange(len(out) + 1)
            out[pos:pos] = rng.choice([b"\r\n", b":", b"<", b">", b"imdn.", b"\x00", b"\xff", b" "])
        elif out:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 40)]
    return bytes(out)


async def test_mutated_bodies_get_deliberate_answers() -> None:
    config = IntermediaryConfig(domains=(DOMAIN,), lists=(UriList(LIST, ("sip:x@127.0.0.1:9",)),))
    async with Intermediary(config) as server:
        im = imdn.build_im(
            from_="sip:alice@x.test",
            to=f"sip:bob@{DOMAIN}",
            body=b"hi",
            now=0,
            notify=["processing", "display"],
        )
        routed = add_record_route(im, "sip:up@r.test")
        note = imdn.build_imdn(routed, kind="delivery", status="delivered", now=0)
        seeds = [im.to_bytes(), note.to_bytes()]
        rng = random.Random(5438)
        answers: dict[int, int] = {}
        for index in range(300):
            body = mutate(rng.choice(seeds), rng)
            target = rng.choice([f"sip:bob@{DOMAIN}", LIST, server.uri, "sip:carol@127.0.0.1:9"])
            request = build_request(
                "MESSAGE", target, "<sip:alice@x.test>", f"<{target}>", body=body, content_type="message/cpim"
            )
            incoming = FakeIncoming(request)
            await server._on_message(incoming)  # type: ignore[arg-type]
            assert incoming.responded is not None, (index, body)
            assert incoming.responded in {200, 202, 400, 403, 404, 413, 415}, (
                index,
                incoming.responded,
                body,
            )
            answers[incoming.responded] = answers.get(incoming.responded, 0) + 1
        # Both refusals and acceptances happened: the mutations exercised both sides.
        assert answers.get(400, 0) > 0 and answers.get(202, 0) > 0
