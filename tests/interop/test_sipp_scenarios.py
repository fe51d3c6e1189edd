"""The SIPp scenarios themselves, proven without sipimdn.

Each scenario must load, pass against a peer that behaves and, for the checking ones,
fail against a peer that does not; otherwise a green interop run against sipimdn would
prove nothing. The peers here are SIPp itself (UAC against UAS, UDP and TCP) and the
tiny responder of tinypeer.py (for loss, which a SIPp UAS cannot absorb, and for the
IMDN that must come back on a new Call-ID).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from .sipp import LOOPBACK, SippRunner, Transport
from .tinypeer import CRLF, ImdnShape, TinyPeer, start_tiny_peer, stop_tiny_peer

pytestmark = pytest.mark.interop


StartPeer = Callable[[ImdnShape], Awaitable[TinyPeer]]


@pytest.fixture
async def tiny_peer() -> AsyncIterator[StartPeer]:
    """Starts tiny peers on loopback; closes them at teardown."""
    peers: list[TinyPeer] = []

    async def start(shape: ImdnShape) -> TinyPeer:
        peer = await start_tiny_peer(shape)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        await stop_tiny_peer(peer)


# --- UAC scenarios against SIPp UAS scenarios -----------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(
    ("uac", "uas"),
    [
        ("uac_text.xml", "uas_any.xml"),
        ("uac_cpim.xml", "uas_any.xml"),
        ("uac_cpim.xml", "uas_cpim_check.xml"),
    ],
)
def test_uac_scenario_passes_against_sipp_uas(
    sipp: SippRunner, transport: Transport, uac: str, uas: str
) -> None:
    server = sipp.start("uas", uas, calls=5, timeout=10, transport=transport)
    client = sipp.run("uac", uac, calls=5, timeout=10, transport=transport, remote=(LOOPBACK, server.port))
    served = server.wait()
    assert (client.exit_code, client.successful, client.failed) == (0, 5, 0), client.describe()
    assert (served.exit_code, served.successful, served.failed) == (0, 5, 0), served.describe()
    assert client.messages_log.count("SIP/2.0 200 OK") == 5


def test_cpim_check_uas_rejects_text_plain(sipp: SippRunner) -> None:
    """uas_cpim_check fails a text/plain MESSAGE: its Content-Type check is live."""
    server = sipp.start("uas", "uas_cpim_check.xml", calls=2, timeout=10)
    client = sipp.run("uac", "uac_text.xml", calls=2, timeout=10, remote=(LOOPBACK, server.port))
    served = server.wait()
    assert client.exit_code == 0, client.describe()
    assert (served.exit_code, served.failed) == (1, 2), served.describe()
    assert served.counter("FailedRegexpDoesntMatch") == 2


# --- uas_cpim_check against hand-made requests ------------------------------------------


def _cpim_request(port: int, local_port: int, *, spoil: str | None) -> bytes:
    cpim_lines = [
        "From: <sip:alice@127.0.0.1>",
        "To: <sip:bob@127.0.0.1>",
        "DateTime: 2026-06-15T10:00:00Z",
        "NS: imdn <urn:ietf:params:imdn>",
        f"imdn.Message-ID: {secrets.token_hex(8)}",
        "imdn.Disposition-Notification: positive-delivery",
    ]
    inner_type = "Content-Type: text/plain;charset=UTF-8"
    if spoil == "no_datetime":
        cpim_lines = [line for line in cpim_lines if not line.startswith("DateTime")]
    if spoil == "no_ns":
        cpim_lines = [line for line in cpim_lines if not line.startswith("NS:")]
    if spoil == "no_message_id":
        cpim_lines = [line for line in cpim_lines if not line.startswith("imdn.Message-ID")]
    if spoil == "inner_html":
        inner_type = "Content-Type: text/html"
    body = CRLF.join(cpim_lines) + CRLF + CRLF + inner_type + CRLF + CRLF + "hello"
    headers = [
        f"MESSAGE sip:bob@127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{secrets.token_hex(8)}",
        "Max-Forwards: 70",
        f"From: <sip:alice@127.0.0.1:{local_port}>;tag={secrets.token_hex(4)}",
        f"To: <sip:bob@127.0.0.1:{port}>",
        f"Call-ID: {secrets.token_hex(8)}@127.0.0.1",
        "CSeq: 1 MESSAGE",
        "Content-Type: " + ("text/plain" if spoil == "sip_text_plain" else "message/cpim"),
    ]
    if spoil == "contact":
        headers.append(f"Contact: <sip:alice@127.0.0.1:{local_port}>")
    if spoil == "compact_contact":
        headers.append(f"m: <sip:alice@127.0.0.1:{local_port}>")
    headers.append(f"Content-Length: {len(body.encode())}")
    return (CRLF.join(headers) + CRLF + CRLF + body).encode()


@pytest.mark.parametrize(
    "spoil",
    [
        None,
        "contact",
        "compact_contact",
        "sip_text_plain",
        "no_datetime",
        "no_ns",
        "no_message_id",
        "inner_html",
    ],
)
async def test_cpim_check_uas_catches_each_defect(sipp: SippRunner, spoil: str | None) -> None:
    """A well-formed CPIM request passes uas_cpim_check; each single defect fails it."""
    server = sipp.start("uas", "uas_cpim_check.xml", calls=1, timeout=10)
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Collect(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Collect, local_addr=(LOOPBACK, 0))
    try:
        local_port = transport.get_extra_info("sockname")[1]
        transport.sendto(_cpim_request(server.port, local_port, spoil=spoil), (LOOPBACK, server.port))
        answer = await asyncio.wait_for(answers.get(), timeout=5)
    finally:
        transport.close()
    served = await server.wait_async()
    # SIPp answers 200 even after a failed check; the verdict is its exit code.
    assert answer.startswith(b"SIP/2.0 200 OK")
    if spoil is None:
        assert (served.exit_code, served.successful) == (0, 1), served.describe()
    else:
        assert (served.exit_code, served.failed) == (1, 1), served.describe()
        assert served.counter("FailedRegexpDoesntMatch") + served.counter("FailedRegexpShouldntMatch") == 1


# --- the IMDN pair: uac_cpim_delivered + ooc_imdn_delivered -------------------------------


async def test_imdn_pair_passes_with_a_right_imdn(sipp: SippRunner, tiny_peer: StartPeer) -> None:
    peer = await tiny_peer(ImdnShape())
    result = await sipp.run_async(
        "uac", "uac_cpim_delivered.xml", calls=3, limit=1, timeout=15, remote=peer.address,
        ooc_scenario="ooc_imdn_delivered.xml",
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (0, 3, 0), result.describe()
    assert peer.imdn_responses == ["SIP/2.0 200 OK"] * 3
    assert result.actions_log.count("delivered IMDN received for sipp-") == 3


RIGHT = ImdnShape()
REGEXP_FAILED = "Failed regexp match"
REGEXP_MATCHED = "Regexp matched but should not"
#: Each wrong IMDN, and the trace in SIPp's logs that shows which check caught it.
WRONG_IMDNS: dict[str, tuple[ImdnShape, str]] = {
    "none sent": (replace(RIGHT, send=False), "IMDN state waiting"),
    "wrong message-id": (
        replace(RIGHT, message_id="not-the-one-sent"),
        "accepted for message-id not-the-one-sent",
    ),
    "status failed": (replace(RIGHT, status="<failed/>"), REGEXP_FAILED),
    "display notification": (
        replace(RIGHT, notification="display-notification", status="<displayed/>"),
        REGEXP_FAILED,
    ),
    "no Content-Disposition": (replace(RIGHT, content_disposition=None), REGEXP_FAILED),
    "inner type text/plain": (replace(RIGHT, inner_content_type="text/plain"), REGEXP_FAILED),
    "SIP type text/plain": (replace(RIGHT, sip_content_type="text/plain"), REGEXP_FAILED),
    "no NS": (replace(RIGHT, ns_line=None), REGEXP_FAILED),
    "asks for an IMDN": (replace(RIGHT, asks_for_imdn=True), REGEXP_MATCHED),
    "has Contact": (replace(RIGHT, contact=True), REGEXP_MATCHED),
    "wrong datetime": (replace(RIGHT, datetime="2026-06-16T10:00:00Z"), REGEXP_FAILED),
    "wrong xml namespace": (replace(RIGHT, xml_namespace="urn:example:not-imdn"), REGEXP_FAILED),
    "CPIM To not the sender": (replace(RIGHT, cpim_to_user="carol"), REGEXP_FAILED),
}


@pytest.mark.parametrize("defect", sorted(WRONG_IMDNS))
async def test_imdn_pair_fails_on_a_wrong_or_missing_imdn(
    sipp: SippRunner, tiny_peer: StartPeer, defect: str
) -> None:
    shape, evidence = WRONG_IMDNS[defect]
    peer = await tiny_peer(shape)
    result = await sipp.run_async(
        "uac", "uac_cpim_delivered.xml", calls=1, limit=1, timeout=15, remote=peer.address,
        ooc_scenario="ooc_imdn_delivered.xml",
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (1, 0, 1), result.describe()
    # The MESSAGE itself got its 200; the main call failed waiting for a right IMDN.
    assert result.counter("FailedTimeoutOnRecv") == 1, result.describe()
    assert evidence in result.errors_log + result.actions_log, result.describe()
    assert peer.imdn_responses == ([] if defect == "none sent" else ["SIP/2.0 200 OK"])


# --- loss ---------------------------------------------------------------------------------


async def test_lost_10_succeeds_through_retransmission_against_a_responder_that_re_answers(
    sipp: SippRunner, tiny_peer: StartPeer
) -> None:
    """-lost 10 drops a tenth of what SIPp handles; every call still ends in a 200.

    With 100 calls the chance that nothing is lost (and nothing retransmitted) is below
    1e-4, so the run does exercise the retransmission path.
    """
    peer = await tiny_peer(replace(RIGHT, send=False))
    result = await sipp.run_async(
        "uac", "uac_text.xml", calls=100, rate=500, timeout=30, lost=10, remote=peer.address
    )
    assert (result.exit_code, result.successful, result.failed) == (0, 100, 0), result.describe()
    assert result.retransmissions > 0, result.describe()
    assert len(peer.received) > 100
