"""RegistrySource against a scripted transport: query shape, dedup, retries, one log per outage.

The real-server behaviour (blocking, restart) is in
tests/integration/test_catalog_sources.py; here httpx's MockTransport plays
every failure a network can produce, in fake time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import httpx
import pytest

from atoll.aio import Backoff
from atoll_agent.catalog.registry_source import RegistrySource
from atoll_agent.registry.model import CatalogSnapshot

Step = Callable[[httpx.Request], httpx.Response]


def snap(index: int, epoch: str = "e", services: int = 0) -> CatalogSnapshot:
    return CatalogSnapshot.model_validate(
        {
            "index": index,
            "epoch": epoch,
            "services": [
                {"namespace": "ns", "name": f"s{i}", "ports": [{"port": 80}]}
                for i in range(services)
            ],
        }
    )


def ok(s: CatalogSnapshot) -> Step:
    return lambda request: httpx.Response(200, content=s.model_dump_json().encode())


def fail(exc: type[httpx.TransportError]) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        raise exc("scripted failure", request=request)

    return step


class Script:
    """Answers requests from a list of steps and records what was asked."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.steps.pop(0)(request)


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def collect(script: Script, n: int, sleep: FakeSleep) -> list[CatalogSnapshot]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        source = RegistrySource(
            "http://registry.test/",
            client=client,
            wait=30,
            backoff=Backoff(base=1.0, cap=8.0, floor=0.0, rng=random.Random(1)),
            sleep=sleep,
        )
        out: list[CatalogSnapshot] = []
        async for s in source.watch():
            out.append(s)
            if len(out) == n:
                break
        return out


async def test_first_a_plain_get_then_blocking_queries_from_the_last_index() -> None:
    script = Script(ok(snap(3)), ok(snap(3)), ok(snap(3)), ok(snap(5, services=1)))
    got = await collect(script, 2, FakeSleep())
    assert [(s.epoch, s.index) for s in got] == [("e", 3), ("e", 5)], "a timeout is not a change"
    first, *blocking = script.requests
    assert first.url.path == "/v1/catalog" and first.url.params == httpx.QueryParams()
    for request in blocking:
        assert request.url.params == httpx.QueryParams(
            {"index": "3", "epoch": "e", "wait": "30000ms"}
        )
    assert got[1].services[0].name == "s0"


async def test_a_new_epoch_with_the_same_index_is_a_change() -> None:
    script = Script(ok(snap(2, "old")), ok(snap(2, "new")))
    got = await collect(script, 2, FakeSleep())
    assert [s.epoch for s in got] == ["old", "new"]


@pytest.mark.parametrize(
    "bad",
    [
        fail(httpx.ConnectError),
        fail(httpx.ReadTimeout),
        fail(httpx.RemoteProtocolError),  # connection cut mid-body
        lambda r: httpx.Response(500, text="boom"),
        lambda r: httpx.Response(404, json={"error": "not_found"}),
        lambda r: httpx.Response(200, content=b'{"index": 9, "epoch": "e", "services": [{"na'),
        lambda r: httpx.Response(200, json={"index": -1}),
        lambda r: httpx.Response(200, content=b"<html>proxy error</html>"),
    ],
    ids=["refused", "timeout", "cut", "500", "404", "truncated", "invalid", "html"],
)
async def test_failures_are_retried_with_backoff_and_never_yielded(
    bad: Step, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(ok(snap(1)), bad, bad, bad, ok(snap(1)), ok(snap(4)), bad, ok(snap(6)))
    sleep = FakeSleep()
    with caplog.at_level(logging.DEBUG, logger="atoll.agent.catalog"):
        got = await collect(script, 3, sleep)
    assert [s.index for s in got] == [1, 4, 6]
    assert len(sleep.delays) == 4
    assert sleep.delays[0] <= 1.0 and sleep.delays[1] <= 2.0 and sleep.delays[2] <= 4.0
    assert sleep.delays[3] <= 1.0, "backoff restarts after a success"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "catalog registry unavailable; retrying with backoff"
    ] * 2, "one warning per outage, not per retry"
    recovered = [r for r in caplog.records if r.getMessage() == "catalog registry reachable again"]
    assert [r.attempts for r in recovered] == [3, 1]  # type: ignore[attr-defined]


async def test_an_unreachable_registry_at_start_is_waited_for() -> None:
    script = Script(fail(httpx.ConnectError), fail(httpx.ConnectError), ok(snap(1)))
    sleep = FakeSleep()
    got = await collect(script, 1, sleep)
    assert [s.index for s in got] == [1]
    assert len(sleep.delays) == 2
    assert all(r.url.params == httpx.QueryParams() for r in script.requests)
