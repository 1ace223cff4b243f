"""Failover drills in the real lab, with a real Redis broker and a real Celery worker.

A lab of three clusters (lease 3 s) runs with ``--broker redis://...``; the
CLI drives drills end to end: dry run, what-if, a drain drill, a region
drill, a chaos kill of a whole cluster, and a worker SIGKILLed in the middle
of a drill, which the control plane's janitor hands to a new worker that
resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import httpx
import pytest

from atoll.testing.redis import RedisServer, redis_binary
from tests.e2e.labproc import reap, running_lab
from tests.polling import wait_for

pytestmark = pytest.mark.e2e

LOOPBACK = "127.62"
LEASE = 3
API = f"http://{LOOPBACK}.0.1:7070"


class DrillLab:
    def __init__(self, state: Path, proc: subprocess.Popen[bytes], manifest: dict[str, Any]):
        self.state = state
        self.proc = proc
        self.m = manifest
        self.extra: list[subprocess.Popen[bytes]] = []

    def atoll(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "atoll", "--state-dir", str(self.state), *args],
            capture_output=True, text=True, check=check, timeout=timeout,
        )  # fmt: skip

    def json(self, *args: str) -> Any:
        out = self.atoll(*args, "--output", "json", check=False)
        assert out.stdout.strip(), out.stderr[-2000:]
        return json.loads(out.stdout)

    def admin_state(self, cluster: str) -> str:
        return str(
            httpx.get(f"{API}/v1/clusters/{cluster}").json()["cluster"]["spec"]["admin_state"]
        )

    def dns_clusters(self, i: int, name: str = "web.demo") -> set[str]:
        """Which clusters' demo addresses cluster i's DNS server answers (by third octet)."""
        c = self.m["clusters"][i]
        host, _, port = c["dns"]["listen"].rpartition(":")
        q = dns.message.make_query(f"{name}.{self.m['zone']}", "A")
        resp = dns.query.udp(q, host, port=int(port), timeout=2.0)
        octets = {rr.address.split(".")[2] for rrset in resp.answer for rr in rrset}
        return {self.m["clusters"][int(o) - 1]["name"] for o in octets}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillLab]:
    if redis_binary() is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    state = tmp_path_factory.mktemp("drill-lab")
    with RedisServer(host=f"{LOOPBACK}.0.9") as redis:
        args = ("--loopback", LOOPBACK, "--lease-ttl", str(LEASE), "--broker", redis.url)
        with running_lab(state, *args, "--wait", "90") as (proc, manifest):
            lab = DrillLab(state, proc, manifest)
            try:
                yield lab
            finally:
                reap(lab.extra)


def test_dry_run_predicts_and_changes_nothing(lab: DrillLab) -> None:
    doc = lab.json("drill", "failover", "--cluster", "eu-west-1", "--dry-run")
    plan = {r["service"]: r for r in doc["plan"]}
    assert set(plan) == {"demo/web", "demo/api"}
    assert plan["demo/web"]["remaining"] == ["ap-south-1", "us-east-1"]
    assert all("eu-west-1" not in p["after"] for p in doc["predictions"])
    assert lab.admin_state("eu-west-1") == "active"
    assert lab.json("drill", "list") == [], "a dry run records no drill"


def test_what_if_two_clusters_fail(lab: DrillLab) -> None:
    doc = lab.json("what-if", "--down", "eu-west-1,us-east-1")
    assert doc["predictions"] and all(p["after"] == ["ap-south-1"] for p in doc["predictions"])
    bad = lab.atoll("what-if", "--down", "nowhere", check=False)
    assert bad.returncode != 0 and "unknown cluster" in bad.stderr


def test_failover_drill_meets_the_bound_and_restores(lab: DrillLab) -> None:
    doc = lab.json("drill", "failover", "--cluster", "eu-west-1", "--hold", "1")
    st = doc["status"]
    assert st["phase"] == "succeeded", st["error"]
    timings = httpx.get(f"{API}/v1/timings").json()
    assert st["bound_seconds"] == timings["drain_withdrawal"]
    fo = [m for m in st["measurements"] if m["phase"] == "failover"]
    names = {c["name"] for c in lab.m["clusters"]}
    assert {m["server"] for m in fo if m["path"] == "dns"} == names
    assert {m["server"] for m in fo if m["path"] == "gateway"} == names, "egress routes verified"
    assert all(m["within_bound"] and m["seconds"] <= st["bound_seconds"] for m in fo)
    assert lab.admin_state("eu-west-1") == "active"
    for i in range(3):
        assert "eu-west-1" in lab.dns_clusters(i)
    text = lab.atoll("drill", "show", doc["metadata"]["name"], "--output", "text").stdout
    assert "failed over in" in text and "Result:" in text


def test_region_drill_takes_every_cluster_of_the_region(lab: DrillLab) -> None:
    doc = lab.json("drill", "failover", "--region", "us-east", "--hold", "0")
    assert doc["spec"]["clusters"] == ["us-east-1"]
    assert doc["status"]["phase"] == "succeeded", doc["status"]["error"]


def test_chaos_kill_withdraws_within_the_lease_bound(lab: DrillLab) -> None:
    before = {c["name"]: c["agent"]["pid"] for c in lab.m["clusters"]}
    doc = lab.json("drill", "chaos", "--cluster", "ap-south-1", "--hold", "1")
    st = doc["status"]
    assert st["phase"] == "succeeded", st["error"]
    death = httpx.get(f"{API}/v1/timings").json()["death_withdrawal"]
    assert st["bound_seconds"] == death
    fo = [m for m in st["measurements"] if m["phase"] == "failover"]
    assert {m["server"] for m in fo} == {"eu-west-1", "us-east-1"}, (
        "the killed DNS server is excluded"
    )
    assert all(m["within_bound"] for m in fo)
    assert all(m["seconds"] >= LEASE - 2.0 for m in fo), "a chaos kill waits for the lease"
    now = json.loads((lab.state / "lab" / "manifest.json").read_text())
    after = {c["name"]: c["agent"]["pid"] for c in now["clusters"]}
    assert after["ap-south-1"] != before["ap-south-1"], "the killed agent was restarted"
    for i in range(3):
        wait_for(f"ap-south-1 back in DNS {i}", lambda i=i: "ap-south-1" in lab.dns_clusters(i))  # type: ignore[misc]
    lab.m = now


def test_worker_killed_mid_drill_is_resumed_by_another(lab: DrillLab) -> None:
    created = lab.json("drill", "failover", "--cluster", "us-east-1", "--hold", "14", "--no-wait")
    name = created["metadata"]["name"]

    def drill() -> dict[str, Any]:
        return dict(httpx.get(f"{API}/v1/drills/{name}").json())

    def holding() -> bool:
        hold = next(s for s in drill()["status"]["steps"] if s["name"] == "hold")
        return bool(hold["state"] == "running")

    wait_for("the drill to hold", holding, timeout=60)
    assert lab.admin_state("us-east-1") == "drained"
    worker = lab.m["worker"]
    os.kill(worker["pid"], signal.SIGKILL)
    # a new worker; the janitor hands it the drill once the old one's heartbeat is stale
    log = open(worker["log"], "ab")  # noqa: SIM115,PTH123 - closed with the process
    lab.extra.append(
        subprocess.Popen(worker["argv"], stdout=log, stderr=log, start_new_session=True)
    )
    done = wait_for(
        "the drill to finish",
        lambda: drill()["status"]["phase"] in ("succeeded", "failed", "rolled_back") and drill(),
        timeout=90,
    )
    st = done["status"]
    assert st["phase"] == "succeeded", st["error"]
    assert st["attempt"] == 2, "resumed by a second worker"
    assert lab.admin_state("us-east-1") == "active", "never left drained"
