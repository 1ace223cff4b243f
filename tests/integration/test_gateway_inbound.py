"""The gateway's TLS port over real loopback sockets: passthrough, termination, refusals.

A gateway of cluster ``east`` (federation ``atoll.lab``) serves two exported
services: ``demo/secure`` (passthrough to a TLS backend with its own SVID) and
``demo/echo`` (terminated, PROXY v2 to the demo server). Peers are clients of
``west``, of a foreign domain ``evil.example`` whose bundle the gateway knows
but whose IDs no policy allows, and a forger.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from atoll_gateway.clienthello import ALERTS
from atoll_gateway.config import GatewayConfig, RouteConfig
from atoll_gateway.demo import DemoServer
from atoll_gateway.identity import StaticSource
from atoll_gateway.node import GatewayNode
from atoll_gateway.testing import StaticCatalog, TestPki, catalog_of
from atoll_trust.clock import system_clock
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.tls import build_client_context, build_server_context, verify_peer
from tests.gatewaykit import handshake_failures, metric_value, refused_connections

HOST = "127.0.90.1"
EAST, WEST, EVIL = "east.atoll.lab", "west.atoll.lab", "evil.example"
PKI = TestPki(EAST, WEST, EVIL)
BACKEND_ID = TrustDomain(EAST).spiffe_id("demo", "secure")
GATEWAY_ID = TrustDomain(EAST).spiffe_id("atoll", "gateway")


@dataclass
class Env:
    node: GatewayNode
    port: int
    backend_peers: list[str]


async def _tls_backend() -> tuple[asyncio.Server, list[str]]:
    peers: list[str] = []
    ctx = build_server_context(PKI.svid(EAST, "demo/secure"), PKI.bundles(EAST, WEST))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = verify_peer(
                writer.get_extra_info("ssl_object"), PKI.bundles(), now=system_clock()
            )
            peers.append(str(peer.spiffe_id))
            await reader.readline()
            writer.write(f"hello {peer.spiffe_id}\n".encode())
            await writer.drain()
        except (SvidVerificationError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, HOST, 0, ssl=ctx), peers


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    backend, peers = await _tls_backend()
    demo = DemoServer(cluster="east", service="demo/echo")
    (demo_addr,) = await demo.start([(HOST, 0)])
    config = GatewayConfig(
        cluster="east",
        listen=f"{HOST}:0",
        services={
            "demo/echo": RouteConfig(mode="terminate", proxy_protocol=True),
            "demo/reorigin": RouteConfig(mode="terminate", upstream_tls=True),
        },
        hello_timeout=0.5,
        max_client_hello=4096,
    )
    node = GatewayNode(
        config,
        catalog=StaticCatalog(),
        source=StaticSource(PKI.context(EAST, "atoll/gateway")),
    )
    node.set_catalog(
        catalog_of(
            {
                "demo/secure": (8443, [(HOST, backend.sockets[0].getsockname()[1])]),
                "demo/echo": (8080, [demo_addr]),
                "demo/reorigin": (8443, [(HOST, backend.sockets[0].getsockname()[1])]),
            }
        )
    )
    node.start_listeners()
    try:
        yield Env(node, node.inbound_address[1], peers)
    finally:
        await node.drain(1.0)
        backend.close()
        for srv in demo.servers:
            srv.close()


async def tls_call(
    port: int,
    svid: X509Svid,
    sni: str,
    expected: SpiffeId,
    request: bytes,
    *,
    server_domain: str = EAST,
) -> bytes:
    bundle = PKI.bundles().get(TrustDomain(server_domain))
    assert bundle is not None
    ctx = build_client_context(svid, bundle)
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=sni)
    try:
        verify_peer(writer.get_extra_info("ssl_object"), PKI.bundles(), now=system_clock(),
                    expected=expected)  # fmt: skip
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_passthrough_keeps_end_to_end_identity(env: Env) -> None:
    client = PKI.svid(WEST, "demo/client")
    # the certificate the client verifies is the backend's, not the gateway's
    out = await tls_call(env.port, client, "secure.demo.svc.atoll.test", BACKEND_ID, b"hi\n")
    assert out == b"hello spiffe://west.atoll.lab/demo/client\n"
    assert env.backend_peers == ["spiffe://west.atoll.lab/demo/client"]
    # the pinned-cluster form and an explicit port route the same way
    out = await tls_call(
        env.port, client, "8443.secure.demo.svc.east.atoll.test", BACKEND_ID, b"hi\n"
    )
    assert out.startswith(b"hello ")


async def test_termination_forwards_the_verified_peer_id(env: Env) -> None:
    peer = PKI.svid(WEST, "atoll/gateway")
    out = await tls_call(
        env.port, peer, "echo.demo.svc.east.atoll.test", GATEWAY_ID, b"GET / HTTP/1.1\r\n\r\n"
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    doc = json.loads(body)
    assert doc["peer_spiffe_id"] == "spiffe://west.atoll.lab/atoll/gateway"
    assert doc["sni"] == "echo.demo.svc.east.atoll.test"


async def test_termination_can_re_originate_mtls_to_the_endpoint(env: Env) -> None:
    """upstream_tls: the peer talks to the gateway; the endpoint sees the gateway's SVID."""
    peer = PKI.svid(WEST, "atoll/gateway")
    out = await tls_call(env.port, peer, "reorigin.demo.svc.east.atoll.test", GATEWAY_ID, b"hi\n")
    assert out == f"hello {GATEWAY_ID}\n".encode()
    assert env.backend_peers == [str(GATEWAY_ID)]
    full_client_handshakes = metric_value(
        "atoll_gateway_tls_handshakes_total", listener="inbound", role="client", resumed="false"
    )
    assert full_client_handshakes >= 1  # counted as a client handshake of the inbound side


async def test_peer_of_a_disallowed_trust_domain_is_refused(env: Env) -> None:
    before = handshake_failures("forbidden")
    out = b""
    with pytest.raises((ConnectionError, ssl.SSLError)):
        out = await tls_call(env.port, PKI.svid(EVIL, "x"), "echo.demo.svc.atoll.test",
                             GATEWAY_ID, b"GET / HTTP/1.1\r\n\r\n")  # fmt: skip
        if out == b"":
            raise ConnectionResetError("closed without data")
    after = handshake_failures("forbidden")
    assert after == before + 1


async def test_forged_cert_is_refused(env: Env) -> None:
    """West's ID signed by evil.example's CA: OpenSSL's pooled roots accept the chain,
    the per-domain SPIFFE check does not."""
    forged = PKI.forged(WEST, "atoll/gateway", signer=EVIL)
    before = handshake_failures("unauthenticated")
    with pytest.raises((ConnectionError, ssl.SSLError, AssertionError)):
        out = await tls_call(env.port, forged, "echo.demo.svc.atoll.test", GATEWAY_ID,
                             b"GET / HTTP/1.1\r\n\r\n")  # fmt: skip
        assert out != b"", "closed without data"
    assert handshake_failures("unauthenticated") == before + 1


async def test_unknown_sni_gets_an_unrecognized_name_alert(env: Env) -> None:
    before = metric_value("atoll_gateway_route_failures_total", reason="unknown_service")
    with pytest.raises(ssl.SSLError) as err:
        await tls_call(env.port, PKI.svid(WEST, "c"), "nope.demo.svc.atoll.test", BACKEND_ID, b"")
    assert "UNRECOGNIZED_NAME" in str(err.value).upper().replace(" ", "_")
    assert (
        metric_value("atoll_gateway_route_failures_total", reason="unknown_service") == before + 1
    )


async def _raw(port: int, data: bytes, *, close: bool = True, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


async def test_garbage_is_closed_counted_and_the_gateway_keeps_serving(env: Env) -> None:
    before = {
        r: handshake_failures(r)
        for r in ("not_tls", "truncated", "oversized", "timeout", "malformed")
    }
    assert await _raw(env.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert await _raw(env.port, b"\x16\x03\x01\x02\x00\x01\x00\x01") == b""  # truncated
    assert await _raw(env.port, b"\x16\x03\x01\x40\x00" + b"\x01" + b"\x00" * 5000) == b""
    assert await _raw(env.port, b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == b""  # not a hello
    # a slow sender: half a header, then silence until the hello timeout closes it
    assert await _raw(env.port, b"\x16\x03", close=False) == b""
    assert handshake_failures("not_tls") == before["not_tls"] + 1
    assert handshake_failures("truncated") == before["truncated"] + 1
    assert handshake_failures("oversized") == before["oversized"] + 1
    assert handshake_failures("malformed") == before["malformed"] + 1
    assert handshake_failures("timeout") == before["timeout"] + 1
    out = await tls_call(
        env.port, PKI.svid(WEST, "c"), "secure.demo.svc.atoll.test", BACKEND_ID, b"x\n"
    )
    assert out.startswith(b"hello ")


async def test_connection_limit_refuses_clearly(env: Env) -> None:
    env.node.apply_config(env.node.config.model_copy(update={"max_connections": 1}))
    idle = socket.create_connection((HOST, env.port))  # holds the only slot (a slow hello)
    try:
        await asyncio.sleep(0.1)
        before = refused_connections()
        out = await _raw(env.port, b"", close=False)
        assert out == bytes((21, 3, 3, 0, 2, 2, ALERTS["internal_error"]))
        after = refused_connections()
        assert after == before + 1
    finally:
        idle.close()


async def test_passthrough_with_the_copy_relay(env: Env) -> None:
    env.node.runtime.splice = False
    out = await tls_call(
        env.port, PKI.svid(WEST, "demo/client"), "secure.demo.svc.atoll.test", BACKEND_ID, b"hi\n"
    )
    assert out == b"hello spiffe://west.atoll.lab/demo/client\n"


async def test_an_idle_connection_is_closed_after_the_configured_timeout(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """idle_timeout from the config reaches the relay: silence ends the connection."""
    rt = env.node.runtime
    rt.config = rt.config.model_copy(update={"idle_timeout": 0.4})
    bundle = PKI.bundles().get(TrustDomain(EAST))
    assert bundle is not None
    ctx = build_client_context(PKI.svid(WEST, "atoll/gateway"), bundle)
    caplog.set_level("INFO", logger="atoll.gateway.access")
    reader, writer = await asyncio.open_connection(
        HOST, env.port, ssl=ctx, server_hostname="echo.demo.svc.east.atoll.test"
    )
    try:
        # connected and relayed, then nothing either way: the gateway hangs up
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    records = [r for r in caplog.records if getattr(r, "outcome", None) == "idle_timeout"]
    assert records and getattr(records[0], "service", None) == "demo/echo:8080"
