"""sipimdn.auth against a real Kamailio: REGISTER and MESSAGE challenged, answered, routed.

The SIP here is raw text sent from tiny sockets (tests/kamailio/rawsip.py), so
these tests prove the digest code and the harness without depending on the
rest of the stack.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from kamailio.harness import Kamailio, kamailio, kamailio_factory  # noqa: F401  (fixtures)
from kamailio.rawsip import RawClient, RawMessage, new_branch, new_tag

from sipimdn.auth import Authenticator, Credentials, parse_challenges
from sipimdn.errors import AuthenticationFailed

pytestmark = pytest.mark.interop

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


@dataclass
class Endpoint:
    """A raw client acting as one user, with the dialog identifiers of its requests."""

    user: str
    client: RawClient
    server: Kamailio
    authenticator: Authenticator
    call_id: str = field(default_factory=lambda: secrets.token_hex(8))
    cseq: int = 0
    tag: str = field(default_factory=new_tag)
    sent: list[bytes] = field(default_factory=list)

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.server.domain}"

    def request(
        self,
        method: str,
        ruri: str,
        *,
        to: str,
        call_id: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> bytes:
        self.cseq += 1
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: {self.client.via(new_branch())}",
            "Max-Forwards: 70",
            f"From: <{self.aor}>;tag={self.tag}",
            f"To: <{to}>",
            f"Call-ID: {call_id}",
            f"CSeq: {self.cseq} {method}",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self.sent.append(data)
        return data

    def transact(
        self,
        method: str,
        ruri: str,
        *,
        to: str,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        call_id: str | None = None,
    ) -> tuple[RawMessage, int]:
        """Send a request, answering 401/407 through sipimdn.auth; return (final, requests sent)."""
        call_id = call_id or self.call_id
        attempt = self.authenticator.start(method, ruri, body)
        sent = 0
        while True:
            headers = list(extra or []) + attempt.headers
            self.client.send(
                self.request(
                    method, ruri, to=to, call_id=call_id, headers=headers, body=body,
                    content_type=content_type,
                )
            )
            sent += 1
            response = self.client.recv_final()
            status = response.status_code
            if status not in (401, 407):
                return response, sent
            header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            # Raises AuthenticationFailed when the request must not be retried.
            attempt.handle_challenge(status, response.get_all(header))

    def register(self, expires: int = 60) -> tuple[RawMessage, int]:
        extra = [("Contact", f"<{self.client.contact_uri(self.user)}>"), ("Expires", str(expires))]
        return self.transact("REGISTER", f"sip:{self.server.domain}", to=self.aor, extra=extra)


@pytest.fixture
def endpoints(kamailio: Kamailio) -> Iterator[Callable[..., Endpoint]]:  # noqa: F811
    opened: list[RawClient] = []

    def make(
        user: str, transport: str = "udp", *, password: str | None = None, server: Kamailio | None = None
    ) -> Endpoint:
        target = server or kamailio
        client = RawClient(
            transport,
            target.address(transport),
            ssl_context=target.client_ssl_context() if transport == "tls" else None,
        )
        opened.append(client)
        creds = Credentials(user, password if password is not None else PASSWORDS[user], realm=target.domain)
        return Endpoint(user, client, target, Authenticator([creds]))

    yield make
    for client in opened:
        client.close()


def test_register_is_challenged_then_accepted(endpoints: Callable[..., Endpoint]) -> None:
    alice = endpoints("alice")
    contact = f"<{alice.client.contact_uri('alice')}>"
    # First by hand, to look at the raw challenge.
    alice.client.send(
        alice.request(
            "REGISTER", f"sip:{alice.server.domain}", to=alice.aor, call_id=alice.call_id,
            headers=[("Contact", contact), ("Expires", "60")],
        )
    )
    challenge = alice.client.recv_final()
    assert challenge.status_code == 401
    (parsed,) = parse_challenges(challenge.get_all("WWW-Authenticate")[0])
    assert parsed.is_digest
    assert parsed.get("realm") == alice.server.domain
    assert parsed.get("qop") == "auth" and parsed.get("nonce")
    final, sent = alice.register(expires=60)
    assert final.status_code == 200 and sent == 2
    contacts = final.get_all("Contact")
    assert any("expires=" in c for c in contacts)
    # The realm is remembered: the refresh goes authenticated up front, no 401.
    refresh, sent = alice.register(expires=60)
    assert refresh.status_code == 200 and sent == 1
    assert b"nc=00000002" in alice.sent[-1]


def test_wrong_password_fails_after_exactly_one_retry(endpoints: Callable[..., Endpoint]) -> None:
    mallory = endpoints("carol", password="not-carols-password")
    with pytest.raises(AuthenticationFailed, match="rejected"):
        mallory.register()
    assert len(mallory.sent) == 2  # the unauthenticated REGISTER and one answer, no loop
    assert b"Authorization: Digest" in mallory.sent[1]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_message_routed_between_two_registered_clients(
    endpoints: Callable[..., Endpoint], transport: str
) -> None:
    alice = endpoints("alice", transport)
    bob = endpoints("bob", transport)
    assert alice.register()[0].status_code == 200
    assert bob.register()[0].status_code == 200

    body = f"hello bob over {transport}".encode()
    bob_aor = f"sip:bob@{alice.server.domain}"
    call_id = "m-" + secrets.token_hex(6)
    attempt = alice.authenticator.start("MESSAGE", bob_aor, body)

    def send_message(headers: list[tuple[str, str]]) -> None:
        # Same Call-ID/From/To each time; Endpoint.request adds CSeq + 1 and a new branch.
        alice.client.send(
            alice.request("MESSAGE", bob_aor, to=bob_aor, call_id=call_id,
                          headers=headers, body=body, content_type="text/plain")
        )

    send_message(attempt.headers)
    # The REGISTER's realm is known, but MESSAGE is challenged by the proxy role (407).
    challenge = alice.client.recv_final()
    assert challenge.status_code == 407
    retry_headers = attempt.handle_challenge(407, challenge.get_all("Proxy-Authenticate"))
    assert any(name == "Proxy-Authorization" for name, _ in retry_headers)
    send_message(retry_headers)

    incoming = bob.client.recv()
    assert incoming.method == "MESSAGE" and incoming.body == body
    assert incoming.get("Proxy-Authorization") is None  # consumed by Kamailio
    answer = _response_to(incoming, 200, "OK")
    bob.client.send(answer, to=getattr(bob.client, "last_peer", None))
    final = alice.client.recv_final()
    assert final.status_code == 200


def test_message_to_unregistered_user_is_404_after_auth(endpoints: Callable[..., Endpoint]) -> None:
    alice = endpoints("alice")
    nobody = f"sip:nobody@{alice.server.domain}"
    final, sent = alice.transact("MESSAGE", nobody, to=nobody, body=b"x", content_type="text/plain",
                                 call_id="n-" + secrets.token_hex(4))
    assert final.status_code == 404 and sent == 2


def test_sha256_challenges_are_answered(kamailio_factory: Callable[..., Kamailio],  # noqa: F811
                                         endpoints: Callable[..., Endpoint]) -> None:
    server = kamailio_factory(algorithm="SHA-256")
    alice = endpoints("alice", server=server)
    final, sent = alice.register()
    assert final.status_code == 200 and sent == 2
    assert b"algorithm=SHA-256" in alice.sent[-1]


def _response_to(request: RawMessage, status: int, reason: str) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.get_all(name):
            tagged = value + f";tag={new_tag()}" if name == "To" and ";tag=" not in value else value
            lines.append(f"{name}: {tagged}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_stale_nonce_is_answered_once_with_the_new_nonce(
    kamailio_factory: Callable[..., Kamailio],  # noqa: F811
    endpoints: Callable[..., Endpoint],
) -> None:
    server = kamailio_factory(nonce_expire=1)
    alice = endpoints("alice", server=server)
    assert alice.register()[0].status_code == 200
    # Kamailio checks nonce age in whole seconds: 2.5 s is safely past nonce_expire=1.
    time.sleep(2.5)
    # The refresh goes out with the cached, now stale, nonce: Kamailio says stale=true.
    attempt = alice.authenticator.start("REGISTER", f"sip:{server.domain}")
    contact = [("Contact", f"<{alice.client.contact_uri('alice')}>"), ("Expires", "60")]
    alice.client.send(alice.request("REGISTER", f"sip:{server.domain}", to=alice.aor,
                                    call_id=alice.call_id, headers=contact + attempt.headers))
    challenge = alice.client.recv_final()
    assert challenge.status_code == 401
    (parsed,) = parse_challenges(challenge.get_all("WWW-Authenticate")[0])
    assert (parsed.get("stale") or "").lower() == "true"
    retry = attempt.handle_challenge(401, challenge.get_all("WWW-Authenticate"))
    alice.client.send(alice.request("REGISTER", f"sip:{server.domain}", to=alice.aor,
                                    call_id=alice.call_id, headers=contact + retry))
    assert alice.client.recv_final().status_code == 200


def test_sha256_message_is_challenged_answered_and_delivered(
    kamailio_factory: Callable[..., Kamailio],  # noqa: F811
    endpoints: Callable[..., Endpoint],
) -> None:
    # (qop=auth-int is unit-tested only: Kamailio 5.6's pv_*_authenticate rejected every
    # auth-int answer we tried, RFC-computed or not, so it cannot arbitrate.)
    server = kamailio_factory(algorithm="SHA-256")
    alice = endpoints("alice", server=server)
    bob = endpoints("bob", server=server)
    assert alice.register()[0].status_code == 200
    assert bob.register()[0].status_code == 200
    bob_aor = f"sip:bob@{server.domain}"

    def answer_when_delivered() -> None:
        incoming = bob.client.recv()
        assert incoming.method == "MESSAGE" and incoming.body == b"sha-256 please"
        bob.client.send(_response_to(incoming, 200, "OK"), to=getattr(bob.client, "last_peer", None))

    with ThreadPoolExecutor(1) as pool:
        delivered = pool.submit(answer_when_delivered)
        final, sent = alice.transact("MESSAGE", bob_aor, to=bob_aor, body=b"sha-256 please",
                                     content_type="text/plain", call_id="ai-" + secrets.token_hex(4))
        delivered.result(timeout=5)
    assert final.status_code == 200 and sent == 2
    assert b"Proxy-Authorization: Digest" in alice.sent[-1] and b"algorithm=SHA-256" in alice.sent[-1]
