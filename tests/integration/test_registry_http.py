"""The registry's HTTP API over a real uvicorn server on 127.0.20.1 (serve_registry)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.aio import spawn
from atoll.errors import FatalError
from atoll_agent.registry.server import RegistryConfig, serve_registry
from atoll_agent.registry.testing import FakeClock, running_registry

HOST = "127.0.20.1"
CART = "/v1/services/shop/cart"
SPEC = {"ports": [{"name": "http", "port": 8080}], "export": True, "labels": {"team": "a"}}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    config = RegistryConfig(expiry_interval=0.02, max_wait=2.0)
    async with (
        running_registry(host=HOST, clock=clock, config=config) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        yield c


async def register(client: httpx.AsyncClient, *instances: str, **spec: Any) -> int:
    r = await client.put(CART, json={**SPEC, **spec})
    assert r.status_code in (200, 201), r.text
    for i, id_ in enumerate(instances):
        r = await client.put(f"{CART}/instances/{id_}", json={"address": f"10.0.0.{i + 1}"})
        assert r.status_code in (200, 201), r.text
    return int(r.headers["x-atoll-index"])


async def test_service_lifecycle(client: httpx.AsyncClient) -> None:
    r = await client.put(CART, json=SPEC)
    assert r.status_code == 201
    assert (r.headers["x-atoll-index"], r.headers["etag"]) == ("1", '"1"')
    body = r.json()
    assert (body["namespace"], body["name"], body["export"], body["instances"]) == (
        "shop",
        "cart",
        True,
        [],
    )
    again = await client.put(CART, json=SPEC)
    assert (again.status_code, again.headers["x-atoll-index"]) == (200, "1"), "no-op: no new index"

    got = await client.get(CART)
    assert got.status_code == 200 and got.json() == body
    listed = await client.get("/v1/services")
    assert listed.json()["index"] == 1
    assert [s["name"] for s in listed.json()["services"]] == ["cart"]
    assert (await client.get("/v1/services", params={"namespace": "other"})).json()[
        "services"
    ] == []

    gone = await client.delete(CART)
    assert (gone.status_code, gone.json()) == (200, {"index": 2})
    missing = await client.get(CART)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "not_found",
        "message": "service shop/cart is not registered",
        "field": None,
    }


async def test_instance_lifecycle_and_health(client: httpx.AsyncClient) -> None:
    await register(client)
    r = await client.put(
        f"{CART}/instances/cart-1", json={"address": "fd00::1", "zone": "eu-1a", "ttl_seconds": 30}
    )
    assert r.status_code == 201
    assert r.json()["port"] is None and r.json()["health"] == "passing"

    h = await client.put(f"{CART}/instances/cart-1/health", json={"health": "warning"})
    assert h.status_code == 200 and h.json()["health"] == "warning"
    assert h.headers["x-atoll-index"] == "3"

    listed = await client.get(f"{CART}/instances")
    assert [(i["id"], i["health"]) for i in listed.json()["instances"]] == [("cart-1", "warning")]

    d = await client.delete(f"{CART}/instances/cart-1")
    assert d.status_code == 200
    assert (await client.get(f"{CART}/instances")).json()["instances"] == []


async def test_deleting_a_service_removes_its_instances(client: httpx.AsyncClient) -> None:
    await register(client, "a", "b")
    await client.delete(CART)
    await client.put(CART, json=SPEC)
    assert (await client.get(f"{CART}/instances")).json()["instances"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", CART, None, "service shop/cart is not registered"),
        ("DELETE", CART, None, "service shop/cart is not registered"),
        ("GET", f"{CART}/instances", None, "service shop/cart is not registered"),
        (
            "PUT",
            f"{CART}/instances/i1",
            {"address": "10.0.0.1"},
            "service shop/cart is not registered; register the service first "
            "(PUT /v1/services/shop/cart)",
        ),
    ],
)
async def test_unknown_service_is_404(
    client: httpx.AsyncClient, method: str, path: str, body: Any, message: str
) -> None:
    r = await client.request(method, path, json=body)
    assert r.status_code == 404
    assert r.json()["message"] == message


async def test_unknown_instance_is_404(client: httpx.AsyncClient) -> None:
    await register(client)
    for r in (
        await client.delete(f"{CART}/instances/nope"),
        await client.put(f"{CART}/instances/nope/health", json={"health": "passing"}),
    ):
        assert r.status_code == 404
        assert r.json()["message"] == "instance 'nope' of service shop/cart is not registered"


@pytest.mark.parametrize(
    ("path", "body", "field", "fragment"),
    [
        ("/v1/services/Shop/cart", SPEC, "path.namespace", "'Shop' is not a DNS label"),
        ("/v1/services/shop/c_art", SPEC, "path.name", "'c_art' is not a DNS label"),
        ("/v1/services/shop/cart", {"ports": [{"port": 0}]}, "body.ports.0.port", "greater"),
        ("/v1/services/shop/cart", {"ports": []}, "body.ports", "at least 1"),
        ("/v1/services/shop/cart", {"ports": [{"port": 1}], "x": 1}, "body.x", "Extra inputs"),
        (f"{CART}/instances/-bad", {"address": "::1"}, "path.instance_id", "not an instance id"),
        (f"{CART}/instances/i1", {"address": "::g"}, "body.address", "not an IPv4 or IPv6"),
        (f"{CART}/instances/i1", {"address": "::1", "health": "ok"}, "body.health", "passing"),
        (f"{CART}/instances/i1/health", {"health": "dead"}, "body.health", "passing"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    client: httpx.AsyncClient, path: str, body: Any, field: str, fragment: str
) -> None:
    await register(client)
    r = await client.put(path, json=body)
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["error"] == "invalid" and doc["field"] == field
    assert doc["message"].startswith(f"{field}: ") and fragment in doc["message"]
    assert doc["detail"], "pydantic's full list stays available"


async def test_bad_json_and_oversized_bodies(client: httpx.AsyncClient) -> None:
    r = await client.put(CART, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"].startswith("body")
    big = {"ports": [{"port": 1}], "labels": {"k": "v" * (2 << 20)}}
    r = await client.put(CART, json=big)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert (await client.get(CART)).status_code == 404, "nothing was stored"


async def test_conditional_writes(client: httpx.AsyncClient) -> None:
    r = await client.put(CART, json=SPEC, headers={"if-none-match": "*"})
    assert r.status_code == 201
    r = await client.put(CART, json=SPEC, headers={"if-none-match": "*"})
    assert r.status_code == 412 and r.json()["error"] == "precondition_failed"
    r = await client.put(CART, json={**SPEC, "export": False}, headers={"if-match": '"9"'})
    assert r.status_code == 412
    r = await client.put(CART, json={**SPEC, "export": False}, headers={"if-match": '"1"'})
    assert (r.status_code, r.headers["etag"]) == (200, '"2"')
    r = await client.delete(CART, headers={"if-match": "abc"})
    assert r.status_code == 422 and r.json()["field"] == "If-Match"
    assert (await client.get(CART)).status_code == 200


async def test_catalog_and_blocking_query_wakes_on_change(client: httpx.AsyncClient) -> None:
    index = await register(client, "a")
    r = await client.get("/v1/catalog")
    assert r.json()["index"] == index == int(r.headers["x-atoll-index"])
    epoch = r.headers["x-atoll-epoch"]
    assert r.json()["epoch"] == epoch and len(r.json()["services"]) == 1

    params: dict[str, str | int] = {"index": index, "epoch": epoch, "wait": "10s"}
    poll = spawn(client.get("/v1/catalog", params=params), name="poll")
    await asyncio.sleep(0.2)
    assert not poll.done(), "nothing changed yet: the query is held"
    await client.put(f"{CART}/instances/a/health", json={"health": "critical"})
    woke = await poll
    assert woke.json()["index"] == index + 1
    assert woke.json()["services"][0]["instances"][0]["health"] == "critical"


async def test_blocking_query_times_out_with_the_same_snapshot(client: httpx.AsyncClient) -> None:
    index = await register(client)
    loop = asyncio.get_running_loop()
    start = loop.time()
    r = await client.get("/v1/catalog", params={"index": index, "wait": "300ms"})
    assert loop.time() - start >= 0.3
    assert (r.status_code, r.json()["index"]) == (200, index)


async def test_blocking_query_wait_is_capped(client: httpx.AsyncClient) -> None:
    index = await register(client)
    async with asyncio.timeout(8):  # the fixture caps waits at 2 s; 10 minutes were asked
        r = await client.get("/v1/catalog", params={"index": index, "wait": "10m"})
    assert r.json()["index"] == index


async def test_blocking_query_answers_at_once_for_another_index_or_epoch(
    client: httpx.AsyncClient,
) -> None:
    index = await register(client)
    async with asyncio.timeout(1.5):  # below the 2 s cap: these must not wait at all
        older = await client.get("/v1/catalog", params={"index": index - 1, "wait": "2s"})
        future = await client.get("/v1/catalog", params={"index": index + 5, "wait": "2s"})
        other = await client.get(
            "/v1/catalog", params={"index": index, "epoch": "other", "wait": "2s"}
        )
    assert {older.json()["index"], future.json()["index"], other.json()["index"]} == {index}


async def test_bad_wait_is_422(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/catalog", params={"index": 0, "wait": "soon"})
    assert r.status_code == 422 and r.json()["field"] == "query.wait"
    r = await client.get("/v1/catalog", params={"index": -1})
    assert r.status_code == 422 and r.json()["field"] == "query.index"


async def test_ttl_expiry_wakes_blocking_queries(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await register(client)
    r = await client.put(f"{CART}/instances/t", json={"address": "10.0.0.9", "ttl_seconds": 10})
    index = int(r.headers["x-atoll-index"])
    poll = spawn(client.get("/v1/catalog", params={"index": index, "wait": "2s"}), name="poll")
    clock.advance(10)  # the expiry loop (every 20 ms of real time) notices
    woke = await poll
    assert woke.json()["index"] == index + 1
    assert woke.json()["services"][0]["instances"][0]["health"] == "critical"


async def test_metrics_and_healthz(client: httpx.AsyncClient) -> None:
    await register(client, "a", "b")
    await client.put(f"{CART}/instances/b/health", json={"health": "warning"})
    await client.get("/v1/services/shop/nope")
    assert (await client.get("/healthz")).json() == {"status": "ok", "index": 4}
    text = (await client.get("/metrics")).text
    for line in [
        'atoll_registry_services{exported="true"} 1.0',
        'atoll_registry_services{exported="false"} 0.0',
        'atoll_registry_instances{health="passing"} 1.0',
        'atoll_registry_instances{health="warning"} 1.0',
        'atoll_registry_instances{health="critical"} 0.0',
        "atoll_registry_index 4.0",
        'atoll_registry_requests_total{method="PUT",route="/v1/services/{namespace}/{name}",'
        'status="201"} 1.0',
        'atoll_registry_requests_total{method="GET",route="/v1/services/{namespace}/{name}",'
        'status="404"} 1.0',
    ]:
        assert line in text.splitlines(), line


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "registry.json"
    async with (
        running_registry(host=HOST, state_file=state) as url,
        httpx.AsyncClient(base_url=url) as c,
    ):
        await register(c, "a", "b")
        before = (await c.get("/v1/catalog")).json()
    async with (
        running_registry(host=HOST, state_file=state) as url,
        httpx.AsyncClient(base_url=url) as c,
    ):
        after = (await c.get("/v1/catalog")).json()
    assert after == before


async def test_a_corrupt_state_file_is_moved_aside_and_the_registry_starts_empty(
    tmp_path: Path,
) -> None:
    state = tmp_path / "registry.json"
    state.write_bytes(b'{"format": 1, "kind": "atoll-registry-catalog", "sha256": "00", "pay')
    async with (
        running_registry(host=HOST, state_file=state) as url,
        httpx.AsyncClient(base_url=url) as c,
    ):
        catalog = (await c.get("/v1/catalog")).json()
        assert (catalog["index"], catalog["services"]) == (0, [])
        assert (await c.put(CART, json=SPEC)).status_code == 201
    names = sorted(await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()]))
    assert names[0] == "registry.json" and names[1].startswith("registry.json.corrupt-")


async def test_shutdown_answers_pending_long_polls() -> None:
    async with httpx.AsyncClient() as c:
        async with running_registry(host=HOST) as url:
            params: dict[str, str | int] = {"index": 0, "wait": "5m"}
            poll = spawn(c.get(f"{url}/v1/catalog", params=params), name="poll")
            await asyncio.sleep(0.2)
            assert not poll.done()
        # the server has stopped; the poll was answered, not cut off
        async with asyncio.timeout(5):
            r = await poll
    assert (r.status_code, r.json()["index"]) == (200, 0)


async def test_a_taken_port_is_a_fatal_error() -> None:
    with socket.create_server((HOST, 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(FatalError, match=f"cannot listen on {HOST}:{port}"):
            await serve_registry(host=HOST, port=port, state_file=None)
