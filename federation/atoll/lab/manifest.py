"""The lab manifest: every component's address, pid and command, as JSON.

Printed by ``atoll up --output json`` and written to ``<state>/lab/manifest.json``
while the lab runs, so tools and tests can find (and restart) components.
Gateway entries are null until gateways exist.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from atoll.model.base import Frozen

__all__ = ["ClusterEntry", "ComponentEntry", "DnsEntry", "Manifest", "RegionEntry"]


class ComponentEntry(Frozen):
    url: str
    pid: int
    argv: list[str]
    log: Path


class ControlPlaneEntry(ComponentEntry):
    api: str
    sync: str
    store: str


class DnsEntry(ComponentEntry):
    """``url`` is the admin API; ``listen`` the DNS address (UDP and TCP)."""

    listen: str
    zone: str


class ClusterEntry(Frozen):
    name: str
    region: str
    zone: str
    address: str
    registry: ComponentEntry
    agent: ComponentEntry
    dns: DnsEntry | None = None
    gateway: ComponentEntry | None = None
    services: list[str]


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
