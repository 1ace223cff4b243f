"""Catalog sources against real things: a registry server on 127.0.20.2, a file being rewritten."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from atoll.aio import Backoff, cancel_and_wait, spawn
from atoll.errors import InvalidError, NotFoundError
from atoll_agent.catalog import CatalogSource, FileSource, RegistrySource, build_exports
from atoll_agent.registry.model import CatalogSnapshot
from atoll_agent.registry.testing import running_registry

HOST = "127.0.20.2"
SPEC = {"ports": [{"port": 80}], "export": True}


def free_port() -> int:
    with socket.create_server((HOST, 0)) as s:
        port: int = s.getsockname()[1]
        return port


class Collector:
    """Consumes a source's watch() in a task; the test awaits snapshots as they come."""

    def __init__(self, source: CatalogSource) -> None:
        self.queue: asyncio.Queue[CatalogSnapshot] = asyncio.Queue()
        self.task = spawn(self._run(source), name="collector")

    async def _run(self, source: CatalogSource) -> None:
        async for snap in source.watch():
            self.queue.put_nowait(snap)

    async def next(self) -> CatalogSnapshot:
        async with asyncio.timeout(10):
            return await self.queue.get()

    async def until(self, check: Callable[[CatalogSnapshot], bool]) -> CatalogSnapshot:
        """The first snapshot that satisfies ``check``, skipping the others."""
        while True:
            snap = await self.next()
            if check(snap):
                return snap

    async def close(self) -> None:
        await cancel_and_wait(self.task)


class LogWatch(logging.Handler):
    """Records the agent's catalog logs; lets a test await a given message."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def named(self, message: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == message]

    async def wait_for(self, message: str) -> logging.LogRecord:
        async with asyncio.timeout(10):
            while not self.named(message):
                self.changed.clear()
                await self.changed.wait()
        return self.named(message)[-1]


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    logger = logging.getLogger("atoll.agent.catalog")
    watch = LogWatch()
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.2, floor=0.01, rng=random.Random(3))


# -- RegistrySource -------------------------------------------------------------------------


async def test_registry_source_follows_changes() -> None:
    async with running_registry(host=HOST) as url, httpx.AsyncClient(base_url=url) as client:
        await client.put("/v1/services/shop/cart", json=SPEC)
        collector = Collector(RegistrySource(url, wait=5, backoff=fast_backoff()))
        try:
            first = await collector.next()
            assert (first.index, [s.name for s in first.services]) == (1, ["cart"])
            await client.put("/v1/services/shop/cart/instances/c1", json={"address": "10.9.0.1"})
            second = await collector.next()
            assert second.index == 2 and second.epoch == first.epoch
            (export,) = build_exports("eu-1", second, now=0.0)
            assert [str(e.address) for e in export.spec.endpoints] == ["10.9.0.1"]
            await client.delete("/v1/services/shop/cart")
            third = await collector.next()
            assert (third.index, third.services) == (3, ())
        finally:
            await collector.close()


async def test_registry_source_survives_a_registry_restart(tmp_path: Path, logs: LogWatch) -> None:
    port = free_port()
    state = tmp_path / "registry.json"
    url = f"http://{HOST}:{port}"
    collector = Collector(RegistrySource(url, wait=5, backoff=fast_backoff()))
    try:
        async with running_registry(host=HOST, port=port, state_file=state):
            first = await collector.next()  # the source may have retried until this server was up
            async with httpx.AsyncClient(base_url=url) as client:
                await client.put("/v1/services/shop/cart", json=SPEC)
            before = await collector.next()
            assert before.index == first.index + 1
            logs.records.clear()
        # the registry is down: the source keeps retrying with backoff, logging once
        await asyncio.sleep(0.6)
        assert logs.messages() == ["catalog registry unavailable; retrying with backoff"]
        assert logs.messages(logging.DEBUG), "it did retry meanwhile"
        assert collector.queue.empty(), "nothing is yielded while the registry is down"
        async with running_registry(host=HOST, port=port, state_file=state):
            async with httpx.AsyncClient(base_url=url) as client:
                await client.put("/v1/services/shop/db", json=SPEC)
            after = await collector.next()
            recovered = await logs.wait_for("catalog registry reachable again")
        assert after.epoch == before.epoch, "same state file, same index sequence"
        assert after.index == before.index + 1
        assert [s.name for s in after.services] == ["cart", "db"]
        assert len(logs.named("catalog registry reachable again")) == 1
        assert recovered.attempts >= 2  # type: ignore[attr-defined]
    finally:
        await collector.close()


async def test_registry_source_follows_a_registry_that_lost_its_state() -> None:
    port = free_port()
    url = f"http://{HOST}:{port}"
    collector = Collector(RegistrySource(url, wait=5, backoff=fast_backoff()))
    try:
        async with running_registry(host=HOST, port=port), httpx.AsyncClient() as client:
            await client.put(f"{url}/v1/services/shop/old", json=SPEC)
            old = await collector.until(lambda s: s.index == 1)
        async with running_registry(host=HOST, port=port), httpx.AsyncClient() as client:
            await client.put(f"{url}/v1/services/shop/new", json=SPEC)
            new = await collector.until(lambda s: bool(s.services))
        assert new.index == old.index == 1, "the same index number ..."
        assert new.epoch != old.epoch, "... of another epoch is still a change"
        assert [s.name for s in new.services] == ["new"]
    finally:
        await collector.close()


# -- FileSource -----------------------------------------------------------------------------

GOOD_1 = """
services:
  - {namespace: shop, name: cart, export: true, ports: [{port: 80}],
     instances: [{id: c1, address: 10.0.0.1}]}
"""
GOOD_2 = GOOD_1.replace("10.0.0.1", "10.0.0.2")
GOOD_3 = GOOD_1.replace("10.0.0.1", "10.0.0.3")
REFORMATTED_3 = """
services:
  - namespace: shop
    name: cart
    export: true
    ports:
      - port: 80
    instances:
      - id: c1
        address: 10.0.0.3
"""
INVALID = GOOD_1.replace("10.0.0.1", "10.0.0.999")


def replace_file(path: Path, text: str) -> None:
    """Write like an editor or a config manager: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def addresses(snap: CatalogSnapshot) -> list[str]:
    return [str(i.address) for s in snap.services for i in s.instances]


async def test_file_source_valid_invalid_valid(tmp_path: Path, logs: LogWatch) -> None:
    path = tmp_path / "catalog.yaml"
    await asyncio.to_thread(replace_file, path, GOOD_1)
    collector = Collector(FileSource(path, interval=0.02))
    try:
        first = await collector.next()
        assert (first.index, addresses(first)) == (1, ["10.0.0.1"])

        await asyncio.to_thread(replace_file, path, GOOD_2)
        second = await collector.next()
        assert (second.index, addresses(second)) == (2, ["10.0.0.2"])

        await asyncio.to_thread(replace_file, path, INVALID)
        record = await logs.wait_for("catalog file invalid; keeping the last good catalog")
        reason: str = record.reason  # type: ignore[attr-defined]
        assert str(path) in reason and "services.0.instances.0.address" in reason

        await asyncio.to_thread(replace_file, path, GOOD_3)
        third = await collector.next()
        assert (third.index, addresses(third)) == (3, ["10.0.0.3"]), "nothing in between"

        await asyncio.to_thread(replace_file, path, REFORMATTED_3)  # same catalog
        await asyncio.to_thread(path.unlink)
        await logs.wait_for("catalog file missing; keeping the last good catalog")
        await asyncio.to_thread(replace_file, path, GOOD_1)
        fourth = await collector.next()
        assert (fourth.index, addresses(fourth)) == (4, ["10.0.0.1"])
        assert third.epoch == fourth.epoch
        assert len(logs.messages()) == 2, "each problem is logged once, not once per poll"
    finally:
        await collector.close()


class SteppedSleep:
    """An injected sleep that returns only when the test says: one poll per step()."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        await self.steps.get()

    def step(self) -> None:
        self.steps.put_nowait(None)


async def test_file_source_rereads_after_a_change_despite_coarse_mtimes(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    a = '{"services": [{"namespace": "a", "name": "x", "ports": [{"port": 1}]}]}'
    b = a.replace('"x"', '"y"')
    await asyncio.to_thread(path.write_text, a)
    sleep = SteppedSleep()
    watch = FileSource(path, sleep=sleep).watch()
    try:
        first = await anext(watch)
        assert first.services[0].name == "x"
        # rewritten in place, same size, and the file system kept the same mtime
        stat = await asyncio.to_thread(path.stat)
        await asyncio.to_thread(path.write_text, b)
        await asyncio.to_thread(os.utime, path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        sleep.step()
        async with asyncio.timeout(5):
            second = await anext(watch)
        assert second.services[0].name == "y"
    finally:
        await watch.aclose()


async def test_file_source_first_load_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        await anext(FileSource(tmp_path / "nope.yaml").watch())
    bad = tmp_path / "bad.yaml"
    await asyncio.to_thread(bad.write_text, INVALID)
    with pytest.raises(InvalidError) as info:
        await anext(FileSource(bad).watch())
    assert str(info.value).startswith(f"{bad}: services.0.instances.0.address:")
    assert info.value.field == "services.0.instances.0.address"


async def test_sources_satisfy_the_protocol(tmp_path: Path) -> None:
    sources: list[CatalogSource] = [FileSource(tmp_path / "x"), RegistrySource("http://x")]
    assert all(isinstance(s, CatalogSource) for s in sources)
