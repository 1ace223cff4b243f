"""asyncio helpers: the only sanctioned way to start a background task.

``asyncio.create_task`` keeps only a weak reference to its task, so a task
nobody holds can be garbage-collected mid-flight, and an exception in it is
reported only when it is collected. :func:`spawn` names every task, keeps a
strong reference until it finishes, and logs a task that died with an error —
or a task declared ``forever`` that returned at all, which is always a bug.
ruff bans ``asyncio.create_task`` in favour of this module (pyproject.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Backoff", "Sleep", "cancel_and_wait", "spawn"]

T = TypeVar("T")
log = logging.getLogger("atoll.aio")

_tasks: set[asyncio.Task[Any]] = set()

Sleep = Callable[[float], Awaitable[None]]


def spawn(coro: Coroutine[Any, Any, T], *, name: str, forever: bool = False) -> asyncio.Task[T]:
    """Start ``coro`` as a named task that is kept alive until it ends."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)

    def _done(t: asyncio.Task[Any]) -> None:
        _tasks.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("task failed", extra={"task": name}, exc_info=exc)
        elif forever:
            log.error("forever task returned", extra={"task": name})

    task.add_done_callback(_done)
    return task


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel tasks and wait until they have finished (ignoring their errors)."""
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    for t in live:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's "full jitter").

    ``next_delay()`` returns a delay uniformly drawn from ``[0, min(cap, base*2**n))``
    — never less than ``floor`` — and advances ``n``; ``reset()`` after a success.
    Randomness is injected so tests are deterministic.
    """

    base: float = 0.1
    cap: float = 10.0
    floor: float = 0.05
    rng: random.Random | None = None
    attempt: int = 0

    def next_delay(self) -> float:
        rng = self.rng or random
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return max(self.floor, rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        self.attempt = 0
