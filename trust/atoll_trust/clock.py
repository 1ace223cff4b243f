"""Injected time: every trust decision takes ``now`` from a :data:`Clock`.

Certificates, JWTs, bundles and rotation all depend on the current time; the
code never calls ``datetime.now()`` itself, so tests (and the long rotation
simulation) run in fake time. All instants are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Clock", "FakeClock", "system_clock", "utc"]

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    """The real wall clock, UTC, second-resolution precision kept as is."""
    return dt.datetime.now(dt.UTC)


def utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@dataclass(slots=True)
class FakeClock:
    """A settable clock for tests; call it like :func:`system_clock`."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        self.now = self.now + delta
        return self.now
