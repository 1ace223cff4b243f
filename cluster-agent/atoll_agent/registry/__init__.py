"""Atoll's built-in per-cluster service registry (a tiny Consul-style catalog).

Services register instances with a health state over HTTP; the cluster agent
reads the catalog (:mod:`atoll_agent.catalog`) and reports exported services to
the federation. The layers, pure first:

* :mod:`~atoll_agent.registry.model` — services, instances, the versioned
  :class:`CatalogSnapshot`, TTL health evaluated purely at a given time;
* :mod:`~atoll_agent.registry.catalog` — operations and :func:`apply`, a pure
  ``snapshot -> snapshot`` step that bumps the index on every change;
* :mod:`~atoll_agent.registry.persistence` — the catalog in an
  :mod:`atoll.statefile` envelope, and what happens when it is corrupt;
* :mod:`~atoll_agent.registry.runtime` — :class:`Registry`: durable group
  commit, blocking queries, TTL expiry loop;
* :mod:`~atoll_agent.registry.api` and :mod:`~atoll_agent.registry.server` —
  the FastAPI app and the uvicorn runner the CLI calls.
"""

from atoll_agent.registry.api import build_registry_app, parse_wait
from atoll_agent.registry.catalog import (
    DeleteInstance,
    DeleteService,
    ExpireTtls,
    GraceTtls,
    Operation,
    PutInstance,
    PutService,
    SetHealth,
    apply,
    empty_catalog,
    expired_instances,
)
from atoll_agent.registry.model import (
    HEALTH_STATES,
    CatalogSnapshot,
    Health,
    InstanceSpec,
    Limits,
    RegisteredService,
    ServiceInstance,
    ServiceSpec,
    effective_health,
    is_healthy,
)
from atoll_agent.registry.persistence import (
    StateWriteError,
    decode_state,
    load_state,
    save_state,
)
from atoll_agent.registry.runtime import Change, Clock, Registry
from atoll_agent.registry.server import RegistryConfig, serve_registry

__all__ = [
    "HEALTH_STATES",
    "CatalogSnapshot",
    "Change",
    "Clock",
    "DeleteInstance",
    "DeleteService",
    "ExpireTtls",
    "GraceTtls",
    "Health",
    "InstanceSpec",
    "Limits",
    "Operation",
    "PutInstance",
    "PutService",
    "RegisteredService",
    "Registry",
    "RegistryConfig",
    "ServiceInstance",
    "ServiceSpec",
    "SetHealth",
    "StateWriteError",
    "apply",
    "build_registry_app",
    "decode_state",
    "effective_health",
    "empty_catalog",
    "expired_instances",
    "is_healthy",
    "load_state",
    "parse_wait",
    "save_state",
    "serve_registry",
]
