"""The registry's schema: ids, addresses, ports, labels, TTL health — pure table tests."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from pydantic import ValidationError

from atoll_agent.registry.model import (
    CatalogSnapshot,
    InstanceSpec,
    RegisteredService,
    ServiceInstance,
    ServiceSpec,
    effective_health,
    is_healthy,
    validate_instance_id,
)


@pytest.mark.parametrize(
    "value",
    ["a", "cart-1", "Cart_1.v2", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "x" * 128],
)
def test_instance_id_accepts_labels_and_uuids(value: str) -> None:
    assert validate_instance_id(value) == value


@pytest.mark.parametrize(
    "value", ["", "-a", "a-", ".a", "a/b", "a b", "a..", "x" * 129, "é", "a\n"]
)
def test_instance_id_rejects_unsafe_values(value: str) -> None:
    with pytest.raises(ValueError, match="is not an instance id"):
        validate_instance_id(value)


def test_address_accepts_v4_and_v6_and_names_the_bad_one() -> None:
    assert InstanceSpec(address="10.0.0.1").address == IPv4Address("10.0.0.1")
    assert InstanceSpec(address="fd00::1").address == IPv6Address("fd00::1")
    with pytest.raises(ValidationError) as info:
        InstanceSpec(address="10.0.0.300")
    (err,) = info.value.errors()
    assert err["loc"] == ("address",)
    assert "'10.0.0.300' is not an IPv4 or IPv6 address" in err["msg"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"address": "10.0.0.1", "port": 0}, "port"),
        ({"address": "10.0.0.1", "port": 65536}, "port"),
        ({"address": "10.0.0.1", "ttl_seconds": 0}, "ttl_seconds"),
        ({"address": "10.0.0.1", "ttl_seconds": 86_401}, "ttl_seconds"),
        ({"address": "10.0.0.1", "health": "ok"}, "health"),
        ({"address": "10.0.0.1", "zone": "z" * 64}, "zone"),
        ({"address": "10.0.0.1", "labels": {"-bad": "x"}}, "labels"),
        ({"address": "10.0.0.1", "labels": {"k": "v" * 257}}, "labels"),
        ({"address": "10.0.0.1", "labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"address": "10.0.0.1", "surprise": 1}, "surprise"),
    ],
)
def test_instance_spec_bounds(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        InstanceSpec.model_validate(body)
    assert fragment in str(info.value.errors()[0]["loc"][0])


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ([], "at least 1"),
        ([{"port": 80}, {"port": 80}], "listed twice"),
        ([{"name": "a", "port": 80}, {"port": 81}], "needs a name"),
        ([{"name": f"p{i}", "port": 1000 + i} for i in range(65)], "at most 64"),
    ],
)
def test_service_spec_ports_are_checked_like_exports(
    ports: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ServiceSpec.model_validate({"ports": ports})


def _instance(id_: str, **kw: Any) -> ServiceInstance:
    return ServiceInstance.model_validate({"id": id_, "address": "10.0.0.1", **kw})


def test_snapshot_sorts_services_and_instances_and_finds_them() -> None:
    snap = CatalogSnapshot.model_validate(
        {
            "services": [
                {"namespace": "b", "name": "x", "ports": [{"port": 1}]},
                {
                    "namespace": "a",
                    "name": "y",
                    "ports": [{"port": 1}],
                    "instances": [{"id": "i2", "address": "::1"}, {"id": "i1", "address": "::2"}],
                },
            ]
        }
    )
    assert [s.key for s in snap.services] == [("a", "y"), ("b", "x")]
    svc = snap.service("a", "y")
    assert svc is not None
    assert [i.id for i in svc.instances] == ["i1", "i2"]
    assert svc.instance("i2") is not None
    assert svc.instance("i3") is None
    assert snap.service("a", "x") is None
    assert snap.instance_count == 2


def test_snapshot_rejects_duplicates() -> None:
    svc = {"namespace": "a", "name": "x", "ports": [{"port": 1}]}
    with pytest.raises(ValidationError, match="service a/x listed twice"):
        CatalogSnapshot.model_validate({"services": [svc, svc]})
    dup = {**svc, "instances": [{"id": "i", "address": "::1"}, {"id": "i", "address": "::2"}]}
    with pytest.raises(ValidationError, match="instance id 'i' listed twice"):
        RegisteredService.model_validate(dup)


@pytest.mark.parametrize(
    ("health", "ttl", "checked_at", "now", "expected"),
    [
        ("passing", None, 0.0, 1e9, "passing"),  # no TTL: never expires
        ("warning", None, 0.0, 1e9, "warning"),
        ("critical", None, 0.0, 0.0, "critical"),
        ("passing", 10, 100.0, 109.999, "passing"),
        ("passing", 10, 100.0, 110.0, "critical"),  # the deadline itself is too late
        ("warning", 10, 100.0, 200.0, "critical"),
        ("critical", 10, 100.0, 101.0, "critical"),
    ],
)
def test_effective_health_applies_the_ttl_at_now(
    health: str, ttl: int | None, checked_at: float, now: float, expected: str
) -> None:
    inst = _instance("i", health=health, ttl_seconds=ttl, checked_at=checked_at)
    assert effective_health(inst, now) == expected
    assert is_healthy(inst, now) == (expected != "critical")
