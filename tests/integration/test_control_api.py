"""The REST API of a real control plane (SQLite store, uvicorn on loopback)."""

from __future__ import annotations

import httpx
import pytest

REGION = {
    "kind": "Region",
    "metadata": {"name": "eu-west"},
    "spec": {"latitude": 53.3, "longitude": -6.3},
}
POLICY = {
    "kind": "TrafficPolicy",
    "metadata": {"name": "web", "namespace": "demo"},
    "spec": {"strategy": "failover", "priorities": [["eu-west-1"], ["us-east-1"]], "ttl": 20},
}


async def test_health_and_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).status_code == 200
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/policies/{namespace}/{name}" in spec["paths"]
    assert "TrafficPolicy" in spec["components"]["schemas"]
    metrics = (await api.get("/metrics")).text
    assert "atoll_sync_connected_streams" in metrics


async def test_region_crud_with_cas(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/regions/eu-west", json=REGION)
    assert r.status_code == 201, r.text
    rev = r.json()["metadata"]["revision"]
    assert rev > 0
    again = await api.put("/v1/regions/eu-west", json=REGION)
    assert again.status_code == 200
    stale = await api.put("/v1/regions/eu-west", json=REGION, headers={"If-Match": str(rev)})
    assert stale.status_code == 409
    assert "re-read" in stale.json()["error"]
    got = (await api.get("/v1/regions/eu-west")).json()
    assert got["spec"]["latitude"] == 53.3
    ok = await api.put(
        "/v1/regions/eu-west",
        json={**REGION, "spec": {"latitude": 1.0}},
        headers={"If-Match": str(got["metadata"]["revision"])},
    )
    assert ok.status_code == 200 and ok.json()["spec"]["latitude"] == 1.0
    assert [r["metadata"]["name"] for r in (await api.get("/v1/regions")).json()] == ["eu-west"]
    assert (await api.delete("/v1/regions/eu-west")).status_code == 204
    assert (await api.delete("/v1/regions/eu-west")).status_code == 404
    assert (await api.get("/v1/regions/eu-west")).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/regions/eu-west", {**REGION, "spec": {"latitude": 123}}, "spec.latitude"),
        ("/v1/regions/eu-west", {**REGION, "metadata": {"name": "EU_West"}}, "metadata.name"),
        ("/v1/regions/eu-west", {**REGION, "spec": {"bogus": 1}}, "spec.bogus"),
        ("/v1/regions/eu-west", {**REGION, "metadata": {"name": "us-east"}}, "metadata.name"),
        (
            "/v1/policies/demo/web",
            {**POLICY, "spec": {"strategy": "weighted"}},
            "spec",
        ),
        ("/v1/policies/demo/web", {**POLICY, "spec": {**POLICY["spec"], "ttl": 0}}, "spec.ttl"),  # type: ignore[dict-item]
        ("/v1/policies/demo/web", {**POLICY, "kind": "Region"}, "kind"),
    ],
)
async def test_malformed_bodies_get_422_naming_the_field(
    api: httpx.AsyncClient, path: str, body: dict[str, object], field: str
) -> None:
    r = await api.put(path, json=body)
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["field"] == field, doc
    assert field in doc["error"]
    assert (await api.get(path)).status_code == 404, "nothing stored"


async def test_invalid_json_is_422(api: httpx.AsyncClient) -> None:
    r = await api.put(
        "/v1/regions/x", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


async def test_policy_roundtrip(api: httpx.AsyncClient) -> None:
    r = await api.put("/v1/policies/demo/web", json=POLICY)
    assert r.status_code == 201, r.text
    listed = (await api.get("/v1/policies", params={"namespace": "demo"})).json()
    assert [p["spec"]["priorities"] for p in listed] == [[["eu-west-1"], ["us-east-1"]]]
    bad = await api.put(
        "/v1/policies/demo/web",
        json={**POLICY, "spec": {**POLICY["spec"], "priorities": [["a"], ["a"]]}},  # type: ignore[dict-item]
    )
    assert bad.status_code == 422 and "more than one priority group" in bad.json()["error"]
    kept = (await api.get("/v1/policies/demo/web")).json()
    assert kept["spec"]["ttl"] == 20, "a rejected write leaves the stored object intact"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/widgets", 404),
        ("GET", "/v1/widgets/a/b", 404),
        ("GET", "/v1/clusters/nope", 404),
        ("GET", "/v1/exports/a/demo/web", 404),
        ("GET", "/v1/imports/demo/web", 404),
        ("PUT", "/v1/imports/demo/web", 405),
        ("DELETE", "/v1/exports/a/demo/web", 405),
        ("PUT", "/v1/clusters/nope/admin-state", 404),
    ],
)
async def test_unknown_kinds_and_names(
    api: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    body = {"admin_state": "drained"} if path.endswith("admin-state") else None
    r = await api.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert "error" in r.json()


async def test_status_summary(api: httpx.AsyncClient) -> None:
    doc = (await api.get("/v1/status")).json()
    assert doc["server_id"] == "cp-test"
    assert doc["clusters"] == [] and doc["services"] == [] and doc["nodes"] == []
