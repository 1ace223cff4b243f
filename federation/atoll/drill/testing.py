"""In-memory fakes of the drill runner's collaborators, for unit tests.

A tiny simulated federation: clusters with one address per service, DNS
servers that stop answering with a disrupted cluster ``delay`` seconds (of
fake time) after the disruption, and a control-plane API with CAS on the
drill's revision. Shipped with the package so the runner's behaviour is
tested through the same seams production uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from atoll.errors import ConflictError, NotFoundError
from atoll.model import (
    Cluster,
    ClusterSpec,
    Drill,
    DrillStatus,
    ImportTarget,
    Metadata,
    ServiceImport,
    ServiceImportSpec,
    ServicePort,
)
from atoll.model.cluster import AdminState

__all__ = ["FakeClock", "FakeDisruptor", "FakeFederation", "FakeResolver", "FakeRouteProbe"]


@dataclass
class FakeClock:
    t: float = 1000.0
    epoch: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.001)
        await asyncio.sleep(0)  # still yield, as a real sleep would


@dataclass
class FakeFederation:
    """Clusters, imports and the drill store of a fake control plane."""

    clock: FakeClock
    names: list[str] = field(default_factory=lambda: ["a", "b", "c"])
    services: list[str] = field(default_factory=lambda: ["web"])
    drills: dict[str, Drill] = field(default_factory=dict)
    admin: dict[str, AdminState] = field(default_factory=dict)
    revision: int = 1
    death_bound: float = 5.8
    drain_bound: float = 0.55

    def address(self, cluster: str, service: str) -> str:
        return f"10.{self.names.index(cluster) + 1}.{self.services.index(service)}.1"

    def add(self, drill: Drill) -> Drill:
        self.revision += 1
        stored = drill.with_revision(self.revision, self.revision)
        self.drills[drill.metadata.name] = stored
        return stored

    # -- DrillApi -----------------------------------------------------------------
    async def get_drill(self, name: str) -> Drill:
        try:
            return self.drills[name]
        except KeyError:
            raise NotFoundError(name) from None

    async def put_status(self, drill: Drill, status: DrillStatus) -> Drill:
        current = self.drills[drill.metadata.name]
        if current.metadata.revision != drill.metadata.revision:
            raise ConflictError(
                drill.key(),
                expected=drill.metadata.revision,
                actual_revision=current.metadata.revision,
            )
        self.revision += 1
        stored = current.model_copy(update={"status": status}).with_revision(
            self.revision, current.metadata.created_revision
        )
        self.drills[drill.metadata.name] = stored
        return stored

    async def clusters(self) -> list[Cluster]:
        return [
            Cluster(
                metadata=Metadata(name=c),
                spec=ClusterSpec(
                    region=f"r-{c}",
                    admin_state=self.admin.get(c, "active"),
                    addresses={"dns": f"dns-{c}:53", "gateway-admin": f"http://gw-{c}"},
                ),
            )
            for c in self.names
        ]

    async def imports(self) -> list[ServiceImport]:
        return [
            ServiceImport(
                metadata=Metadata(name=s, namespace="demo"),
                spec=ServiceImportSpec(
                    ports=[ServicePort(port=80)],
                    targets=[
                        ImportTarget(
                            cluster=c,
                            region=f"r-{c}",
                            addresses=[self.address(c, s)],
                            endpoints_healthy=2,
                            endpoints_total=2,
                            healthy=True,
                        )
                        for c in self.names
                    ],
                ),
            )
            for s in self.services
        ]

    async def bounds(self) -> tuple[float, float]:
        return self.death_bound, self.drain_bound


@dataclass
class FakeDisruptor:
    """Drains by admin state; DNS servers notice after ``delay`` (per server)."""

    federation: FakeFederation
    delay: Mapping[str, float] = field(default_factory=dict)
    default_delay: float = 0.2
    kind: str = "drain"
    disrupted_at: dict[str, float] = field(default_factory=dict)
    restored_at: dict[str, float] = field(default_factory=dict)
    disrupt_calls: int = 0
    restore_calls: list[dict[str, AdminState]] = field(default_factory=list)

    async def disrupt(self, clusters: Sequence[str]) -> None:
        self.disrupt_calls += 1
        for c in clusters:
            self.federation.admin[c] = "drained"
            self.disrupted_at[c] = self.federation.clock.t
            self.restored_at.pop(c, None)

    async def restore(self, states: Mapping[str, AdminState]) -> None:
        self.restore_calls.append(dict(states))
        for c, s in states.items():
            self.federation.admin[c] = s
            self.restored_at[c] = self.federation.clock.t

    def servers_down(self, clusters: Sequence[str]) -> set[str]:
        return set()


@dataclass
class FakeResolver:
    disruptor: FakeDisruptor
    queries: int = 0

    async def addresses(self, server: str, qname: str) -> frozenset[str] | None:
        self.queries += 1
        fed = self.disruptor.federation
        now = fed.clock.t
        cluster_of_server = server.split(":")[0].removeprefix("dns-")
        lag = self.disruptor.delay.get(cluster_of_server, self.disruptor.default_delay)
        service = qname.split(".")[0]
        out = set()
        for c in fed.names:
            gone_at = self.disruptor.disrupted_at.get(c)
            back_at = self.disruptor.restored_at.get(c)
            gone = gone_at is not None and now >= gone_at + lag
            back = back_at is not None and now >= back_at + lag
            if not gone or back:
                out.add(fed.address(c, service))
        return frozenset(out)


@dataclass
class FakeRouteProbe:
    """A gateway's egress stops picking a disrupted cluster ``delay`` seconds later."""

    disruptor: FakeDisruptor
    delay: float = 0.1

    async def routes(self, admin_url: str) -> dict[str, frozenset[str]] | None:
        fed = self.disruptor.federation
        now = fed.clock.t
        picked = set()
        for c in fed.names:
            gone_at = self.disruptor.disrupted_at.get(c)
            back_at = self.disruptor.restored_at.get(c)
            gone = gone_at is not None and now >= gone_at + self.delay
            back = back_at is not None and now >= back_at + self.delay
            if not gone or back:
                picked.add(c)
        return {f"demo/{s}": frozenset(picked) for s in fed.services}
