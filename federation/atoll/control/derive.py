"""Derived state, computed purely from observed state (no I/O, no clock).

Given every ServiceExport, every Cluster and which clusters are alive (their
agent's lease exists), compute:

* one :class:`~atoll.model.ServiceImport` per exported ``namespace/name`` —
  the cluster-set view that every member imports (Kubernetes MCS, KEP-1645);
* the status conditions of every export (``Ready``, ``Conflict``);
* each cluster's status fields owned by the reconciler (alive, health, exports).

Conflict resolution follows the MCS API: exports of one service are ordered by
age (the store revision that created them; cluster name breaks ties) and the
oldest defines the service's type and ports. An export that disagrees is left
out of the import and marked ``Conflict=True`` with the reason — the conflict
shows in its status and in the import's ``status.conflicts``.

Each target carries the one health verdict that DNS and gateways both follow
(``healthy`` and ``reason``): unhealthy when the operator drained the cluster,
when a quorum of other clusters' probes cannot reach it
(:mod:`atoll.control.quorum`), or when it has no healthy endpoints (endpoint
health arrives debounced by the agent's hysteresis).

A *cordoned* cluster keeps serving the services it already serves but its
new exports are held back (``Ready=False, reason=Cordoned``) — for emptying a
cluster gently before maintenance, as ``kubectl cordon`` does for a node.

Exports of a cluster that is not alive are *withdrawn*: kept in the store as
last reported (so they come back instantly when the agent does), but absent
from every import and marked ``Ready=False, reason=ClusterUnavailable``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from atoll.control.quorum import ProbeVerdict
from atoll.model import (
    Cluster,
    ClusterStatus,
    Condition,
    ImportTarget,
    Metadata,
    PortConflict,
    ServiceExport,
    ServiceImport,
    ServiceImportSpec,
    ServiceImportStatus,
    ServicePort,
)

__all__ = ["Derived", "cluster_statuses", "derive", "derive_imports"]

OWNER = "control-plane/imports"


@dataclass(frozen=True, slots=True)
class Derived:
    #: keyed by (namespace, name)
    imports: Mapping[tuple[str, str], ServiceImport]
    #: keyed by export store key
    export_conditions: Mapping[str, tuple[Condition, ...]]
    #: keyed by cluster name: the reconciler-owned status fields
    cluster_status: Mapping[str, ClusterStatus]


def _port_signature(ports: Iterable[ServicePort]) -> frozenset[tuple[str | None, int, str]]:
    return frozenset((p.name, p.port, p.protocol) for p in ports)


def _ready(ok: bool, reason: str, message: str = "") -> Condition:
    return Condition(type="Ready", status="True" if ok else "False", reason=reason, message=message)


def _conflict(on: bool, message: str = "") -> Condition:
    return Condition(
        type="Conflict",
        status="True" if on else "False",
        reason="PortConflict" if on else "NoConflict",
        message=message,
    )


# The common conditions are built once: conditions are frozen models, so sharing
# them is safe, and building 2 per export per pass was most of a pass's cost at
# 20,000 exports (measured by tests/bench/bench_sync.py).
_EXPORTED = (_ready(True, "Exported"), _conflict(False))
_CORDONED = (
    _ready(
        False, "Cordoned", "the cluster is cordoned: it keeps what it serves, joins nothing new"
    ),
    _conflict(False),
)
_WITHDRAWN = {
    why: (_ready(False, "ClusterUnavailable", f"withdrawn: {why}"), _conflict(False))
    for why in ("agent lease expired", "cluster not registered")
}


def _target(export: ServiceExport, cluster: Cluster, probe: ProbeVerdict | None) -> ImportTarget:
    spec = export.spec
    healthy_addrs = sorted({str(e.address) for e in spec.endpoints if e.healthy})
    if cluster.spec.admin_state == "drained":
        reason = "cluster drained by the operator"
    elif probe is not None and probe.failed:
        reason = f"cluster {probe.reason}"
    elif spec.endpoints_healthy == 0:
        reason = "no healthy endpoints"
    else:
        reason = ""
    return ImportTarget(
        cluster=spec.cluster,
        region=cluster.spec.region,
        zone=cluster.spec.zone,
        admin_state=cluster.spec.admin_state,
        addresses=healthy_addrs,
        endpoints_healthy=spec.endpoints_healthy,
        endpoints_total=spec.endpoints_total,
        healthy=not reason,
        reason=reason,
    )


def _age(export: ServiceExport) -> tuple[int, str]:
    return (export.metadata.created_revision, export.spec.cluster)


def derive(
    exports: Iterable[ServiceExport],
    clusters: Mapping[str, Cluster],
    alive: Set[str],
    probes: Mapping[str, ProbeVerdict] | None = None,
    previous: Mapping[tuple[str, str], Set[str]] | None = None,
) -> Derived:
    """Everything at once: the imports of every group and every cluster's status."""
    probes = probes or {}
    imports, conditions = derive_imports(exports, clusters, alive, probes, previous or {})
    return Derived(
        imports=imports,
        export_conditions=conditions,
        cluster_status=cluster_statuses(clusters, alive, imports, probes),
    )


def derive_imports(
    exports: Iterable[ServiceExport],
    clusters: Mapping[str, Cluster],
    alive: Set[str],
    probes: Mapping[str, ProbeVerdict],
    previous: Mapping[tuple[str, str], Set[str]],
) -> tuple[dict[tuple[str, str], ServiceImport], dict[str, tuple[Condition, ...]]]:
    """The imports of the groups ``exports`` belong to, and those exports' conditions.

    Groups are independent, so a caller may pass only the exports of the groups
    that changed (the reconciler does) and get exactly those groups back.
    ``previous`` names the clusters each group's stored import already lists:
    a *cordoned* cluster keeps serving those but joins no new group.
    """
    groups: dict[tuple[str, str], list[ServiceExport]] = defaultdict(list)
    conditions: dict[str, tuple[Condition, ...]] = {}
    for exp in exports:
        cluster = exp.spec.cluster
        if cluster not in alive or cluster not in clusters:
            why = "agent lease expired" if cluster in clusters else "cluster not registered"
            conditions[exp.key()] = _WITHDRAWN[why]
            continue
        groups[(exp.metadata.namespace or "", exp.metadata.name)].append(exp)

    imports: dict[tuple[str, str], ServiceImport] = {}
    for (ns, name), group in sorted(groups.items()):
        group.sort(key=_age)
        oldest = group[0]
        want_ports = _port_signature(oldest.spec.ports)
        targets: list[ImportTarget] = []
        conflicts: list[PortConflict] = []
        for exp in group:
            if exp.spec.type != oldest.spec.type or _port_signature(exp.spec.ports) != want_ports:
                msg = (
                    f"type/ports differ from the oldest export (cluster {oldest.spec.cluster}); "
                    "the oldest export wins"
                )
                conflicts.append(PortConflict(cluster=exp.spec.cluster, message=msg))
                conditions[exp.key()] = (_ready(False, "Conflict", msg), _conflict(True, msg))
                continue
            cluster_name = exp.spec.cluster
            member = clusters[cluster_name]
            if member.spec.admin_state == "cordoned" and cluster_name not in previous.get(
                (ns, name), ()
            ):
                conditions[exp.key()] = _CORDONED
                continue
            targets.append(_target(exp, member, probes.get(cluster_name)))
            conditions[exp.key()] = _EXPORTED
        imports[(ns, name)] = ServiceImport(
            metadata=Metadata(name=name, namespace=ns, owner=OWNER),
            spec=ServiceImportSpec(
                type=oldest.spec.type,
                ports=sorted(oldest.spec.ports, key=lambda p: (p.port, p.protocol)),
                targets=sorted(targets, key=lambda t: t.cluster),
            ),
            status=ServiceImportStatus(conflicts=sorted(conflicts, key=lambda c: c.cluster)),
        )

    return imports, conditions


def cluster_statuses(
    clusters: Mapping[str, Cluster],
    alive: Set[str],
    imports: Mapping[tuple[str, str], ServiceImport],
    probes: Mapping[str, ProbeVerdict],
) -> dict[str, ClusterStatus]:
    exported: dict[str, int] = defaultdict(int)
    unhealthy: dict[str, int] = defaultdict(int)
    for imp in imports.values():
        for t in imp.spec.targets:
            exported[t.cluster] += 1
            if t.endpoints_healthy == 0:
                unhealthy[t.cluster] += 1
    out: dict[str, ClusterStatus] = {}
    for name, cluster in clusters.items():
        is_alive = name in alive
        verdict = probes.get(name)
        if not is_alive:
            health, message = "unreachable", "agent lease expired; exports withdrawn"
        elif verdict is not None and verdict.failed:
            health, message = "unreachable", verdict.reason
        elif unhealthy[name]:
            health, message = (
                "degraded",
                f"{unhealthy[name]} exported service(s) without healthy endpoints",
            )
        else:
            health, message = "healthy", ""
        out[name] = cluster.status.model_copy(
            update={
                "alive": is_alive,
                "exports": exported[name],
                "health": health,
                "message": message,
            }
        )
    return out
