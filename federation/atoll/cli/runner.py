"""Run a long-lived component until SIGTERM/SIGINT, then shut it down cleanly.

The component is one coroutine. A signal cancels it; its ``finally`` blocks
close listeners and stores. A :class:`~atoll.errors.FatalError` (port taken,
corrupt store) is printed as one line and exits with status 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from atoll import logs
from atoll.cli.common import fail
from atoll.errors import AtollError

__all__ = ["run_component"]

log = logging.getLogger("atoll.cli")


async def _main(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("shutting down", extra={"signal": signame})
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        await make()
    except asyncio.CancelledError:
        if not stopping:
            raise


def run_component(
    component: str,
    make: Callable[[], Coroutine[Any, Any, None]],
    *,
    log_level: str = "info",
    log_format: str = "json",
) -> None:
    logs.configure(component, level=log_level, fmt="text" if log_format == "text" else "json")
    try:
        asyncio.run(_main(make))
    except* AtollError as group:
        first = group.exceptions[0]
        log.error("fatal", extra={"error": str(first)})
        fail(str(first))
