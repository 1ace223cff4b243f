"""Pooled tunnels between real gateways over loopback (ALPN ``atoll-tunnel/2``).

``west`` imports ``demo/echo``, ``demo/secret`` and ``demo/web``, all served by
``east``. A plain client of west's egress listener becomes one *stream* on a
pooled mTLS tunnel to east's gateway, which terminates it and connects the
service's endpoint: for ``demo/echo`` and ``demo/secret`` (which allows only
north's gateway) a plain echo workload (it answers ``<cluster>|``, then every
byte it gets, until EOF), for ``demo/web`` the demo server behind a PROXY v2
header. The failover test adds a third gateway, ``north``, serving the same
services.

Everything is observed from outside the data path:

* the client's bytes (each connection gets its own echo, whole, or nothing);
* east's handshakes — ``atoll_gateway_tls_handshakes_total{listener="inbound",
  role="server"}`` (west's TLS port is never used, so only east, and north in
  the failover test, count there);
* *which* tunnel carried a stream — east's access-log line for a stream
  carries the tunnel's client address (west's ephemeral port), so "the same
  tunnel" is "the same client address"; a tunnel gets a line of its own (mode
  ``tunnel``, ``N stream(s)``) when it closes;
* west's pool (``len(runtime.tunnels)`` and the ``atoll_gateway_tunnels_idle``
  gauge) — the egress hands a tunnel back when the relay has finished, a
  moment after the client saw its EOF, so tests wait for the pool to settle
  before the next connection (otherwise that connection would rightly open a
  second tunnel).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial

import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll_agent.registry import CatalogSnapshot
from atoll_gateway.config import RouteConfig
from atoll_gateway.demo import DemoServer
from atoll_gateway.identity import TUNNEL_ALPN, GatewayIdentity, StaticSource
from atoll_gateway.node import GatewayNode
from atoll_gateway.policy import AllowPolicy
from atoll_gateway.testing import TestPki, catalog_of, held_state
from atoll_trust.clock import system_clock
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.tls import build_server_context, verify_peer
from tests import gatewaykit
from tests.gatewaykit import (
    Address,
    Echo,
    closed_tunnels,
    egress_lines,
    federation,
    free_port,
    handshake_failures,
    handshakes,
    idle_tunnels,
    importing_gateway,
    pooled,
    refused_connections,
    reset_connection,
    served_streams,
    stream_counts,
    upstream_failures,
)
from tests.polling import eventually

HOST = "127.77.0.1"  # gateways' TLS ports and the echo workloads
EGRESS = "127.77.0.2"  # west's egress listeners (one per imported service port)
EAST, WEST, NORTH = "east.atoll.lab", "west.atoll.lab", "north.atoll.lab"
PKI = TestPki(EAST, WEST, NORTH)
NORTH_GW = TrustDomain(NORTH).spiffe_id("atoll", "gateway")
WEST_GW = TrustDomain(WEST).spiffe_id("atoll", "gateway")
ECHO, SECRET, WEB, REORIGIN = "demo/echo", "demo/secret", "demo/web", "demo/reorigin"
MIB = 1024 * 1024


# -- the workloads and their clients ------------------------------------------------------

# every client connects to one of west's egress listeners
exchange = partial(gatewaykit.exchange, EGRESS)
nothing_back = partial(gatewaykit.nothing_back, EGRESS)
ask = partial(gatewaykit.ask, EGRESS)
http_get = partial(gatewaykit.http_get, EGRESS)
hold = partial(gatewaykit.HeldConnection.open, EGRESS)


async def tls_backend() -> tuple[asyncio.Server, Address]:
    """An mTLS workload of east (``demo/reorigin``): answers one line with the verified
    ID of its caller, then closes."""
    ctx = build_server_context(PKI.svid(EAST, "demo/reorigin"), PKI.bundles(EAST))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            peer = verify_peer(ssl_object, PKI.bundles(), now=system_clock())
            line = await reader.readline()
            writer.write(f"{peer.spiffe_id} {line.decode()}".encode())
            await writer.drain()
        except (SvidVerificationError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0, ssl=ctx)
    host, port = server.sockets[0].getsockname()[:2]
    return server, (str(host), int(port))


# -- observing the gateways ---------------------------------------------------------------


def peer_refused(cluster: str = "east") -> float:
    return upstream_failures("peer_refused", listener="egress", cluster=cluster)


def refused_at_inbound(reason: str) -> float:
    """Streams east refused, counted where per-connection termination counts them too:
    an endpoint that could not be had as an upstream failure, a peer that may not
    connect as a handshake failure."""
    if reason == "no_endpoint":
        return upstream_failures(reason, listener="inbound", cluster="east")
    return handshake_failures(reason)


# -- the gateways -------------------------------------------------------------------------

ROUTES = {
    ECHO: RouteConfig(mode="terminate"),
    SECRET: RouteConfig(mode="terminate", allow=AllowPolicy(ids=(str(NORTH_GW),))),
    WEB: RouteConfig(mode="terminate", proxy_protocol=True),
    REORIGIN: RouteConfig(mode="terminate", upstream_tls=True),
}


def serving_catalog(
    ports: Mapping[str, int],
    echo: Address | None,
    web: Address | None = None,
    tls: Address | None = None,
) -> CatalogSnapshot:
    """The services of ``ports``: demo/echo and demo/secret on ``echo`` (None: exported,
    but with no endpoint at all), demo/web on ``web``, demo/reorigin on ``tls``."""
    backends = {ECHO: echo, SECRET: echo, WEB: web or echo, REORIGIN: tls or echo}
    return catalog_of(
        {key: (port, [b] if (b := backends[key]) else []) for key, port in ports.items()}
    )


def serving_gateway(
    cluster: str,
    domain: str,
    ports: Mapping[str, int],
    echo: Address,
    web: Address | None = None,
    *,
    port: int = 0,
) -> tuple[GatewayNode, StaticSource]:
    source = StaticSource(PKI.context(domain, "atoll/gateway"))
    catalog = serving_catalog(ports, echo, web)
    node = gatewaykit.serving_gateway(
        cluster, source, listen=f"{HOST}:{port}", services=ROUTES, catalog=catalog
    )
    return node, source


@dataclass
class Gateways:
    east: GatewayNode
    west: GatewayNode
    east_source: StaticSource
    west_source: StaticSource
    echo: Address
    web: Address
    #: service key -> service port (= the port of west's egress listener for it)
    ports: dict[str, int]

    @property
    def port(self) -> int:
        return self.ports[ECHO]

    def echo_healthy(self, healthy: bool) -> None:
        """East's demo/echo and demo/secret with their endpoint, or with none."""
        self.east.set_catalog(serving_catalog(self.ports, self.echo if healthy else None, self.web))


@pytest.fixture
async def gw(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Gateways]:
    caplog.set_level("INFO", logger="atoll.gateway.access")
    echo = Echo("east", host=HOST)
    echo_addr = await echo.start()
    demo = DemoServer(cluster="east", service=WEB)
    (web_addr,) = await demo.start([(HOST, 0)])
    ports = {key: free_port(EGRESS) for key in (ECHO, SECRET, WEB)}
    east, east_source = serving_gateway("east", EAST, ports, echo_addr, web_addr)
    west_source = StaticSource(PKI.context(WEST, "atoll/gateway"))
    held = federation(ports, {"east": east.inbound_address})
    west = importing_gateway("west", west_source, listen=f"{HOST}:0", egress_host=EGRESS, held=held)
    assert {ep.port for ep in west.egress} == set(ports.values())
    try:
        yield Gateways(east, west, east_source, west_source, echo_addr, web_addr, ports)
    finally:
        await west.drain(2.0)
        await east.drain(2.0)
        echo.close()
        for srv in demo.servers:
            srv.close()


# -- tests --------------------------------------------------------------------------------


async def test_sequential_connections_share_one_tunnel(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    n = 20
    hs, gauge, before = handshakes(), idle_tunnels(), stream_counts()
    served = idle_tunnels("server")
    for i in range(n):
        assert await exchange(gw.port, b"ping %d" % i) == b"east|ping %d" % i
        await pooled(gw.west, 1)  # the tunnel waits in the pool between connections
        assert idle_tunnels() == gauge + 1
    assert handshakes() == hs + 1
    # (server: new, reused), (client: new, reused)
    assert [a - b for a, b in zip(stream_counts(), before, strict=True)] == [1, n - 1, 1, n - 1]
    lines = served_streams(caplog)
    assert len(lines) == n and {ln.outcome for ln in lines} == {"ok"}
    assert len({ln.client for ln in lines}) == 1, "every stream on the same tunnel"
    assert [ln.service for ln in lines] == [f"{ECHO}:{gw.port}"] * n
    assert [ln.outcome for ln in egress_lines(caplog)] == ["ok"] * n
    assert closed_tunnels(caplog) == []  # still open, idle
    # both ends show it in their status: pooled at west, waiting for a stream at east
    assert gw.west.status().tunnels_pooled == 1
    await eventually("east waiting", lambda: gw.east.status().tunnels_waiting == 1, 10)
    assert idle_tunnels("server") == served + 1


async def test_concurrent_connections_get_their_own_bytes_and_their_own_tunnels(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    k = 8

    async def one(i: int, all_open: asyncio.Barrier) -> bytes:
        first, rest = os.urandom(1000 + i), os.urandom(20_000 + 7 * i)
        held = await hold(gw.port, first)
        await all_open.wait()  # k streams open at once: k tunnels
        assert await held.finish(rest) == rest
        return first + rest

    hs = handshakes()
    barrier = asyncio.Barrier(k)
    sent = await asyncio.gather(*(one(i, barrier) for i in range(k)))
    assert len(set(sent)) == k
    assert handshakes() == hs + k
    await pooled(gw.west, k)
    first_round = {ln.client for ln in served_streams(caplog)}
    assert len(first_round) == k

    # the next k concurrent connections run on the k pooled tunnels: no handshake at all
    barrier = asyncio.Barrier(k)
    await asyncio.gather(*(one(i, barrier) for i in range(k)))
    assert handshakes() == hs + k
    assert {ln.client for ln in served_streams(caplog)} == first_round
    await pooled(gw.west, k)

    # a smaller pool from a config reload: the surplus goes at the next expiry
    gw.west.apply_config(gw.west.config.model_copy(update={"tunnel_pool_size": 2}))
    assert gw.west.runtime.tunnels.expire() == k - 2
    assert len(gw.west.runtime.tunnels) == 2
    await eventually("east closing the surplus", lambda: len(closed_tunnels(caplog)) == k - 2, 10)


async def test_refusal_closes_the_client_and_keeps_the_tunnel(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """East has no endpoint for demo/echo: REFUSE, no byte to the client, the tunnel
    stays pooled and carries the next good stream without a handshake."""
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    (tunnel,) = {ln.client for ln in served_streams(caplog)}
    hs, refused, at_east = handshakes(), peer_refused(), refused_at_inbound("no_endpoint")

    gw.echo_healthy(False)
    assert await nothing_back(gw.port) == b""
    await pooled(gw.west, 1)
    assert peer_refused() == refused + 1
    assert refused_at_inbound("no_endpoint") == at_east + 1
    last = egress_lines(caplog)[-1]
    assert last.outcome == "peer_refused"
    assert last.detail.startswith("east: no_endpoint: ")  # the remote reason, passed on
    stream = served_streams(caplog)[-1]
    assert (stream.client, stream.outcome) == (tunnel, "no_endpoint")

    gw.echo_healthy(True)
    assert await exchange(gw.port, b"again") == b"east|again"
    assert handshakes() == hs
    assert served_streams(caplog)[-1].client == tunnel
    assert closed_tunnels(caplog) == []


async def test_a_refusing_peer_fails_over_to_the_next_target(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    echo = Echo("north", host=HOST)
    north_addr = await echo.start()
    north, _ = serving_gateway("north", NORTH, gw.ports, north_addr)
    try:
        gateways = {"east": gw.east.inbound_address, "north": north.inbound_address}
        gw.west.set_held(held_state(federation(gw.ports, gateways)))
        view = next(e for e in gw.west.status().egress if e.service == ECHO)
        assert sorted(tuple(d) for d in view.decisions) == [("east", "north"), ("north", "east")]

        # healthy: the ring alternates, one tunnel per peer
        answers = [await exchange(gw.port) for _ in range(2)]
        assert sorted(answers) == [b"east|ping", b"north|ping"]
        await pooled(gw.west, 2)
        (east_tunnel,) = {ln.client for ln in served_streams(caplog, "east")}
        hs, refused = handshakes(), peer_refused()

        # east refuses: every connection is answered by north, none sees an error
        gw.echo_healthy(False)
        for _ in range(4):
            assert await exchange(gw.port) == b"north|ping"
            await pooled(gw.west, 2)
        assert peer_refused() == refused + 2  # the two decisions that put east first
        assert [ln.outcome for ln in egress_lines(caplog)[-4:]] == ["ok"] * 4
        assert [ln.destination for ln in egress_lines(caplog)[-4:]] == ["north"] * 4
        refusals = served_streams(caplog, "east")[-2:]
        assert [(ln.client, ln.outcome) for ln in refusals] == [(east_tunnel, "no_endpoint")] * 2

        # east is back: the same tunnel carries its next stream
        gw.echo_healthy(True)
        answers = [await exchange(gw.port) for _ in range(2)]
        assert sorted(answers) == [b"east|ping", b"north|ping"]
        assert handshakes() == hs  # neither peer needed a new tunnel
        last = served_streams(caplog, "east")[-1]
        assert (last.client, last.outcome) == (east_tunnel, "ok")
    finally:
        await north.drain(2.0)
        echo.close()


async def test_a_forbidden_service_is_refused_per_stream_on_an_allowed_tunnel(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """demo/secret allows only north's gateway. The tunnel's handshake authorizes
    nothing by itself: west's streams for demo/secret are refused on the tunnel that
    carries its demo/echo streams, every time."""
    secret = gw.ports[SECRET]
    hs, forbidden, refused = handshakes(), refused_at_inbound("forbidden"), peer_refused()

    # the first stream of a fresh tunnel: the handshake succeeds, the stream is refused
    assert await nothing_back(secret) == b""
    await pooled(gw.west, 1)
    assert handshakes() == hs + 1
    last = egress_lines(caplog)[-1]
    assert last.outcome == "peer_refused"
    assert last.detail.startswith("east: forbidden: ")  # the remote reason, passed on

    # the same tunnel carries an allowed stream, and refuses the forbidden one again
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    assert await nothing_back(secret) == b""
    await pooled(gw.west, 1)
    assert handshakes() == hs + 1
    assert refused_at_inbound("forbidden") == forbidden + 2
    assert peer_refused() == refused + 2
    lines = served_streams(caplog)
    assert [(ln.service, ln.outcome) for ln in lines] == [
        (f"{SECRET}:{secret}", "forbidden"),
        (f"{ECHO}:{gw.port}", "ok"),
        (f"{SECRET}:{secret}", "forbidden"),
    ]
    assert len({ln.client for ln in lines}) == 1


async def test_a_tunnel_the_peer_closed_while_pooled_is_replaced_unnoticed(
    gw: Gateways, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """East closes idle tunnels after its idle_timeout. West finds the closed tunnel in
    its pool: either its liveness check sees the close, or — the close still in flight
    when the tunnel is taken — the OPEN fails; both times a fresh tunnel carries the
    stream and the client notices nothing."""
    gw.east.apply_config(gw.east.config.model_copy(update={"idle_timeout": 0.3}))

    async def east_closed_it(count: int) -> None:
        def closed() -> bool:
            return len(closed_tunnels(caplog)) == count

        await eventually("east closing the idle tunnel", closed, 10)
        assert closed_tunnels(caplog)[-1].detail == "1 stream(s)"

    hs = handshakes()
    assert await exchange(gw.port, b"one") == b"east|one"
    await pooled(gw.west, 1)
    await east_closed_it(1)
    assert len(gw.west.runtime.tunnels) == 1  # still pooled at west, closed at east

    assert await exchange(gw.port, b"two") == b"east|two"
    assert handshakes() == hs + 2
    await pooled(gw.west, 1)
    await east_closed_it(2)

    # the close is not visible yet when the tunnel is taken: the OPEN meets it instead
    monkeypatch.setattr("atoll_gateway.tunnelpool._alive", lambda tls: True)
    assert await exchange(gw.port, b"three") == b"east|three"
    assert handshakes() == hs + 3
    assert [ln.outcome for ln in egress_lines(caplog)] == ["ok"] * 3
    assert [ln.outcome for ln in served_streams(caplog)] == ["ok"] * 3
    assert len({ln.client for ln in served_streams(caplog)}) == 3


async def test_a_restarted_peer_gateway_is_reached_on_a_fresh_tunnel(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """East's process goes (drained: its idle tunnel closes) and a new one listens on the
    same address; west's pool still holds the old tunnel, and the next client connection
    gets its echo through a new one."""
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    port = gw.east.inbound_address[1]
    assert await gw.east.drain(5.0) == 0
    assert [ln.detail for ln in closed_tunnels(caplog)] == ["1 stream(s)"]
    restarted, _ = serving_gateway("east", EAST, gw.ports, gw.echo, gw.web, port=port)
    try:
        assert len(gw.west.runtime.tunnels) == 1  # closed by its peer, not yet noticed
        hs = handshakes()
        assert await exchange(gw.port, b"again") == b"east|again"
        assert handshakes() == hs + 1
        first, second = served_streams(caplog)
        assert second.outcome == "ok" and second.client != first.client
    finally:
        await restarted.drain(2.0)


async def test_drain_closes_idle_tunnels_at_once_and_lets_a_stream_finish(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    idle = await hold(gw.port, b"idle")
    busy = await hold(gw.port, b"busy")  # two streams open at once: two tunnels
    assert await idle.finish(b"-done") == b"-done"
    await pooled(gw.west, 1)
    waiting = gw.east.runtime.tunnel_waiters
    await eventually("east waiting on the idle tunnel", lambda: len(waiting) == 1, 10)

    drain = spawn(gw.east.drain(20.0), name="east-drain")
    try:
        # the idle tunnel closes while the other one is still busy with its stream
        await eventually("the idle tunnel closed", lambda: closed_tunnels(caplog), 10)
        assert not drain.done()
        rest = os.urandom(MIB)
        assert await busy.finish(rest) == rest
        assert await asyncio.wait_for(drain, 20) == 0  # nothing had to be cancelled
    finally:
        await cancel_and_wait(drain)
    assert [ln.outcome for ln in served_streams(caplog)] == ["ok", "ok"]
    assert [ln.detail for ln in closed_tunnels(caplog)] == ["1 stream(s)", "1 stream(s)"]


async def test_a_rotated_svid_is_not_used_through_an_old_tunnel(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    full, resumed = handshakes("false"), handshakes("true")

    gw.west_source.current = PKI.context(WEST, "atoll/gateway")  # the Workload API rotated
    assert await exchange(gw.port, b"after") == b"east|after"
    # a full handshake with the new SVID (the old sessions went with the old context)
    assert (handshakes("false"), handshakes("true")) == (full + 1, resumed)
    await eventually("the old tunnel closed", lambda: closed_tunnels(caplog), 10)
    assert closed_tunnels(caplog)[0].detail == "1 stream(s)"
    first, second = (ln.client for ln in served_streams(caplog))
    assert first != second

    await pooled(gw.west, 1)
    assert await exchange(gw.port, b"again") == b"east|again"
    assert (handshakes("false"), handshakes("true")) == (full + 1, resumed)
    assert served_streams(caplog)[-1].client == second

    # a rotation during a stream: the tunnel finishes it, then is not reused either
    await pooled(gw.west, 1)
    held = await hold(gw.port, b"during")
    gw.west_source.current = PKI.context(WEST, "atoll/gateway")
    assert await held.finish(b"-rotation") == b"-rotation"
    assert served_streams(caplog)[-1].client == second
    await pooled(gw.west, 1)  # given back (pooled tunnels are checked when taken)
    assert await exchange(gw.port, b"next") == b"east|next"
    assert (handshakes("false"), handshakes("true")) == (full + 2, resumed)
    assert served_streams(caplog)[-1].client not in (first, second)
    await eventually("the second tunnel closed", lambda: len(closed_tunnels(caplog)) == 2, 10)
    assert closed_tunnels(caplog)[1].detail == "3 stream(s)"


async def test_a_peer_no_longer_trusted_is_refused_on_its_pooled_tunnel(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """East's bundles rotate to a set without west's domain: the next stream on the
    already verified tunnel is refused (re-verified per stream) and the tunnel closed."""
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    gw.east_source.current = PKI.context(EAST, "atoll/gateway", EAST, NORTH)

    assert await nothing_back(gw.port) == b""
    last = egress_lines(caplog)[-1]
    assert last.outcome == "peer_refused"
    assert last.detail.startswith("east: unauthenticated: ")
    assert served_streams(caplog)[-1].outcome == "unauthenticated"
    await eventually("the tunnel closed", lambda: closed_tunnels(caplog), 10)
    assert closed_tunnels(caplog)[0].detail == "2 stream(s)"
    # and no new tunnel can be made: east refuses west's certificate at the handshake
    assert await nothing_back(gw.port) == b""
    assert egress_lines(caplog)[-1].outcome == "connect_failed"


class V1OnlyIdentity(GatewayIdentity):
    """A gateway from before pooling: it offers only ``atoll-tunnel/1``, both on its TLS
    port and when its egress connects."""

    def server_context(self) -> ssl.SSLContext:
        ctx = super().server_context()
        ctx.set_alpn_protocols([TUNNEL_ALPN])
        return ctx

    def client_context(self, peer: TrustDomain) -> ssl.SSLContext:
        ctx = super().client_context(peer)
        ctx.set_alpn_protocols([TUNNEL_ALPN])
        return ctx


@pytest.mark.parametrize("old", ["east", "west"])
async def test_a_gateway_that_only_speaks_tunnel_v1_gets_a_connection_per_client(
    gw: Gateways, caplog: pytest.LogCaptureFixture, old: str
) -> None:
    """Either side may predate pooling: the serving gateway (east) or the egress (west)."""
    node, source = (gw.east, gw.east_source) if old == "east" else (gw.west, gw.west_source)
    node.identity = node.runtime.identity = V1OnlyIdentity(source)
    n = 5
    full, resumed = handshakes("false"), handshakes("true")
    before = stream_counts()
    for i in range(n):
        assert await exchange(gw.port, b"v1 %d" % i) == b"east|v1 %d" % i
        assert len(gw.west.runtime.tunnels) == 0
    assert stream_counts() == before  # no pooled stream on either side
    # one TLS connection per client connection; the first is full, the others resume
    assert (handshakes("false"), handshakes("true")) == (full + 1, resumed + n - 1)
    lines = served_streams(caplog)
    assert [ln.outcome for ln in lines] == ["ok"] * n
    assert len({ln.client for ln in lines}) == n
    assert closed_tunnels(caplog) == []  # no pooled tunnel was ever served


async def test_a_long_transfer_is_intact_and_the_tunnel_is_reused_after_it(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    hs = handshakes()
    payload = os.urandom(6 * MIB + 12345)
    assert await exchange(gw.port, payload) == b"east|" + payload
    await pooled(gw.west, 1)
    assert await exchange(gw.port, b"after") == b"east|after"
    assert handshakes() == hs + 1
    lines = served_streams(caplog)
    assert [ln.bytes_to_upstream for ln in lines] == [len(payload), len(b"after")]
    assert lines[0].client == lines[1].client


async def test_a_pool_size_of_zero_makes_one_tunnel_per_connection(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    gw.west.apply_config(gw.west.config.model_copy(update={"tunnel_pool_size": 0}))
    hs = handshakes()
    for i in range(3):
        assert await exchange(gw.port, b"%d" % i) == b"east|%d" % i
    assert handshakes() == hs + 3
    assert len(gw.west.runtime.tunnels) == 0
    await eventually("three tunnels closed", lambda: len(closed_tunnels(caplog)) == 3, 10)
    assert {ln.detail for ln in closed_tunnels(caplog)} == {"1 stream(s)"}


async def test_each_stream_gets_its_own_proxy_header_and_the_server_may_close_first(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """demo/web (the demo server, PROXY v2) answers one request and closes before the
    client does. Each stream's endpoint connection starts with its own PROXY header
    naming west's verified gateway ID and the stream's server name; the tunnel outlives
    the server-first close and carries the next request."""
    port, hs = gw.ports[WEB], handshakes()
    for _ in range(3):
        doc = await http_get(port)
        assert doc["peer_spiffe_id"] == str(WEST_GW)
        assert doc["sni"] == f"{port}.web.demo.svc.east.atoll.test"
        await pooled(gw.west, 1)
    assert handshakes() == hs + 1
    lines = served_streams(caplog)
    assert [ln.outcome for ln in lines] == ["ok"] * 3
    assert len({ln.client for ln in lines}) == 1


async def test_a_reset_stream_costs_no_tunnel_and_no_handshake(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream that fails ends with a RESET frame: the other side is reset (never a clean
    EOF), and the tunnel goes back to the pool for the next client — no handshake."""
    assert await exchange(gw.port, b"warm") == b"east|warm"
    await pooled(gw.west, 1)
    hs = handshakes()

    # the client resets mid-stream
    held = await hold(gw.port, b"first")
    assert len(gw.west.runtime.tunnels) == 0  # the stream holds the tunnel
    reset_connection(held.writer)
    await pooled(gw.west, 1)
    assert await exchange(gw.port, b"next") == b"east|next"
    await pooled(gw.west, 1)

    # the endpoint resets mid-stream: the client sees a reset, not a clean EOF
    held = await hold(gw.port, b"second")
    with pytest.raises(ConnectionResetError):
        await held.finish(b"!reset")
    await pooled(gw.west, 1)
    assert await exchange(gw.port, b"last") == b"east|last"
    assert handshakes() == hs  # one tunnel carried all five streams
    assert closed_tunnels(caplog) == []
    # both failed streams are logged as resets on both gateways, the others as ok
    await eventually("west logging every stream", lambda: len(egress_lines(caplog)) == 5)
    assert [ln.outcome for ln in egress_lines(caplog)] == ["ok", "reset", "ok", "reset", "ok"]
    assert [ln.outcome for ln in served_streams(caplog)] == ["ok", "reset", "ok", "reset", "ok"]
    assert len({ln.client for ln in served_streams(caplog)}) == 1


async def test_pooled_tunnels_survive_the_serving_gateways_own_rotation(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """East's new SVID (same bundles) comes with a new verifier whose cache is empty:
    streams on tunnels made before — one of them a resumed handshake, which carried
    no certificate chain — are re-verified from scratch and still served."""
    full, resumed = handshakes("false"), handshakes("true")
    assert await exchange(gw.port, b"one") == b"east|one"
    await pooled(gw.west, 1)  # its session is kept: the next new tunnel resumes
    a = await hold(gw.port, b"a")
    b = await hold(gw.port, b"b")  # a second tunnel while the first is busy
    assert await a.finish(b"!") == b"!"
    assert await b.finish(b"!") == b"!"
    assert (handshakes("false"), handshakes("true")) == (full + 1, resumed + 1)
    await pooled(gw.west, 2)
    tunnels = {ln.client for ln in served_streams(caplog)}
    assert len(tunnels) == 2

    gw.east_source.current = PKI.context(EAST, "atoll/gateway")
    a = await hold(gw.port, b"c")
    b = await hold(gw.port, b"d")  # both pooled tunnels at once
    assert await a.finish(b"!") == b"!"
    assert await b.finish(b"!") == b"!"
    assert (handshakes("false"), handshakes("true")) == (full + 1, resumed + 1)
    lines = served_streams(caplog)
    assert {ln.client for ln in lines[-2:]} == tunnels
    assert [ln.outcome for ln in lines] == ["ok"] * 5


async def test_the_egress_drain_closes_its_pooled_tunnels_on_both_sides(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    gauge = idle_tunnels()
    a = await hold(gw.port, b"a")
    b = await hold(gw.port, b"b")
    assert await a.finish(b"!") == b"!"
    assert await b.finish(b"!") == b"!"
    await pooled(gw.west, 2)
    assert idle_tunnels() == gauge + 2

    assert await gw.west.drain(5.0) == 0
    assert len(gw.west.runtime.tunnels) == 0
    assert idle_tunnels() == gauge
    await eventually("east closing both tunnels", lambda: len(closed_tunnels(caplog)) == 2, 10)
    assert not gw.east.runtime.tunnel_waiters


async def test_idle_and_old_tunnels_are_not_reused(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """tunnel_idle_timeout and tunnel_max_age, on the pool's injected clock."""
    now = [1000.0]
    pool = gw.west.runtime.tunnels
    pool.clock = lambda: now[0]
    config = gw.west.config.model_copy(update={"tunnel_idle_timeout": 30.0, "tunnel_max_age": 50.0})
    gw.west.apply_config(config)
    hs = handshakes()

    async def step(advance: float, handshakes_so_far: int) -> None:
        now[0] += advance
        assert await exchange(gw.port) == b"east|ping"
        assert handshakes() == hs + handshakes_so_far

    await step(0, 1)
    await pooled(gw.west, 1)
    await step(20, 1)  # idle 20 s, 20 s old: reused
    await pooled(gw.west, 1)
    await step(20, 1)  # idle 20 s, 40 s old: reused
    await pooled(gw.west, 1)
    await step(20, 2)  # idle 20 s but 60 s old: a new tunnel
    await pooled(gw.west, 1)
    await step(30, 3)  # idle 30 s: a new tunnel
    await eventually("east closing both", lambda: len(closed_tunnels(caplog)) == 2, 10)
    assert [ln.detail for ln in closed_tunnels(caplog)] == ["3 stream(s)", "1 stream(s)"]

    # a tunnel that grew too old during its stream is closed instead of pooled
    held = await hold(gw.port, b"long")
    now[0] += 50
    assert await held.finish(b"!") == b"!"
    await eventually("east closing it", lambda: len(closed_tunnels(caplog)) == 3, 10)
    assert len(pool) == 0

    # the node's periodic expiry closes an idle tunnel nobody asks for
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    now[0] += 30
    assert pool.expire() == 1
    assert len(pool) == 0
    await eventually("east closing the expired one", lambda: len(closed_tunnels(caplog)) == 4)


async def test_a_stream_can_re_originate_mtls_to_its_endpoint(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """upstream_tls: each stream's endpoint connection is mTLS with east's SVID (the
    stream socket of the relay is a TLS socket); the endpoint closes first and the
    tunnel carries the next stream."""
    backend, addr = await tls_backend()
    try:
        ports = {**gw.ports, REORIGIN: free_port(EGRESS)}
        gw.east.set_catalog(serving_catalog(ports, gw.echo, gw.web, addr))
        gw.west.set_held(held_state(federation(ports, {"east": gw.east.inbound_address})))
        hs = handshakes()
        for i in range(3):
            out = await ask(ports[REORIGIN], b"hi %d\n" % i)
            assert out == b"spiffe://east.atoll.lab/atoll/gateway hi %d\n" % i
            await pooled(gw.west, 1)
        assert handshakes() == hs + 1
        lines = served_streams(caplog)
        assert [ln.outcome for ln in lines] == ["ok"] * 3
        assert len({ln.client for ln in lines}) == 1
    finally:
        backend.close()


async def test_the_egress_checks_the_peer_again_before_each_stream(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """West re-verifies east on a pooled tunnel before using it, as east does west: once
    east's certificate has expired (by west's clock) the pooled tunnel is closed unused,
    and no new one can be made either."""
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    streams = len(served_streams(caplog))
    current = gw.east_source.current
    assert current is not None
    later = current.svid.chain[0].not_valid_after_utc + dt.timedelta(seconds=1)
    gw.west.runtime.clock = lambda: later

    assert await nothing_back(gw.port) == b""
    assert egress_lines(caplog)[-1].outcome == "connect_failed"
    await eventually("east seeing the pooled tunnel closed", lambda: closed_tunnels(caplog), 10)
    assert closed_tunnels(caplog)[0].detail == "1 stream(s)"  # closed without a second stream
    assert len(served_streams(caplog)) == streams

    gw.west.runtime.clock = system_clock
    assert await exchange(gw.port, b"again") == b"east|again"


async def test_an_idle_served_tunnel_makes_room_at_the_connection_limit(
    gw: Gateways, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle served tunnels count as connections; at the limit the gateway closes one
    (its peer opens another when it needs it) instead of refusing a new connection."""
    assert await exchange(gw.port) == b"east|ping"
    await pooled(gw.west, 1)
    # keep the idle tunnel open at both ends, but out of west's pool
    host, port = gw.east.inbound_address
    held = gw.west.runtime.tunnels.take(
        f"east/{host}:{port}", gw.west.identity.client_context(TrustDomain(EAST))
    )
    assert held is not None
    gw.east.apply_config(gw.east.config.model_copy(update={"max_connections": 1}))
    refused = refused_connections()
    try:
        assert await exchange(gw.port, b"room") == b"east|room"  # on a new tunnel
        await eventually("east reclaiming the idle tunnel", lambda: closed_tunnels(caplog), 10)
        assert closed_tunnels(caplog)[0].detail == "1 stream(s)"
        assert refused_connections() == refused
    finally:
        held.close()
