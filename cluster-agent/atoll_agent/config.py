"""Agent configuration: who the cluster is, where its catalog and control plane are."""

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
    #: resource types the agent subscribes to
    subscriptions: tuple[str, ...] = ("ServiceImport",)

    @model_validator(mode="after")
    def _one_source(self) -> AgentConfig:
        if (self.registry_url is None) == (self.catalog_file is None):
            raise ValueError("give exactly one catalog source: registry_url or catalog_file")
        return self

    @property
    def node_id(self) -> str:
        return f"agent/{self.cluster}"

    @property
    def sync_state_file(self) -> Path:
        return self.state_dir / "sync-state.json"
