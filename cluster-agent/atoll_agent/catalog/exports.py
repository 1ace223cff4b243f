"""Build the cluster's ServiceExports from a catalog snapshot — a pure function.

One :class:`~atoll.model.ServiceExport` per service marked ``export: true``,
carrying the service's ports and one endpoint per instance. An endpoint is
healthy when its instance is ``passing`` or ``warning`` and its TTL check (if
any) has not lapsed at ``now`` (:func:`~atoll_agent.registry.model.is_healthy`);
unhealthy endpoints are kept (with ``healthy: false``) so the federation sees
healthy/total, not just the survivors.

The output depends only on the catalog's content and ``now``: exports are
ordered by ``(namespace, name)`` and endpoints by address (IPv4 before IPv6),
port, zone, health — not by instance id or registration order — so two
catalogs with the same endpoints give byte-identical exports and the sync
layer sends nothing. Each export is owned by ``agent/<cluster>``, the only
writer allowed to change it (DESIGN §3). An endpoint's ``port`` is the
instance's own port, or ``None`` for "the service's port".
"""

from __future__ import annotations

from atoll.errors import InvalidError
from atoll.model import Endpoint, Metadata, ServiceExport, ServiceExportSpec
from atoll.model.names import validate_label
from atoll_agent.registry.model import CatalogSnapshot, RegisteredService, is_healthy

__all__ = ["build_exports", "export_owner"]


def export_owner(cluster: str) -> str:
    """The ``metadata.owner`` of the exports an agent writes for ``cluster``."""
    return f"agent/{cluster}"


def build_exports(cluster: str, snapshot: CatalogSnapshot, *, now: float) -> list[ServiceExport]:
    """The ServiceExports ``cluster`` reports for ``snapshot``, evaluated at ``now``."""
    try:
        validate_label(cluster)
    except ValueError as exc:
        raise InvalidError(f"cluster: {exc}", field="cluster") from None
    return [_export(cluster, svc, now) for svc in snapshot.services if svc.export]


def _export(cluster: str, svc: RegisteredService, now: float) -> ServiceExport:
    endpoints = sorted(
        (
            Endpoint(address=i.address, port=i.port, healthy=is_healthy(i, now), zone=i.zone)
            for i in svc.instances
        ),
        key=_endpoint_order,
    )
    return ServiceExport(
        metadata=Metadata(
            name=svc.name,
            namespace=svc.namespace,
            labels=dict(svc.labels),
            owner=export_owner(cluster),
        ),
        spec=ServiceExportSpec(cluster=cluster, ports=list(svc.ports), endpoints=endpoints),
    )


def _endpoint_order(e: Endpoint) -> tuple[int, bytes, int, str, bool]:
    return (e.address.version, e.address.packed, e.port or 0, e.zone or "", e.healthy)
