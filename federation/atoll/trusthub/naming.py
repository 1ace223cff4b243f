"""Who is who in the federation: trust domains and SPIFFE IDs, as pure functions.

One *federation domain* (``--federation-domain``, ``atoll.lab`` by default)
holds the identities of the federation's own machinery; each cluster ``X`` is
its own trust domain ``X.<federation domain>``, whose CA the cluster's agent
runs. The IDs:

=========================================  ==========================================
``spiffe://<fed>/control-plane``           every control-plane replica (with the DNS
                                           SAN ``control-plane.<fed>``, which gRPC
                                           clients check as the target name)
``spiffe://<fed>/cluster/<X>``             the agent of cluster X (issued by the
                                           control plane against a join token)
``spiffe://X.<fed>/atoll/dns``             cluster X's DNS server, from X's agent's
``spiffe://X.<fed>/atoll/gateway``         Workload API (X's own CA)
=========================================  ==========================================

Atoll's own components sit under ``/atoll/`` in a cluster's domain so they can
never collide with a user's workload of the same name.

Why DNS servers and gateways carry *cluster* identities rather than federation
ones: they run next to their agent, which already attests them (one Workload
API socket per workload), so they need no join token of their own and restart
without the control plane; and a compromised cluster CA can then only mint
identities of its own cluster's components, because the control plane
verifies such a peer only against that cluster's bundle and requires the
node's declared cluster to be the domain's cluster.
"""

from __future__ import annotations

from atoll.errors import InvalidError
from atoll_trust.errors import InvalidSpiffeIdError
from atoll_trust.spiffe_id import SpiffeId, TrustDomain, parse_trust_domain

__all__ = [
    "COMPONENT_ROLES",
    "DEFAULT_FEDERATION_DOMAIN",
    "agent_id",
    "cluster_domain",
    "cluster_of_domain",
    "component_id",
    "control_plane_id",
    "control_plane_server_name",
    "parse_federation_domain",
]

DEFAULT_FEDERATION_DOMAIN = "atoll.lab"
#: node roles whose identity comes from their cluster's own CA
COMPONENT_ROLES = frozenset({"dns", "gateway"})


def parse_federation_domain(name: str) -> TrustDomain:
    """The federation domain, which must also be a DNS name (it is in a DNS SAN)."""
    try:
        td = parse_trust_domain(name)
    except InvalidSpiffeIdError as exc:
        raise InvalidError(f"federation domain: {exc}", field="federation_domain") from exc
    labels = td.name.split(".")
    if "_" in td.name or any(not lab or len(lab) > 63 for lab in labels) or len(td.name) > 200:
        raise InvalidError(
            f"federation domain {name!r} must be a DNS name (labels of 1-63 characters, no '_') "
            "and at most 200 characters, so cluster domains stay valid",
            field="federation_domain",
        )
    return td


def cluster_domain(federation: TrustDomain, cluster: str) -> TrustDomain:
    """Cluster ``cluster``'s own trust domain, ``<cluster>.<federation>``."""
    return TrustDomain(f"{cluster}.{federation.name}")


def cluster_of_domain(federation: TrustDomain, domain: TrustDomain) -> str | None:
    """The cluster whose domain ``domain`` is, or None if it is no cluster's."""
    suffix = "." + federation.name
    if not domain.name.endswith(suffix):
        return None
    head = domain.name[: -len(suffix)]
    return head if head and "." not in head else None


def control_plane_id(federation: TrustDomain) -> SpiffeId:
    return federation.spiffe_id("control-plane")


def control_plane_server_name(federation: TrustDomain) -> str:
    """The DNS SAN of control-plane SVIDs and the gRPC target name clients check."""
    return f"control-plane.{federation.name}"


def agent_id(federation: TrustDomain, cluster: str) -> SpiffeId:
    return federation.spiffe_id("cluster", cluster)


def component_id(federation: TrustDomain, cluster: str, role: str) -> SpiffeId:
    """The ID of cluster ``cluster``'s ``role`` component (``dns``, ``gateway``)."""
    return cluster_domain(federation, cluster).spiffe_id("atoll", role)
