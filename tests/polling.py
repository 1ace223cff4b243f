"""Waiting for eventual consistency in tests: poll a check until it holds.

Tests assert *behaviour*, so they wait for a condition with a generous
deadline rather than sleeping a fixed time; a deadline miss fails with the
last value seen. (Speed is measured by benchmarks, never asserted here.)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import dns.exception
import httpx

__all__ = ["eventually", "wait_for"]

#: errors that mean "not yet" while a component starts or restarts
TRANSIENT: tuple[type[Exception], ...] = (
    httpx.HTTPError,
    dns.exception.DNSException,
    OSError,
    KeyError,
    ValueError,
)


async def eventually(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Await until ``check()`` (sync or async) returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
        except TRANSIENT as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Blocking twin of :func:`eventually` for synchronous tests."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except TRANSIENT as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
