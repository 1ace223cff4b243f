"""Byte accounting and idle timeout for a relay, on a timer rather than per chunk.

Every ``tick`` the relay's totals are compared with the last report;
progress goes to ``on_progress`` (live byte counters), and ``idle_timeout``
seconds without a byte in either direction end the relay with
:attr:`RelayWatch.timed_out` set — checked at tick granularity, so the close
happens between ``idle_timeout`` and ``idle_timeout + tick``. Nothing runs per
chunk (a splice relay never sees the bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["ProgressCallback", "RelayWatch"]

#: ``(new bytes client→upstream, new bytes upstream→client)`` since the last call
ProgressCallback = Callable[[int, int], None]


class RelayWatch:
    """Tick-driven byte accounting and idle timeout of one relay (module doc)."""

    def __init__(
        self,
        *,
        idle_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        tick: float = 5.0,
    ) -> None:
        if idle_timeout is not None:
            tick = min(tick, idle_timeout)
        self.idle_timeout = idle_timeout
        self.on_progress = on_progress
        self.tick = tick
        self.timed_out = False
        self._reported = (0, 0)
        self._idle = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] | None = None
        self._totals: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None],
        totals: Callable[[], tuple[int, int]],
    ) -> None:
        self._done, self._totals = done, totals
        if self.idle_timeout is not None or self.on_progress is not None:
            self._timer = loop.call_later(self.tick, self._on_tick, loop)

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        totals = self._totals()
        self._idle = self._idle + self.tick if totals == self._reported else 0.0
        self.report(totals)
        if self.idle_timeout is not None and self._idle >= self.idle_timeout:
            self.timed_out = True
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
            return
        self._timer = loop.call_later(self.tick, self._on_tick, loop)

    def report(self, totals: tuple[int, int]) -> None:
        """Hand the bytes moved since the last report to ``on_progress``."""
        up, down = totals
        last_up, last_down = self._reported
        if self.on_progress is not None and (up != last_up or down != last_down):
            self.on_progress(up - last_up, down - last_down)
        self._reported = totals

    def stop(self, totals: tuple[int, int]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.report(totals)
