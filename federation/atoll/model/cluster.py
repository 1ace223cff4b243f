"""Cluster and Region.

A *Cluster* is one member of the federation. Its agent declares where it is
(region, zone) and how it is reached (addresses); the operator owns its admin
state (``active`` | ``drained`` | ``cordoned``): a drained cluster serves no
federated traffic, a cordoned one keeps what it serves but takes no new
services. The control plane owns ``status`` (connected, last report, health).

A *Region* is a place, with coordinates for nearest-region decisions and the
client networks it covers (used by geo routing).
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Network, IPv6Network
from typing import ClassVar, Literal

from pydantic import Field

from atoll.model.base import Frozen, Resource, register
from atoll.model.names import DnsLabel

__all__ = ["AdminState", "Cluster", "ClusterSpec", "ClusterStatus", "Region", "RegionSpec"]

AdminState = Literal["active", "drained", "cordoned"]


class ClusterSpec(Frozen):
    region: DnsLabel
    zone: str | None = Field(None, max_length=63)
    admin_state: AdminState = "active"
    #: reachable addresses of the cluster's federation-facing components, "host:port"
    addresses: dict[DnsLabel, str] = Field(default_factory=dict)
    trust_domain: str | None = Field(None, max_length=255)


class ClusterStatus(Frozen):
    connected: bool = False
    alive: bool = False
    last_report: datetime | None = None
    agent_version: str | None = None
    exports: int = Field(0, ge=0)
    health: Literal["healthy", "degraded", "unreachable", "unknown"] = "unknown"
    message: str = ""


@register
class Cluster(Resource):
    KIND: ClassVar[str] = "Cluster"
    PLURAL: ClassVar[str] = "clusters"
    kind: Literal["Cluster"] = "Cluster"
    spec: ClusterSpec
    status: ClusterStatus = Field(default_factory=ClusterStatus)


class RegionSpec(Frozen):
    display_name: str = Field("", max_length=128)
    latitude: float = Field(0.0, ge=-90.0, le=90.0)
    longitude: float = Field(0.0, ge=-180.0, le=180.0)
    #: client networks located in this region (geo routing, DNS issue)
    client_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)


@register
class Region(Resource):
    KIND: ClassVar[str] = "Region"
    PLURAL: ClassVar[str] = "regions"
    kind: Literal["Region"] = "Region"
    spec: RegionSpec = Field(default_factory=RegionSpec)
