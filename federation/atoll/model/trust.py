"""TrustDomain: one SPIFFE trust domain's bundle as the federation distributes it.

The control plane is the hub of the federation's trust bundles (DESIGN §7).
Every domain it knows is one ``TrustDomain`` resource, in one of three
*roles*, which is also the resource's namespace:

* ``federation/<label>`` — the federation's own domain (control-plane and
  agent identities); written by the control plane from its CA state;
* ``cluster/<cluster>`` — a cluster's domain ``<cluster>.<federation domain>``,
  whose CA the cluster's agent runs; written only from that agent's reports;
* ``foreign/<label>`` — a domain outside the federation (a SPIRE deployment,
  say), registered with ``atoll trust federate`` and fetched from its SPIFFE
  bundle endpoint by the leader.

``spec.bundle`` is the SPIFFE bundle JSON document itself (the trust domain is
not inside the document, so ``spec.trust_domain`` names it); ``sequence`` and
``refresh_hint`` repeat the document's ``spiffe_sequence`` and
``spiffe_refresh_hint`` so status views need not parse it. A stored bundle is
never replaced by a lower sequence and never merged with another domain's
(:mod:`atoll.trusthub.domains` enforces it; :mod:`atoll_trust.bundle` parses).

``federates_with`` restricts who receives the bundle: empty means every member
of the federation; otherwise only the listed trust domains (plus the domain
itself and the control plane). ``rotate_generation`` belongs to the operator:
``atoll trust rotate`` bumps it and the CA's owner forces one rotation per
increment, reporting the generation it has carried out in
``status.rotated_generation``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from atoll.model.base import Frozen, Resource, register
from atoll.model.names import DnsLabel

__all__ = [
    "BundleEndpointSpec",
    "EndpointFetchStatus",
    "FederationProfile",
    "TrustDomain",
    "TrustDomainRole",
    "TrustDomainSpec",
    "TrustDomainStatus",
    "domain_label",
]

TrustDomainRole = Literal["federation", "cluster", "foreign"]
FederationProfile = Literal["https_web", "https_spiffe"]

# SPIFFE-ID standard §2.1: lowercase letters, digits, '.', '-', '_'; at most 255 bytes
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


def _check_domain(value: str) -> str:
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a SPIFFE trust domain name: use 1-255 characters a-z, 0-9, '.', "
            "'-' and '_'"
        )
    return value


def domain_label(trust_domain: str) -> str:
    """A DNS-label resource name for a trust domain name (``example.org`` → ``example-org``).

    Raises ``ValueError`` when no label can be derived (too long); the caller
    then asks the operator for an explicit name.
    """
    label = re.sub(r"[._]+", "-", trust_domain).strip("-")
    if not label or len(label) > 63:
        raise ValueError(
            f"cannot derive a resource name from trust domain {trust_domain!r}; give one"
        )
    return label


class BundleEndpointSpec(Frozen):
    """Where a foreign domain's SPIFFE bundle endpoint is and how to authenticate it."""

    url: str = Field(min_length=9, max_length=2048)
    profile: FederationProfile
    #: https_spiffe: the SPIFFE ID the endpoint's server must present
    spiffe_id: str | None = Field(None, max_length=2048)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("a bundle endpoint URL must start with https://")
        return value

    @model_validator(mode="after")
    def _profile_needs(self) -> BundleEndpointSpec:
        if self.profile == "https_spiffe" and not self.spiffe_id:
            raise ValueError("the https_spiffe profile needs the endpoint's spiffe_id")
        return self


class EndpointFetchStatus(Frozen):
    """The last fetches of a foreign bundle endpoint (``atoll trust status``)."""

    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = Field(0, ge=0)
    next_poll_at: datetime | None = None


class TrustDomainSpec(Frozen):
    trust_domain: str
    role: TrustDomainRole
    #: the cluster whose agent runs the CA (role ``cluster`` only)
    cluster: DnsLabel | None = None
    #: SPIFFE bundle JSON; empty until known (a foreign domain before its first fetch)
    bundle: str = Field("", max_length=1 << 20)
    sequence: int = Field(0, ge=0)
    refresh_hint: int = Field(0, ge=0)
    #: trust domains allowed to receive this bundle; empty = every member
    federates_with: list[str] = Field(default_factory=list, max_length=1000)
    #: operator-owned: bump to force one CA rotation
    rotate_generation: int = Field(0, ge=0)
    #: role ``foreign`` only
    endpoint: BundleEndpointSpec | None = None

    @field_validator("trust_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return _check_domain(value)

    @field_validator("federates_with")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for v in value:
            _check_domain(v)
        return value

    @model_validator(mode="after")
    def _role_fields(self) -> TrustDomainSpec:
        if (self.role == "cluster") != (self.cluster is not None):
            raise ValueError("cluster is set exactly for role 'cluster'")
        if self.endpoint is not None and self.role != "foreign":
            raise ValueError("only a foreign trust domain has a bundle endpoint")
        return self


class TrustDomainStatus(Frozen):
    updated_at: datetime | None = None
    #: expiry of the CA certificate that signs now (federation and cluster roles)
    ca_not_after: datetime | None = None
    next_rotation: datetime | None = None
    rotated_generation: int = Field(0, ge=0)
    fetch: EndpointFetchStatus | None = None


@register
class TrustDomain(Resource):
    KIND: ClassVar[str] = "TrustDomain"
    PLURAL: ClassVar[str] = "trustdomains"
    PATH: ClassVar[tuple[str, ...]] = ("namespace", "name")
    kind: Literal["TrustDomain"] = "TrustDomain"
    spec: TrustDomainSpec
    status: TrustDomainStatus = Field(default_factory=TrustDomainStatus)

    @model_validator(mode="after")
    def _namespace_is_role(self) -> TrustDomain:
        if self.metadata.namespace != self.spec.role:
            raise ValueError(
                f"metadata.namespace must be the role {self.spec.role!r}, "
                f"not {self.metadata.namespace!r}"
            )
        if self.spec.role == "cluster" and self.metadata.name != self.spec.cluster:
            raise ValueError("a cluster's trust domain is named after the cluster")
        return self
