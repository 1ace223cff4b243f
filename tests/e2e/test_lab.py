"""The whole lab as real processes: `atoll up`, then break things and watch.

One lab per module (real control plane, registries and agents on their own
loopback addresses). The steps run in order and each builds on the last, as an
operator's session would: add an instance, kill an agent, kill the control
plane, bring both back, then Ctrl-C the lab.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import httpx
import pytest
from cryptography import x509

from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.clock import system_clock
from atoll_trust.spiffe_id import TrustDomain
from atoll_trust.verify import verify_x509_svid
from tests.e2e.labproc import reap, running_lab
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

LOOPBACK = "127.61"
LEASE = 3


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:  # noqa: PTH123
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


class Lab:
    def __init__(self, proc: subprocess.Popen[bytes], manifest: dict[str, Any]) -> None:
        self.proc = proc
        self.m = manifest
        self.http = httpx.Client(timeout=3.0)
        self.restarted: list[subprocess.Popen[bytes]] = []

    @property
    def api(self) -> str:
        return str(self.m["control_plane"]["api"])

    def cluster(self, i: int) -> dict[str, Any]:
        return dict(self.m["clusters"][i])

    def agent_imports(self, i: int) -> dict[str, set[str]]:
        docs = self.http.get(self.cluster(i)["agent"]["url"] + "/v1/imports").json()
        return {
            f"{d['metadata']['namespace']}/{d['metadata']['name']}": {
                t["cluster"] for t in d["spec"]["targets"]
            }
            for d in docs
        }

    def dns_a(self, i: int, name: str, subnet: str | None = None) -> set[str]:
        """A records the DNS server of cluster ``i`` answers for ``name`` (real UDP query)."""
        options: list[dns.edns.Option] = []
        if subnet is not None:
            addr, _, plen = subnet.partition("/")
            options.append(dns.edns.ECSOption(addr, int(plen)))
        q = dns.message.make_query(f"{name}.{self.m['zone']}", "A", use_edns=0, options=options)
        host, _, port = self.cluster(i)["dns"]["listen"].rpartition(":")
        resp = dns.query.udp(q, host, port=int(port), timeout=2.0)
        return {rr.address for rrset in resp.answer for rr in rrset}

    def cp_imports(self) -> dict[str, dict[str, Any]]:
        docs = self.http.get(self.api + "/v1/imports").json()
        return {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in docs}

    def relaunch(self, entry: dict[str, Any]) -> subprocess.Popen[bytes]:
        log = open(entry["log"], "ab")  # noqa: SIM115,PTH123 - closed with the process
        proc = subprocess.Popen(entry["argv"], stdout=log, stderr=log, start_new_session=True)
        self.restarted.append(proc)
        return proc


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    state = tmp_path_factory.mktemp("lab-state")
    args = ("--loopback", LOOPBACK, "--lease-ttl", str(LEASE), "--wait", "60")
    with running_lab(state, *args, within=90) as (proc, manifest):
        lab = Lab(proc, manifest)
        try:
            yield lab
        finally:
            reap(lab.restarted)


def test_manifest_names_every_component(lab: Lab) -> None:
    m = lab.m
    assert m["control_plane"]["api"] == f"http://{LOOPBACK}.0.1:7070"
    assert len(m["clusters"]) == 3
    assert [c["address"] for c in m["clusters"]] == [f"{LOOPBACK}.{i}.1" for i in (1, 2, 3)]
    for c in m["clusters"]:
        assert alive(c["agent"]["pid"]) and alive(c["registry"]["pid"])
        assert alive(c["dns"]["pid"]) and c["dns"]["listen"] == f"{c['address']}:53"
        # gateways exist since issue 5: one per cluster, on the cluster's address
        assert alive(c["gateway"]["pid"]) and c["gateway"]["listen"] == f"{c['address']}:15443"


def test_everything_runs_over_mtls_with_spiffe_identities(lab: Lab) -> None:
    m = lab.m
    argvs = [m["control_plane"]["argv"]] + [
        c[k]["argv"] for c in m["clusters"] for k in ("agent", "dns", "gateway")
    ]
    assert not any("--insecure" in argv for argv in argvs)
    assert m["control_plane"]["trust_domain"] == "atoll.lab"
    kek = Path(m["control_plane"]["kek_file"])
    assert oct(kek.stat().st_mode & 0o777) == "0o600"
    nodes = {n["id"]: n for n in lab.http.get(lab.api + "/v1/nodes").json()}
    for c in m["clusters"]:
        assert c["trust_domain"] == f"{c['name']}.atoll.lab"
        assert nodes[f"agent/{c['name']}"]["connected"] and nodes[f"dns/{c['name']}"]["connected"]
        status = lab.http.get(c["agent"]["url"] + "/v1/status").json()
        assert status["spiffe_id"] == f"spiffe://atoll.lab/cluster/{c['name']}"
        assert set(status["bundles"]) == {"atoll.lab"} | {
            f"{o['name']}.atoll.lab" for o in m["clusters"]
        }


PY_SPIFFE_ROTATION = r"""
import json, queue, sys
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient

def der(c):
    return c.public_bytes(serialization.Encoding.DER).hex()

def say(**kw):
    print(json.dumps(kw), flush=True)

client = WorkloadApiClient(default_timeout=10)  # SPIFFE_ENDPOINT_SOCKET from the environment
svid = client.fetch_x509_svid()
bundles = client.fetch_x509_bundles()
say(event="svid", spiffe_id=str(svid.spiffe_id), chain=[der(c) for c in svid.cert_chain],
    domains=sorted(str(b.trust_domain) for b in bundles.bundles))
updates = queue.Queue()
handle = client.stream_x509_contexts(on_success=updates.put, on_error=updates.put)
first = None
for n in range(20):
    ctx = updates.get(timeout=60)
    if isinstance(ctx, Exception):
        say(event="error", error=repr(ctx)); sys.exit(1)
    leaf = der(ctx.default_svid.leaf)
    if first is None:
        first = leaf
        say(event="ready")
    elif leaf != first:
        td = ctx.default_svid.spiffe_id.trust_domain
        own = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
        say(event="rotated", chain=[der(c) for c in ctx.default_svid.cert_chain],
            bundle=[der(c) for c in own.x509_authorities])
        break
handle.cancel()
client.close()
"""


def test_py_spiffe_sees_svids_bundles_and_a_forced_rotation(lab: Lab) -> None:
    if importlib.util.find_spec("spiffe") is None:  # never import it here: protos clash
        pytest.skip("the spiffe package (py-spiffe) is not installed")
    c = lab.cluster(1)
    sock = c["workload_sockets"]["web"]
    proc = subprocess.Popen(
        [sys.executable, "-c", PY_SPIFFE_ROTATION],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{sock}"},
    )
    assert proc.stdout is not None
    try:
        first = json.loads(proc.stdout.readline() or b"{}")
        assert first.get("spiffe_id") == f"spiffe://{c['trust_domain']}/demo/web", first
        assert set(first["domains"]) == {"atoll.lab"} | {
            o["trust_domain"] for o in lab.m["clusters"]
        }
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        rotate = subprocess.run(
            [sys.executable, "-m", "atoll", "--api", lab.api, "trust", "rotate",
             "--cluster", c["name"]],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert rotate.returncode == 0, rotate.stderr
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        rotated = json.loads(line)
        assert rotated["event"] == "rotated"
        old_leaf = x509.load_der_x509_certificate(bytes.fromhex(first["chain"][0]))
        new_chain = [x509.load_der_x509_certificate(bytes.fromhex(h)) for h in rotated["chain"]]
        roots = [x509.load_der_x509_certificate(bytes.fromhex(h)) for h in rotated["bundle"]]
        assert new_chain[0].issuer != old_leaf.issuer
        assert len(roots) == 2  # the old CA stays published until its SVIDs expire
        verified = verify_x509_svid(
            new_chain,
            BundleSet([TrustBundle(TrustDomain(c["trust_domain"]), tuple(roots))]),
            now=system_clock(),
        )
        assert str(verified.spiffe_id) == first["spiffe_id"]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "atoll", "--api", lab.api, "trust", "status", "-o", "json"],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    )
    rows = {d["name"]: d for d in status["domains"]}
    row = rows[f"cluster/{c['name']}"]
    assert row["rotated_generation"] == 1 and row["sequence"] >= 2

    def propagated(i: int) -> bool:
        seq = lab.http.get(lab.cluster(i)["agent"]["url"] + "/v1/status").json()["bundles"]
        return bool(seq[c["trust_domain"]] >= 2)

    for i in (0, 2):
        wait_for(f"{lab.cluster(i)['name']} holds the rotated bundle", partial(propagated, i))


def test_federation_ca_rotation_reaches_every_agent(lab: Lab) -> None:
    """Rotate the federation CA (published, then signing after the lab's 3 s lead); the
    control-plane restart further down reconnects every agent and DNS server under it."""
    before = lab.http.get(lab.api + "/v1/trust/status").json()
    r = lab.http.post(lab.api + "/v1/trust/rotate", json={"federation": True})
    assert r.status_code == 202, r.text

    def activated() -> bool:
        doc = lab.http.get(lab.api + "/v1/trust/status").json()
        active = [a for a in doc["authorities"] if a["kind"] == "x509" and a["state"] == "active"]
        old = [a for a in before["authorities"] if a["kind"] == "x509" and a["state"] == "active"]
        return bool(active and old and active[0]["key_id"] != old[0]["key_id"])

    wait_for("the new federation CA signing", activated)

    def agents_hold_it() -> bool:
        seqs = [
            lab.http.get(c["agent"]["url"] + "/v1/status").json()["bundles"]["atoll.lab"]
            for c in lab.m["clusters"]
        ]
        return all(s >= 2 for s in seqs)

    wait_for("every agent holds the rotated federation bundle", agents_hold_it)


def test_every_agent_imports_every_demo_service_from_every_cluster(lab: Lab) -> None:
    names = {c["name"] for c in lab.m["clusters"]}
    for i in range(3):
        imports = lab.agent_imports(i)
        assert imports["demo/web"] == names and imports["demo/api"] == names


def demo_addresses(lab: Lab, service: str, clusters: range | tuple[int, ...]) -> set[str]:
    octet = {"web": (11, 12), "api": (21, 22)}[service]
    return {f"{LOOPBACK}.{i + 1}.{o}" for i in clusters for o in octet}


def test_every_dns_server_answers_with_every_cluster(lab: Lab) -> None:
    for i in range(3):
        assert lab.dns_a(i, "web.demo") == demo_addresses(lab, "web", range(3))
        assert lab.dns_a(i, "api.demo") == demo_addresses(lab, "api", range(3))
    host = lab.cluster(1)["dns"]["listen"].rsplit(":", 1)[0]
    dig = subprocess.run(
        ["dig", f"@{host}", f"web.demo.{lab.m['zone']}", "A", "+short"],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    assert set(dig.stdout.split()) == demo_addresses(lab, "web", range(3))
    nx = subprocess.run(
        ["dig", f"@{host}", f"nope.demo.{lab.m['zone']}", "A"],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    assert "status: NXDOMAIN" in nx.stdout and "SOA" in nx.stdout


def test_geo_policy_answers_by_client_subnet_on_every_server(lab: Lab) -> None:
    policy = {
        "kind": "TrafficPolicy",
        "metadata": {"name": "api", "namespace": "demo"},
        "spec": {"strategy": "geo", "priorities": [[c["name"]] for c in lab.m["clusters"]]},
    }
    assert lab.http.put(lab.api + "/v1/policies/demo/api", json=policy).status_code == 201
    for i in range(3):
        # the lab puts 10.<n>.0.0/16 in region n
        wait_for(
            f"geo answer on {lab.cluster(i)['name']}",
            partial(
                lambda i: (
                    lab.dns_a(i, "api.demo", "10.2.7.0/24") == demo_addresses(lab, "api", (1,))
                ),
                i,
            ),
        )
        assert lab.dns_a(i, "api.demo", "10.3.0.0/24") == demo_addresses(lab, "api", (2,))


def test_new_instance_in_a_is_imported_in_b_and_c(lab: Lab) -> None:
    a = lab.cluster(0)
    base = a["registry"]["url"] + "/v1/services/demo/shop"
    r = lab.http.put(base, json={"ports": [{"name": "http", "port": 8000}], "export": True})
    assert r.status_code == 201, r.text
    r = lab.http.put(
        base + "/instances/shop-1", json={"address": f"{LOOPBACK}.1.31", "health": "passing"}
    )
    assert r.status_code == 201, r.text

    def imported(i: int) -> bool:
        return lab.agent_imports(i).get("demo/shop") == {a["name"]}

    for i in (1, 2):
        wait_for(f"demo/shop imported in {lab.cluster(i)['name']}", partial(imported, i))
    wait_for(
        "the instance's address in the import",
        lambda: (
            lab.cp_imports()["demo/shop"]["spec"]["targets"][0]["addresses"] == [f"{LOOPBACK}.1.31"]
        ),
    )


def test_instance_turning_critical_marks_target_unhealthy(lab: Lab) -> None:
    a = lab.cluster(0)
    url = a["registry"]["url"] + "/v1/services/demo/shop/instances/shop-1/health"
    assert lab.http.put(url, json={"health": "critical"}).status_code == 200

    def unhealthy() -> bool:
        t = lab.cp_imports()["demo/shop"]["spec"]["targets"][0]
        return t["healthy"] is False and t["endpoints_healthy"] == 0

    wait_for("shop target unhealthy", unhealthy)
    status = lab.http.get(lab.api + "/v1/clusters/" + a["name"]).json()
    wait_for(
        "cluster degraded",
        lambda: (
            lab.http.get(lab.api + "/v1/clusters/" + a["name"]).json()["cluster"]["status"][
                "health"
            ]
            == "degraded"
        ),
    )
    assert status["lease_remaining"] is not None


def test_killing_a_agent_withdraws_its_exports_after_the_lease(lab: Lab) -> None:
    a = lab.cluster(0)
    os.kill(a["agent"]["pid"], signal.SIGKILL)
    killed = time.monotonic()

    def withdrawn(i: int) -> bool:
        imports = lab.agent_imports(i)
        return a["name"] not in imports["demo/web"] and "demo/shop" not in imports

    for i in (1, 2):
        wait_for(
            f"{a['name']} withdrawn from {lab.cluster(i)['name']}'s imports",
            partial(withdrawn, i),
            timeout=LEASE + 15,
        )
    elapsed = time.monotonic() - killed
    # the lease is renewed at most every ttl/3 on 1 s heartbeats, i.e. up to ~2 s apart:
    # a crash can leave as little as ttl - 2 s on it, never less
    assert elapsed >= LEASE - 2.2, (
        f"withdrawn after {elapsed:.1f}s, before the {LEASE}s lease could expire"
    )
    export = lab.http.get(f"{lab.api}/v1/exports/{a['name']}/demo/web").json()
    ready = next(c for c in export["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ClusterUnavailable")
    cluster = lab.http.get(f"{lab.api}/v1/clusters/{a['name']}").json()
    assert cluster["lease_remaining"] is None
    assert cluster["cluster"]["status"]["alive"] is False


def test_b_and_c_keep_serving_imports_while_control_plane_is_down(lab: Lab) -> None:
    before = [lab.agent_imports(i) for i in (1, 2)]
    os.kill(lab.m["control_plane"]["pid"], signal.SIGKILL)
    wait_for("control plane down", lambda: not alive(lab.m["control_plane"]["pid"]))
    with pytest.raises(httpx.TransportError):
        lab.http.get(lab.api + "/healthz")
    time.sleep(1.0)
    after = [lab.agent_imports(i) for i in (1, 2)]
    assert after == before and after[0]["demo/web"]
    for i in (1, 2):
        assert lab.dns_a(i, "web.demo") == demo_addresses(lab, "web", (1, 2)), "DNS keeps answering"
    status = lab.http.get(lab.cluster(1)["agent"]["url"] + "/v1/status").json()
    wait_for(
        "agent notices",
        lambda: not lab.http.get(lab.cluster(1)["agent"]["url"] + "/v1/status").json()["connected"],
    )
    assert status["imports"] >= 2


def test_restarted_dns_server_answers_from_its_persisted_zone(lab: Lab) -> None:
    # the control plane is still down: a restarted DNS server has only its disk
    b = lab.cluster(1)
    os.kill(b["dns"]["pid"], signal.SIGKILL)
    wait_for("old DNS server gone", lambda: not alive(b["dns"]["pid"]))
    lab.relaunch(b["dns"])
    wait_for(
        "restarted DNS server answers",
        lambda: lab.dns_a(1, "web.demo") == demo_addresses(lab, "web", (1, 2)),
    )


def test_restarted_agent_serves_persisted_imports_before_reconnecting(lab: Lab) -> None:
    # control plane still down: A's agent restarts from its persisted state
    a = lab.cluster(0)
    lab.relaunch(a["agent"])
    imports = wait_for("A's agent serving", lambda: lab.agent_imports(0), timeout=20)
    assert "demo/web" in imports, "last-known-good imports served without a control plane"


def test_control_plane_restart_converges(lab: Lab) -> None:
    names = {c["name"] for c in lab.m["clusters"]}
    lab.relaunch(lab.m["control_plane"])
    wait_for("control plane ready", lambda: lab.http.get(lab.api + "/readyz").status_code == 200)

    def converged(i: int) -> bool:
        imports = lab.agent_imports(i)
        return imports.get("demo/web") == names and imports.get("demo/shop") == {
            lab.cluster(0)["name"]
        }

    for i in range(3):
        wait_for(f"{lab.cluster(i)['name']} converged", partial(converged, i))
        wait_for(
            f"DNS of {lab.cluster(i)['name']} converged",
            partial(lambda i: lab.dns_a(i, "web.demo") == demo_addresses(lab, "web", range(3)), i),
        )
    status = lab.http.get(lab.api + "/v1/status").json()
    assert status["is_leader"] is True
    assert {
        v["cluster"]["metadata"]["name"]
        for v in status["clusters"]
        if v["cluster"]["status"]["alive"]
    } == names
    # gateways (issue 5) reconnect with their own backoff: wait for them too
    want = {f"{role}/{n}" for n in names for role in ("agent", "dns", "gateway")}

    def all_connected() -> bool:
        nodes = lab.http.get(lab.api + "/v1/status").json()["nodes"]
        return {n["id"] for n in nodes if n["connected"]} == want

    wait_for("every agent, DNS server and gateway reconnected", all_connected)


def test_cli_status_json_and_unreachable_control_plane(lab: Lab, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "atoll", "--api", lab.api, "status", "--output", "json"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    doc = json.loads(out.stdout)
    assert {s["name"] for s in doc["services"]} >= {"web", "api", "shop"}
    bad = subprocess.run(
        [sys.executable, "-m", "atoll", "--api", "http://127.0.0.1:9", "status"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 1
    err = bad.stderr.decode()
    assert "cannot reach the control plane" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3


def test_ctrl_c_stops_everything(lab: Lab) -> None:
    pids = [c[k]["pid"] for c in lab.m["clusters"] for k in ("registry",)] + [
        c["agent"]["pid"] for c in lab.m["clusters"][1:]
    ]
    lab.proc.send_signal(signal.SIGINT)
    assert lab.proc.wait(30) == 0
    out = lab.proc.stdout.read()  # type: ignore[union-attr]
    printed = json.loads(out)
    assert printed["control_plane"]["api"] == lab.api
    for pid in pids:
        wait_for(f"pid {pid} gone", partial(lambda p: not alive(p), pid), timeout=10)
