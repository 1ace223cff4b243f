"""Gateway configuration: listeners, per-service inbound modes and policies, limits.

Where each piece of a gateway's behaviour comes from:

* **this file** (``--config``, YAML or JSON, reloaded on SIGHUP and when it
  changes on disk) — the operator's decisions: per-service ``mode``
  (``passthrough`` | ``terminate``), the allow policy of terminated services,
  re-originating TLS to endpoints, PROXY protocol, egress listeners, timeouts
  and limits. A file that does not validate is refused and the running
  configuration stays (logged, counted).
* **the cluster's catalog** (the agent's registry, read directly) — the local
  endpoints behind each *exported* service, with health.
* **the control plane over sync** — ServiceImport (targets and the health
  verdict), TrafficPolicy, Region and Cluster (peer gateway addresses), for
  the egress side.
* **the agent's Workload API** — the gateway's SVID and every federated bundle.

Services not listed in ``services`` use ``default``. Terminated services
allow, by default, every cluster domain of the federation (``*.<federation>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from atoll.model.base import Frozen, invalid_from
from atoll.model.names import DnsLabel
from atoll_gateway.errors import ConfigError
from atoll_gateway.policy import AllowPolicy

__all__ = [
    "EgressListener",
    "GatewayConfig",
    "Mode",
    "OutlierConfig",
    "RouteConfig",
    "load_config",
]

Mode = Literal["passthrough", "terminate"]
Relay = Literal["auto", "splice", "copy"]


class RouteConfig(Frozen):
    """How inbound connections for one service are handled."""

    mode: Mode = "passthrough"
    #: terminate: who may connect (None: every cluster of the federation)
    allow: AllowPolicy | None = None
    #: terminate: speak mTLS (the gateway's SVID) to the endpoint instead of plain TCP
    upstream_tls: bool = False
    #: terminate: send a PROXY v2 header (client address, SNI, peer SPIFFE ID) first
    proxy_protocol: bool = False


class EgressListener(Frozen):
    """A local plain-TCP listener that carries one imported service to a remote gateway."""

    service: str = Field(pattern=r"^[a-z0-9-]{1,63}/[a-z0-9-]{1,63}$")
    port: int | None = Field(None, ge=1, le=65535, description="service port; None: the only one")
    listen: str = Field(min_length=3, max_length=300)


class OutlierConfig(Frozen):
    """Outlier ejection of endpoints that fail to connect (Envoy-style, consecutive errors)."""

    consecutive_failures: int = Field(3, ge=1, le=1000)
    base_ejection_seconds: float = Field(5.0, gt=0.0, le=3600.0)
    max_ejection_seconds: float = Field(60.0, gt=0.0, le=86400.0)
    #: never eject more than this share of a service's endpoints
    max_ejection_percent: int = Field(50, ge=0, le=100)


class GatewayConfig(Frozen):
    cluster: DnsLabel
    zone: str = "atoll.test"
    federation_domain: str = "atoll.lab"
    listen: str = "127.0.0.1:15443"
    admin: str = "127.0.0.1:15000"
    #: auto egress: one listener on this host at every imported service port
    egress_host: str | None = None
    egress: list[EgressListener] = Field(default_factory=list, max_length=10_000)
    default: RouteConfig = Field(default_factory=RouteConfig)
    #: "namespace/name" -> route config
    services: dict[str, RouteConfig] = Field(default_factory=dict)
    # -- timeouts and limits -----------------------------------------------------
    hello_timeout: float = Field(5.0, gt=0.0, le=300.0)
    handshake_timeout: float = Field(5.0, gt=0.0, le=300.0)
    connect_timeout: float = Field(2.0, gt=0.0, le=300.0)
    #: connection attempts (different endpoints) before giving up
    connect_attempts: int = Field(3, ge=1, le=20)
    max_connections: int = Field(10_000, ge=1, le=1_000_000)
    drain_seconds: float = Field(20.0, ge=0.0, le=3600.0)
    #: close a relayed connection after this long without a byte either way (None: never)
    idle_timeout: float | None = Field(3600.0, gt=0.0, le=7 * 86400.0)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    #: egress: idle pooled tunnels kept per peer gateway (0: a tunnel carries one stream)
    tunnel_pool_size: int = Field(128, ge=0, le=100_000)
    #: egress: close a pooled tunnel idle this long (the serving side waits idle_timeout)
    tunnel_idle_timeout: float = Field(30.0, gt=0.0, le=3600.0)
    #: egress: stop reusing a tunnel this old (bounds how long one handshake is relied on)
    tunnel_max_age: float = Field(600.0, gt=0.0, le=86400.0)
    #: plain-TCP relay: splice (zero copy), copy (through a buffer), auto (splice on Linux)
    relay: Relay = "auto"
    #: largest ClientHello accepted (record bytes)
    max_client_hello: int = Field(16 * 1024 + 20, ge=512, le=64 * 1024)

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        for key in self.services:
            ns, sep, name = key.partition("/")
            if not sep or not ns or not name:
                raise ValueError(f"services: {key!r} is not namespace/name")
        return self

    def route(self, namespace: str, name: str) -> RouteConfig:
        return self.services.get(f"{namespace}/{name}", self.default)

    def default_allow(self) -> AllowPolicy:
        return AllowPolicy(trust_domains=(f"*.{self.federation_domain}",))

    def allow_for(self, route: RouteConfig) -> AllowPolicy:
        return route.allow if route.allow is not None else self.default_allow()


def load_config(path: Path, **overrides: object) -> GatewayConfig:
    """Read a YAML/JSON config file; ``overrides`` (CLI flags) win over the file."""
    try:
        doc = yaml.safe_load(path.read_text()) if path.exists() else {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        err = invalid_from(exc, f"gateway config {path}")
        raise ConfigError(str(err), field=err.field) from exc
