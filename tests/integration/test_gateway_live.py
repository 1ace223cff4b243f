"""Two gateways in one process on loopback: egress, live changes, rotation, drain, ejection.

``west`` imports ``demo/web`` served by ``east``; a plain client of west's egress
listener is carried over mTLS to east's gateway, which terminates it and hands
it to the demo server with a PROXY v2 header.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from atoll.aio import spawn
from atoll_gateway.config import RouteConfig
from atoll_gateway.demo import DemoServer
from atoll_gateway.identity import StaticSource
from atoll_gateway.node import GatewayNode
from atoll_gateway.policy import AllowPolicy
from atoll_gateway.testing import TestPki, catalog_of
from tests.gatewaykit import federation, importing_gateway, metric_value, serving_gateway

HOST = "127.0.90.2"
EGRESS = "127.0.90.3"
EAST, WEST = "east.atoll.lab", "west.atoll.lab"
PKI = TestPki(EAST, WEST)
BIG = 48 * 1024 * 1024


@dataclass
class Pair:
    east: GatewayNode
    west: GatewayNode
    east_source: StaticSource
    demo: tuple[str, int]
    egress_port: int


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    demo = DemoServer(cluster="east", service="demo/web")
    (demo_addr,) = await demo.start([(HOST, 0)])
    east_source = StaticSource(PKI.context(EAST, "atoll/gateway"))
    east = serving_gateway(
        "east",
        east_source,
        listen=f"{HOST}:0",
        services={"demo/web": RouteConfig(mode="terminate", proxy_protocol=True)},
        catalog=catalog_of({"demo/web": (demo_addr[1], [demo_addr])}),
    )
    # west imports demo/web from east (its service port: the demo server's)
    held = federation({"demo/web": demo_addr[1]}, {"east": east.inbound_address}, port_name="http")
    west = importing_gateway(
        "west",
        StaticSource(PKI.context(WEST, "atoll/gateway")),
        listen=f"{HOST}:0",
        egress_host=EGRESS,
        held=held,
    )
    (egress,) = west.egress
    try:
        yield Pair(east, west, east_source, demo_addr, egress.port)
    finally:
        await west.drain(2.0)
        await east.drain(2.0)
        for srv in demo.servers:
            srv.close()


async def http_get(port: int, path: str = "/") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(EGRESS, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def fetch_json(port: int) -> dict[str, str]:
    reader, writer = await http_get(port)
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return dict(json.loads(data.partition(b"\r\n\r\n")[2]))


async def slow_body(reader: asyncio.StreamReader, started: asyncio.Event) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    total = 0
    while chunk := await reader.read(256 * 1024):
        total += len(chunk)
        if total > 1024 * 1024:
            started.set()
        await asyncio.sleep(0.002)
    return total


async def test_egress_carries_the_callers_cluster_identity(pair: Pair) -> None:
    doc = await fetch_json(pair.egress_port)
    assert doc["cluster"] == "east"
    assert doc["peer_spiffe_id"] == "spiffe://west.atoll.lab/atoll/gateway"
    assert doc["sni"] == f"{pair.demo[1]}.web.demo.svc.east.atoll.test"


async def test_config_and_endpoint_changes_do_not_break_a_long_transfer(pair: Pair) -> None:
    reader, writer = await http_get(pair.egress_port, f"/bytes/{BIG}")
    started = asyncio.Event()
    transfer = spawn(slow_body(reader, started), name="slow-body")
    await asyncio.wait_for(started.wait(), 10)
    # a new policy that allows nobody, and the endpoint gone from the catalog
    deny = RouteConfig(mode="terminate", proxy_protocol=True, allow=AllowPolicy())
    pair.east.apply_config(pair.east.config.model_copy(update={"services": {"demo/web": deny}}))
    pair.east.set_catalog(catalog_of({"demo/web": (pair.demo[1], [])}, index=2))
    assert await asyncio.wait_for(transfer, 60) == BIG
    writer.close()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await fetch_json(pair.egress_port)  # new connections see the new state


async def test_rotated_svid_is_used_for_the_next_handshake(pair: Pair) -> None:
    before = await fetch_json(pair.egress_port)
    assert before["peer_spiffe_id"] == "spiffe://west.atoll.lab/atoll/gateway"
    old = pair.east.identity.server_context()
    pair.east_source.current = PKI.context(EAST, "atoll/gateway")
    assert pair.east.identity.server_context() is not old
    again = await fetch_json(pair.egress_port)
    assert again["cluster"] == "east"


async def test_drain_stops_accepting_and_lets_transfers_finish(pair: Pair) -> None:
    reader, writer = await http_get(pair.egress_port, f"/bytes/{BIG}")
    started = asyncio.Event()
    transfer = spawn(slow_body(reader, started), name="slow-body")
    await asyncio.wait_for(started.wait(), 10)
    drain = spawn(pair.west.drain(30.0), name="drain")
    await asyncio.sleep(0.1)
    with pytest.raises(OSError):
        await asyncio.open_connection(EGRESS, pair.egress_port)
    assert await asyncio.wait_for(transfer, 60) == BIG
    writer.close()
    assert await asyncio.wait_for(drain, 30) == 0


async def test_drain_deadline_cancels_what_is_left(pair: Pair) -> None:
    reader, writer = await http_get(pair.egress_port, f"/bytes/{BIG}")
    await reader.readuntil(b"\r\n\r\n")  # then stop reading: the transfer stalls
    assert await pair.west.drain(0.3) == 1
    writer.close()


async def test_dead_endpoint_is_skipped_and_ejected(pair: Pair) -> None:
    dead = (HOST, 9)  # discard port: nothing listens on loopback
    pair.east.set_catalog(catalog_of({"demo/web": (pair.demo[1], [dead, pair.demo])}, index=3))
    config = pair.east.config.model_copy(
        update={"outlier": pair.east.config.outlier.model_copy(update={"consecutive_failures": 1})}
    )
    pair.east.apply_config(config)
    before = metric_value("atoll_gateway_ejections_total")
    for _ in range(4):
        assert (await fetch_json(pair.egress_port))["cluster"] == "east"
    assert metric_value("atoll_gateway_ejections_total") >= before + 1
    assert pair.east.runtime.balancer.is_ejected(
        next(e for e in pair.east.runtime.table.inbound[("demo", "web")].endpoints[pair.demo[1]]
             if e.port == 9)
    )  # fmt: skip


async def test_peer_gateway_with_unexpected_identity_is_not_trusted(pair: Pair) -> None:
    """West's egress requires exactly east's gateway ID; an east SVID for another path fails."""
    pair.east_source.current = PKI.context(EAST, "demo/impostor")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError)):
        await fetch_json(pair.egress_port)
    assert isinstance(pair.east.identity.server_context(), ssl.SSLContext)
