"""The relays on real loopback sockets: TLS both ways, half-close, back-pressure, idleness.

The chain of the cross-cluster path is rebuilt without the rest of the
gateway: a plain client → :class:`CopyRelay` (plain ⇄ TLS, like an egress) →
TLS over TCP → :class:`CopyRelay` (TLS ⇄ plain, like a terminating gateway) →
a plain server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.aio import cancel_and_wait, spawn
from atoll_gateway.balancer import Endpoint
from atoll_gateway.relay import (
    _TCP_NOTSENT_LOWAT,
    BUFFER_SIZE,
    BULK_SIZE,
    NOTSENT_LOWAT,
    CopyRelay,
    SpliceRelay,
    _CopyPump,
)
from atoll_gateway.relaywatch import RelayWatch
from atoll_gateway.tlsio import accept_tls, connect_socket, connect_tls
from tests.gatewaykit import (
    RELAY_SERVER_NAME,
    close_with_reset,
    connected_pair,
    read_to_eof,
    relay_contexts,
    send_all,
)
from tests.polling import eventually

HOST = "127.0.93.1"


async def _tls_pair() -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Server and client ends of a TLS connection, handshake done."""
    server_ctx, client_ctx = relay_contexts()
    loop = asyncio.get_running_loop()
    lst = socket.create_server((HOST, 0))
    lst.setblocking(False)
    try:
        port = lst.getsockname()[1]
        connecting = spawn(
            connect_tls(Endpoint(HOST, port), client_ctx, RELAY_SERVER_NAME), name="connect"
        )
        accepted, _ = await loop.sock_accept(lst)
        accepted.setblocking(False)
        server = await accept_tls(accepted, server_ctx)
        return server, await connecting
    finally:
        lst.close()


@dataclass
class Chain:
    app_client: socket.socket  # the workload's side of the egress connection
    app_server: socket.socket  # the endpoint's side of the gateway's connection
    egress: CopyRelay
    gateway: CopyRelay
    runs: list[asyncio.Task[tuple[int, int]]]


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    app_client, egress_in = await connected_pair(HOST)
    gateway_tls, egress_tls = await _tls_pair()
    gateway_out, app_server = await connected_pair(HOST)
    egress = CopyRelay(egress_in, egress_tls)
    gateway = CopyRelay(gateway_tls, gateway_out)
    runs = [spawn(egress.run(), name="egress"), spawn(gateway.run(), name="gateway")]
    yield Chain(app_client, app_server, egress, gateway, runs)
    await cancel_and_wait(*runs)
    app_client.close()
    app_server.close()


async def test_bytes_cross_two_tls_relays_and_half_close_travels_through_tls(
    chain: Chain,
) -> None:
    request, response = os.urandom(3 << 20), os.urandom(5 << 20)
    # the client sends everything and half-closes; the server sees EOF *through TLS*
    await send_all(chain.app_client, request)
    chain.app_client.shutdown(socket.SHUT_WR)
    got = await asyncio.wait_for(read_to_eof(chain.app_server), 30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(request).digest()
    # ... and can still answer on the other direction, then close
    await send_all(chain.app_server, response)
    chain.app_server.shutdown(socket.SHUT_WR)
    back = await asyncio.wait_for(read_to_eof(chain.app_client), 30)
    assert hashlib.sha256(back).digest() == hashlib.sha256(response).digest()
    totals = await asyncio.wait_for(asyncio.gather(*chain.runs), 10)
    assert totals == [(len(request), len(response)), (len(request), len(response))]
    assert chain.egress.error is None and chain.gateway.error is None


async def test_a_receiver_that_stops_reading_stops_the_sender(chain: Chain) -> None:
    """Back-pressure: the relays buffer one chunk each, so the sender's socket fills."""
    block = b"x" * (1 << 16)
    sent = 0
    chain.app_client.setblocking(False)
    stalled = 0
    while stalled < 20 and sent < (512 << 20):
        try:
            sent += chain.app_client.send(block)
            stalled = 0
        except BlockingIOError:
            stalled += 1
            await asyncio.sleep(0.02)
    assert sent < (512 << 20), "the relays kept accepting bytes nobody read"
    moved = chain.egress.totals()[0]
    assert moved <= sent
    # the receiver starts reading: everything arrives, in order, nothing lost
    chain.app_client.shutdown(socket.SHUT_WR)
    got = await asyncio.wait_for(read_to_eof(chain.app_server), 60)
    assert len(got) == sent and got == b"x" * sent


async def test_a_reset_upstream_resets_the_client_through_both_relays(chain: Chain) -> None:
    """A failure is passed on as a failure: the client must not mistake it for a clean end."""
    await send_all(chain.app_client, b"hello")
    loop = asyncio.get_running_loop()
    assert await loop.sock_recv(chain.app_server, 5) == b"hello"
    close_with_reset(chain.app_server)
    await asyncio.wait_for(asyncio.gather(*chain.runs), 10)
    assert chain.gateway.failed and chain.egress.failed
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(read_to_eof(chain.app_client), 10)


async def test_the_proxy_header_prefix_reaches_the_upstream_first() -> None:
    client_app, client_side = await connected_pair(HOST)
    upstream_side, upstream_app = await connected_pair(HOST)
    relay = CopyRelay(client_side, upstream_side, prefix=b"PROXY-HEADER|")
    run = spawn(relay.run(), name="relay")
    try:
        await send_all(client_app, b"payload")
        client_app.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(read_to_eof(upstream_app), 10) == b"PROXY-HEADER|payload"
        upstream_app.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(run, 10) == (len(b"payload"), 0)
    finally:
        await cancel_and_wait(run)
        client_app.close()
        upstream_app.close()


async def test_a_bulk_direction_grows_its_buffer_and_a_small_one_does_not() -> None:
    """A plain source that fills the 16 KiB buffer gets a 64 KiB one (fewer reads and
    sends for bulk streams); the quiet direction keeps 16 KiB."""
    client_app, client_side = await connected_pair(HOST)
    upstream_side, upstream_app = await connected_pair(HOST)
    data = os.urandom(300_000)
    await send_all(client_app, data[:100_000])  # waiting before the relay starts
    relay = CopyRelay(client_side, upstream_side)
    run = spawn(relay.run(), name="relay")
    try:
        reading = spawn(read_to_eof(upstream_app), name="read")
        await send_all(client_app, data[100_000:])
        await send_all(upstream_app, b"small answer")
        assert await asyncio.wait_for(read_to_eof_limit(client_app, 12), 10) == b"small answer"
        sizes = [len(p.buf) for p in relay._pumps or () if isinstance(p, _CopyPump)]
        assert sizes == [BULK_SIZE, BUFFER_SIZE]
        client_app.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(reading, 10) == data
        upstream_app.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(run, 10) == (len(data), 12)
    finally:
        await cancel_and_wait(run)
        client_app.close()
        upstream_app.close()


async def test_a_splice_relay_queues_little_unsent_data() -> None:
    """Both sockets of a splice relay take more only while less than NOTSENT_LOWAT is
    queued unsent (the kernel's transmits stay in the gateway, not in an ACK's softirq
    on the receiver's CPU); the bytes still arrive whole."""
    client_app, client_side = await connected_pair(HOST)
    upstream_side, upstream_app = await connected_pair(HOST)
    relay = SpliceRelay(client_side, upstream_side)
    run = spawn(relay.run(), name="relay")
    try:
        data = os.urandom(4 << 20)
        reading = spawn(read_to_eof(client_app), name="read")
        await send_all(upstream_app, data)
        upstream_app.shutdown(socket.SHUT_WR)
        for sock in (client_side, upstream_side):
            assert sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT
        assert await asyncio.wait_for(reading, 10) == data
        client_app.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(run, 10) == (0, len(data))
    finally:
        await cancel_and_wait(run)
        client_app.close()
        upstream_app.close()


async def read_to_eof_limit(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (through the loop)."""
    loop = asyncio.get_running_loop()
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("kind", ["copy", "splice"])
async def test_progress_is_reported_while_alive_and_idleness_ends_the_relay(kind: str) -> None:
    client_app, client_side = await connected_pair(HOST)
    upstream_side, upstream_app = await connected_pair(HOST)
    seen: list[tuple[int, int]] = []
    watch = RelayWatch(idle_timeout=0.6, on_progress=lambda u, d: seen.append((u, d)), tick=0.1)
    relay = (
        CopyRelay(client_side, upstream_side, watch)
        if kind == "copy"
        else SpliceRelay(client_side, upstream_side, watch)
    )
    loop = asyncio.get_running_loop()
    run = spawn(relay.run(), name="relay")
    try:
        await send_all(client_app, b"a" * 1000)
        assert await loop.sock_recv(upstream_app, 1000) == b"a" * 1000
        await send_all(upstream_app, b"b" * 10)
        # counted while the connection is still open
        await eventually(
            "live byte counts",
            lambda: sum(u for u, _ in seen) == 1000 and sum(d for _, d in seen) == 10,
        )
        assert not run.done()
        # then silence: the relay gives up after the idle timeout and closes both sides
        started = loop.time()
        totals = await asyncio.wait_for(run, 10)
        assert loop.time() - started >= 0.5
        assert watch.timed_out
        assert totals == (1000, 10)
        assert await asyncio.wait_for(read_to_eof(upstream_app), 5) == b""
    finally:
        await cancel_and_wait(run)
        client_app.close()
        upstream_app.close()


async def test_a_busy_connection_is_not_idle() -> None:
    client_app, client_side = await connected_pair(HOST)
    upstream_side, upstream_app = await connected_pair(HOST)
    watch = RelayWatch(idle_timeout=0.3, tick=0.1)
    run = spawn(CopyRelay(client_side, upstream_side, watch).run(), name="relay")
    loop = asyncio.get_running_loop()
    try:
        for _ in range(12):  # 1.2 s of traffic, a byte every 0.1 s
            await send_all(client_app, b".")
            assert await loop.sock_recv(upstream_app, 1) == b"."
            await asyncio.sleep(0.1)
        assert not run.done() and not watch.timed_out
    finally:
        await cancel_and_wait(run)
        client_app.close()
        upstream_app.close()


@pytest.mark.parametrize("host", [HOST, "localhost"])
async def test_connect_socket_takes_addresses_and_host_names(host: str) -> None:
    bind = HOST if host == HOST else "127.0.0.1"
    lst = socket.create_server((bind, 0))
    try:
        sock = await connect_socket(Endpoint(host, lst.getsockname()[1]))
        try:
            assert sock.getpeername()[0] == bind
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            sock.close()
    finally:
        lst.close()


async def test_connect_socket_reports_a_refusal_as_such() -> None:
    lst = socket.create_server((HOST, 0))
    port = lst.getsockname()[1]
    lst.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError):
        await connect_socket(Endpoint(HOST, port))


# -- property: whatever the chunking and the order of the half-closes -------------------

_chunks = st.lists(st.binary(min_size=1, max_size=40_000), max_size=8)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["copy", "splice", "tls"]),
    up=_chunks,
    down=_chunks,
    client_closes_first=st.booleans(),
)
def test_any_exchange_arrives_whole_and_in_order(
    kind: str, up: list[bytes], down: list[bytes], client_closes_first: bool
) -> None:
    """Both directions, any chunking, either side half-closing first: every byte
    arrives once and in order, each EOF reaches the other end, totals are exact."""

    async def scenario() -> None:
        client_app, client_side = await connected_pair(HOST)
        if kind == "tls":  # client → egress-like relay → TLS → gateway-like relay → server
            gw_tls, eg_tls = await _tls_pair()
            gw_out, server_app = await connected_pair(HOST)
            relays: list[CopyRelay | SpliceRelay] = [
                CopyRelay(client_side, eg_tls),
                CopyRelay(gw_tls, gw_out),
            ]
        else:
            upstream_side, server_app = await connected_pair(HOST)
            cls = CopyRelay if kind == "copy" else SpliceRelay
            relays = [cls(client_side, upstream_side)]
        runs = [spawn(r.run(), name="relay") for r in relays]
        try:

            async def side(sock: socket.socket, chunks: list[bytes]) -> bytes:
                for c in chunks:
                    await send_all(sock, c)
                sock.shutdown(socket.SHUT_WR)
                return await read_to_eof(sock)

            first, second = (
                (side(client_app, up), side(server_app, down))
                if client_closes_first
                else (side(server_app, down), side(client_app, up))
            )
            got_a, got_b = await asyncio.wait_for(asyncio.gather(first, second), 10)
            at_server, at_client = (got_b, got_a) if client_closes_first else (got_a, got_b)
            assert at_server == b"".join(up)
            assert at_client == b"".join(down)
            totals = await asyncio.wait_for(asyncio.gather(*runs), 10)
            assert all(t == (len(b"".join(up)), len(b"".join(down))) for t in totals)
            assert all(r.error is None and not r.failed for r in relays)
        finally:
            await cancel_and_wait(*runs)
            client_app.close()
            server_app.close()

    asyncio.run(scenario())
