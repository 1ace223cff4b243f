"""mTLS with SVIDs over real loopback sockets (asyncio) and gRPC: per-domain verification.

OpenSSL sees a pooled set of roots on the server; these tests show it lets a
cert for domain A signed by domain B's CA through the handshake, and that the
post-handshake SPIFFE check rejects it before any application data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from atoll_trust.bundle import BundleSet
from atoll_trust.ca import X509Authority, mint_x509_svid
from atoll_trust.clock import system_clock
from atoll_trust.errors import SvidVerificationError
from atoll_trust.jose import generate_private_key
from atoll_trust.rotation import RotationPolicy, bootstrap_ca_state
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.testing import build_certificate
from atoll_trust.tls import (
    build_client_context,
    build_server_context,
    pooled_roots_pem,
    verify_grpc_peer,
    verify_peer,
)

HOST = "127.0.40.1"
A, B = TrustDomain("a.atoll"), TrustDomain("b.atoll")
H = dt.timedelta(hours=1)
NOW = system_clock()
STATE_A = bootstrap_ca_state(A, now=NOW - H, policy=RotationPolicy())
STATE_B = bootstrap_ca_state(B, now=NOW - H, policy=RotationPolicy())
CA_A, CA_B = STATE_A.active_x509, STATE_B.active_x509
BUNDLES = BundleSet([STATE_A.bundle(), STATE_B.bundle()])
SERVER = mint_x509_svid(CA_A, A.spiffe_id("gateway"), now=NOW, ttl=H, dns_names=["gw.a.atoll"])


def _forged_a_svid_signed_by_b() -> X509Svid:
    key = generate_private_key()
    cert = build_certificate(
        CA_B,
        uris=["spiffe://a.atoll/admin"],
        not_before=NOW - H,
        not_after=NOW + H,
        public_key=key.public_key(),
    )
    return X509Svid(A.spiffe_id("admin"), (cert,), key)


@dataclass
class Server:
    port: int
    accepted: list[str]
    rejected: list[str]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    accepted: list[str] = []
    rejected: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = verify_peer(writer.get_extra_info("ssl_object"), BUNDLES, now=system_clock())
        except SvidVerificationError as exc:
            rejected.append(str(exc))
            writer.close()
            return
        accepted.append(str(peer.spiffe_id))
        writer.write(f"hello {peer.spiffe_id}\n".encode())
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, HOST, 0, ssl=build_server_context(SERVER, BUNDLES))
    port = srv.sockets[0].getsockname()[1]
    yield Server(port, accepted, rejected)
    srv.close()
    await srv.wait_closed()


async def _talk(port: int, client: X509Svid, server_bundle_domain: TrustDomain = A) -> bytes:
    bundle = BUNDLES.get(server_bundle_domain)
    assert bundle is not None
    ctx = build_client_context(client, bundle)
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx)
    server_peer = verify_peer(
        writer.get_extra_info("ssl_object"), BUNDLES, now=system_clock(), expected=SERVER.spiffe_id
    )
    assert server_peer.spiffe_id == SERVER.spiffe_id
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_own_and_federated_clients_are_accepted(server: Server) -> None:
    own = mint_x509_svid(CA_A, A.spiffe_id("web"), now=NOW, ttl=H)
    federated = mint_x509_svid(CA_B, B.spiffe_id("api"), now=NOW, ttl=H)
    assert await _talk(server.port, own) == b"hello spiffe://a.atoll/web\n"
    assert await _talk(server.port, federated) == b"hello spiffe://b.atoll/api\n"


async def test_cross_signed_cert_passes_openssl_but_not_the_spiffe_check(server: Server) -> None:
    data = await _talk(server.port, _forged_a_svid_signed_by_b())
    assert data == b""
    assert server.accepted == []
    assert len(server.rejected) == 1
    assert "does not verify against the bundle of a.atoll" in server.rejected[0]


async def test_untrusted_domain_fails_the_handshake(server: Server) -> None:
    other = bootstrap_ca_state(TrustDomain("c.atoll"), now=NOW - H, policy=RotationPolicy())
    stranger = mint_x509_svid(
        other.active_x509, TrustDomain("c.atoll").spiffe_id("x"), now=NOW, ttl=H
    )
    try:
        data = await _talk(server.port, stranger)
    except (ssl.SSLError, ConnectionError):
        data = b""
    # TLS 1.3: the client may finish its side before the server's alert arrives;
    # either way no byte of application data flows and the handler never runs.
    assert data == b""
    assert server.accepted == [] and server.rejected == []


async def test_client_rejects_a_server_with_the_wrong_identity(server: Server) -> None:
    ctx = build_client_context(
        mint_x509_svid(CA_A, A.spiffe_id("web"), now=NOW, ttl=H), STATE_A.bundle()
    )
    _, writer = await asyncio.open_connection(HOST, server.port, ssl=ctx)
    with pytest.raises(SvidVerificationError, match=r"expected spiffe://a\.atoll/db"):
        verify_peer(
            writer.get_extra_info("ssl_object"),
            BUNDLES,
            now=system_clock(),
            expected=A.spiffe_id("db"),
        )
    with pytest.raises(SvidVerificationError, match="not authorized"):
        verify_peer(
            writer.get_extra_info("ssl_object"),
            BUNDLES,
            now=system_clock(),
            authorize=lambda _: False,
        )
    writer.close()


async def test_grpc_mtls_with_per_domain_check() -> None:
    seen: list[str] = []

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        try:
            peer = verify_grpc_peer(context.auth_context(), BUNDLES, now=system_clock())
        except SvidVerificationError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise
        seen.append(str(peer.spiffe_id))
        return str(peer.spiffe_id).encode()

    handler = grpc.method_handlers_generic_handler(
        "t.T", {"M": grpc.unary_unary_rpc_method_handler(unary)}
    )
    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(SERVER.private_key_pem(), SERVER.chain_pem())],
        root_certificates=pooled_roots_pem(BUNDLES),
        require_client_auth=True,
    )
    port = srv.add_secure_port(f"{HOST}:0", creds)
    await srv.start()
    try:

        async def call(client: X509Svid) -> bytes:
            ccreds = grpc.ssl_channel_credentials(
                root_certificates=pooled_roots_pem([STATE_A.bundle()]),
                private_key=client.private_key_pem(),
                certificate_chain=client.chain_pem(),
            )
            options = [("grpc.ssl_target_name_override", "gw.a.atoll")]
            async with grpc.aio.secure_channel(f"{HOST}:{port}", ccreds, options=options) as ch:
                method = ch.unary_unary(
                    "/t.T/M",
                    request_serializer=bytes,
                    response_deserializer=bytes,
                )
                result: bytes = await method(b"x", timeout=10)
                return result

        agent = mint_x509_svid(CA_A, A.spiffe_id("cluster", "eu"), now=NOW, ttl=H)
        assert await call(agent) == b"spiffe://a.atoll/cluster/eu"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(_forged_a_svid_signed_by_b())
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert seen == ["spiffe://a.atoll/cluster/eu"]
    finally:
        await srv.stop(0)


def test_verify_grpc_peer_without_certificate() -> None:
    with pytest.raises(SvidVerificationError, match="no certificate"):
        verify_grpc_peer({}, BUNDLES, now=NOW)
    with pytest.raises(SvidVerificationError, match="malformed"):
        verify_grpc_peer(
            {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n"]},
            BUNDLES,
            now=NOW,
        )
    _ = X509Authority
