"""A real DNS server on 127.0.30.x answering dnspython (UDP, TCP) and dig."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from atoll_dns.config import DnsConfig
from atoll_dns.persist import STATE_FILE
from atoll_dns.server import DnsServer
from atoll_dns.snapshot import build_zone
from atoll_dns.testing import make_import, make_policy, make_region, sample_config, sample_snapshot

HOST = "127.0.30.1"


def config(**kw: object) -> DnsConfig:
    return sample_config(**{"listen_host": HOST, **kw})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DnsServer]:
    srv = DnsServer(config(tcp_idle_timeout=0.5), state_dir=tmp_path, registry=CollectorRegistry())
    await srv.start(sample_snapshot(config()))
    try:
        yield srv
    finally:
        await srv.stop()


async def udp(srv: DnsServer, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return await dns.asyncquery.udp(q, srv.udp_address[0], port=srv.udp_address[1], timeout=2)


async def tcp(srv: DnsServer, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return await dns.asyncquery.tcp(q, srv.tcp_address[0], port=srv.tcp_address[1], timeout=2)


def rdatas(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(msg, section) for rd in rrset)


async def test_udp_and_tcp_answers(server: DnsServer) -> None:
    for ask in (udp, tcp):
        a = await ask(server, "api.default.atoll.test")
        assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
        assert rdatas(a) == ["192.0.2.1"]
        aaaa = await ask(server, "api.default.atoll.test", "AAAA")
        assert rdatas(aaaa) == ["2001:db8::1"]
        srv = await ask(server, "_grpc._tcp.api.default.atoll.test", "SRV")
        assert rdatas(srv) == ["0 0 9090 api.default.atoll.test."]
        assert rdatas(srv, "additional") == ["192.0.2.1", "2001:db8::1"]
        soa = await ask(server, "atoll.test", "SOA")
        assert soa.answer[0][0].serial == server.snapshot.serial  # type: ignore[union-attr]
        ns = await ask(server, "atoll.test", "NS")
        assert rdatas(ns) == ["ns1.atoll.test."]
        nx = await ask(server, "missing.default.atoll.test")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority
        refused = await ask(server, "example.com")
        assert refused.rcode() == dns.rcode.REFUSED


async def test_case_is_preserved_over_the_wire(server: DnsServer) -> None:
    msg = await udp(server, "ApI.DEFAULT.atoll.TEST")
    assert msg.answer[0].name.to_text() == "ApI.DEFAULT.atoll.TEST."


async def test_ecs_geo_selection_over_the_wire(server: DnsServer) -> None:
    for subnet, expected in (
        ("10.1.5.0", "192.0.2.1"),
        ("10.2.5.0", "192.0.2.2"),
        ("10.3.5.0", "192.0.2.3"),
    ):
        msg = await udp(
            server, "web.default.atoll.test", use_edns=0, options=[dns.edns.ECSOption(subnet, 24)]
        )
        assert rdatas(msg) == [expected]
        assert msg.options[0].scopelen == 16


async def test_truncation_then_tcp_retry(tmp_path: Path) -> None:
    many = [f"198.51.100.{i}" for i in range(1, 61)]
    snap = build_zone(
        config(), [make_import("default", "big", [("eu1", "eu-west", many, True)])], [], []
    )
    srv = DnsServer(config(), registry=None)
    await srv.start(snap)
    try:
        truncated = await udp(srv, "big.default.atoll.test")
        assert truncated.flags & dns.flags.TC and not truncated.answer
        q = dns.message.make_query("big.default.atoll.test", "A")
        full, used_tcp = await dns.asyncquery.udp_with_fallback(
            q, HOST, port=srv.udp_address[1], timeout=2
        )
        assert used_tcp and len(rdatas(full)) == 60
    finally:
        await srv.stop()


async def test_garbage_then_valid_query_still_answered(server: DnsServer) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for junk in (b"", b"\x00", os.urandom(3), os.urandom(40), b"\xff" * 512, os.urandom(1400)):
            await loop.sock_sendto(sock, junk, server.udp_address)
        q = dns.message.make_query("api.default.atoll.test", "A")
        await loop.sock_sendto(sock, q.to_wire(), server.udp_address)
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
            reply = dns.message.from_wire(data)
            if reply.id == q.id:
                break
        assert rdatas(reply) == ["192.0.2.1"]
    finally:
        sock.close()
    assert server.metrics.errors == 0


async def test_tcp_pipelining_and_idle_timeout(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(*server.tcp_address)
    try:
        queries = [
            dns.message.make_query(n, "A")
            for n in ("api.default.atoll.test", "nope.atoll.test", "web.default.atoll.test")
        ]
        writer.write(
            b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries))
        )
        await writer.drain()
        replies = []
        for _ in queries:
            size = int.from_bytes(await reader.readexactly(2), "big")
            replies.append(dns.message.from_wire(await reader.readexactly(size)))
        assert [r.id for r in replies] == [q.id for q in queries]
        assert [r.rcode() for r in replies] == [
            dns.rcode.NOERROR,
            dns.rcode.NXDOMAIN,
            dns.rcode.NOERROR,
        ]
        # idle timeout (0.5 s in this fixture) closes the connection
        assert await asyncio.wait_for(reader.read(1), 5) == b""
    finally:
        writer.close()


async def test_apply_swaps_persists_and_survives_restart(server: DnsServer, tmp_path: Path) -> None:
    cfg = config()
    old = server.snapshot
    assert old is not None
    moved = build_zone(
        cfg,
        [make_import("default", "api", [("eu1", "eu-west", ["203.0.113.7"], True)])],
        [make_policy("default", "api", strategy="failover", priorities=[["eu1"]])],
        [make_region("eu-west", 53.3, -6.3)],
        previous=old,
    )
    stop = asyncio.Event()
    seen: set[tuple[str, ...]] = set()

    async def hammer() -> None:
        while not stop.is_set():
            seen.add(tuple(rdatas(await udp(server, "api.default.atoll.test"))))

    task = asyncio.gather(hammer(), hammer())
    await asyncio.sleep(0.05)
    assert await server.apply(moved) is True
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert seen <= {("192.0.2.1",), ("203.0.113.7",)}
    assert ("203.0.113.7",) in seen
    assert await server.apply(moved) is False  # same snapshot again: no-op
    assert (tmp_path / STATE_FILE).exists()

    # a new server with the same state dir answers from the persisted zone, no control plane
    second = DnsServer(config(listen_host="127.0.30.2"), state_dir=tmp_path, registry=None)
    await second.start()
    try:
        assert rdatas(await udp(second, "api.default.atoll.test")) == ["203.0.113.7"]
        assert second.snapshot == moved
    finally:
        await second.stop()


async def test_server_without_zone_servfails_until_first_apply(tmp_path: Path) -> None:
    srv = DnsServer(config(), state_dir=tmp_path, registry=None)
    await srv.start()
    try:
        assert (await udp(srv, "api.default.atoll.test")).rcode() == dns.rcode.SERVFAIL
        assert (await udp(srv, "example.com")).rcode() == dns.rcode.REFUSED
        await srv.apply(sample_snapshot(config()))
        assert rdatas(await udp(srv, "api.default.atoll.test")) == ["192.0.2.1"]
        with pytest.raises(Exception, match="zone"):
            await srv.apply(sample_snapshot(sample_config(zone="other.test.")))
    finally:
        await srv.stop()


async def test_corrupt_state_file_is_ignored_on_start(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b'{"format": 1, "kind": "atoll-dns-zone", "payl')
    srv = DnsServer(config(), state_dir=tmp_path, registry=None)
    await srv.start()
    try:
        assert srv.snapshot is None
        assert (await udp(srv, "api.default.atoll.test")).rcode() == dns.rcode.SERVFAIL
    finally:
        await srv.stop()


async def test_metrics_exposition(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    srv = DnsServer(config(latency_sample_every=1), registry=registry)
    await srv.start(sample_snapshot(config()))
    try:
        await udp(srv, "web.default.atoll.test")
        await udp(srv, "nope.atoll.test", "AAAA")
        text = generate_latest(registry).decode()
    finally:
        await srv.stop()
    assert 'atoll_dns_queries_total{qtype="A",rcode="NOERROR",strategy="geo"} 1.0' in text
    assert 'atoll_dns_queries_total{qtype="AAAA",rcode="NXDOMAIN",strategy="none"} 1.0' in text
    assert "atoll_dns_answer_latency_seconds_count 2.0" in text
    assert f"atoll_dns_zone_serial {float(srv.snapshot.serial)}" in text  # type: ignore[union-attr]
    assert 'atoll_dns_healthy_targets{name="web.default.atoll.test."} 3.0' in text


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) not installed")
async def test_dig_output(server: DnsServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        "dig",
        f"@{HOST}",
        "-p",
        str(server.udp_address[1]),
        "WEB.default.atoll.test",
        "A",
        "+subnet=10.3.0.0/24",
        "+norecurse",
        "+tries=1",
        "+time=2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    text = out.decode()
    assert "status: NOERROR" in text
    assert "flags: qr aa;" in text
    assert "CLIENT-SUBNET: 10.3.0.0/24/16" in text
    assert "udp: 1232" in text
    lines = [line.split() for line in text.splitlines() if line and not line.startswith(";")]
    assert ["WEB.default.atoll.test.", "30", "IN", "A", "192.0.2.3"] in lines


async def test_reuseport_workers_share_the_port_and_follow_applies(tmp_path: Path) -> None:
    srv = DnsServer(config(listen_host="127.0.30.3", workers=2), state_dir=tmp_path, registry=None)
    await srv.start(sample_snapshot(config()))
    try:
        moved = build_zone(
            config(),
            [make_import("default", "api", [("eu1", "eu-west", ["203.0.113.9"], True)])],
            [],
            [],
            previous=srv.snapshot,
        )
        await srv.apply(moved)
        answers: set[tuple[str, ...]] = set()
        for _ in range(32):  # a fresh source port each: the kernel spreads them over both sockets
            answers.add(tuple(rdatas(await udp(srv, "api.default.atoll.test"))))
        assert answers == {("203.0.113.9",)}
        in_parent = sum(srv.engine.totals().values())  # type: ignore[union-attr]
        in_worker = 0
        for _ in range(50):  # workers report their counters every second
            in_worker = sum(sum(w.counts.values()) for w in srv.metrics.workers.values())
            if in_worker + in_parent == 32:
                break
            await asyncio.sleep(0.1)
        assert in_worker > 0 and in_parent > 0
        assert in_worker + in_parent == 32
    finally:
        await srv.stop()


@pytest.mark.parametrize("batch", [True, False], ids=["recvmmsg", "protocol"])
async def test_geo_by_resolver_address_repeated_queries(batch: bool) -> None:
    """The same query bytes from resolvers in two regions get per-region answers, memo or not."""
    cfg = config(
        udp_batch=batch,
        client_networks=[
            {"network": "127.0.30.101/32", "region": "eu-west"},
            {"network": "127.0.30.102/32", "region": "us-east"},
        ],
    )
    srv = DnsServer(cfg, registry=None)
    await srv.start(sample_snapshot(cfg))
    loop = asyncio.get_running_loop()
    wire = dns.message.make_query("web.default.atoll.test", "A").to_wire()
    try:
        for source, expected in (("127.0.30.101", "192.0.2.1"), ("127.0.30.102", "192.0.2.2")) * 3:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((source, 0))
            try:
                await loop.sock_sendto(sock, wire, srv.udp_address)
                reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 2))
            finally:
                sock.close()
            assert rdatas(reply) == [expected], source
        assert srv.engine is not None and srv.engine.slow_calls == 0
        assert sum(srv.engine.totals().values()) == 6
    finally:
        await srv.stop()


async def test_other_clusters_are_answered_with_the_egress_over_the_wire(tmp_path: Path) -> None:
    """egress_address: a real query never hands out another cluster's endpoints."""
    cfg = config(cluster="eu1", egress_address="127.0.1.2")
    srv = DnsServer(cfg, state_dir=tmp_path, registry=CollectorRegistry())
    await srv.start(sample_snapshot(cfg))
    try:
        # api: failover eu1 first -> the server's own cluster, its endpoints directly
        assert rdatas(await udp(srv, "api.default.atoll.test.")) == ["192.0.2.1"]
        # web: geo, a us-east client -> us1, reached through this cluster's egress
        ecs = dns.edns.ECSOption("10.2.0.0", 16)
        msg = await udp(srv, "web.default.atoll.test.", use_edns=0, options=[ecs])
        assert rdatas(msg) == ["127.0.1.2"]
        assert (
            rdatas(await tcp(srv, "web.default.atoll.test.", "AAAA", use_edns=0, options=[ecs]))
            == []
        )
    finally:
        await srv.stop()
