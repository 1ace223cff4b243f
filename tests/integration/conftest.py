"""Fixtures: a real control plane in this process (SQLite store, loopback ports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.control.plane import ControlPlane, PlaneConfig


class RunningPlane:
    def __init__(self, plane: ControlPlane, task: asyncio.Task[None]) -> None:
        self.plane = plane
        self.task = task

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.plane.api_port}"

    @property
    def sync(self) -> str:
        return f"127.0.0.1:{self.plane.sync_port}"


async def start_plane(tmp: Path, *, lease_ttl: int = 2, server_id: str = "cp-test") -> RunningPlane:
    ready = asyncio.Event()
    plane = ControlPlane(
        PlaneConfig(
            store_url=f"sqlite://{tmp / 'store.db'}",
            api_port=0,
            sync_port=0,
            server_id=server_id,
            lease_ttl=lease_ttl,
            heartbeat_interval=0.2,
            leader_ttl=2,
        )
    )
    task = spawn(plane.run(on_ready=lambda _p: ready.set()), name="test-plane")
    async with asyncio.timeout(20):
        waiter = spawn(ready.wait(), name="wait-ready")
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
    return RunningPlane(plane, task)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[RunningPlane]:
    running = await start_plane(tmp_path)
    yield running
    await cancel_and_wait(running.task)


@pytest.fixture
async def api(plane: RunningPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=plane.api, timeout=5.0) as client:
        yield client
