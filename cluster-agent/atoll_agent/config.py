"""Agent configuration: who the cluster is, where its catalog, control plane and trust are.

Trust settings (:mod:`atoll_agent.trust`):

* ``insecure`` — development only: plaintext sync, no federation identity;
* ``federation_domain`` — the federation's trust domain; the cluster's own is
  ``<cluster>.<federation_domain>``;
* ``join_token``, ``federation_bundle_file``, ``enroll_endpoint`` — first
  start only: the one-time token, the federation bundle to trust the control
  plane with, and its enrollment port. A restarted agent uses the SVID it
  persisted and ignores them;
* ``kek_file`` (else ``$ATOLL_TRUST_KEK``) — seals the cluster CA's keys on disk;
* ``workloads`` — Workload API registrations, name → SPIFFE ID path in the
  cluster's domain (``dns`` → ``atoll/dns``); each gets ``<socket dir>/<name>.sock``;
* ``federates_with`` — restrict which trust domains receive this cluster's
  bundle (empty: every member);
* ``ca_publish_lead`` — how long a forced rotation's new CA is published
  before it signs (the bundle must reach every peer first).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from atoll.model import DnsLabel
from atoll.model.base import Frozen

__all__ = ["AgentConfig"]


class AgentConfig(Frozen):
    cluster: DnsLabel
    region: DnsLabel
    zone: str | None = Field(None, max_length=63)
    #: the control plane's sync endpoint, host:port
    control_plane: str = Field(min_length=3)
    #: where the cluster's catalog comes from: a registry URL or a YAML/JSON file
    registry_url: str | None = None
    catalog_file: Path | None = None
    #: the agent's own HTTP API (imports, status, health, metrics)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(8501, ge=0, le=65535)
    state_dir: Path
    #: federation-facing addresses of this cluster's components (name -> host:port)
    addresses: dict[DnsLabel, str] = Field(default_factory=dict)
    #: resource types the agent subscribes to (Cluster: where to send probes)
    subscriptions: tuple[str, ...] = ("ServiceImport", "Cluster")
    # -- health --------------------------------------------------------------
    #: seconds between health samples of endpoints and probes of other clusters
    health_interval: float = Field(1.0, gt=0.0, le=60.0)
    #: consecutive good samples before an endpoint/cluster counts as up again
    rise: int = Field(2, ge=1, le=100)
    #: consecutive bad samples before an endpoint/cluster counts as down
    fall: int = Field(3, ge=1, le=100)
    #: probe the other clusters' DNS servers (active health checks)
    probes: bool = True
    # -- trust --------------------------------------------------------------
    insecure: bool = False
    federation_domain: str = Field("atoll.lab", min_length=1, max_length=200)
    join_token: str | None = Field(None, max_length=200)
    federation_bundle_file: Path | None = None
    enroll_endpoint: str | None = Field(None, min_length=3)
    kek_file: Path | None = None
    workloads: dict[str, str] = Field(default_factory=dict)
    workload_socket_dir: Path | None = None
    federates_with: tuple[str, ...] = ()
    ca_publish_lead: float = Field(300.0, ge=0.0, le=86400.0)

    @model_validator(mode="after")
    def _one_source(self) -> AgentConfig:
        if (self.registry_url is None) == (self.catalog_file is None):
            raise ValueError("give exactly one catalog source: registry_url or catalog_file")
        if self.join_token is not None and (
            self.federation_bundle_file is None or self.enroll_endpoint is None
        ):
            raise ValueError(
                "a join token needs the federation bundle file and the control plane's "
                "enrollment endpoint"
            )
        for name, path in self.workloads.items():
            if not name or "/" in name or not path.strip("/"):
                raise ValueError(f"workload {name!r}={path!r}: expected NAME=SPIFFE-ID-PATH")
        return self

    @property
    def socket_dir(self) -> Path:
        return self.workload_socket_dir or self.state_dir / "workload"

    @property
    def trust_enabled(self) -> bool:
        """Whether the agent runs its cluster CA (always with mTLS; with a KEK otherwise)."""
        return not self.insecure or self.kek_file is not None

    @property
    def node_id(self) -> str:
        return f"agent/{self.cluster}"

    @property
    def sync_state_file(self) -> Path:
        return self.state_dir / "sync-state.json"
