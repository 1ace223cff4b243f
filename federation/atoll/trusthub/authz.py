"""Who may be which sync node, and what it may see: the sync server's SPIFFE authorizer.

Admission of a stream, in order (each failure ends the stream before any data):

1. **Authentication** — the client certificate gRPC saw (the TLS handshake
   already proved possession of its key) is verified with
   :func:`atoll_trust.tls.verify_grpc_peer` against the bundle of the
   certificate's *own* trust domain only: the federation domain's bundle for
   ``spiffe://<fed>/...``, cluster X's bundle — as reported by X's agent over
   its own authenticated stream — for ``spiffe://X.<fed>/...``. No bundle, a
   cross-signed or expired certificate: ``UNAUTHENTICATED``.
2. **Authorization** (:func:`check_admission`, pure) — the node's declared
   id must be ``<role>/<cluster>`` and the verified SPIFFE ID must be the one
   that role and cluster call for (:mod:`atoll.trusthub.naming`): the agent of
   X presents ``spiffe://<fed>/cluster/X``; X's DNS server presents
   ``spiffe://X.<fed>/atoll/dns``. Anything else: ``PERMISSION_DENIED``.
   Regional planes have no identity scheme yet and are refused.

Once admitted, the node is its cluster: what it reports is checked against
``node.cluster`` (:mod:`atoll.control.reports`: only its own Cluster, exports
and TrustDomain) and :meth:`SpiffeAuthorizer.may_report` restricts the types
per role. What it reads: every ServiceImport, policy and region (a cluster
imports everything federated — the ``visible`` hook is where per-cluster
import policy would go); of the TrustDomains only those that federate with
its domain (:func:`may_receive`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from atoll.model import TrustDomainSpec
from atoll.sync import NodeInfo, Peer, PermissionDeniedError, UnauthenticatedError
from atoll.trusthub.naming import COMPONENT_ROLES, agent_id, cluster_domain, component_id
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.tls import verify_grpc_peer
from atoll_trust.verify import BundleSource

__all__ = [
    "SpiffeAuthorizer",
    "check_admission",
    "expected_identity",
    "may_receive",
]

TRUST_DOMAIN_KIND = "TrustDomain"


def expected_identity(node: NodeInfo, federation: TrustDomain) -> SpiffeId:
    """The SPIFFE ID a node of this role and cluster must present."""
    if node.role == "agent":
        return agent_id(federation, node.cluster)
    if node.role in COMPONENT_ROLES:
        return component_id(federation, node.cluster, node.role)
    raise PermissionDeniedError(
        f"nodes of role {node.role!r} cannot connect over mTLS yet: no identity is issued for them"
    )


def check_admission(node: NodeInfo, peer: SpiffeId, federation: TrustDomain) -> None:
    """Raise :class:`PermissionDeniedError` unless ``peer`` may be ``node``."""
    canonical = f"{node.role}/{node.cluster}"
    if node.id != canonical:
        raise PermissionDeniedError(
            f"node id {node.id!r} must be {canonical!r} (role/cluster) on an authenticated stream"
        )
    want = expected_identity(node, federation)
    if peer != want:
        raise PermissionDeniedError(f"{peer} may not connect as {node.id}: that takes {want}")


def may_receive(viewer: TrustDomain, spec: TrustDomainSpec) -> bool:
    """Whether a node of trust domain ``viewer`` is sent the bundle described by ``spec``."""
    if not spec.bundle:
        return False  # nothing to trust yet (a foreign domain before its first fetch)
    if spec.role == "federation" or spec.trust_domain == viewer.name:
        return True
    return not spec.federates_with or viewer.name in spec.federates_with


class SpiffeAuthorizer:
    """The sync server's :class:`~atoll.sync.Authorizer` for mTLS (see the module docstring)."""

    def __init__(
        self,
        *,
        federation: TrustDomain,
        bundles: Callable[[], BundleSource],
        lookup: Callable[[str], TrustDomainSpec | None],
        reportable: Mapping[str, frozenset[str]],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.federation = federation
        self._bundles = bundles
        self._lookup = lookup
        self._reportable = reportable
        self._clock = clock

    def authenticate(self, peer: Peer) -> SpiffeId:
        try:
            verified = verify_grpc_peer(peer.auth, self._bundles(), now=self._clock())
        except SvidVerificationError as exc:
            raise UnauthenticatedError(f"client certificate refused: {exc}") from exc
        return verified.spiffe_id

    def admit(self, node: NodeInfo, peer: Peer) -> None:
        check_admission(node, self.authenticate(peer), self.federation)

    def visible(self, node: NodeInfo, type_: str) -> Callable[[str], bool] | None:
        if type_ != TRUST_DOMAIN_KIND:
            return None
        viewer = cluster_domain(self.federation, node.cluster)

        def allowed(name: str) -> bool:
            spec = self._lookup(name)
            return spec is not None and may_receive(viewer, spec)

        return allowed

    def may_report(self, node: NodeInfo, type_: str) -> bool:
        return type_ in self._reportable.get(node.role, frozenset())
