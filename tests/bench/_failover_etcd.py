"""The failover benchmark's peer: the floors a real etcd sets, measured in the same run.

No GSLB peer runs on one machine (k8gb and Route 53 need clusters or a
cloud), so the benchmark compares Atoll with what its building blocks could
do at best, on a single-node etcd (:class:`atoll.testing.etcd.EtcdServer`)
reached through Atoll's own :class:`~atoll.store.Store` client:

* **put -> watch** (the drain's peer): time from a ``put`` call until a
  watcher on the key receives the event — the floor for propagating an
  operator's change to one subscriber.
* **lease expiry** (the chaos kill's peer): a key attached to a lease of the
  lab's TTL, kept alive every heartbeat like a live agent; at a point drawn
  uniformly within a heartbeat the keepalives stop (the "kill"), and a
  watcher waits for the key's DELETE. Each trial gives the time from the
  last keepalive (TTL + etcd's expiry granularity: its lessor checks for
  expired leases every 500 ms), the time from the kill, and how much lease
  was left at the kill — the same three figures the benchmark derives for
  Atoll's chaos drills.

Lease trials run overlapped (staggered starts) so twenty of them take about
one TTL plus the stagger instead of twenty TTLs; each lease is independent,
so overlap does not change what one trial measures. Arrival times are taken
by one watch consumer per prefix, not by the task that wrote, so an event
that arrives before the ``put`` call returns is timed when it arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from atoll.aio import cancel_and_wait, spawn
from atoll.store import EventType, Store
from atoll.store.watching import watch_closing

from ._failover_stats import LeaseTrial
from ._procs import BenchError

__all__ = ["measure_lease_expiry", "measure_put_watch"]

Progress = Callable[[str], None]


class _Arrivals:
    """Times (monotonic) at which events for keys under a prefix arrived."""

    def __init__(self, store: Store, prefix: str, kind: EventType) -> None:
        self.store = store
        self.prefix = prefix
        self.kind = kind
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    def expect(self, key: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        return fut

    async def __aenter__(self) -> _Arrivals:
        start = await self.store.revision() + 1
        ready = asyncio.Event()
        self._task = spawn(self._consume(start, ready), name=f"bench-watch:{self.prefix}")
        await ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    async def _consume(self, start: int, ready: asyncio.Event) -> None:
        async with watch_closing(self.store, self.prefix, start_revision=start) as batches:
            ready.set()
            async for batch in batches:
                now = time.monotonic()
                for event in batch.events:
                    fut = self._waiting.get(event.key)
                    if event.type is self.kind and fut is not None and not fut.done():
                        fut.set_result(now)


async def measure_put_watch(store: Store, *, trials: int, prefix: str) -> list[float]:
    """Seconds from ``put`` to the watch event, ``trials`` times (one warm-up not counted)."""
    out: list[float] = []
    async with _Arrivals(store, prefix, EventType.PUT) as arrivals:
        for i in range(trials + 1):
            key = f"{prefix}k{i}"
            fut = arrivals.expect(key)
            t0 = time.monotonic()
            await store.put(key, b"drained")
            try:
                arrived = await asyncio.wait_for(fut, 5.0)
            except TimeoutError as exc:
                raise BenchError(f"etcd watch did not deliver {key} within 5 s") from exc
            if i > 0:
                out.append(arrived - t0)
    return out


async def _lease_trial(
    store: Store,
    arrivals: _Arrivals,
    *,
    key: str,
    ttl: int,
    heartbeat: float,
    delay: float,
    kill_after: float,
) -> LeaseTrial:
    await asyncio.sleep(delay)
    lease = await store.grant_lease(ttl)
    await store.put(key, b"alive", lease=lease)
    deleted = arrivals.expect(key)
    await asyncio.sleep(heartbeat)
    await store.keepalive(lease)
    last_keepalive = time.monotonic()
    await asyncio.sleep(kill_after)
    killed = time.monotonic()
    try:
        seen = await asyncio.wait_for(deleted, ttl + 5.0)
    except TimeoutError as exc:
        raise BenchError(f"etcd did not expire the lease of {key} within TTL + 5 s") from exc
    return LeaseTrial(
        from_keepalive=seen - last_keepalive,
        from_kill=seen - killed,
        left_at_kill=ttl - (killed - last_keepalive),
    )


async def measure_lease_expiry(
    store: Store,
    *,
    trials: int,
    ttl: int,
    heartbeat: float,
    prefix: str,
    rng: random.Random,
    stagger: float = 0.35,
    progress: Progress = lambda _msg: None,
) -> list[LeaseTrial]:
    """``trials`` abandoned leases of ``ttl`` seconds, overlapped; see the module docstring."""
    async with _Arrivals(store, prefix, EventType.DELETE) as arrivals:
        tasks = [
            spawn(
                _lease_trial(
                    store,
                    arrivals,
                    key=f"{prefix}lease{i}",
                    ttl=ttl,
                    heartbeat=heartbeat,
                    delay=i * stagger,
                    kill_after=rng.uniform(0.0, heartbeat),
                ),
                name=f"bench-lease-{i}",
            )
            for i in range(trials)
        ]
        try:
            results: list[LeaseTrial] = []
            for i, task in enumerate(tasks):
                results.append(await task)
                progress(f"etcd lease {i + 1}/{trials}: {results[-1].from_kill:.3f} s from kill")
            return results
        finally:
            await cancel_and_wait(*tasks)
            with contextlib.suppress(Exception):
                await store.delete_prefix(prefix)
