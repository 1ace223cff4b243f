"""The registry's data model: services, their instances, and the catalog snapshot.

Atoll's built-in per-cluster registry is a deliberately small Consul-style
catalog. A *service* (``namespace/name``) declares its ports and whether the
cluster exports it to the federation; an *instance* is one endpoint of it with
an address, a zone and a health state. The whole catalog is one immutable
:class:`CatalogSnapshot` stamped with a monotonically increasing ``index``:
every change produces a new snapshot with ``index + 1`` (see
:mod:`atoll_agent.registry.catalog`), so "has anything changed since N?" is one
integer comparison — the basis of blocking queries and of the agent's watch.

The snapshot nests instances inside their service, so an instance without its
service cannot even be written down. The same JSON shape is the HTTP API's
``GET /v1/catalog`` body, the ``payload`` of the registry's state file
and the schema of a catalog file read by the agent's ``FileSource``; in such a
file everything except names, ports and addresses has a default.

Health. ``health`` is the state last reported for the instance. An instance
may carry a TTL check (``ttl_seconds``): it must be refreshed (a health update)
within that many seconds of ``checked_at`` or it counts as ``critical``. The
verdict is the pure function :func:`effective_health` of the instance and a
time ``now`` (unix seconds, injected), so the registry, the agent and the tests
all evaluate expiry the same way without reading a clock.

``epoch`` names one incarnation of a catalog's index sequence. A registry that
loses its state file starts again from index 0 with a new epoch; a watcher that
held index 40 of the old epoch must not wait for "a change after 40" in the new
one. Comparing ``(epoch, index)`` rather than ``index`` alone closes that gap.

Limits. Field-level bounds (ports per service, labels, lengths) are part of the
schema; catalog-wide counts live in :class:`Limits` and are enforced by the
catalog operations. The per-service instance bound matches the endpoint bound of
:class:`atoll.model.ServiceExportSpec`, so every registered service can be
exported.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PlainValidator, StringConstraints, field_validator

from atoll.model.base import Frozen
from atoll.model.names import DnsLabel
from atoll.model.service import ServicePort, check_ports

__all__ = [
    "HEALTH_STATES",
    "CatalogSnapshot",
    "Health",
    "InstanceId",
    "InstanceSpec",
    "IpAddress",
    "LabelKey",
    "LabelValue",
    "Labels",
    "Limits",
    "RegisteredService",
    "ServiceInstance",
    "ServiceSpec",
    "effective_health",
    "is_healthy",
    "validate_instance_id",
]

Health = Literal["passing", "warning", "critical"]
HEALTH_STATES: tuple[Health, ...] = ("passing", "warning", "critical")

MAX_PORTS = 64
MAX_LABELS = 64
#: matches ``ServiceExportSpec.endpoints`` so every service stays exportable
MAX_INSTANCES_PER_SERVICE = 10_000
MAX_TTL_SECONDS = 86_400

_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")


def validate_instance_id(value: str) -> str:
    """Return ``value`` if it is a valid instance id, else raise ``ValueError``.

    Ids are path segments of the HTTP API and keys of the catalog: 1-128
    characters from letters, digits, '.', '_' and '-', starting and ending with
    a letter or digit. DNS labels and UUIDs both qualify.
    """
    if not _INSTANCE_ID_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an instance id: use 1-128 characters a-z, A-Z, 0-9, '.', '_' "
            "and '-', starting and ending with a letter or digit (a DNS label or a UUID)"
        )
    return value


InstanceId = Annotated[str, AfterValidator(validate_instance_id)]


def _parse_ip(value: object) -> IPv4Address | IPv6Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError("an IP address must be a string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


#: an IPv4 or IPv6 address with one clear error message (a plain union reports
#: one cryptic error per member)
IpAddress = Annotated[
    IPv4Address | IPv6Address, PlainValidator(_parse_ip, json_schema_input_type=str)
]

#: Kubernetes-like label keys (an optional ``prefix/`` is allowed) and short values.
LabelKey = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$"
    ),
]
LabelValue = Annotated[str, StringConstraints(max_length=256)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]


@dataclass(frozen=True, slots=True)
class Limits:
    """Catalog-wide counts, enforced by every catalog operation."""

    max_services: int = 10_000
    max_instances_per_service: int = MAX_INSTANCES_PER_SERVICE
    max_instances_total: int = 100_000

    def __post_init__(self) -> None:
        if min(self.max_services, self.max_instances_per_service, self.max_instances_total) < 1:
            raise ValueError("registry limits must be at least 1")
        if self.max_instances_per_service > MAX_INSTANCES_PER_SERVICE:
            raise ValueError(
                f"max_instances_per_service above {MAX_INSTANCES_PER_SERVICE} would make "
                "services too large to export"
            )


class ServiceSpec(Frozen):
    """What a client declares about a service (the body of ``PUT /v1/services/...``)."""

    ports: tuple[ServicePort, ...] = Field(min_length=1, max_length=MAX_PORTS)
    #: whether the cluster exports this service to the federation
    export: bool = False
    labels: Labels = Field(default_factory=dict)

    @field_validator("ports")
    @classmethod
    def _ports_unique(cls, ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
        check_ports(list(ports))
        return ports


class InstanceSpec(Frozen):
    """What a client declares about an instance (the body of ``PUT .../instances/{id}``)."""

    address: IpAddress
    #: target port; ``None`` means the service's first port
    port: int | None = Field(None, ge=1, le=65535)
    zone: str | None = Field(None, max_length=63)
    health: Health = "passing"
    #: TTL check: the instance turns critical unless its health is refreshed in time
    ttl_seconds: int | None = Field(None, ge=1, le=MAX_TTL_SECONDS)
    labels: Labels = Field(default_factory=dict)


class ServiceInstance(InstanceSpec):
    """One registered instance, as the catalog holds it."""

    id: InstanceId
    #: unix time of the last registration or health report (starts the TTL)
    checked_at: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    create_index: int = Field(0, ge=0)
    modify_index: int = Field(0, ge=0)

    def spec(self) -> InstanceSpec:
        """The declared part, without identity, check time and indexes."""
        return InstanceSpec.model_construct(
            **{f: getattr(self, f) for f in InstanceSpec.model_fields}
        )


class RegisteredService(ServiceSpec):
    """One registered service with its instances, sorted by id."""

    namespace: DnsLabel
    name: DnsLabel
    instances: tuple[ServiceInstance, ...] = Field(default=(), max_length=MAX_INSTANCES_PER_SERVICE)
    create_index: int = Field(0, ge=0)
    modify_index: int = Field(0, ge=0)

    @field_validator("instances")
    @classmethod
    def _instances_unique(
        cls, instances: tuple[ServiceInstance, ...]
    ) -> tuple[ServiceInstance, ...]:
        ordered = tuple(sorted(instances, key=lambda i: i.id))
        for a, b in itertools.pairwise(ordered):
            if a.id == b.id:
                raise ValueError(f"instance id {a.id!r} listed twice")
        return ordered

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def spec(self) -> ServiceSpec:
        """The declared part, without identity, instances and indexes."""
        return ServiceSpec.model_construct(
            **{f: getattr(self, f) for f in ServiceSpec.model_fields}
        )

    def instance(self, instance_id: str) -> ServiceInstance | None:
        """The instance with ``instance_id``, found by bisection (instances are sorted)."""
        i = bisect.bisect_left(self.instances, instance_id, key=lambda x: x.id)
        if i < len(self.instances) and self.instances[i].id == instance_id:
            return self.instances[i]
        return None


class CatalogSnapshot(Frozen):
    """The whole catalog at one index; services sorted by ``(namespace, name)``."""

    index: int = Field(0, ge=0)
    epoch: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9._:-]*$")
    services: tuple[RegisteredService, ...] = ()

    @field_validator("services")
    @classmethod
    def _services_unique(
        cls, services: tuple[RegisteredService, ...]
    ) -> tuple[RegisteredService, ...]:
        ordered = tuple(sorted(services, key=lambda s: s.key))
        for a, b in itertools.pairwise(ordered):
            if a.key == b.key:
                raise ValueError(f"service {a.namespace}/{a.name} listed twice")
        return ordered

    def service(self, namespace: str, name: str) -> RegisteredService | None:
        """The service ``namespace/name``, found by bisection (services are sorted)."""
        key = (namespace, name)
        i = bisect.bisect_left(self.services, key, key=lambda s: s.key)
        if i < len(self.services) and self.services[i].key == key:
            return self.services[i]
        return None

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.services)

    def same_state(self, other: CatalogSnapshot) -> bool:
        """True when both are the same point of the same index sequence."""
        return self.epoch == other.epoch and self.index == other.index


def effective_health(instance: ServiceInstance, now: float) -> Health:
    """The instance's health at ``now``: critical once its TTL check has lapsed.

    The TTL is a deadline, ``checked_at + ttl_seconds``; at or after it the
    check is expired (a refresh exactly at the deadline is too late, as with
    Consul's TTL checks).
    """
    if instance.ttl_seconds is not None and now >= instance.checked_at + instance.ttl_seconds:
        return "critical"
    return instance.health


def is_healthy(instance: ServiceInstance, now: float) -> bool:
    """Passing or warning, and not TTL-expired: the instance may receive traffic."""
    return effective_health(instance, now) != "critical"
