"""Active probes against real listeners: a DNS server and a TLS gateway, up and down."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atoll.control.quorum import probe_verdicts
from atoll_agent.probes import Prober, check_dns, check_gateway
from atoll_dns.config import DnsConfig
from atoll_dns.server import DnsServer
from tests.certkit import self_signed

HOST = "127.0.63.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def dns_server() -> AsyncIterator[str]:
    server = DnsServer(DnsConfig(listen_host=HOST, listen_port=0), registry=None)
    await server.start()
    host, port = server.udp_address[:2]
    yield f"{host}:{port}"
    await server.stop()


@pytest.fixture
async def tls_listener(tmp_path: Path) -> AsyncIterator[str]:
    """A TLS server that refuses unknown names with an alert, as a gateway does."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(
        *self_signed("gateway").write_pem(tmp_path / "cert.pem", tmp_path / "key.pem")
    )

    def refuse(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int:
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    ctx.sni_callback = refuse
    server = await asyncio.start_server(lambda r, w: w.close(), HOST, 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    yield f"{HOST}:{port}"
    server.close()
    await server.wait_closed()


async def test_checks_see_live_and_dead_components(dns_server: str, tls_listener: str) -> None:
    assert (await check_dns(dns_server))[0] is True
    up, detail = await check_gateway(tls_listener)
    assert up, detail
    dead = f"{HOST}:{free_port()}"
    assert (await check_dns(dead))[0] is False
    assert (await check_gateway(dead))[0] is False


async def test_probe_report_feeds_the_quorum(dns_server: str, tls_listener: str) -> None:
    dead = f"{HOST}:{free_port()}"
    reports = []
    for vantage in ("a", "b"):
        p = Prober(vantage, rise=1, fall=1)
        p.set_targets(
            {
                "c": {"dns": dns_server, "gateway": tls_listener},
                "d": {"dns": dns_server, "gateway": dead},
                vantage: {"dns": dead},  # itself: never probed
            }
        )
        p.hysteresis, details = await p.round()
        from atoll_agent.probes import build_probe_report

        reports.append(build_probe_report(vantage, p.hysteresis, details, interval=1.0))
    results = {(r.target, r.path): r.up for r in reports[0].spec.results}
    assert results == {
        ("c", "dns"): True,
        ("c", "gateway"): True,
        ("d", "dns"): True,
        ("d", "gateway"): False,
    }
    verdicts = probe_verdicts(reports, {"a", "b", "c", "d"})
    assert not verdicts["c"].failed
    assert verdicts["d"].failed, "a dead gateway seen by a quorum fails the cluster"
