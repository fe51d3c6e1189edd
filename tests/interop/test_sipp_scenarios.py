"""The SIPp scenarios themselves, proven without sipimdn.

Each scenario must load, pass against a peer that behaves and, for the checking ones,
fail against a peer that does not; otherwise a green interop run against sipimdn would
prove nothing. The peers here are SIPp itself (UAC against UAS, UDP and TCP) and the
tiny responder of tinypeer.py (for loss, which a SIPp UAS cannot absorb, and for the
IMDN that must come back on a new Call-ID).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from lxml import etree

from .sipp import LOOPBACK, SippRunner, Transport
from .tinypeer import CRLF, ImdnShape, TinyPeer, build_cpim_message, start_tiny_peer, stop_tiny_peer

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


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("uas", ["uas_cpim_delivered.xml", "uas_cpim_delivered_first.xml"])
def test_imdn_scenarios_pass_against_each_other(sipp: SippRunner, transport: Transport, uas: str) -> None:
    """The UAS scenarios' IMDN passes every check of ooc_imdn_delivered, on UDP and on TCP,
    whether it comes after the 200 or before it."""
    # Three IMs, and the 200 to each IMDN, which SIPp counts as a call of its own: 6 calls.
    # The server is stopped once the client is done (see Sipp.quit), so -m has a margin.
    server = sipp.start("uas", uas, calls=100, timeout=10, transport=transport)
    client = sipp.run(
        "uac", "uac_cpim_delivered.xml", calls=3, limit=1, timeout=40, transport=transport,
        remote=(LOOPBACK, server.port), ooc_scenario="ooc_imdn_delivered.xml",
    )  # fmt: skip
    served = server.quit()
    assert (client.exit_code, client.successful, client.failed) == (0, 3, 0), client.describe()
    assert (served.exit_code, served.successful, served.failed) == (0, 6, 0), served.describe()
    assert client.actions_log.count("delivered IMDN accepted for message-id sipp-") == 3
    assert served.actions_log.count("the peer answered an IMDN with 200") == 3


def test_cpim_check_uas_rejects_text_plain(sipp: SippRunner) -> None:
    """uas_cpim_check fails a text/plain MESSAGE: its Content-Type check is live."""
    server = sipp.start("uas", "uas_cpim_check.xml", calls=2, timeout=10)
    client = sipp.run("uac", "uac_text.xml", calls=2, timeout=10, remote=(LOOPBACK, server.port))
    served = server.wait()
    assert client.exit_code == 0, client.describe()
    assert (served.exit_code, served.failed) == (1, 2), served.describe()
    assert served.counter("FailedRegexpDoesntMatch") == 2


# --- uas_cpim_check against hand-made requests ------------------------------------------


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
async def test_cpim_check_uas_catches_each_defect(
    sipp: SippRunner, tiny_peer: StartPeer, spoil: str | None
) -> None:
    """A well-formed CPIM request passes uas_cpim_check; each single defect fails it."""
    server = sipp.start("uas", "uas_cpim_check.xml", calls=1, timeout=10)
    peer = await tiny_peer(replace(RIGHT, send=False))
    request, _ = build_cpim_message((LOOPBACK, server.port), peer.address, spoil=spoil)
    peer.send(request, (LOOPBACK, server.port))
    served = await server.wait_async()
    # SIPp answers 200 even after a failed check; the verdict is its exit code.
    assert peer.responses == ["SIP/2.0 200 OK"]
    if spoil is None:
        assert (served.exit_code, served.successful) == (0, 1), served.describe()
    else:
        assert (served.exit_code, served.failed) == (1, 1), served.describe()
        assert served.counter("FailedRegexpDoesntMatch") + served.counter("FailedRegexpShouldntMatch") == 1


@pytest.mark.parametrize(
    ("uas", "order"),
    [("uas_cpim_delivered.xml", ["200", "MESSAGE"]), ("uas_cpim_delivered_first.xml", ["MESSAGE", "200"])],
)
async def test_uas_sends_a_right_delivered_imdn(
    sipp: SippRunner, tiny_peer: StartPeer, uas: str, order: list[str]
) -> None:
    """The UAS scenarios answer 200 and send an IMDN that an independent check accepts, in
    the order they promise (the IMDN after the 200, or before it)."""
    server = sipp.start("uas", uas, calls=2, timeout=10)
    peer = await tiny_peer(replace(RIGHT, send=False))
    request, message_id = build_cpim_message((LOOPBACK, server.port), peer.address)
    peer.send(request, (LOOPBACK, server.port))
    received = await peer.wait_for_requests(1, timeout=5)
    served = await server.wait_async()
    assert peer.arrivals == order, served.describe()
    assert (served.exit_code, served.successful) == (0, 2), served.describe()
    assert peer.responses == ["SIP/2.0 200 OK"]
    assert len(received) == 1, served.describe()
    assert "the peer answered an IMDN with 200" in served.actions_log
    imdn = received[0]
    alice = f"sip:alice@{peer.address[0]}:{peer.address[1]}"
    bob = f"sip:bob@{LOOPBACK}:{server.port}"
    assert imdn.uri == alice
    assert imdn.headers["to"] == f"<{alice}>"
    assert imdn.headers["content-type"] == "message/cpim"
    assert "contact" not in imdn.headers
    assert imdn.headers["call-id"] not in request.decode()
    cpim_head, mime_head, xml = _split_cpim(imdn.body)
    assert f"From: <{bob}>" in cpim_head
    assert f"To: <{alice}>" in cpim_head
    assert "NS: imdn <urn:ietf:params:imdn>" in cpim_head
    assert "imdn.Message-ID: sipp-imdn-" in cpim_head
    assert "Disposition-Notification" not in cpim_head
    assert "Content-Type: message/imdn+xml" in mime_head
    assert "Content-Disposition: notification" in mime_head
    ns = {"i": "urn:ietf:params:xml:ns:imdn"}
    root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.tag == "{urn:ietf:params:xml:ns:imdn}imdn"
    assert root.findtext("i:message-id", namespaces=ns) == message_id
    assert root.findtext("i:datetime", namespaces=ns) == "2026-06-15T10:00:00Z"
    assert root.findtext("i:recipient-uri", namespaces=ns) == bob
    assert root.find("i:delivery-notification/i:status/i:delivered", namespaces=ns) is not None


def _split_cpim(body: str) -> tuple[str, str, str]:
    """CPIM headers, MIME headers, content (RFC 3862 3: blank lines separate them)."""
    cpim_head, _, rest = body.partition(CRLF + CRLF)
    mime_head, _, content = rest.partition(CRLF + CRLF)
    return cpim_head, mime_head, content.strip()


# --- the IMDN pair: uac_cpim_delivered + ooc_imdn_delivered -------------------------------


async def test_imdn_pair_passes_with_a_right_imdn(sipp: SippRunner, tiny_peer: StartPeer) -> None:
    peer = await tiny_peer(ImdnShape())
    result = await sipp.run_async(
        "uac", "uac_cpim_delivered.xml", calls=3, limit=1, timeout=40, remote=peer.address,
        ooc_scenario="ooc_imdn_delivered.xml",
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (0, 3, 0), result.describe()
    assert peer.responses == ["SIP/2.0 200 OK"] * 3
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
        "uac", "uac_cpim_delivered.xml", calls=1, limit=1, timeout=40, remote=peer.address,
        ooc_scenario="ooc_imdn_delivered.xml",
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (1, 0, 1), result.describe()
    # The MESSAGE itself got its 200; the main call failed waiting for a right IMDN.
    assert result.counter("FailedTimeoutOnRecv") == 1, result.describe()
    assert evidence in result.errors_log + result.actions_log, result.describe()
    assert peer.responses == ([] if defect == "none sent" else ["SIP/2.0 200 OK"])


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
