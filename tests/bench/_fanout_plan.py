"""The simulated federation of the fan-out benchmark, as pure functions of its config.

Every process of the benchmark (the orchestrator and each worker) derives the
same federation from :class:`FederationSpec` alone, so nothing but the spec
crosses process boundaries:

* agent ``i`` runs cluster ``c00042``-style names in region ``r<i mod regions>``;
* it exports ``exports`` distinct services drawn from a shared pool of
  ``services`` names with a per-agent seeded RNG, so a service is exported by
  ``agents * exports / services`` clusters on average (10 with the defaults
  100 x 20 / 200) — imports have targets in several clusters, as in a real
  federation where one application is deployed to a handful of regions;
* each export has ``endpoints`` endpoints with addresses unique across the
  federation (``10.0.0.0/8`` numbered by agent and export), all healthy at
  the start.

A trial flips the health of endpoint 0 of one export. The import of that
service lists healthy addresses only, so "the change arrived" is visible in
the import's JSON body as the presence or absence of that one quoted address
(:func:`address_marker`) — a byte search, no decoding per agent.
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Mapping, Set
from dataclasses import dataclass

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
from atoll.sync import Item

__all__ = [
    "NAMESPACE",
    "FederationSpec",
    "address_marker",
    "cluster_item",
    "cluster_name",
    "endpoint_address",
    "expected_imports",
    "export_items",
    "healthy_targets",
    "import_name",
    "services_of",
]

NAMESPACE = "bench"
#: addresses are numbered inside 10.0.0.0/8 in blocks of this size per agent
_BLOCK = 1024


@dataclass(frozen=True, slots=True)
class FederationSpec:
    agents: int
    exports: int
    services: int
    endpoints: int
    regions: int
    seed: int

    def check(self) -> None:
        """Raise ValueError when the numbers cannot describe a federation."""
        if self.agents < 1 or self.exports < 1 or self.endpoints < 1 or self.regions < 1:
            raise ValueError("agents, exports, endpoints and regions must be >= 1")
        if self.exports > self.services:
            raise ValueError(
                f"--exports {self.exports} > --services {self.services}: "
                "an agent exports distinct services from the pool"
            )
        if self.exports * self.endpoints >= _BLOCK:
            raise ValueError(f"exports x endpoints must be < {_BLOCK}")
        if self.agents * _BLOCK >= 2**24:
            raise ValueError(f"at most {2**24 // _BLOCK - 1} agents")


def cluster_name(agent: int) -> str:
    return f"c{agent:05d}"


def service_name(index: int) -> str:
    return f"svc-{index:05d}"


def import_name(service: str) -> str:
    """The sync name of a ServiceImport (its store path below the kind's prefix)."""
    return f"{NAMESPACE}/{service}"


def services_of(spec: FederationSpec, agent: int) -> tuple[str, ...]:
    """The services agent ``agent`` exports, in export order (deterministic)."""
    rng = random.Random(f"{spec.seed}:{agent}")
    return tuple(service_name(k) for k in rng.sample(range(spec.services), spec.exports))


def endpoint_address(agent: int, export: int, endpoint: int, *, endpoints: int) -> str:
    offset = agent * _BLOCK + export * endpoints + endpoint + 1
    return str(ipaddress.IPv4Address(0x0A000000 + offset))


def address_marker(address: str) -> bytes:
    """How ``address`` appears in an import body's ``addresses`` list (quoted JSON)."""
    return json.dumps(address).encode()


def cluster_item(spec: FederationSpec, agent: int) -> Item:
    name = cluster_name(agent)
    cluster = Cluster(
        metadata=Metadata(name=name, labels={"bench": "fanout"}),
        spec=ClusterSpec(region=f"r{agent % spec.regions}", zone=f"r{agent % spec.regions}-a"),
    )
    return Item(name=name, version="", body=encode(cluster))


def export_items(spec: FederationSpec, agent: int, unhealthy: Set[tuple[int, int]]) -> list[Item]:
    """The agent's full ServiceExport report; ``unhealthy`` holds (export, endpoint) pairs."""
    cluster = cluster_name(agent)
    items: list[Item] = []
    for j, service in enumerate(services_of(spec, agent)):
        export = ServiceExport(
            metadata=Metadata(name=service, namespace=NAMESPACE),
            spec=ServiceExportSpec(
                cluster=cluster,
                ports=[ServicePort(name="http", port=8080)],
                endpoints=[
                    Endpoint(
                        address=endpoint_address(agent, j, e, endpoints=spec.endpoints),
                        port=8080,
                        healthy=(j, e) not in unhealthy,
                    )
                    for e in range(spec.endpoints)
                ],
            ),
        )
        items.append(Item(name="/".join(export.path()), version="", body=encode(export)))
    return items


def expected_imports(spec: FederationSpec) -> dict[str, frozenset[str]]:
    """Import name -> the clusters it must list as healthy targets once converged."""
    targets: dict[str, set[str]] = {}
    for agent in range(spec.agents):
        for service in services_of(spec, agent):
            targets.setdefault(import_name(service), set()).add(cluster_name(agent))
    return {name: frozenset(clusters) for name, clusters in targets.items()}


def healthy_targets(body: bytes) -> frozenset[str]:
    """The clusters a ServiceImport body lists as healthy targets."""
    doc = json.loads(body)
    spec = doc.get("spec", {}) if isinstance(doc, Mapping) else {}
    return frozenset(
        str(t["cluster"])
        for t in spec.get("targets", [])
        if isinstance(t, Mapping) and t.get("healthy")
    )
