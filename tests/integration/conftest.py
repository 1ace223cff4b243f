"""Fixtures: a real control plane in this process (SQLite store, loopback ports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.control.plane import ControlPlane, PlaneConfig
from atoll.trusthub.hub import TrustSettings


class RunningPlane:
    def __init__(self, plane: ControlPlane, task: asyncio.Task[None]) -> None:
        self.plane = plane
        self.task = task

    @property
    def host(self) -> str:
        return self.plane.config.api_host

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.plane.api_port}"

    @property
    def sync(self) -> str:
        return f"{self.host}:{self.plane.sync_port}"

    @property
    def enroll(self) -> str:
        return f"{self.host}:{self.plane.enroll_port}"


async def start_plane(
    tmp: Path,
    *,
    lease_ttl: int = 2,
    server_id: str = "cp-test",
    host: str = "127.0.0.1",
    insecure: bool = True,
    trust: TrustSettings | None = None,
    bundle_endpoint: bool = False,
) -> RunningPlane:
    """A control plane; ``insecure`` (plaintext, AllowAll) unless a test asks for mTLS."""
    ready = asyncio.Event()
    plane = ControlPlane(
        PlaneConfig(
            store_url=f"sqlite://{tmp / 'store.db'}",
            api_host=host,
            api_port=0,
            sync_host=host,
            sync_port=0,
            enroll_host=host,
            enroll_port=0,
            server_id=server_id,
            lease_ttl=lease_ttl,
            heartbeat_interval=0.2,
            leader_ttl=2,
            insecure=insecure,
            trust=trust or TrustSettings(),
            bundle_endpoint=(host, 0) if bundle_endpoint else None,
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
