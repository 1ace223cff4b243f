"""build_exports: exported services only, healthy = passing|warning and TTL alive, deterministic."""

from __future__ import annotations

import random
from ipaddress import ip_address
from typing import Any

import pytest

from atoll.errors import InvalidError
from atoll.model import ServiceExport, encode
from atoll_agent.catalog.exports import build_exports
from atoll_agent.registry.model import CatalogSnapshot

NOW = 5_000.0


def catalog(*services: dict[str, Any], index: int = 7) -> CatalogSnapshot:
    return CatalogSnapshot.model_validate({"index": index, "epoch": "e", "services": services})


def service(ns: str, name: str, *instances: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "namespace": ns,
        "name": name,
        "ports": kw.pop("ports", [{"name": "http", "port": 8080}]),
        "export": kw.pop("export", True),
        "instances": list(instances),
        **kw,
    }


def instance(id_: str, address: str, **kw: Any) -> dict[str, Any]:
    return {"id": id_, "address": address, **kw}


def test_one_export_per_exported_service_with_owner_and_ports() -> None:
    snap = catalog(
        service("shop", "cart", instance("c1", "10.0.0.1"), labels={"team": "a"}),
        service("shop", "internal", instance("i1", "10.0.0.2"), export=False),
        service("billing", "api", ports=[{"port": 443}]),
    )
    exports = build_exports("eu-west-1", snap, now=NOW)
    assert [(e.metadata.namespace, e.metadata.name) for e in exports] == [
        ("billing", "api"),
        ("shop", "cart"),
    ]
    cart = exports[1]
    assert isinstance(cart, ServiceExport)
    assert cart.metadata.owner == "agent/eu-west-1"
    assert cart.metadata.labels == {"team": "a"}
    assert cart.spec.cluster == "eu-west-1"
    assert [(p.name, p.port) for p in cart.spec.ports] == [("http", 8080)]
    assert cart.key() == "/atoll/v1/exports/eu-west-1/shop/cart"
    assert exports[0].spec.endpoints == [], "an exported service without instances has none"


@pytest.mark.parametrize(
    ("inst", "healthy"),
    [
        ({"health": "passing"}, True),
        ({"health": "warning"}, True),
        ({"health": "critical"}, False),
        ({"health": "passing", "ttl_seconds": 10, "checked_at": NOW - 9}, True),
        ({"health": "passing", "ttl_seconds": 10, "checked_at": NOW - 10}, False),
        ({"health": "warning", "ttl_seconds": 10, "checked_at": NOW - 60}, False),
    ],
)
def test_endpoint_health(inst: dict[str, Any], healthy: bool) -> None:
    snap = catalog(service("shop", "cart", instance("i", "10.0.0.1", **inst)))
    (export,) = build_exports("c1", snap, now=NOW)
    (endpoint,) = export.spec.endpoints
    assert endpoint.healthy is healthy
    assert (export.spec.endpoints_healthy, export.spec.endpoints_total) == (int(healthy), 1)


def test_endpoint_fields_follow_the_instance() -> None:
    snap = catalog(
        service(
            "shop",
            "cart",
            instance("a", "10.0.0.1", port=9090, zone="eu-west-1a"),
            instance("b", "fd00::1"),
        )
    )
    (export,) = build_exports("c1", snap, now=NOW)
    first, second = export.spec.endpoints
    assert (first.address, first.port, first.zone) == (ip_address("10.0.0.1"), 9090, "eu-west-1a")
    assert (second.address, second.port, second.zone) == (ip_address("fd00::1"), None, None)


def test_identical_catalogs_give_identical_exports_whatever_the_ids_and_order() -> None:
    endpoints = [
        ("fd00::2", None, "b"),
        ("10.0.0.10", 81, "a"),
        ("10.0.0.9", None, None),
        ("10.0.0.10", 80, "a"),
        ("fd00::1", 80, "b"),
    ]
    rng = random.Random(7)
    results = []
    for trial in range(5):
        order = endpoints[:]
        rng.shuffle(order)
        instances = [
            instance(f"t{trial}-{n}", addr, port=port, zone=zone)
            for n, (addr, port, zone) in enumerate(order)
        ]
        snap = catalog(service("shop", "cart", *instances), index=trial)
        results.append([encode(e) for e in build_exports("c1", snap, now=NOW)])
    assert all(r == results[0] for r in results)
    (export,) = build_exports("c1", catalog(service("shop", "cart", *instances)), now=NOW)
    assert [(str(e.address), e.port) for e in export.spec.endpoints] == [
        ("10.0.0.9", None),
        ("10.0.0.10", 80),
        ("10.0.0.10", 81),
        ("fd00::1", 80),
        ("fd00::2", None),
    ], "numeric address order, IPv4 first"


def test_bad_cluster_name_is_a_clear_error() -> None:
    with pytest.raises(InvalidError, match="cluster: 'EU_1' is not a DNS label") as info:
        build_exports("EU_1", catalog(), now=NOW)
    assert info.value.field == "cluster"


def test_empty_catalog_exports_nothing() -> None:
    assert build_exports("c1", CatalogSnapshot(), now=NOW) == []
