"""SIPp against sipimdn's user agent, driven through its CLI.

Both directions, over UDP and TCP:
- SIPp -> ``sipimdn listen``: plain text and CPIM MESSAGEs get 200; a CPIM MESSAGE asking
  for positive-delivery gets a delivered IMDN that SIPp's out-of-call scenario checks;
  with -lost 10 every call still succeeds and no message is handed up twice.
- ``sipimdn send`` -> SIPp: the request passes the UAS checks (Content-Type, CPIM headers,
  no Contact); SIPp's delivered IMDN moves the message to "delivered" (send exits 0); a
  message over 1300 bytes reaches a TCP-only SIPp by itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .sipimdn_cli import Listener, run_send, start_listen
from .sipp import LOOPBACK, SippRunner, Transport

pytestmark = pytest.mark.interop

TRANSPORTS: list[Transport] = ["udp", "tcp"]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    """``sipimdn listen`` as bob on UDP and TCP, same port; stopped by PID at teardown."""
    running = start_listen(tmp_path / "listen")
    yield running
    running.stop()


# --- SIPp -> sipimdn -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("scenario", "content_type"), [("uac_text.xml", "text/plain"), ("uac_cpim.xml", "text/plain")]
)
def test_sipp_messages_reach_listen(
    sipp: SippRunner, listener: Listener, transport: Transport, scenario: str, content_type: str
) -> None:
    calls = 10
    result = sipp.run(
        "uac", scenario, calls=calls, timeout=20, transport=transport, remote=(LOOPBACK, listener.port)
    )
    assert (result.exit_code, result.successful, result.failed) == (0, calls, 0), result.describe()
    listener.stop()
    messages = [event for event in listener.events if event.get("event") == "message"]
    assert len(messages) == calls, listener.describe()
    assert {event["transport"].lower() for event in messages} == {transport}, listener.describe()
    assert {event["content_type"] for event in messages} == {content_type}, listener.describe()
    texts = Counter(event["text"].strip() for event in messages)
    assert all(count == 1 for count in texts.values()), texts
    assert all(text.startswith("Hello") for text in texts), texts


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_listen_sends_a_delivered_imdn_that_sipp_accepts(
    sipp: SippRunner, listener: Listener, transport: Transport
) -> None:
    """SIPp's out-of-call scenario checks each IMDN (envelope, message-id, status) with ereg."""
    calls = 5
    result = sipp.run(
        "uac", "uac_cpim_delivered.xml", calls=calls, limit=1, timeout=60, transport=transport,
        remote=(LOOPBACK, listener.port), ooc_scenario="ooc_imdn_delivered.xml",
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (0, calls, 0), (
        result.describe() + "\n" + listener.describe()
    )
    assert result.actions_log.count("delivered IMDN accepted for message-id sipp-") == calls
    listener.stop()
    messages = [event for event in listener.events if event.get("event") == "message"]
    assert len(messages) == calls, listener.describe()
    assert all("positive-delivery" in event["notify"] for event in messages), listener.describe()
    sent_ids = {f"sipp-{result.pid}-{n}" for n in range(1, calls + 1)}
    assert {event["message_id"] for event in messages} == sent_ids


@pytest.mark.parametrize("scenario", ["uac_text.xml", "uac_cpim_delivered.xml"])
def test_sipp_lost_10_to_listen_every_call_succeeds(
    sipp: SippRunner, listener: Listener, scenario: str
) -> None:
    """-lost 10 over UDP: SIPp drops a tenth of what it handles, retransmits, and still gets
    its 200 (and, for the CPIM scenario, its delivered IMDN) for every call; the
    application sees each message once."""
    calls = 40 if scenario == "uac_text.xml" else 10
    imdn = scenario == "uac_cpim_delivered.xml"
    result = sipp.run(
        "uac", scenario, calls=calls, rate=200, timeout=90, lost=10, remote=(LOOPBACK, listener.port),
        limit=1 if imdn else None, ooc_scenario="ooc_imdn_delivered.xml" if imdn else None,
    )  # fmt: skip
    assert (result.exit_code, result.successful, result.failed) == (0, calls, 0), (
        result.describe() + "\n" + listener.describe()
    )
    listener.stop()
    messages = [event for event in listener.events if event.get("event") == "message"]
    assert len(messages) == calls, listener.describe()
    if not imdn:
        # 40 calls, each with at least one message each way that may be dropped.
        assert result.retransmissions > 0, result.describe()


# --- sipimdn -> SIPp -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_send_passes_the_sipp_uas_checks(sipp: SippRunner, tmp_path: Path, transport: Transport) -> None:
    """The UAS checks Content-Type message/cpim, the CPIM headers and that there is no Contact.

    No notification is requested (this UAS sends none back): sipimdn still sends CPIM with
    its imdn.Message-ID, and ``send`` exits 0 on the 200.
    """
    server = sipp.start("uas", "uas_cpim_check.xml", calls=1, timeout=20, transport=transport)
    sent = run_send(
        tmp_path / "send", f"sip:bob@{LOOPBACK}:{server.port}", "Hello SIPp", notify=(), wait=10.0,
        transport=transport,
    )  # fmt: skip
    served = server.wait()
    assert (served.exit_code, served.successful, served.failed) == (0, 1, 0), (
        served.describe() + "\n" + sent.describe()
    )
    assert [event["status"] for event in sent.of("response")] == [200], sent.describe()
    assert sent.exit_code == 0, sent.describe()
    assert f"{transport.upper()} message received" in served.messages_log


@pytest.mark.parametrize(
    ("uas", "transport"),
    [
        ("uas_cpim_delivered.xml", "udp"),
        ("uas_cpim_delivered.xml", "tcp"),
        ("uas_cpim_delivered_first.xml", "udp"),
        # Not over TCP: send exits on the 200 that ends SIPp's call, and a SIPp call whose
        # connection closes in the same instant it sent its last message is counted as
        # FailedTcpClosed (a SIPp artefact; the order under test is transport-independent).
    ],
)
def test_send_reaches_delivered_through_the_sipp_imdn(
    sipp: SippRunner, tmp_path: Path, transport: Transport, uas: str
) -> None:
    """SIPp answers 200 and sends the delivered IMDN, after the 200 or (as liblinphone does)
    before it; either way ``send`` exits 0, which it does only once delivered."""
    # One IM, and the 200 to SIPp's IMDN, which SIPp counts as a call of its own; the
    # server is stopped once send is done (see Sipp.quit), so -m has a margin.
    server = sipp.start("uas", uas, calls=10, timeout=20, transport=transport)
    sent = run_send(
        tmp_path / "send", f"sip:bob@{LOOPBACK}:{server.port}", "Hello SIPp", wait=5.0, transport=transport
    )
    served = server.quit()
    assert (served.exit_code, served.successful, served.failed) == (0, 2, 0), (
        served.describe() + "\n" + sent.describe()
    )
    assert "the peer answered an IMDN with 200" in served.actions_log
    assert sent.exit_code == 0, sent.describe()
    assert [event["status"] for event in sent.of("response")] == [200], sent.describe()


def test_send_of_a_large_message_goes_over_tcp_by_itself(sipp: SippRunner, tmp_path: Path) -> None:
    """No --transport and a URI without transport=: a 1500-character text still arrives,
    over TCP, at a SIPp that listens on TCP only (RFC 3261 18.1.1)."""
    server = sipp.start("uas", "uas_any.xml", calls=1, timeout=20, transport="tcp")
    sent = run_send(tmp_path / "send", f"sip:bob@{LOOPBACK}:{server.port}", "x" * 1500, notify=(), wait=5.0)
    served = server.wait()
    assert (served.exit_code, served.successful) == (0, 1), served.describe() + "\n" + sent.describe()
    assert "TCP message received" in served.messages_log
    assert sent.exit_code == 0, sent.describe()
    assert [event["status"] for event in sent.of("response")] == [200], sent.describe()
