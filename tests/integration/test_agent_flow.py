"""Agents and a control plane in one process, over real sockets: reports,
imports, drain, authorization of reports, NACK visibility."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from atoll.aio import cancel_and_wait, spawn
from atoll.model import (
    Endpoint,
    Metadata,
    ServiceExport,
    ServiceExportSpec,
    ServicePort,
    encode,
)
from atoll.sync import Item, NodeInfo, SyncClient
from atoll_agent.agent import Agent
from atoll_agent.catalog import FileSource
from atoll_agent.config import AgentConfig
from tests.polling import eventually

from .conftest import RunningPlane


def catalog(path: Path, services: dict[str, list[str]]) -> None:
    doc = {
        "services": [
            {
                "namespace": "demo",
                "name": name,
                "export": True,
                "ports": [{"name": "http", "port": 8080}],
                "instances": [{"id": f"{name}-{i}", "address": a} for i, a in enumerate(addrs)],
            }
            for name, addrs in services.items()
        ]
    }
    path.write_text(yaml.safe_dump(doc))


class Agents:
    def __init__(self, plane: RunningPlane, tmp: Path) -> None:
        self.plane, self.tmp = plane, tmp
        self.tasks: list[asyncio.Task[None]] = []
        self.agents: dict[str, Agent] = {}

    def start(self, cluster: str, region: str, services: dict[str, list[str]]) -> Agent:
        cat = self.tmp / f"{cluster}.yaml"
        catalog(cat, services)
        agent = Agent(
            AgentConfig(
                cluster=cluster,
                region=region,
                control_plane=self.plane.sync,
                catalog_file=cat,
                listen_port=0,
                state_dir=self.tmp / cluster,
                insecure=True,
            ),
            source=FileSource(cat, interval=0.05),
        )
        self.agents[cluster] = agent
        self.tasks.append(spawn(agent.run(), name=f"agent-{cluster}"))
        return agent


@pytest.fixture
async def agents(plane: RunningPlane, tmp_path: Path) -> AsyncIterator[Agents]:
    a = Agents(plane, tmp_path)
    yield a
    await cancel_and_wait(*a.tasks)


def targets(agent: Agent, name: str) -> dict[str, bool]:
    imp = agent.imports.get(f"demo/{name}")
    return {} if imp is None else {t.cluster: t.healthy for t in imp.spec.targets}


async def test_exports_flow_to_every_agent_and_drain_marks_unhealthy(
    agents: Agents, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    a = agents.start("a", "eu", {"web": ["10.0.0.1"], "db": ["10.0.0.2"]})
    b = agents.start("b", "us", {"web": ["10.1.0.1"]})
    await eventually(
        "b imports web from a and b", lambda: targets(b, "web") == {"a": True, "b": True}
    )
    await eventually("a imports db", lambda: targets(a, "db") == {"a": True})

    r = await api.put(
        "/v1/clusters/a/admin-state", json={"admin_state": "drained", "reason": "test"}
    )
    assert r.status_code == 200 and r.json()["spec"]["admin_state"] == "drained"
    await eventually("a drained everywhere", lambda: targets(b, "web") == {"a": False, "b": True})

    # the catalog changes: db is removed from a -> the import disappears
    catalog(tmp_path / "a.yaml", {"web": ["10.0.0.1"]})
    await eventually("db gone", lambda: "demo/db" not in b.imports)
    # the agent re-declaring its cluster does not undo the operator's drain
    cluster = (await api.get("/v1/clusters/a")).json()["cluster"]
    assert cluster["spec"]["admin_state"] == "drained"


async def test_agent_may_not_write_another_clusters_exports(
    plane: RunningPlane, agents: Agents, api: httpx.AsyncClient
) -> None:
    agents.start("a", "eu", {"web": ["10.0.0.1"]})
    await eventually("a's export stored", lambda: _exists(api, "/v1/exports/a/demo/web"))
    rogue = SyncClient(
        target=plane.sync,
        node=NodeInfo(id="agent/b", role="agent", cluster="b"),
        types=["ServiceImport"],
    )
    forged = ServiceExport(
        metadata=Metadata(name="web", namespace="demo"),
        spec=ServiceExportSpec(
            cluster="a", ports=[ServicePort(port=1)], endpoints=[Endpoint(address="6.6.6.6")]
        ),
    )
    rogue.set_report("ServiceExport", [Item(name="a/demo/web", version="", body=encode(forged))])
    task = spawn(rogue.run(), name="rogue")
    try:
        await eventually("report refused", lambda: "ServiceExport" in rogue.status().report_errors)
        assert (
            "may not write exports of cluster 'a'" in rogue.status().report_errors["ServiceExport"]
        )
        stored = (await api.get("/v1/exports/a/demo/web")).json()
        assert [e["address"] for e in stored["spec"]["endpoints"]] == ["10.0.0.1"]
        nodes = {n["id"]: n for n in (await api.get("/v1/nodes")).json()}
        assert "may not write" in (nodes["agent/b"]["last_report_error"] or "")
    finally:
        await cancel_and_wait(task)


async def test_nack_is_visible_in_status(
    plane: RunningPlane, agents: Agents, api: httpx.AsyncClient
) -> None:
    agents.start("a", "eu", {"web": ["10.0.0.1"]})

    def picky(type_: str, item: Item) -> None:
        if b"10.0.0.1" in item.body:
            raise ValueError("address 10.0.0.1 is not routable from here")

    from atoll.sync.client import schema_validator

    sub = SyncClient(
        target=plane.sync,
        node=NodeInfo(id="dns/z", role="dns", cluster="z"),
        types=["ServiceImport"],
        validate=schema_validator(picky),
    )
    task = spawn(sub.run(), name="picky")
    try:
        await eventually("nack", lambda: sub.status().deltas_rejected >= 1)

        async def nack_seen() -> bool:
            nodes = {n["id"]: n for n in (await api.get("/v1/nodes")).json()}
            s = nodes.get("dns/z", {}).get("subscriptions", [])
            return (
                bool(s)
                and s[0]["nacks"] >= 1
                and "not routable" in (s[0]["last_nack_message"] or "")
            )

        await eventually("nack visible in /v1/nodes", nack_seen)
        assert sub.held.items("ServiceImport") == {}, "rejected state not applied"
    finally:
        await cancel_and_wait(task)


async def _exists(api: httpx.AsyncClient, path: str) -> bool:
    return (await api.get(path)).status_code == 200
