"""The lab manifest: every component's address, pid and command, as JSON.

Printed by ``atoll up --output json`` and written to ``<state>/lab/manifest.json``
while the lab runs, so tools and tests can find (and restart) components.
Each cluster lists its east-west gateway (TLS listener, admin URL, egress
host) and the demo workload server. Trust fields name the
federation domain, the bundle and KEK files, and each cluster's domain and
Workload API sockets.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import Field

from atoll.model.base import Frozen

__all__ = [
    "ClusterEntry",
    "ComponentEntry",
    "DnsEntry",
    "GatewayEntry",
    "Manifest",
    "RegionEntry",
]


class ComponentEntry(Frozen):
    url: str
    pid: int
    argv: list[str]
    log: Path


class ControlPlaneEntry(ComponentEntry):
    api: str
    sync: str
    store: str
    #: enrollment port (server-authenticated TLS); sync is mTLS
    enroll: str | None = None
    #: the federation's SPIFFE trust domain
    trust_domain: str | None = None
    #: the federation bundle agents were started with (SPIFFE bundle JSON)
    bundle_file: Path | None = None
    #: the federation's SPIFFE bundle endpoint (GET /), its profile and server ID
    bundle_endpoint: str | None = None
    bundle_endpoint_profile: str | None = None
    bundle_endpoint_spiffe_id: str | None = None
    kek_file: Path | None = None


class DnsEntry(ComponentEntry):
    """``url`` is the admin API; ``listen`` the DNS address (UDP and TCP)."""

    listen: str
    zone: str


class GatewayEntry(ComponentEntry):
    """``url`` is the admin API; ``listen`` the TLS port; egress listeners open on
    ``egress_host`` at each imported service's port."""

    listen: str
    egress_host: str
    config_file: Path


class ClusterEntry(Frozen):
    name: str
    region: str
    zone: str
    address: str
    registry: ComponentEntry
    agent: ComponentEntry
    dns: DnsEntry | None = None
    gateway: GatewayEntry | None = None
    #: the demo workload server behind the gateway-terminated demo service
    demo: ComponentEntry | None = None
    services: list[str]
    #: the cluster's own SPIFFE trust domain (its agent runs the CA)
    trust_domain: str | None = None
    #: Workload API sockets served by the agent: workload name -> socket path
    workload_sockets: dict[str, Path] = Field(default_factory=dict)


class RegionEntry(Frozen):
    name: str
    display_name: str
    latitude: float
    longitude: float
    client_networks: list[str]


class Manifest(Frozen):
    version: int = 1
    state_dir: Path
    pid: int
    started_at: datetime
    control_plane: ControlPlaneEntry
    regions: list[RegionEntry]
    zone: str
    clusters: list[ClusterEntry]
    #: the lab's control API (kill/restart clusters for chaos drills)
    control: str | None = None
    #: the job broker (embedded: a directory) and the worker consuming it
    broker: str | None = None
    worker: ComponentEntry | None = None
