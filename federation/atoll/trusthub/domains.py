"""TrustDomain resources: what may be stored, decided by pure functions.

Three writers, one rule each way (:mod:`atoll.model.trust` describes the resource):

* a **cluster's agent** reports its domain (:func:`merge_cluster_report`): it
  may report only ``cluster/<its cluster>`` for ``<its cluster>.<fed>``; the
  document must parse as that domain's bundle and its sequence must match
  ``spec.sequence``; it replaces the stored bundle only through
  :meth:`~atoll_trust.bundle.BundleSet.with_bundle` — never a lower sequence,
  never other content under the same sequence, never an empty bundle. The
  operator's ``rotate_generation`` is kept whatever the agent says;
* the **control plane** publishes the federation domain from its CA state
  (:func:`federation_resource`), likewise never lowering the sequence;
* the **leader** folds foreign bundle-endpoint fetches into ``foreign/...``
  (:func:`foreign_after_fetch`), keeping the last good bundle on failure.

Bundles of different domains are never merged: a resource holds one domain's
document, parsed with that domain's name, and :func:`peer_bundles` builds the
verifier's set keyed by domain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from atoll.errors import InvalidError
from atoll.model import (
    BundleEndpointSpec,
    EndpointFetchStatus,
    Metadata,
    TrustDomain,
    TrustDomainSpec,
    TrustDomainStatus,
)
from atoll.model.trust import domain_label
from atoll.sync import PermissionDeniedError
from atoll.trusthub.naming import cluster_domain
from atoll_trust.bundle import BundleSet, TrustBundle, parse_bundle, render_bundle
from atoll_trust.errors import InvalidBundleError
from atoll_trust.federation import EndpointStatus
from atoll_trust.rotation import CaState, RotationPolicy, next_rotation_event
from atoll_trust.spiffe_id import TrustDomain as Domain
from atoll_trust.spiffe_id import parse_trust_domain

__all__ = [
    "bundle_of",
    "cluster_resource",
    "federation_resource",
    "foreign_after_fetch",
    "foreign_resource",
    "merge_cluster_report",
    "peer_bundles",
]


def bundle_of(resource: TrustDomain) -> TrustBundle | None:
    """The parsed bundle of a resource (None while it has none)."""
    if not resource.spec.bundle:
        return None
    return parse_bundle(
        resource.spec.bundle, trust_domain=parse_trust_domain(resource.spec.trust_domain)
    )


def _accept(stored: TrustDomain | None, bundle: TrustBundle) -> bool:
    """True if ``bundle`` changes what is stored; raises BundleRejectedError if refused."""
    old = bundle_of(stored) if stored is not None else None
    current = BundleSet([old] if old is not None else [])
    return current.with_bundle(bundle) is not current


def cluster_resource(
    ca: CaState,
    *,
    federation: Domain,
    cluster: str,
    policy: RotationPolicy,
    federates_with: Iterable[str] = (),
    rotated_generation: int = 0,
) -> TrustDomain:
    """What a cluster's agent reports for its own domain, from its CA state."""
    domain = cluster_domain(federation, cluster)
    if ca.trust_domain != domain:
        raise InvalidError(f"CA state is for {ca.trust_domain}, cluster {cluster} is {domain}")
    bundle = ca.bundle(refresh_hint=policy.refresh_hint)
    return TrustDomain(
        metadata=Metadata(name=cluster, namespace="cluster", owner=f"agent/{cluster}"),
        spec=TrustDomainSpec(
            trust_domain=domain.name,
            role="cluster",
            cluster=cluster,
            bundle=render_bundle(bundle).decode(),
            sequence=ca.sequence,
            refresh_hint=policy.refresh_hint,
            federates_with=sorted(set(federates_with)),
        ),
        status=TrustDomainStatus(
            ca_not_after=ca.active_x509.not_after,
            next_rotation=next_rotation_event(ca, policy=policy),
            rotated_generation=rotated_generation,
        ),
    )


def merge_cluster_report(
    stored: TrustDomain | None,
    reported: TrustDomain,
    *,
    cluster: str,
    federation: Domain,
    now: dt.datetime,
) -> TrustDomain | None:
    """The resource to store after agent ``cluster`` reported ``reported`` (None: no change).

    Raises :class:`PermissionDeniedError` for another cluster's domain,
    :class:`InvalidError` (incl. :class:`InvalidBundleError`) for a bad
    document, :class:`~atoll_trust.errors.BundleRejectedError` for a lower
    sequence or conflicting content.
    """
    domain = cluster_domain(federation, cluster)
    spec = reported.spec
    if (
        reported.metadata.namespace != "cluster"
        or reported.metadata.name != cluster
        or spec.role != "cluster"
        or spec.cluster != cluster
        or spec.trust_domain != domain.name
    ):
        raise PermissionDeniedError(
            f"agent of cluster {cluster!r} may report only the trust domain {domain} "
            f"(as cluster/{cluster}), not {spec.trust_domain} "
            f"({reported.metadata.namespace}/{reported.metadata.name})"
        )
    if spec.endpoint is not None:
        raise InvalidError("a cluster trust domain has no bundle endpoint", field="spec.endpoint")
    bundle = parse_bundle(spec.bundle, trust_domain=domain)
    if bundle.sequence != spec.sequence:
        raise InvalidBundleError(
            f"spec.sequence {spec.sequence} differs from the document's spiffe_sequence "
            f"{bundle.sequence}"
        )
    changed = _accept(stored, bundle)
    keep = stored.spec if stored is not None else None
    new_spec = spec.model_copy(
        update={
            "rotate_generation": keep.rotate_generation if keep else 0,
            "bundle": spec.bundle if changed or keep is None else keep.bundle,
        }
    )
    new_status = reported.status.model_copy(
        update={
            "updated_at": now if changed or stored is None else stored.status.updated_at,
            "fetch": None,
        }
    )
    if stored is None:
        return reported.model_copy(
            update={
                "metadata": Metadata(name=cluster, namespace="cluster", owner=f"agent/{cluster}"),
                "spec": new_spec,
                "status": new_status,
            }
        )
    merged = stored.model_copy(update={"spec": new_spec, "status": new_status})
    return None if merged == stored else merged


def federation_resource(
    ca: CaState, *, stored: TrustDomain | None, policy: RotationPolicy, now: dt.datetime
) -> TrustDomain | None:
    """The federation domain's resource for CA state ``ca`` (None: keep what is stored)."""
    bundle = ca.bundle(refresh_hint=policy.refresh_hint)
    if stored is not None and stored.spec.sequence > ca.sequence:
        return None  # this replica lags behind the one that wrote it
    if stored is not None and not _accept(stored, bundle):
        changed_status = stored.status.model_copy(
            update={
                "ca_not_after": ca.active_x509.not_after,
                "next_rotation": next_rotation_event(ca, policy=policy),
            }
        )
        return (
            None
            if changed_status == stored.status
            else stored.model_copy(update={"status": changed_status})
        )
    td = ca.trust_domain
    return TrustDomain(
        metadata=Metadata(
            name=domain_label(td.name), namespace="federation", owner="control-plane"
        ),
        spec=TrustDomainSpec(
            trust_domain=td.name,
            role="federation",
            bundle=render_bundle(bundle).decode(),
            sequence=ca.sequence,
            refresh_hint=policy.refresh_hint,
            rotate_generation=stored.spec.rotate_generation if stored else 0,
        ),
        status=TrustDomainStatus(
            updated_at=now,
            ca_not_after=ca.active_x509.not_after,
            next_rotation=next_rotation_event(ca, policy=policy),
            rotated_generation=stored.status.rotated_generation if stored else 0,
        ),
    )


def foreign_resource(
    *,
    trust_domain: str,
    endpoint: BundleEndpointSpec,
    federation: Domain,
    stored: TrustDomain | None,
    now: dt.datetime,
    name: str | None = None,
    bootstrap: str | None = None,
    federates_with: Iterable[str] = (),
) -> TrustDomain:
    """A foreign domain registered (or re-registered) by the operator.

    Refuses the federation's own domain and its cluster domains (those join
    with join tokens), a name already used by another domain, and a bootstrap
    bundle that does not parse or would lower the stored sequence. A changed
    endpoint is polled at once.
    """
    td = parse_trust_domain(trust_domain)
    if td == federation or td.name.endswith("." + federation.name):
        raise InvalidError(
            f"{td} is inside the federation {federation}; clusters join with a join token",
            field="trust_domain",
        )
    label = name or domain_label(td.name)
    if stored is not None and stored.spec.trust_domain != td.name:
        raise InvalidError(
            f"foreign/{label} already names {stored.spec.trust_domain}; choose another name",
            field="name",
        )
    spec = (
        stored.spec
        if stored is not None
        else TrustDomainSpec(trust_domain=td.name, role="foreign", bundle="")
    )
    status = stored.status if stored is not None else TrustDomainStatus()
    if bootstrap is not None:
        bundle = parse_bundle(bootstrap, trust_domain=td)
        if _accept(stored, bundle):
            spec = spec.model_copy(
                update={
                    "bundle": render_bundle(bundle).decode(),
                    "sequence": bundle.sequence or 0,
                    "refresh_hint": bundle.refresh_hint or 0,
                }
            )
            status = status.model_copy(update={"updated_at": now})
    if spec.endpoint != endpoint:
        status = status.model_copy(update={"fetch": None})
    spec = spec.model_copy(
        update={"endpoint": endpoint, "federates_with": sorted(set(federates_with))}
    )
    return TrustDomain(
        metadata=Metadata(
            name=label,
            namespace="foreign",
            owner="operator",
            revision=stored.metadata.revision if stored is not None else 0,
        ),
        spec=spec,
        status=status,
    )


def foreign_after_fetch(
    stored: TrustDomain, status: EndpointStatus, bundles: BundleSet, *, now: dt.datetime
) -> TrustDomain:
    """A foreign domain after one fetch, folded in by ``apply_fetch_result`` (last good kept)."""
    fetch = EndpointFetchStatus(
        last_attempt=status.last_attempt,
        last_success=status.last_success,
        last_error=status.last_error,
        consecutive_failures=status.consecutive_failures,
        next_poll_at=status.next_poll_at,
    )
    bundle = bundles.get(status.trust_domain)
    spec = stored.spec
    updated = stored.status.updated_at
    if bundle is not None and (bundle_of(stored) is None or bundle_of(stored) != bundle):
        spec = spec.model_copy(
            update={
                "bundle": render_bundle(bundle).decode(),
                "sequence": bundle.sequence or 0,
                "refresh_hint": bundle.refresh_hint or 0,
            }
        )
        updated = now
    return stored.model_copy(
        update={
            "spec": spec,
            "status": stored.status.model_copy(update={"fetch": fetch, "updated_at": updated}),
        }
    )


def peer_bundles(federation: TrustBundle, clusters: Iterable[TrustBundle]) -> BundleSet:
    """The verifier's bundles for sync peers: the federation's and each cluster's, by domain.

    Foreign domains are left out on purpose (the caller passes cluster bundles
    only): no foreign identity may be a sync node. A bundle claiming the
    federation's own domain, or a domain twice, is skipped, never merged.
    """
    out = BundleSet([federation])
    for bundle in clusters:
        if bundle.is_empty or bundle.trust_domain in out:
            continue
        out = out.with_bundle(bundle)
    return out
