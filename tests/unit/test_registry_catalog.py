"""Catalog operations (pure): index rules, typed errors, limits, TTL expiry in fake time."""

from __future__ import annotations

from typing import Any

import pytest

from atoll.errors import ConflictError, InvalidError, NotFoundError
from atoll_agent.registry.catalog import (
    DeleteInstance,
    DeleteService,
    ExpireTtls,
    GraceTtls,
    Operation,
    PutInstance,
    PutService,
    SetHealth,
    apply,
    empty_catalog,
    expired_instances,
)
from atoll_agent.registry.model import (
    CatalogSnapshot,
    InstanceSpec,
    Limits,
    ServiceInstance,
    ServiceSpec,
    effective_health,
)

T0 = 1_000.0


def svc_spec(**kw: Any) -> ServiceSpec:
    return ServiceSpec.model_validate({"ports": [{"port": 8080}], **kw})


def inst_spec(address: str = "10.0.0.1", **kw: Any) -> InstanceSpec:
    return InstanceSpec.model_validate({"address": address, **kw})


def run(*ops: Operation, now: float = T0, limits: Limits = Limits()) -> CatalogSnapshot:
    snap = empty_catalog("e")
    for op in ops:
        snap = apply(snap, op, now=now, limits=limits)
    return snap


def instance(snap: CatalogSnapshot, ns: str, name: str, id_: str) -> ServiceInstance:
    svc = snap.service(ns, name)
    assert svc is not None
    inst = svc.instance(id_)
    assert inst is not None
    return inst


CART = PutService("shop", "cart", svc_spec(export=True))
I1 = PutInstance("shop", "cart", "i1", inst_spec())


def test_every_change_bumps_the_index_and_stamps_objects() -> None:
    s1 = run(CART)
    assert s1.index == 1
    svc = s1.service("shop", "cart")
    assert svc is not None
    assert (svc.create_index, svc.modify_index) == (1, 1)
    s2 = apply(s1, I1, now=T0)
    assert s2.index == 2
    assert instance(s2, "shop", "cart", "i1").create_index == 2
    assert instance(s2, "shop", "cart", "i1").checked_at == T0
    s3 = apply(s2, PutService("shop", "cart", svc_spec(export=False)), now=T0)
    svc3 = s3.service("shop", "cart")
    assert svc3 is not None
    assert (s3.index, svc3.create_index, svc3.modify_index, svc3.export) == (3, 1, 3, False)
    assert [i.id for i in svc3.instances] == ["i1"], "updating a service keeps its instances"
    assert s1.index == 1 and s1.service("shop", "cart") == svc, "snapshots are never mutated"


@pytest.mark.parametrize(
    "op",
    [
        CART,  # identical re-registration
        I1,  # identical instance
        SetHealth("shop", "cart", "i1", "passing"),  # same health, no TTL
        ExpireTtls(),  # nothing to expire
        GraceTtls(),  # no TTL instances
    ],
)
def test_an_operation_that_changes_nothing_returns_the_same_snapshot(op: Operation) -> None:
    before = run(CART, I1)
    assert apply(before, op, now=T0 + 5) is before


def test_deleting_a_service_removes_its_instances() -> None:
    snap = run(CART, I1, PutInstance("shop", "cart", "i2", inst_spec("10.0.0.2")))
    after = apply(snap, DeleteService("shop", "cart"), now=T0)
    assert after.services == ()
    assert after.instance_count == 0
    assert after.index == snap.index + 1


def test_delete_instance() -> None:
    snap = run(CART, I1)
    after = apply(snap, DeleteInstance("shop", "cart", "i1"), now=T0)
    svc = after.service("shop", "cart")
    assert svc is not None and svc.instances == ()


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (DeleteService("shop", "nope"), "service shop/nope is not registered"),
        (PutInstance("shop", "nope", "i1", inst_spec()), "register the service first"),
        (DeleteInstance("shop", "cart", "i9"), "instance 'i9' of service shop/cart"),
        (SetHealth("shop", "cart", "i9", "warning"), "instance 'i9'"),
        (SetHealth("shop", "nope", "i1", "warning"), "service shop/nope"),
    ],
)
def test_unknown_objects_raise_not_found(op: Operation, message: str) -> None:
    with pytest.raises(NotFoundError, match=message):
        apply(run(CART), op, now=T0)


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (PutService("Shop", "cart", svc_spec()), "namespace"),
        (PutService("shop", "cart_1", svc_spec()), "name"),
        (PutInstance("shop", "cart", "bad/id", inst_spec()), "id"),
        (DeleteService("shop", "-x"), "name"),
    ],
)
def test_bad_names_raise_invalid_naming_the_field(op: Operation, field: str) -> None:
    with pytest.raises(InvalidError) as info:
        apply(run(CART), op, now=T0)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_expect_is_compare_and_swap_on_modify_index() -> None:
    snap = run(CART, I1)  # service at 1, instance at 2
    with pytest.raises(ConflictError) as info:
        apply(snap, PutService("shop", "cart", svc_spec(), expect=7), now=T0)
    assert (info.value.expected, info.value.actual_revision) == (7, 1)
    with pytest.raises(ConflictError):
        apply(snap, PutService("shop", "cart", svc_spec(), expect=0), now=T0)  # exists
    with pytest.raises(ConflictError):
        apply(snap, DeleteInstance("shop", "cart", "i1", expect=1), now=T0)
    ok = apply(snap, PutService("shop", "cart", svc_spec(), expect=1), now=T0)
    assert ok.index == 3
    created = apply(snap, PutService("shop", "new", svc_spec(), expect=0), now=T0)
    assert created.service("shop", "new") is not None
    gone = apply(snap, DeleteInstance("shop", "cart", "i1", expect=2), now=T0)
    assert gone.instance_count == 0


@pytest.mark.parametrize(
    ("limits", "ops", "message"),
    [
        (
            Limits(max_services=1),
            [CART, PutService("shop", "b", svc_spec())],
            "maximum of 1 services",
        ),
        (
            Limits(max_instances_per_service=1),
            [CART, I1, PutInstance("shop", "cart", "i2", inst_spec())],
            "maximum of 1 instances",
        ),
        (
            Limits(max_instances_total=1),
            [
                CART,
                PutService("shop", "b", svc_spec()),
                I1,
                PutInstance("shop", "b", "i2", inst_spec()),
            ],
            "maximum of 1 instances",
        ),
    ],
)
def test_limits_are_enforced_with_clear_errors(
    limits: Limits, ops: list[Operation], message: str
) -> None:
    *setup, last = ops
    snap = run(*setup, limits=limits)
    with pytest.raises(InvalidError, match=message):
        apply(snap, last, now=T0, limits=limits)


@pytest.mark.parametrize(
    "kw", [{"max_services": 0}, {"max_instances_total": -1}, {"max_instances_per_service": 10_001}]
)
def test_limits_themselves_are_checked(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"limits must be at least 1|too large to export"):
        Limits(**kw)


def test_updating_existing_objects_is_allowed_at_the_limits() -> None:
    limits = Limits(max_services=1, max_instances_per_service=1, max_instances_total=1)
    snap = run(CART, I1, limits=limits)
    snap = apply(
        snap, PutService("shop", "cart", svc_spec(labels={"a": "b"})), now=T0, limits=limits
    )
    snap = apply(snap, PutInstance("shop", "cart", "i1", inst_spec("::1")), now=T0, limits=limits)
    assert snap.index == 4


def test_ttl_expiry_in_fake_time() -> None:
    snap = run(CART, PutInstance("shop", "cart", "t", inst_spec(ttl_seconds=10)), I1, now=T0)
    inst = instance(snap, "shop", "cart", "t")
    assert effective_health(inst, T0 + 9.9) == "passing"
    assert expired_instances(snap, T0 + 9.9) == []
    assert apply(snap, ExpireTtls(), now=T0 + 9.9) is snap

    # a refresh restarts the clock even though the state is unchanged
    refreshed = apply(snap, SetHealth("shop", "cart", "t", "passing"), now=T0 + 8)
    assert refreshed.index == snap.index + 1
    assert instance(refreshed, "shop", "cart", "t").checked_at == T0 + 8
    assert apply(refreshed, ExpireTtls(), now=T0 + 12) is refreshed

    expired = apply(refreshed, ExpireTtls(), now=T0 + 18)
    assert expired.index == refreshed.index + 1
    dead = instance(expired, "shop", "cart", "t")
    assert (dead.health, dead.modify_index) == ("critical", expired.index)
    assert instance(expired, "shop", "cart", "i1").health == "passing", "no TTL, untouched"
    assert apply(expired, ExpireTtls(), now=T0 + 1000) is expired, "expires once"

    revived = apply(expired, SetHealth("shop", "cart", "t", "passing"), now=T0 + 30)
    assert effective_health(instance(revived, "shop", "cart", "t"), T0 + 35) == "passing"


def test_grace_restarts_live_ttl_clocks_only() -> None:
    snap = run(
        CART,
        PutInstance("shop", "cart", "live", inst_spec(ttl_seconds=10)),
        PutInstance("shop", "cart", "dead", inst_spec(ttl_seconds=10, health="critical")),
        I1,
        now=T0,
    )
    graced = apply(snap, GraceTtls(), now=T0 + 100)
    assert graced.index == snap.index + 1
    assert instance(graced, "shop", "cart", "live").checked_at == T0 + 100
    assert instance(graced, "shop", "cart", "dead").checked_at == T0
    assert instance(graced, "shop", "cart", "i1").checked_at == T0
    assert expired_instances(graced, T0 + 105) == []


def test_re_registering_an_instance_with_changes_restarts_its_ttl() -> None:
    snap = run(CART, PutInstance("shop", "cart", "t", inst_spec(ttl_seconds=10)), now=T0)
    moved = apply(
        snap, PutInstance("shop", "cart", "t", inst_spec("10.0.0.9", ttl_seconds=10)), now=T0 + 7
    )
    inst = instance(moved, "shop", "cart", "t")
    assert (str(inst.address), inst.checked_at, inst.create_index) == ("10.0.0.9", T0 + 7, 2)
