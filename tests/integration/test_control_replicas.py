"""Two control-plane replicas on one real etcd: one leader writes derived state;
killing it hands over. Replicas are real `atoll serve` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.model import (
    Cluster,
    ClusterSpec,
    Endpoint,
    Metadata,
    ServiceExport,
    ServiceExportSpec,
    ServicePort,
    encode,
)
from atoll.sync import Item, NodeInfo, SyncClient
from atoll.testing.etcd import EtcdServer, etcd_binary
from tests.polling import eventually

pytestmark = pytest.mark.etcd
HOST = "127.0.62.1"
LEADER_TTL = 2


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Replica:
    def __init__(self, name: str, store_url: str, log: Path) -> None:
        self.name = name
        self.api_port, self.sync_port = free_port(), free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "atoll", "serve",
                "--store", store_url,
                "--api", f"{HOST}:{self.api_port}",
                "--sync", f"{HOST}:{self.sync_port}",
                "--server-id", name,
                "--leader-ttl", str(LEADER_TTL),
                "--lease-ttl", "3",
                "--insecure",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def sync(self) -> str:
        return f"{HOST}:{self.sync_port}"

    def get(self, path: str) -> Any:
        return httpx.get(self.api + path, timeout=3.0).json()

    def reconcile_writes(self) -> float:
        text = httpx.get(self.api + "/metrics", timeout=3.0).text
        for line in text.splitlines():
            if line.startswith("atoll_reconcile_writes_total "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (apt-get install etcd-server)")
    with EtcdServer(host=HOST) as server:
        yield server


@pytest.fixture
def replicas(etcd: EtcdServer, tmp_path: Path) -> Iterator[list[Replica]]:
    reps = [Replica(n, etcd.url, tmp_path / f"{n}.log") for n in ("r1", "r2")]
    try:
        yield reps
    finally:
        for r in reps:
            r.stop()


def export(cluster: str, addr: str) -> Item:
    e = ServiceExport(
        metadata=Metadata(name="web", namespace="demo"),
        spec=ServiceExportSpec(
            cluster=cluster, ports=[ServicePort(port=80)], endpoints=[Endpoint(address=addr)]
        ),
    )
    return Item(name=f"{cluster}/demo/web", version="", body=encode(e))


@pytest.fixture
async def agent_on(replicas: list[Replica]) -> AsyncIterator[Callable[[Replica], SyncClient]]:
    tasks: list[asyncio.Task[None]] = []

    def start(r: Replica) -> SyncClient:
        c = SyncClient(
            target=r.sync,
            node=NodeInfo(id="agent/x", role="agent", cluster="x"),
            types=["ServiceImport"],
            heartbeat=True,
        )
        cl = Cluster(metadata=Metadata(name="x"), spec=ClusterSpec(region="eu"))
        c.set_report("Cluster", [Item(name="x", version="", body=encode(cl))])
        c.set_report("ServiceExport", [export("x", "10.0.0.1")])
        tasks.append(spawn(c.run(), name="agent-x"))
        return c

    yield start
    await cancel_and_wait(*tasks)


def addresses(client: SyncClient) -> list[str]:
    from atoll.model import ServiceImport, decode

    item = client.held.items("ServiceImport").get("demo/web")
    if item is None:
        return []
    imp = decode(ServiceImport, item.body)
    return [a for t in imp.spec.targets for a in t.addresses]


async def test_one_leader_writes_and_killing_it_hands_over(
    replicas: list[Replica], agent_on: Callable[[Replica], SyncClient]
) -> None:
    def ready(r: Replica) -> bool:
        return httpx.get(r.api + "/readyz").status_code == 200

    for r in replicas:
        await eventually(f"{r.name} ready", partial(ready, r))
    statuses = await eventually(
        "exactly one leader",
        lambda: (
            (s := [r.get("/v1/status") for r in replicas])
            and sum(x["is_leader"] for x in s) == 1
            and s
        ),
    )
    leader = next(r for r, s in zip(replicas, statuses, strict=True) if s["is_leader"])
    follower = next(r for r in replicas if r is not leader)
    assert all(s["leader"] == leader.name for s in statuses), "both agree who leads"

    # the agent talks to the follower; the leader derives the import
    client = agent_on(follower)
    await eventually("import derived", lambda: addresses(client) == ["10.0.0.1"])
    assert leader.reconcile_writes() > 0
    assert follower.reconcile_writes() == 0, "only the leader writes derived state"

    # kill the leader: the follower takes over and keeps deriving
    os.kill(leader.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    await eventually(
        "follower becomes leader",
        lambda: follower.get("/v1/status")["is_leader"],
        timeout=LEADER_TTL + 10,
    )
    assert time.monotonic() - killed >= LEADER_TTL - 1.0, (
        "no takeover before the leader lease ran out"
    )
    client.set_report("ServiceExport", [export("x", "10.0.0.2")])
    await eventually("new leader derives", lambda: addresses(client) == ["10.0.0.2"])
    assert follower.reconcile_writes() > 0
