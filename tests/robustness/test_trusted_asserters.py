"""P-Asserted-Identity over real sockets (RFC 3325 §4, §9.1; RFC 5438 §7, §14).

alice (a UserAgent) sends to "bob", a bare SipStack; IMDNs about that message then reach alice
from a SipStack on 127.0.0.1, which plays the network's proxy when alice trusts that address
(``trusted_asserters``): the identity it asserts is then the notification's sender, and the
SIP/CPIM From claims count for nothing. Without trust (the default, or another address trusted)
the header is ignored and the From claims decide, as they always did. On the receiving side,
bob (a UserAgent) shows the asserted identity of an IM on ``IncomingMessage``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from robust_helpers import settle
from test_forgery import Peer, Scene, bob_agent, im, imdn_cpim, peer, scene

from sipimdn import cpim, imdn
from sipimdn.dialog.factory import build_request
from sipimdn.events import DispositionState, NotificationRejected

S = DispositionState
ANONYMOUS = "sip:anonymous@anonymous.invalid"


async def send(sender: Peer, to: str, message: cpim.CpimMessage, *, sip_from: str,
               headers: Iterable[tuple[str, str]] = ()) -> int:
    request = build_request("MESSAGE", to, f"<{sip_from}>", f"<{to}>", headers=headers,
                            body=message.to_bytes(), content_type="message/cpim")
    return (await sender.stack.send_request(request)).status_code


async def report(s: Scene, *, sent_by: Peer, claims: str, asserted: str | None) -> None:
    """A delivered IMDN about alice's message whose SIP and CPIM From say ``claims`` and whose
    P-Asserted-Identity (if any) says ``asserted``; always answered 200 (no oracle)."""
    note = imdn_cpim(cpim_from=claims, to=s.alice.aor, message_id=s.message_id, recipient_uri=s.bob.uri)
    headers = [("P-Asserted-Identity", f"<{asserted}>")] if asserted else []
    assert await send(sent_by, s.alice.aor, note, sip_from=claims, headers=headers) == 200


async def test_a_trusted_assertion_of_the_recipient_is_accepted() -> None:
    """The proxy on 127.0.0.1 asserts bob: accepted though both From headers are anonymous,
    which alone prove nothing (the control below)."""
    async with scene(trusted_asserters=("127.0.0.1",)) as s:
        await report(s, sent_by=s.mallory, claims=ANONYMOUS, asserted=None)
        await s.rejected("not-a-recipient")
        await report(s, sent_by=s.mallory, claims=ANONYMOUS, asserted=s.bob.uri)
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


async def test_a_forged_from_with_a_third_party_assertion_is_rejected() -> None:
    """mallory writes bob into SIP From and CPIM From, but the proxy asserts mallory: rejected,
    and the event says a trusted asserted identity was the sender."""
    async with scene(trusted_asserters=("127.0.0.0/8",)) as s:
        await report(s, sent_by=s.mallory, claims=s.bob.uri, asserted=s.mallory.uri)
        await s.rejected("not-a-recipient")
        rejected = s.events.of(NotificationRejected)
        assert [e.sender for e in rejected] == [s.mallory.uri]  # type: ignore[attr-defined]
        assert "asserted by a trusted proxy" in rejected[0].detail  # type: ignore[attr-defined]
        # bob's own notification, asserted as bob, goes through.
        await report(s, sent_by=s.bob, claims=s.bob.uri, asserted=s.bob.uri)
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


@pytest.mark.parametrize("trusted", [(), ("192.0.2.1", "10.0.0.0/8")], ids=["nobody", "other-hosts"])
async def test_an_untrusted_assertion_is_ignored(trusted: tuple[str, ...]) -> None:
    """RFC 3325 §9.1: from a source outside the trust domain the header means nothing. A forged
    From naming bob still passes the From rule (what it was before P-Asserted-Identity), and an
    assertion of bob does not rescue an anonymous From."""
    async with scene(trusted_asserters=trusted) as s:
        await report(s, sent_by=s.mallory, claims=ANONYMOUS, asserted=s.bob.uri)
        await s.rejected("not-a-recipient")
        await report(s, sent_by=s.mallory, claims=s.bob.uri, asserted=s.mallory.uri)
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


async def test_a_malformed_assertion_from_a_trusted_source_is_no_assertion() -> None:
    """Two sip URIs break RFC 3325 §9.1: the IMDN is answered 200 as always and judged by its
    From, as if the header were absent."""
    async with scene(trusted_asserters=("127.0.0.1",)) as s:
        note = imdn_cpim(cpim_from=s.bob.uri, to=s.alice.aor, message_id=s.message_id,
                         recipient_uri=s.bob.uri)
        malformed = [("P-Asserted-Identity", f"<{s.mallory.uri}>, <sip:carol@example.org>")]
        assert await send(s.mallory, s.alice.aor, note, sip_from=s.bob.uri, headers=malformed) == 200
        assert await s.handle.await_disposition("delivered", timeout=3) is S.DELIVERED


# -- receiving an IM ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "privacy", "expected", "withheld"),
    [
        (("127.0.0.1",), None, "sip:bob.real@ims.example.com", False),
        (("127.0.0.1",), "id", "sip:bob.real@ims.example.com", True),
        (("localhost",), None, "sip:bob.real@ims.example.com", False),  # resolved at start
        ((), None, None, False),
        (("192.0.2.1",), "id", None, False),
        (("proxy.invalid",), None, None, False),  # does not resolve: trusts nothing
    ],
    ids=["trusted", "trusted-private", "by-name", "untrusted", "other-host", "unresolved-name"],
)
async def test_an_im_shows_who_the_proxy_says_sent_it(
    trusted: tuple[str, ...], privacy: str | None, expected: str | None, withheld: bool
) -> None:
    async with peer("mallory") as mallory, bob_agent(trusted_asserters=trusted) as inbox:
        headers = [("P-Asserted-Identity", '"Bob" <sip:bob.real@ims.example.com>, <tel:+12025550123>')]
        if privacy is not None:
            headers.append(("Privacy", privacy))
        message = im(mallory, inbox.bob.aor, notify="positive-delivery")
        assert await send(mallory, inbox.bob.aor, message, sip_from=mallory.uri, headers=headers) == 200
        assert await settle(lambda: len(inbox.received) == 1, 3)
        got = inbox.received[0]
        assert got.sender == mallory.uri  # what the sender wrote stays as written
        assert got.asserted_identity == expected
        assert got.asserted_identities == (() if expected is None else (expected, "tel:+12025550123"))
        assert got.identity_withheld is withheld


async def test_an_im_with_a_malformed_assertion_is_received_normally() -> None:
    async with peer("mallory") as mallory, bob_agent(trusted_asserters=("127.0.0.1",)) as inbox:
        headers = [("P-Asserted-Identity", "<http://example.com/bob>")]
        message = im(mallory, inbox.bob.aor)
        assert await send(mallory, inbox.bob.aor, message, sip_from=mallory.uri, headers=headers) == 200
        assert await settle(lambda: len(inbox.received) == 1, 3)
        assert inbox.received[0].asserted_identity is None
        # Its delivery notification still goes back as for any message.
        assert await settle(lambda: any(imdn.is_imdn(m) for m in mallory.cpim_messages()), 3)
