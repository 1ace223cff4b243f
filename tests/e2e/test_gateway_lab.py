"""East-west gateways in the whole lab, as real processes (issue 5's lab test).

A client in cluster A (eu-west-1) calls ``demo/web`` on A's egress listener in
plain HTTP; a TrafficPolicy sends ``demo/web`` to cluster B (us-east-1) only, so
A's gateway originates mTLS with A's SVID to B's gateway, which terminates it,
authorizes A's ID and forwards to B's demo server with a PROXY v2 header: the
service in B answers with A's SPIFFE ID. The lab runs with ``--dns-via-gateways``:
a client that only knows the service's name gets A's egress from A's DNS server
and lands on the same path.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from tests.e2e.labproc import running_lab
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

LOOPBACK = "127.91"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("gateway-lab")
    args = ("--loopback", LOOPBACK, "--lease-ttl", "3", "--wait", "60", "--dns-via-gateways")
    with running_lab(state, *args, within=90) as (_proc, manifest):
        yield manifest


def send_web_to(lab: dict[str, Any], cluster: str) -> None:
    """A TrafficPolicy sending demo/web to ``cluster`` only."""
    policy = {
        "kind": "TrafficPolicy",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"strategy": "failover", "priorities": [[cluster]]},
    }
    r = httpx.put(lab["control_plane"]["api"] + "/v1/policies/demo/web", json=policy, timeout=5)
    assert r.status_code in (200, 201), r.text


def test_every_cluster_runs_a_connected_gateway(lab: dict[str, Any]) -> None:
    api = lab["control_plane"]["api"]
    nodes = {n["id"]: n for n in httpx.get(api + "/v1/nodes", timeout=5).json()}
    for c in lab["clusters"]:
        gw = c["gateway"]
        assert gw["listen"] == f"{c['address']}:15443"
        assert not any("--insecure" in a for a in gw["argv"])
        status = httpx.get(gw["url"] + "/v1/status", timeout=5).json()
        assert status["spiffe_id"] == f"spiffe://{c['name']}.atoll.lab/atoll/gateway"
        assert nodes[f"gateway/{c['name']}"]["connected"]
        cluster = httpx.get(f"{api}/v1/clusters/{c['name']}", timeout=5).json()
        assert cluster["cluster"]["spec"]["addresses"]["gateway"] == gw["listen"]


def test_client_in_a_reaches_b_through_both_gateways_and_b_sees_a(lab: dict[str, Any]) -> None:
    a, b = lab["clusters"][0], lab["clusters"][1]
    send_web_to(lab, b["name"])

    def routed_to_b() -> bool:
        st = httpx.get(a["gateway"]["url"] + "/v1/status", timeout=5).json()
        web = next((e for e in st["egress"] if e["service"] == "demo/web"), None)
        return web is not None and web["decisions"] == [[b["name"]]]

    wait_for("A's egress follows the failover policy to B", routed_to_b, timeout=30)
    egress = f"http://{a['gateway']['egress_host']}:8080/"
    doc = httpx.get(egress, timeout=10).json()
    assert doc["cluster"] == b["name"]
    assert doc["peer_spiffe_id"] == f"spiffe://{a['name']}.atoll.lab/atoll/gateway"
    assert doc["sni"] == f"8080.web.demo.svc.{b['name']}.atoll.test"
    assert doc["instance"].startswith(f"{LOOPBACK}.2.")

    def counted(url: str, needle: str) -> bool:
        return needle in httpx.get(url + "/metrics", timeout=5).text

    assert counted(
        a["gateway"]["url"],
        f'atoll_gateway_connections_total{{destination_cluster="{b["name"]}",listener="egress",'
        f'mode="egress",source_cluster="{a["name"]}"}}',
    )
    wait_for(
        "B's gateway counted the terminated connection from A",
        partial(
            counted,
            b["gateway"]["url"],
            f'atoll_gateway_connections_total{{destination_cluster="{b["name"]}",'
            f'listener="inbound",mode="terminate",source_cluster="{a["name"]}"}}',
        ),
    )


def test_a_client_resolving_the_name_in_a_is_sent_through_the_gateways(
    lab: dict[str, Any],
) -> None:
    a, b = lab["clusters"][0], lab["clusters"][1]
    send_web_to(lab, b["name"])
    host, _, port = a["dns"]["listen"].rpartition(":")

    def answer() -> list[str]:
        q = dns.message.make_query("web.demo.atoll.test.", "A")
        resp = dns.query.udp(q, host, port=int(port), timeout=2)
        return sorted(
            rr.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
        )

    egress = a["gateway"]["egress_host"]
    # B's endpoints are never handed to A's clients: A's egress is
    wait_for("A's DNS answers A's egress for B's service", lambda: answer() == [egress], timeout=30)
    doc = httpx.get(f"http://{answer()[0]}:8080/", timeout=10).json()
    assert doc["cluster"] == b["name"]
    assert doc["peer_spiffe_id"] == f"spiffe://{a['name']}.atoll.lab/atoll/gateway"
