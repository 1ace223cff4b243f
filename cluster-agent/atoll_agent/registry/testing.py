"""Test helpers that ship with the registry: a settable clock and a real server.

:func:`running_registry` starts :func:`~atoll_agent.registry.server.serve_registry`
on a loopback address as a task, yields its base URL once it listens, and
cancels it (the graceful path) on exit — the same code path ``atoll registry``
runs, so tests exercise the real server rather than an ASGI shortcut.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from atoll.aio import cancel_and_wait, spawn
from atoll_agent.registry.runtime import Clock
from atoll_agent.registry.server import RegistryConfig, serve_registry

__all__ = ["FakeClock", "running_registry"]


@dataclass(slots=True)
class FakeClock:
    """A clock that only moves when told to (unix seconds)."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def running_registry(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    state_file: Path | None = None,
    clock: Clock | None = None,
    config: RegistryConfig | None = None,
) -> AsyncIterator[str]:
    """Serve a registry until the block exits; yield ``http://host:port``."""
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = spawn(
        serve_registry(
            host=host,
            port=port,
            state_file=state_file,
            config=config or RegistryConfig(),
            clock=clock if clock is not None else time.time,
            on_listening=listening.set_result,
        ),
        name=f"test-registry-{host}:{port}",
    )
    waiting: set[asyncio.Future[None] | asyncio.Future[int]] = {task, listening}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not listening.done():
        await task  # it ended before listening: raise its error
        raise RuntimeError("registry server returned before listening")
    try:
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{listening.result()}"
    finally:
        await cancel_and_wait(task)
