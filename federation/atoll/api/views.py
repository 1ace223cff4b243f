"""Response shapes of the REST API that are not stored resources.

Live facts that are not worth a store write (seconds left on a lease, the
sync state of each node) are joined to stored resources at read time.
"""

from __future__ import annotations

from pydantic import Field

from atoll.control.bounds import Bounds
from atoll.model import AdminState, Cluster
from atoll.model.base import Frozen

__all__ = [
    "AdminStateBody",
    "ClusterView",
    "ErrorBody",
    "NodeView",
    "ServiceRow",
    "StatusView",
    "SubscriptionView",
    "TimingsView",
    "timings_view",
]


class ErrorBody(Frozen):
    error: str
    field: str | None = None


class AdminStateBody(Frozen):
    admin_state: AdminState
    reason: str = Field("", max_length=500)


class ClusterView(Frozen):
    cluster: Cluster
    lease_remaining: float | None = Field(
        description="seconds before the cluster is declared dead; null when it is"
    )


class SubscriptionView(Frozen):
    type: str
    acked_version: str
    pending_nonce: str | None
    held: int
    pushes: int
    nacks: int
    last_nack_message: str | None
    last_nack_version: str | None
    last_nack_resources: list[str]
    last_nack_at: float | None


class NodeView(Frozen):
    id: str
    role: str
    cluster: str
    peer: str
    connected: bool
    connected_at: float
    disconnected_at: float | None
    software_version: str
    reports: int
    last_report_error: str | None
    subscriptions: list[SubscriptionView]


class ServiceRow(Frozen):
    namespace: str
    name: str
    ports: list[str]
    #: cluster -> "healthy/total" endpoints (only clusters that serve it)
    clusters: dict[str, str]
    conflicts: list[str]


class TimingsView(Frozen):
    lease_ttl: float
    heartbeat_interval: float
    expiry_sweep: float
    reconcile_debounce: float
    push_allowance: float
    death_withdrawal: float
    drain_withdrawal: float


def timings_view(b: Bounds) -> TimingsView:
    t = b.timings
    return TimingsView(
        lease_ttl=t.lease_ttl,
        heartbeat_interval=t.heartbeat_interval,
        expiry_sweep=t.expiry_sweep,
        reconcile_debounce=t.reconcile_debounce,
        push_allowance=t.push_allowance,
        death_withdrawal=b.death_withdrawal,
        drain_withdrawal=b.drain_withdrawal,
    )


class StatusView(Frozen):
    server_id: str
    leader: str | None
    is_leader: bool
    store_revision: int
    clusters: list[ClusterView]
    services: list[ServiceRow]
    nodes: list[NodeView]
    #: the configured timings and the withdrawal bounds that follow from them
    timings: TimingsView | None = None
