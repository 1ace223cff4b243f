"""recvmmsg/sendmmsg batches on real loopback sockets: mapping of answers to senders."""

from __future__ import annotations

import socket

import dns.message
import dns.rcode
import pytest

from atoll_dns.fastpath import FastEngine, compile_zone
from atoll_dns.geo import Locator
from atoll_dns.metrics import DnsMetrics
from atoll_dns.server import PacketHandler
from atoll_dns.testing import sample_config, sample_snapshot
from atoll_dns.udpbatch import BatchUdp, batch_supported
from atoll_dns.zoneview import ZoneView

pytestmark = pytest.mark.skipif(not batch_supported(), reason="recvmmsg/sendmmsg not available")


def handler() -> PacketHandler:
    cfg = sample_config(
        client_networks=[
            {"network": "127.0.30.41/32", "region": "eu-west"},
            {"network": "127.0.30.42/32", "region": "us-east"},
        ]
    )
    snap = sample_snapshot(cfg)
    view = ZoneView(snap)
    loc = Locator(snap.client_networks)
    engine = FastEngine(loc, view.origin, max_udp=1232)
    engine.load(compile_zone(view), loc)
    return PacketHandler(engine, DnsMetrics(), sample_every=1)


def udp_socket(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(2)
    return s


def recv_all(sock: socket.socket) -> list[dns.message.Message]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(dns.message.from_wire(sock.recv(4096)))
    except BlockingIOError:
        return out


def test_batch_maps_each_answer_to_its_sender_across_gaps() -> None:
    h = handler()
    server = udp_socket(socket.AF_INET, "127.0.30.40")
    batch = BatchUdp(server, h, batch=8)
    server.setblocking(False)
    a = udp_socket(socket.AF_INET, "127.0.30.41")
    b = udp_socket(socket.AF_INET, "127.0.30.42")
    addr = server.getsockname()
    qa = dns.message.make_query("web.default.atoll.test", "A")
    qb = dns.message.make_query("web.default.atoll.test", "A")
    qa2 = dns.message.make_query("nope.atoll.test", "A")
    try:
        # garbage first (no answer), an oversized datagram (dropped), then queries
        a.sendto(b"\x00\x01garbage", addr)
        b.sendto(b"\x00" * 5000, addr)
        a.sendto(qa.to_wire(), addr)
        b.sendto(qb.to_wire(), addr)
        a.sendto(b"\xff" * 3, addr)
        a.sendto(qa2.to_wire(), addr)
        for _ in range(2):  # more datagrams than one batch of 8: and the memo is warm now
            b.sendto(qb.to_wire(), addr)
        batch._drain()
        got_a = recv_all(a)
        got_b = recv_all(b)
    finally:
        for s in (a, b):
            s.close()
        batch.close()
    assert [m.id for m in got_a] == [qa.id, qa2.id]
    assert [m.answer[0][0].to_text() for m in got_a[:1]] == ["192.0.2.1"]  # eu-west resolver
    assert got_a[1].rcode() == dns.rcode.NXDOMAIN
    assert [m.id for m in got_b] == [qb.id] * 3
    assert {m.answer[0][0].to_text() for m in got_b} == {"192.0.2.2"}  # us-east resolver
    assert h.metrics.dropped >= 3  # two garbage packets and the oversized one
    assert h.metrics.latency_counts != [0] * len(h.metrics.latency_counts)


def test_batch_on_ipv6_loopback() -> None:
    try:
        server = udp_socket(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    h = handler()
    batch = BatchUdp(server, h)
    server.setblocking(False)
    client = udp_socket(socket.AF_INET6, "::1")
    q = dns.message.make_query("api.default.atoll.test", "AAAA")
    try:
        for _ in range(3):
            client.sendto(q.to_wire(), server.getsockname())
        batch._drain()
        got = recv_all(client)
    finally:
        client.close()
        batch.close()
    assert len(got) == 3
    assert {m.answer[0][0].to_text() for m in got} == {"2001:db8::1"}


def test_memo_starts_over_when_its_address_budget_is_spent() -> None:
    h = handler()
    zone = h.engine.zone
    assert zone is not None
    server = udp_socket(socket.AF_INET, "127.0.30.40")
    batch = BatchUdp(server, h)
    server.setblocking(False)
    a = udp_socket(socket.AF_INET, "127.0.30.41")
    b = udp_socket(socket.AF_INET, "127.0.30.42")
    wire = dns.message.make_query("web.default.atoll.test", "A").to_wire()
    try:
        for sock in (a, b):  # warm: both regions' answers memoised
            sock.sendto(wire, server.getsockname())
            batch._drain()
        zone.address_budget = 1  # the next resolver address remembered spends it
        for sock in (a, b, a, b):
            sock.sendto(wire, server.getsockname())
        batch._drain()
        got_a, got_b = recv_all(a), recv_all(b)
    finally:
        for s in (a, b):
            s.close()
        batch.close()
    assert [m.answer[0][0].to_text() for m in got_a] == ["192.0.2.1"] * 3
    assert [m.answer[0][0].to_text() for m in got_b] == ["192.0.2.2"] * 3
    assert zone.address_budget > 1  # the memo started over
    assert sum(h.engine.totals().values()) == 6  # no hit lost by the reset
