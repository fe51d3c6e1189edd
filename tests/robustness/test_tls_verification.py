"""TLS through SipStack: default verification refuses bad certificates; TLS 1.2 minimum; mutual TLS.

Every case sends a real MESSAGE over a TLS connection on 127.0.0.1 and checks both sides: the
client gets ``TransportError`` and the server's handler never sees the request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
import trustme
from _peers import skip_unless_ci
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from robust_helpers import Pki, Recorder, listen, message_to, port_of, running

from sipimdn.errors import TransportError
from sipimdn.stack import SipStack
from sipimdn.transport.base import ListenSpec, TransportConfig
from sipimdn.transport.flow import Transport
from sipimdn.transport.select import Target

TLS_PARAMS = ";transport=tls"
# TLS 1.0/1.1 are deprecated in the ssl module; these tests use them on purpose, as the attacker.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")


def self_signed_context(tmp_path: Path, host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server context whose certificate signs itself (no CA anyone trusts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "self.pem", tmp_path / "self.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def server_with(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


async def refused(server_context: ssl.SSLContext, client: TransportConfig | None = None,
                  server_name: str | None = None) -> TransportError:
    """Send one MESSAGE over TLS; it must fail on the client and never reach the server's handler."""
    a = SipStack(listen(Transport.UDP), transport_config=client or TransportConfig())
    b = SipStack([ListenSpec(Transport.TLS, "127.0.0.1", 0, server_context)])
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(10), running(a, b):
        port = port_of(b, Transport.TLS)
        target = Target(Transport.TLS, "127.0.0.1", port, server_name)
        with pytest.raises(TransportError) as info:
            await a.send_request(message_to("127.0.0.1", port, params=TLS_PARAMS), target=target)
        await asyncio.sleep(0.05)
        assert recorder.seen == []
        return info.value


async def accepted(server_context: ssl.SSLContext, client: TransportConfig,
                   server_name: str | None = None) -> None:
    a = SipStack(listen(Transport.UDP), transport_config=client)
    b = SipStack([ListenSpec(Transport.TLS, "127.0.0.1", 0, server_context)])
    recorder = Recorder()
    b.on_request(recorder)
    async with asyncio.timeout(10), running(a, b):
        port = port_of(b, Transport.TLS)
        target = Target(Transport.TLS, "127.0.0.1", port, server_name)
        response = await a.send_request(message_to("127.0.0.1", port, params=TLS_PARAMS), target=target)
        assert response.status_code == 200
        assert recorder.seen[0].flow.transport is Transport.TLS


async def test_control_a_good_certificate_is_accepted(pki: Pki) -> None:
    """The refusals below are caused by the certificate, not by the harness."""
    await accepted(pki.server, TransportConfig(client_ssl_context=pki.client))


async def test_default_context_refuses_self_signed(tmp_path: Path) -> None:
    error = await refused(self_signed_context(tmp_path))  # default client context: system trust
    assert "certificate" in str(error)


async def test_default_context_refuses_a_certificate_from_an_unknown_ca(pki: Pki) -> None:
    error = await refused(pki.server)
    assert "certificate verify failed" in str(error)


async def test_trusting_the_ca_still_refuses_an_expired_certificate(pki: Pki) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = pki.ca.issue_cert("127.0.0.1", not_before=past - dt.timedelta(days=30), not_after=past)
    error = await refused(server_with(expired), TransportConfig(client_ssl_context=pki.client))
    assert "expired" in str(error)


async def test_trusting_the_ca_still_refuses_a_wrong_host(pki: Pki) -> None:
    other = pki.ca.issue_cert("other.example.test")
    error = await refused(server_with(other), TransportConfig(client_ssl_context=pki.client))
    assert "mismatch" in str(error) or "doesn't match" in str(error) or "IP address" in str(error)
    # ... and asking for a name the certificate does not hold, through Target.server_name, too.
    error = await refused(pki.server, TransportConfig(client_ssl_context=pki.client),
                          server_name="wrong.example.test")
    assert "wrong.example.test" in str(error) or "mismatch" in str(error)


def tls11_only_client(pki: Pki) -> ssl.SSLContext:
    """A client able to speak TLS 1.1 and nothing newer (OpenSSL 3 needs SECLEVEL 0 for it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    pki.ca.configure_trust(context)
    return context


async def _raw_handshake(port: int, context: ssl.SSLContext) -> str | None:
    """Handshake directly; returns the negotiated version or None if refused."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    except (ssl.SSLError, ConnectionError):
        return None
    ssl_object = writer.get_extra_info("ssl_object")
    version = ssl_object.version() if ssl_object is not None else None
    writer.close()
    return version


async def test_tls11_client_is_refused_by_a_default_server_context(pki: Pki) -> None:
    client = tls11_only_client(pki)
    # Control: the client really can do TLS 1.1, against a plain asyncio server that allows it.
    permissive = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    pki.ca.issue_cert("127.0.0.1").configure_cert(permissive)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    async with server, asyncio.timeout(10):
        control = await _raw_handshake(server.sockets[0].getsockname()[1], client)
    if control != "TLSv1.1":
        skip_unless_ci(f"this OpenSSL build cannot negotiate TLS 1.1 at all (got {control})")
    # The stack's TLS listener with the usual server context refuses it ...
    async with asyncio.timeout(10), SipStack([ListenSpec(Transport.TLS, "127.0.0.1", 0, pki.server)]) as s:
        assert await _raw_handshake(port_of(s, Transport.TLS), client) is None
        # ... and a TLS 1.2 client is fine on the same listener.
        assert await _raw_handshake(port_of(s, Transport.TLS), pki.client) in ("TLSv1.2", "TLSv1.3")
    # As a client, the stack does not speak to a server limited to TLS 1.1.
    old_only = permissive_server_tls11_only(pki)
    old_server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=old_only)
    config = TransportConfig(client_ssl_context=pki.client)
    async with old_server, asyncio.timeout(10), SipStack(listen(Transport.UDP), transport_config=config) as a:
        port = old_server.sockets[0].getsockname()[1]
        with pytest.raises(TransportError):
            await a.send_request(message_to("127.0.0.1", port, params=TLS_PARAMS),
                                 target=Target(Transport.TLS, "127.0.0.1", port, None))


def permissive_server_tls11_only(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    pki.ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_stack_enforces_tls12_even_with_a_permissive_context(pki: Pki) -> None:
    permissive = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    pki.ca.issue_cert("127.0.0.1").configure_cert(permissive)
    spec = ListenSpec(Transport.TLS, "127.0.0.1", 0, permissive)
    async with asyncio.timeout(10), SipStack([spec]) as s:
        assert await _raw_handshake(port_of(s, Transport.TLS), tls11_only_client(pki)) is None


async def test_mutual_tls(pki: Pki) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(server)
    with_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    pki.ca.configure_trust(with_cert)
    pki.ca.issue_cert("alice@example.com", "alice.example.test").configure_cert(with_cert)
    await accepted(server, TransportConfig(client_ssl_context=with_cert))
    # Without a client certificate, or with one from another CA, the server refuses.
    await refused(server, TransportConfig(client_ssl_context=pki.client))
    stranger = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    pki.ca.configure_trust(stranger)
    trustme.CA().issue_cert("mallory.example.test").configure_cert(stranger)
    await refused(server, TransportConfig(client_ssl_context=stranger))
