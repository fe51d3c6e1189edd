"""The positive-delivery soak client's pure pieces (bench/load/soak_client.py): the MESSAGE it
sends, how it reads answers and IMDNs, the 200 it answers IMDNs with, and its tally. The socket
loop itself runs in the bench smoke (``bench/run.py --quick``)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sipimdn import Request, Response, cpim, parse_message
from sipimdn.imdn import DispositionRequest, build_notification, imdn_headers

SOURCE = Path(__file__).resolve().parent.parent / "bench" / "load" / "soak_client.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_client", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_client"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


soak = _load()
LOCAL = ("127.0.0.1", 40000)
REMOTE = ("127.0.0.1", 5060)


def _imdn_request(body: bytes, *, call_id: str = "n-1", cseq: str = "1 MESSAGE", to_tag: str = "") -> bytes:
    cpim_body = (
        b"From: <sip:bob@127.0.0.1:5060>\r\nTo: <sip:alice-7@127.0.0.1:40000>\r\n"
        b"NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: x1\r\n\r\n"
        b"Content-Type: message/imdn+xml\r\nContent-Disposition: notification\r\n\r\n" + body
    )
    head = (
        "MESSAGE sip:alice-7@127.0.0.1:40000 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKone;rport\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKtwo\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:bob@127.0.0.1:5060>;tag=b1\r\n"
        f"To: <sip:alice-7@127.0.0.1:40000>{to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq}\r\n"
        "Content-Type: message/cpim\r\n"
        f"Content-Length: {len(cpim_body)}\r\n\r\n"
    )
    return head.encode() + cpim_body


def _delivery(message_id: str, status: str = "delivered") -> bytes:
    return build_notification(
        message_id=message_id, datetime="2026-06-15T10:00:00Z", kind="delivery", status=status
    )


def test_request_is_a_cpim_message_asking_for_positive_delivery() -> None:
    data = soak.pd_request("soak9", 42, LOCAL, REMOTE)
    message = parse_message(data)
    assert isinstance(message, Request)
    assert message.method == "MESSAGE"
    assert message.headers.get("Call-ID") == "soak9-42"
    im = cpim.parse(message.body)
    headers = imdn_headers(im)
    assert headers.message_id == "soak9-42"
    assert headers.requested == frozenset({DispositionRequest.POSITIVE_DELIVERY})
    # Each message from its own sender URI, where the IMDN comes back (this client's address).
    assert im.from_ is not None
    assert str(im.from_.uri) == "sip:alice-42@127.0.0.1:40000"


def test_answers_to_our_messages_are_recognised_by_call_id() -> None:
    ok = b"SIP/2.0 200 OK\r\nVia: x\r\nCall-ID: soak9-5\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    assert soak.classify(ok, "soak9") == soak.Answer(5, 200)
    compact = b"SIP/2.0 488 Not Here\r\ni: soak9-6\r\nl: 0\r\n\r\n"
    assert soak.classify(compact, "soak9") == soak.Answer(6, 488)
    assert soak.classify(b"SIP/2.0 100 Trying\r\nCall-ID: soak9-5\r\n\r\n", "soak9") is None
    assert soak.classify(ok.replace(b"soak9-5", b"other-5"), "soak9") is None  # not this run's
    assert soak.classify(b"OPTIONS sip:a SIP/2.0\r\nCall-ID: c\r\n\r\n", "soak9") is None
    assert soak.classify(b"garbage", "soak9") is None


@pytest.mark.parametrize(
    ("body", "index", "kind", "status"),
    [
        (_delivery("soak9-17"), 17, "delivery-notification", "delivered"),
        (_delivery("soak9-18", "failed"), 18, "delivery-notification", "failed"),
        (_delivery("someone-else-3"), None, "delivery-notification", "delivered"),
        (
            b'<i:imdn xmlns:i="urn:ietf:params:xml:ns:imdn"><i:message-id> soak9-4 </i:message-id>'
            b"<i:delivery-notification><i:status><i:delivered/></i:status></i:delivery-notification>"
            b"</i:imdn>",
            4,
            "delivery-notification",
            "delivered",
        ),
        (
            build_notification(
                message_id="soak9-2", datetime="2026-06-15T10:00:00Z", kind="display", status="displayed"
            ),
            2,
            "display-notification",
            "displayed",
        ),
        (b"not xml at all", None, "", ""),
    ],
)
def test_imdns_are_read_for_their_message_id_kind_and_status(
    body: bytes, index: int | None, kind: str, status: str
) -> None:
    found = soak.classify(_imdn_request(body, call_id="imdn-abc", cseq="7 MESSAGE"), "soak9")
    assert found == soak.Notification("imdn-abc", "7 MESSAGE", index, kind, status)


@pytest.mark.parametrize("to_tag", ["", ";tag=already"])
def test_the_200_to_an_imdn_echoes_its_transaction(to_tag: str) -> None:
    request = _imdn_request(_delivery("soak9-1"), call_id="imdn-1", cseq="3 MESSAGE", to_tag=to_tag)
    answer = parse_message(soak.ok_response(request, "mine"))
    assert isinstance(answer, Response)
    assert answer.status_code == 200
    assert answer.headers.get_all("Via") == [
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKone;rport",
        "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKtwo",
    ]
    assert answer.headers.get("From") == "<sip:bob@127.0.0.1:5060>;tag=b1"
    expected_tag = "already" if to_tag else "mine"
    assert answer.headers.get("To") == f"<sip:alice-7@127.0.0.1:40000>;tag={expected_tag}"
    assert answer.headers.get("Call-ID") == "imdn-1"
    assert answer.headers.get("CSeq") == "3 MESSAGE"
    assert answer.body == b""


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1000, 0, -1)]
    assert soak.percentiles(values) == {"p50": 500.0, "p99": 990.0, "p999": 999.0, "max": 1000.0}
    assert soak.percentiles([3.0]) == {"p50": 3.0, "p99": 3.0, "p999": 3.0, "max": 3.0}
    assert soak.percentiles([]) == {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}


def _note(index: int | None, call_id: str, status: str = "delivered") -> object:
    return soak.Notification(call_id, "1 MESSAGE", index, "delivery-notification", status)


def test_tally_correlates_imdns_with_their_200_and_counts_what_went_wrong() -> None:
    tally = soak.Tally(capacity=6)
    for index in range(6):
        tally.on_sent(index, 10.0 + index)  # scheduled 1 s apart
    assert not tally.complete()
    tally.on_answer(soak.Answer(0, 200), 10.001)  # 200 after 1 ms
    assert tally.on_notification(_note(0, "a"), 10.003)  # IMDN 2 ms after the 200
    assert not tally.on_notification(_note(0, "a"), 10.5)  # retransmitted: same transaction
    assert tally.on_notification(_note(0, "a2"), 10.6)  # a second transaction: a duplicate
    tally.on_answer(soak.Answer(0, 200), 10.7)  # a retransmitted 200
    tally.on_answer(soak.Answer(1, 200), 11.002)
    tally.on_notification(_note(1, "b", "failed"), 11.102)  # 100 ms, and not "delivered"
    tally.on_answer(soak.Answer(2, 200), 12.010)  # its IMDN never comes
    tally.on_answer(soak.Answer(3, 200), 13.005)
    tally.on_notification(_note(3, "d"), 13.004)  # came first: a delay of 0
    tally.on_notification(_note(4, "e"), 14.5)  # its 200 never came
    tally.on_answer(soak.Answer(5, 486), 15.001)
    tally.on_notification(_note(None, "f"), 15.2)  # about no message of this run
    tally.on_answer(soak.Answer(9, 200), 15.3)  # never sent: ignored
    summary = tally.summary(window=2.0, start=10.0)
    counts = {key: value for key, value in summary.items() if isinstance(value, int)}
    assert counts == {
        "sent": 6,
        "ok": 4,
        "other_answers": 1,
        "unanswered": 1,
        "imdns": 6,
        "imdn_not_delivered": 1,
        "imdn_never": 1,
        "imdn_late": 0,
        "imdn_duplicates": 1,
        "imdn_other": 1,
        "imdn_before_200": 1,
        "imdn_read_first": 1,  # message 4's (no 200 at all); message 3's 200 was read first
        "imdn_without_200": 1,
        "answer_retransmissions": 1,
        "imdn_retransmissions": 1,
        "transactions_dropped": 0,
    }
    assert summary["imdn_read_first_examples"] == [4]
    assert summary["ok_p50_us"] == pytest.approx(2000.0)  # 1, 2, 5, 10 ms: nearest rank p50 = 2nd
    assert summary["ok_max_us"] == pytest.approx(10000.0)
    # Delays after the 200: 2 ms, 100 ms and 0 ms (the IMDN that came first).
    assert summary["imdn_after_200_p50_ms"] == pytest.approx(2.0)
    assert summary["imdn_after_200_max_ms"] == pytest.approx(100.0)
    assert [(w["from_s"], w["answered"], w["imdns"]) for w in summary["windows"]] == [
        (0.0, 2, 2),
        (2.0, 2, 1),
        (4.0, 1, 0),
    ]
    assert summary["windows"][0]["imdn_after_200_max_ms"] == pytest.approx(100.0)
    assert tally.summary(window=2.0, start=10.0, late_ms=50.0)["imdn_late"] == 1  # the 100 ms one
    # Summaries are views: asking twice gives the same figures.
    assert tally.summary(window=2.0, start=10.0) == summary


def test_tally_is_complete_once_every_200_has_its_imdn() -> None:
    tally = soak.Tally(capacity=2)
    tally.on_sent(0, 0.0)
    tally.on_sent(1, 0.001)
    tally.on_answer(soak.Answer(0, 200), 0.002)
    tally.on_answer(soak.Answer(1, 500), 0.003)
    assert not tally.complete()
    tally.on_notification(_note(0, "z"), 0.004)
    assert tally.complete()
    assert math.isclose(tally.summary(window=0.0, start=0.0)["imdn_after_200_max_ms"], 2.0)


def test_tally_bounds_the_transactions_it_remembers() -> None:
    tally = soak.Tally(capacity=1)
    tally.on_sent(0, 0.0)
    limit = 4 * 1 + 64
    for n in range(limit + 3):
        tally.on_notification(_note(None, f"c{n}"), 1.0)
    assert tally.transactions_dropped == 3
    assert tally.imdns == limit + 3


def test_wall_offset_maps_perf_counter_onto_the_wall_clock() -> None:
    import time

    offset = soak.wall_offset()
    assert abs(time.perf_counter() + offset - time.time()) < 0.05
