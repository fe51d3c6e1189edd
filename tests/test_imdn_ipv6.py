"""IMDN documents naming recipients on IPv6 literals (RFC 3261 §25.1, RFC 3986 §3.2.2).

libxml2's xs:anyURI follows RFC 2396, which has no IPv6 literals; the shipped
schema therefore types the recipient URIs itself. Found by the UA's IPv6 test.
"""

from __future__ import annotations

import pytest

from sipimdn.errors import ImdnError, LocalProtocolError
from sipimdn.imdn import build_notification, parse_notification


@pytest.mark.parametrize(
    "uri",
    ["sip:bob@[::1]:5060", "sips:bob@[2001:db8::7]", "sip:bob@[::ffff:127.0.0.1]:48801;transport=tcp"],
)
def test_ipv6_recipient_builds_and_parses_back(uri: str) -> None:
    xml = build_notification(
        message_id="m1",
        datetime="2024-01-01T00:00:00Z",
        kind="delivery",
        status="delivered",
        recipient_uri=uri,
    )
    parsed = parse_notification(xml)
    assert parsed.recipient_uri == uri
    assert parsed.original_recipient_uri == uri
    assert parsed.status == "delivered"


@pytest.mark.parametrize("bad", ["no-scheme-here", "sip:bob @example.com", ":nothing", "im:%zz"])
def test_recipient_uri_must_still_look_like_a_uri(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        build_notification(
            message_id="m1",
            datetime="2024-01-01T00:00:00Z",
            kind="delivery",
            status="delivered",
            recipient_uri=bad,
        )
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>m1</message-id>'
        "<datetime>2024-01-01T00:00:00Z</datetime>"
        f"<recipient-uri>{bad}</recipient-uri><original-recipient-uri>{bad}</original-recipient-uri>"
        "<delivery-notification><status><delivered/></status></delivery-notification></imdn>"
    ).encode()
    with pytest.raises(ImdnError):
        parse_notification(doc)
