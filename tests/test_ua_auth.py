"""The user agent answering digest challenges on MESSAGE and on IMDNs (RFC 3261 §22)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from ua_helpers import StackPeer, ua_config

from sipimdn import UserAgent
from sipimdn.auth import Credentials, digest_response, parse_challenges
from sipimdn.errors import AuthenticationFailed
from sipimdn.message import Request

REALM = "sipimdn.test"
CHALLENGE = f'Digest realm="{REALM}", nonce="n0nce", qop="auth", algorithm=SHA-256'


def _valid(request: Request, password: str) -> bool:
    value = request.headers.get("Proxy-Authorization")
    if value is None:
        return False
    (answer,) = parse_challenges(value)
    expected = digest_response(
        algorithm=answer.get("algorithm"),
        username=answer.get("username") or "",
        password=password,
        realm=answer.get("realm") or "",
        nonce=answer.get("nonce") or "",
        method=request.method,
        uri=answer.get("uri") or "",
        qop=answer.get("qop"),
        nc=int(answer.get("nc") or "0", 16),
        cnonce=answer.get("cnonce") or "",
    )
    return answer.get("response") == expected


def _proxy(password: str) -> object:
    def answer(request: Request) -> int | tuple[int, list[tuple[str, str]]]:
        if _valid(request, password):
            return 200
        return 407, [("Proxy-Authenticate", CHALLENGE)]

    return answer


async def test_message_is_retried_with_proxy_authorization() -> None:
    async with StackPeer("proxy", _proxy("s3cret")) as proxy:
        config = ua_config(
            "alice",
            outbound_proxy=proxy.aor,
            credentials=(Credentials("alice", "s3cret", REALM),),
        )
        async with UserAgent(config) as alice:
            handle = await alice.send_message("sip:bob@example.invalid", "hi")
            assert (await asyncio.wait_for(handle.final_response(), 5)).status_code == 200
            first, retry = proxy.requests
            assert "Proxy-Authorization" not in first.headers
            assert retry.call_id == first.call_id
            assert retry.from_.tag == first.from_.tag
            assert retry.cseq.number == first.cseq.number + 1
            assert retry.top_via.branch != first.top_via.branch
            # The next message is authorised up front from the remembered challenge.
            second = await alice.send_message("sip:bob@example.invalid", "again")
            assert (await asyncio.wait_for(second.final_response(), 5)).status_code == 200
            assert len(proxy.requests) == 3
            assert _valid(proxy.requests[2], "s3cret")


async def test_wrong_password_is_tried_once_then_authentication_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with StackPeer("proxy", _proxy("right")) as proxy:
        config = ua_config(
            "alice", outbound_proxy=proxy.aor, credentials=(Credentials("alice", "wrong-pw-417"),)
        )
        async with UserAgent(config) as alice:
            handle = await alice.send_message("sip:bob@example.invalid", "hi")
            with pytest.raises(AuthenticationFailed, match=r"rejected \(final 407\)"):
                await asyncio.wait_for(handle.final_response(), 5)
            assert len(proxy.requests) == 2  # never resend rejected credentials (RFC 3261 §22.2)
            await asyncio.wait_for(handle.await_disposition("failed", timeout=5), 6)
            assert str(handle.state) == "failed"
            # The next message tries once more (the password may have been fixed server-side),
            # again exactly one retry, again the clear failure.
            again = await alice.send_message("sip:bob@example.invalid", "hi")
            with pytest.raises(AuthenticationFailed):
                await asyncio.wait_for(again.final_response(), 5)
            assert len(proxy.requests) <= 4
    assert "wrong-pw-417" not in caplog.text
    assert "authentication failed" in caplog.text


async def test_without_credentials_a_challenge_fails_the_send() -> None:
    async with StackPeer("proxy", _proxy("x")) as proxy:
        alice = UserAgent(ua_config("alice", outbound_proxy=proxy.aor))
        async with alice:
            handle = await alice.send_message("sip:bob@example.invalid", "hi")
            with pytest.raises(AuthenticationFailed, match="no credentials"):
                await asyncio.wait_for(handle.final_response(), 5)
            assert len(proxy.requests) == 1
