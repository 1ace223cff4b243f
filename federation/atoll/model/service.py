"""ServiceExport (reported) and ServiceImport (derived).

Following the Kubernetes Multi-Cluster Services API (KEP-1645): a cluster
*exports* a service; every member cluster *imports* the union of the exports
of that ``namespace/name`` across the cluster set ("namespace sameness").

* :class:`ServiceExport` — one per (cluster, namespace, service), written only
  on behalf of that cluster's agent. It carries ports and endpoints with health.
* :class:`ServiceImport` — one per (namespace, service), computed by the
  control plane from all exports (:mod:`atoll.control.imports`). Ports come from
  the oldest export; an export whose ports disagree is left out and reported
  as a conflict, as the MCS API prescribes. Derived: never written by the API.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from atoll.model.base import Condition, Frozen, Resource, register
from atoll.model.cluster import AdminState
from atoll.model.names import DnsLabel

__all__ = [
    "Endpoint",
    "ImportTarget",
    "PortConflict",
    "ServiceExport",
    "ServiceExportSpec",
    "ServiceExportStatus",
    "ServiceImport",
    "ServiceImportSpec",
    "ServiceImportStatus",
    "ServicePort",
    "ServiceType",
    "check_ports",
]

ServiceType = Literal["ClusterSetIP", "Headless"]


class ServicePort(Frozen):
    name: DnsLabel | None = None
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = Field(None, max_length=63)


class Endpoint(Frozen):
    address: IPv4Address | IPv6Address
    port: int | None = Field(
        None, ge=1, le=65535, description="target port if not the service port"
    )
    healthy: bool = True
    zone: str | None = Field(None, max_length=63)


def check_ports(ports: list[ServicePort]) -> None:
    """Raise ValueError unless ports are unique and, when several, all named."""
    seen: set[tuple[int, str]] = set()
    names: set[str] = set()
    for p in ports:
        if (p.port, p.protocol) in seen:
            raise ValueError(f"port {p.port}/{p.protocol} listed twice")
        seen.add((p.port, p.protocol))
        if p.name is not None:
            if p.name in names:
                raise ValueError(f"port name {p.name!r} listed twice")
            names.add(p.name)
    if len(ports) > 1 and len(names) != len(ports):
        raise ValueError("every port needs a name when a service has more than one")


class ServiceExportSpec(Frozen):
    cluster: DnsLabel
    type: ServiceType = "ClusterSetIP"
    ports: list[ServicePort] = Field(min_length=1, max_length=64)
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _ports_unique(self) -> ServiceExportSpec:
        check_ports(self.ports)
        return self

    @property
    def endpoints_total(self) -> int:
        return len(self.endpoints)

    @property
    def endpoints_healthy(self) -> int:
        return sum(1 for e in self.endpoints if e.healthy)


class ServiceExportStatus(Frozen):
    conditions: list[Condition] = Field(default_factory=list)


@register
class ServiceExport(Resource):
    KIND: ClassVar[str] = "ServiceExport"
    PLURAL: ClassVar[str] = "exports"
    PATH: ClassVar[tuple[str, ...]] = ("cluster", "namespace", "name")
    kind: Literal["ServiceExport"] = "ServiceExport"
    spec: ServiceExportSpec
    status: ServiceExportStatus = Field(default_factory=ServiceExportStatus)

    @model_validator(mode="after")
    def _namespaced(self) -> ServiceExport:
        if self.metadata.namespace is None:
            raise ValueError("metadata.namespace is required for a ServiceExport")
        return self

    def path(self) -> tuple[str, ...]:
        return (self.spec.cluster, self.metadata.namespace or "", self.metadata.name)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.status.conditions if c.type == type_), None)


class ImportTarget(Frozen):
    """One cluster that serves an imported service, with its health verdict."""

    cluster: DnsLabel
    region: DnsLabel
    zone: str | None = None
    admin_state: AdminState = "active"
    addresses: list[str] = Field(default_factory=list, description="healthy endpoint addresses")
    endpoints_healthy: int = Field(0, ge=0)
    endpoints_total: int = Field(0, ge=0)
    #: the one health verdict DNS and gateways both follow (DESIGN §6)
    healthy: bool = False
    #: why the target is not healthy ("" when it is)
    reason: str = Field("", max_length=300)


class PortConflict(Frozen):
    cluster: DnsLabel
    message: str


class ServiceImportSpec(Frozen):
    type: ServiceType = "ClusterSetIP"
    ports: list[ServicePort] = Field(default_factory=list)
    targets: list[ImportTarget] = Field(default_factory=list)


class ServiceImportStatus(Frozen):
    conflicts: list[PortConflict] = Field(default_factory=list)


@register
class ServiceImport(Resource):
    KIND: ClassVar[str] = "ServiceImport"
    PLURAL: ClassVar[str] = "imports"
    PATH: ClassVar[tuple[str, ...]] = ("namespace", "name")
    DERIVED: ClassVar[bool] = True
    kind: Literal["ServiceImport"] = "ServiceImport"
    spec: ServiceImportSpec
    status: ServiceImportStatus = Field(default_factory=ServiceImportStatus)
