"""No CPIM header can be smuggled in through a value (found by the intermediary work)."""

from __future__ import annotations

import pytest

from sipimdn.cpim.build import build_message, format_header
from sipimdn.errors import LocalProtocolError
from sipimdn.imdn import make_notification
from sipimdn.imdn.message import build_imdn_message


@pytest.mark.parametrize("value", ["a\r\nX: injected", "a\nX: injected", "a\rX: injected"])
def test_format_header_refuses_line_breaks(value: str) -> None:
    with pytest.raises(LocalProtocolError, match="line break"):
        format_header("Subject", value)


def test_build_message_refuses_line_breaks_in_values() -> None:
    with pytest.raises(LocalProtocolError):
        build_message(
            [("From", "<sip:a@x>"), ("Subject", "hi\r\nTo: <sip:evil@x>")],
            content_type="text/plain",
            body=b"x",
        )


def test_imdn_route_cannot_carry_an_extra_header() -> None:
    notification = make_notification(
        message_id="m1",
        datetime="2024-01-01T00:00:00Z",
        kind="delivery",
        status="delivered",
        recipient_uri="sip:b@x",
    )
    with pytest.raises(LocalProtocolError):
        build_imdn_message(
            notification, from_="sip:b@x", to="sip:a@x", now=1.7e9, routes=["sip:r@x\r\nX: injected"]
        )
