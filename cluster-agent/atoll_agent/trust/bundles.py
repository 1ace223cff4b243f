"""What an agent makes of the TrustDomains it receives over the sync stream (pure).

The control plane sends the agent every domain that federates with its
cluster (:func:`atoll.trusthub.authz.may_receive`): the federation domain,
other clusters' domains, foreign domains — and its own cluster's entry, which
carries the operator's rotation requests. :func:`fold_trust_domains` sorts
them out:

* the federation domain's bundle → the agent's identity (it trusts the
  control plane with it);
* its own cluster's entry → only ``rotate_generation``; the own bundle always
  comes from the local CA state, never from the wire;
* every other domain → the federated bundle set served on the Workload API.

The same rules as everywhere: a document that does not parse is refused when
the delta arrives (:func:`validate_trust_item`, the sync client then NACKs and
keeps its state); a bundle with a lower sequence than the one held raises
:class:`~atoll_trust.errors.BundleRejectedError` (also a NACK); domains are
never merged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from atoll.model import TrustDomain as TrustDomainResource
from atoll.model import decode
from atoll.sync import Item
from atoll.trusthub.domains import bundle_of
from atoll_trust.bundle import BundleSet, TrustBundle
from atoll_trust.spiffe_id import TrustDomain

__all__ = ["ReceivedTrust", "fold_trust_domains", "validate_trust_item"]

KIND = TrustDomainResource.KIND


@dataclass(frozen=True, slots=True)
class ReceivedTrust:
    federation_bundle: TrustBundle | None
    federated: BundleSet
    rotate_generation: int


def validate_trust_item(type_: str, item: Item) -> None:
    """Sync validator: a TrustDomain body must hold a parsable bundle of its domain."""
    if type_ == KIND:
        bundle_of(decode(TrustDomainResource, item.body))


def fold_trust_domains(
    items: Mapping[str, Item],
    *,
    federation: TrustDomain,
    cluster: str,
    held: BundleSet,
) -> ReceivedTrust:
    """Split received TrustDomains (see the module docstring); ``held`` is the current set."""
    federation_bundle: TrustBundle | None = None
    generation = 0
    updated = BundleSet()
    for name in sorted(items):
        res = decode(TrustDomainResource, items[name].body)
        if res.spec.role == "cluster" and res.spec.cluster == cluster:
            generation = res.spec.rotate_generation
            continue
        bundle = bundle_of(res)
        if bundle is None:
            continue
        if res.spec.role == "federation":
            if bundle.trust_domain == federation:
                federation_bundle = bundle
            continue
        old = held.get(bundle.trust_domain)
        if old is not None:
            BundleSet([old]).with_bundle(bundle)  # raises on a lower sequence
        updated = updated.with_bundle(bundle)
    return ReceivedTrust(federation_bundle, updated, generation)
