"""Run the registry: state file, TTL expiry loop and the HTTP server, until cancelled.

:func:`serve_registry` is what ``atoll registry`` calls. The HTTP side is
:func:`atoll.httpserve.serve_http` (socket bound up front so a taken port is a
clear :class:`~atoll.errors.FatalError`, no uvicorn signal handlers, shutdown
by *cancellation*). On cancellation:

1. the registry is closed, which answers every pending blocking query at once
   (otherwise a long poll would hold the shutdown for up to ``max_wait``);
2. uvicorn stops accepting and lets in-flight requests finish (at most
   ``shutdown_grace`` seconds);
3. the TTL expiry loop is cancelled and the cancellation propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from atoll.aio import cancel_and_wait, spawn
from atoll.httpserve import serve_http
from atoll_agent.registry.api import DEFAULT_WAIT, MAX_BODY_BYTES, MAX_WAIT, build_registry_app
from atoll_agent.registry.model import Limits
from atoll_agent.registry.runtime import Clock, Registry

__all__ = ["RegistryConfig", "serve_registry"]


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Tunables of a registry server (where it listens and stores are arguments)."""

    #: seconds between TTL expiry passes
    expiry_interval: float = 1.0
    default_wait: float = DEFAULT_WAIT
    max_wait: float = MAX_WAIT
    max_body_bytes: int = MAX_BODY_BYTES
    limits: Limits = field(default_factory=Limits)
    #: seconds in-flight requests get to finish on shutdown
    shutdown_grace: int = 5


async def serve_registry(
    *,
    host: str,
    port: int,
    state_file: Path | None,
    clock: Clock = time.time,
    config: RegistryConfig = RegistryConfig(),
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve the registry on ``host:port`` until cancelled; then shut down gracefully.

    ``state_file`` (``None``: in memory only) is loaded first — a corrupt one is
    moved aside, see :mod:`atoll_agent.registry.persistence` — and every
    change is written to it before it is acknowledged. ``on_listening`` is
    called with the bound port once connections are accepted into the queue.
    Raises :class:`~atoll.errors.FatalError` when the state file is unusable or
    the address is taken.
    """
    registry = Registry.open(state_file, clock=clock, limits=config.limits)
    app = build_registry_app(
        registry,
        default_wait=config.default_wait,
        max_wait=config.max_wait,
        max_body_bytes=config.max_body_bytes,
    )
    expiry = spawn(
        registry.run_expiry(interval=config.expiry_interval),
        name="registry-ttl-expiry",
        forever=True,
    )
    try:
        await serve_http(
            app,
            host=host,
            port=port,
            what="registry",
            grace=config.shutdown_grace,
            on_listening=on_listening,
            before_shutdown=registry.close,
        )
    finally:
        await cancel_and_wait(expiry)
