"""Smoke tests of the codec contract the user agent codes against (docs/ARCHITECTURE.md, "Codecs")."""

from __future__ import annotations

from sipimdn import cpim, imdn
from sipimdn.errors import CpimError, ImdnError


def test_contract_names_are_exported() -> None:
    assert cpim.CpimError is CpimError
    assert imdn.ImdnError is ImdnError


def test_im_then_imdn_round_trip() -> None:
    im = imdn.build_im(
        from_=cpim.CpimAddress("im:alice@example.com", "Alice"),
        to="im:bob@example.com",
        body=b"Hello",
        now=1_700_000_000.25,
        notify=["positive-delivery", "display"],
    )
    received = cpim.parse(im.to_bytes())
    assert received == im
    assert received.content_type == "text/plain"
    assert received.body == b"Hello"
    message_id = received.value(imdn.IMDN_NS, "Message-ID")
    assert message_id is not None
    report = imdn.build_imdn(received, kind="delivery", status="delivered", now=1_700_000_001)
    recognised = imdn.recognise(cpim.parse(report.to_bytes()))
    assert recognised is not None
    (note,) = recognised.notifications
    assert (note.message_id, note.kind, note.status) == (message_id, "delivery", "delivered")
    assert note.datetime == "2023-11-14T22:13:20.250Z"
    assert note.recipient_uri == note.original_recipient_uri == "im:bob@example.com"
