"""Catalog operations: pure functions from one snapshot to the next.

Every write to the registry is a small frozen *operation* value
(:class:`PutService`, :class:`PutInstance`, :class:`SetHealth`, ...) and
:func:`apply` turns ``(snapshot, operation, now)`` into the next
:class:`~atoll_agent.registry.model.CatalogSnapshot` or raises a typed error
from :mod:`atoll.errors`. Nothing here reads a clock, touches a file or awaits:
the HTTP layer builds operations, :class:`~atoll_agent.registry.runtime.Registry`
applies and persists them, and tests (including the hypothesis state machine)
drive :func:`apply` directly.

Rules, all checked by the tests:

* A change produces a snapshot with ``index + 1``; the changed objects get
  ``modify_index`` (and, when new, ``create_index``) equal to that index.
* An operation that changes nothing (re-registering an identical service or
  instance, reporting the same health of an instance without a TTL check)
  returns the *same* snapshot object: no index bump, so blocking queries are
  not woken for nothing.
* Deregistering a service removes its instances; an instance can only be
  registered under an existing service.
* ``expect`` is compare-and-swap on the object's ``modify_index``, the same
  contract as the store's (``None``: unconditional, ``0``: only if absent,
  ``N``: only if still at N); a lost race raises
  :class:`~atoll.errors.ConflictError`.
* A health report always restarts an instance's TTL clock (``checked_at =
  now``), so for an instance with a TTL check it is a change even when the
  state is the same: watchers need the new ``checked_at`` to evaluate the TTL.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from atoll.errors import ConflictError, InvalidError, NotFoundError
from atoll.model.names import validate_label
from atoll_agent.registry.model import (
    CatalogSnapshot,
    Health,
    InstanceSpec,
    Limits,
    RegisteredService,
    ServiceInstance,
    ServiceSpec,
    effective_health,
    validate_instance_id,
)

__all__ = [
    "DeleteInstance",
    "DeleteService",
    "ExpireTtls",
    "GraceTtls",
    "Operation",
    "PutInstance",
    "PutService",
    "SetHealth",
    "apply",
    "empty_catalog",
    "expired_instances",
    "require_service",
]


@dataclass(frozen=True, slots=True)
class PutService:
    """Register a service or replace its ports, export flag and labels (instances stay)."""

    namespace: str
    name: str
    spec: ServiceSpec
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteService:
    """Deregister a service together with all its instances."""

    namespace: str
    name: str
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class PutInstance:
    """Register an instance of an existing service, or replace it (restarts its TTL)."""

    namespace: str
    service: str
    id: str
    spec: InstanceSpec
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteInstance:
    namespace: str
    service: str
    id: str
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class SetHealth:
    """Report an instance's health; also refreshes its TTL check."""

    namespace: str
    service: str
    id: str
    health: Health


@dataclass(frozen=True, slots=True)
class ExpireTtls:
    """Turn every instance whose TTL check has lapsed at ``now`` critical."""


@dataclass(frozen=True, slots=True)
class GraceTtls:
    """Restart every live TTL clock at ``now``.

    Applied once when a registry starts from its state file: while it was down
    nobody could refresh a check, so each TTL instance gets a full TTL to
    report again (Consul resets its TTL timers on restart for the same reason).
    """


Operation = (
    PutService | DeleteService | PutInstance | DeleteInstance | SetHealth | ExpireTtls | GraceTtls
)


def empty_catalog(epoch: str) -> CatalogSnapshot:
    """A catalog with no services at index 0 of a new ``epoch``."""
    return CatalogSnapshot(index=0, epoch=epoch, services=())


def apply(
    snapshot: CatalogSnapshot, op: Operation, *, now: float, limits: Limits = Limits()
) -> CatalogSnapshot:
    """The snapshot after ``op`` at time ``now``; the same object when nothing changed.

    Raises :class:`~atoll.errors.InvalidError` (bad name, limit reached),
    :class:`~atoll.errors.NotFoundError` (unknown service or instance) or
    :class:`~atoll.errors.ConflictError` (``expect`` did not match).
    """
    match op:
        case PutService():
            return _put_service(snapshot, op, limits)
        case DeleteService():
            return _delete_service(snapshot, op)
        case PutInstance():
            return _put_instance(snapshot, op, now, limits)
        case DeleteInstance():
            return _delete_instance(snapshot, op)
        case SetHealth():
            return _set_health(snapshot, op, now)
        case ExpireTtls():
            return _expire(snapshot, now)
        case GraceTtls():
            return _grace(snapshot, now)


def expired_instances(
    snapshot: CatalogSnapshot, now: float
) -> list[tuple[RegisteredService, ServiceInstance]]:
    """Instances not yet marked critical whose TTL check has lapsed at ``now``."""
    return [
        (svc, inst)
        for svc in snapshot.services
        for inst in svc.instances
        if inst.health != "critical" and effective_health(inst, now) == "critical"
    ]


# -- operations ---------------------------------------------------------------------------


def _put_service(snap: CatalogSnapshot, op: PutService, limits: Limits) -> CatalogSnapshot:
    _check_names(op.namespace, op.name)
    existing = snap.service(op.namespace, op.name)
    _check_expect(_service_key(op.namespace, op.name), op.expect, existing)
    if existing is not None and existing.spec() == op.spec:
        return snap
    if existing is None and len(snap.services) >= limits.max_services:
        raise InvalidError(
            f"the registry holds its maximum of {limits.max_services} services; "
            "deregister one before registering another",
            field="services",
        )
    index = snap.index + 1
    svc = RegisteredService.model_construct(
        namespace=op.namespace,
        name=op.name,
        ports=op.spec.ports,
        export=op.spec.export,
        labels=op.spec.labels,
        instances=existing.instances if existing is not None else (),
        create_index=existing.create_index if existing is not None else index,
        modify_index=index,
    )
    return _with_service(snap, svc.key, svc, index)


def _delete_service(snap: CatalogSnapshot, op: DeleteService) -> CatalogSnapshot:
    _check_names(op.namespace, op.name)
    existing = require_service(snap, op.namespace, op.name)
    _check_expect(_service_key(op.namespace, op.name), op.expect, existing)
    return _with_service(snap, existing.key, None, snap.index + 1)


def _put_instance(
    snap: CatalogSnapshot, op: PutInstance, now: float, limits: Limits
) -> CatalogSnapshot:
    _check_names(op.namespace, op.service, op.id)
    svc = snap.service(op.namespace, op.service)
    if svc is None:
        raise NotFoundError(
            f"service {op.namespace}/{op.service} is not registered; register the service "
            f"first (PUT /v1/services/{op.namespace}/{op.service})"
        )
    existing = svc.instance(op.id)
    _check_expect(_instance_key(op.namespace, op.service, op.id), op.expect, existing)
    if existing is not None and existing.spec() == op.spec:
        return snap
    if existing is None:
        if len(svc.instances) >= limits.max_instances_per_service:
            raise InvalidError(
                f"service {op.namespace}/{op.service} has its maximum of "
                f"{limits.max_instances_per_service} instances",
                field="instances",
            )
        if snap.instance_count >= limits.max_instances_total:
            raise InvalidError(
                f"the registry holds its maximum of {limits.max_instances_total} instances",
                field="instances",
            )
    index = snap.index + 1
    inst = ServiceInstance.model_construct(
        **{f: getattr(op.spec, f) for f in InstanceSpec.model_fields},
        id=op.id,
        checked_at=now,
        create_index=existing.create_index if existing is not None else index,
        modify_index=index,
    )
    return _with_service(snap, svc.key, _with_instance(svc, op.id, inst), index)


def _delete_instance(snap: CatalogSnapshot, op: DeleteInstance) -> CatalogSnapshot:
    _check_names(op.namespace, op.service, op.id)
    svc, existing = _require_instance(snap, op.namespace, op.service, op.id)
    _check_expect(_instance_key(op.namespace, op.service, op.id), op.expect, existing)
    return _with_service(snap, svc.key, _with_instance(svc, op.id, None), snap.index + 1)


def _set_health(snap: CatalogSnapshot, op: SetHealth, now: float) -> CatalogSnapshot:
    _check_names(op.namespace, op.service, op.id)
    svc, inst = _require_instance(snap, op.namespace, op.service, op.id)
    if inst.health == op.health and inst.ttl_seconds is None:
        return snap
    index = snap.index + 1
    new = inst.model_copy(update={"health": op.health, "checked_at": now, "modify_index": index})
    return _with_service(snap, svc.key, _with_instance(svc, op.id, new), index)


def _expire(snap: CatalogSnapshot, now: float) -> CatalogSnapshot:
    return _rewrite_instances(snap, expired_instances(snap, now), {"health": "critical"})


def _grace(snap: CatalogSnapshot, now: float) -> CatalogSnapshot:
    live = [
        (svc, inst)
        for svc in snap.services
        for inst in svc.instances
        if inst.ttl_seconds is not None and inst.health != "critical" and inst.checked_at < now
    ]
    return _rewrite_instances(snap, live, {"checked_at": now})


def _rewrite_instances(
    snap: CatalogSnapshot,
    targets: list[tuple[RegisteredService, ServiceInstance]],
    update: dict[str, object],
) -> CatalogSnapshot:
    """``snap`` with ``update`` applied to each target instance, in one change (one pass)."""
    if not targets:
        return snap
    index = snap.index + 1
    changed: dict[tuple[str, str], dict[str, ServiceInstance]] = {}
    for svc, inst in targets:
        new = inst.model_copy(update={**update, "modify_index": index})
        changed.setdefault(svc.key, {})[inst.id] = new
    services = tuple(
        svc.model_copy(
            update={"instances": tuple(changed[svc.key].get(i.id, i) for i in svc.instances)}
        )
        if svc.key in changed
        else svc
        for svc in snap.services
    )
    return CatalogSnapshot.model_construct(index=index, epoch=snap.epoch, services=services)


# -- helpers ------------------------------------------------------------------------------


def _check_names(namespace: str, name: str, instance_id: str | None = None) -> None:
    for field, value in (("namespace", namespace), ("name", name)):
        try:
            validate_label(value)
        except ValueError as exc:
            raise InvalidError(f"{field}: {exc}", field=field) from None
    if instance_id is not None:
        try:
            validate_instance_id(instance_id)
        except ValueError as exc:
            raise InvalidError(f"id: {exc}", field="id") from None


def _service_key(namespace: str, name: str) -> str:
    return f"services/{namespace}/{name}"


def _instance_key(namespace: str, service: str, instance_id: str) -> str:
    return f"services/{namespace}/{service}/instances/{instance_id}"


def _check_expect(
    key: str, expect: int | None, existing: RegisteredService | ServiceInstance | None
) -> None:
    actual = existing.modify_index if existing is not None else 0
    if expect is not None and expect != actual:
        raise ConflictError(key, expected=expect, actual_revision=actual)


def require_service(snap: CatalogSnapshot, namespace: str, name: str) -> RegisteredService:
    """The service ``namespace/name`` of ``snap``, or :class:`~atoll.errors.NotFoundError`."""
    svc = snap.service(namespace, name)
    if svc is None:
        raise NotFoundError(f"service {namespace}/{name} is not registered")
    return svc


def _require_instance(
    snap: CatalogSnapshot, namespace: str, service: str, instance_id: str
) -> tuple[RegisteredService, ServiceInstance]:
    svc = require_service(snap, namespace, service)
    inst = svc.instance(instance_id)
    if inst is None:
        raise NotFoundError(
            f"instance {instance_id!r} of service {namespace}/{service} is not registered"
        )
    return svc, inst


def _with_service(
    snap: CatalogSnapshot,
    key: tuple[str, str],
    svc: RegisteredService | None,
    index: int,
) -> CatalogSnapshot:
    """``snap`` at ``index`` with the service at ``key`` replaced, added or (None) removed."""
    services = list(snap.services)
    i = bisect.bisect_left(services, key, key=lambda s: s.key)
    present = i < len(services) and services[i].key == key
    if svc is None:
        assert present, "removing a service that is not there"
        del services[i]
    elif present:
        services[i] = svc
    else:
        services.insert(i, svc)
    return CatalogSnapshot.model_construct(index=index, epoch=snap.epoch, services=tuple(services))


def _with_instance(
    svc: RegisteredService, instance_id: str, inst: ServiceInstance | None
) -> RegisteredService:
    """``svc`` with the instance ``instance_id`` replaced, added or (None) removed."""
    instances = list(svc.instances)
    i = bisect.bisect_left(instances, instance_id, key=lambda x: x.id)
    present = i < len(instances) and instances[i].id == instance_id
    if inst is None:
        assert present, "removing an instance that is not there"
        del instances[i]
    elif present:
        instances[i] = inst
    else:
        instances.insert(i, inst)
    return svc.model_copy(update={"instances": tuple(instances)})
