"""Prometheus metrics of the control plane's reconciler and leadership."""

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "atoll_reconcile_seconds",
    "Duration of one reconcile pass",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RECONCILE_WRITES = Counter("atoll_reconcile_writes_total", "Derived-state writes applied")
RECONCILE_CONFLICTS = Counter(
    "atoll_reconcile_conflicts_total", "Derived-state writes that lost a CAS race"
)
IS_LEADER = Gauge("atoll_control_plane_leader", "1 while this replica is the leader")
