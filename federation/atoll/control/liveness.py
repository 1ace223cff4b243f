"""Cluster liveness: one store lease per cluster, renewed by its agent's heartbeats.

A cluster is *alive* while the key ``/atoll/v1/liveness/<cluster>`` exists.
The key is attached to a lease of ``ttl`` seconds; every heartbeat from the
cluster's agent (over the sync stream, to whichever replica it is connected
to) renews it. When the agent stops — crash, partition, Ctrl-C — the lease
runs out, the store deletes the key, and the reconciler withdraws the
cluster's exports.

Renewals are rate-limited to one per ``ttl / 3`` per cluster: heartbeats come
more often than that (so one lost heartbeat does not matter) but each renewal
is a store write. The worst-case withdrawal time after an agent dies is
therefore ``ttl`` (+ the store's expiry granularity + propagation); the
failover work states and measures that bound.

A replica that did not create the lease (another replica, or this process
before a restart) finds the lease id in the key's value and renews it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from atoll.errors import LeaseNotFoundError
from atoll.store import LeaseId, Store

__all__ = ["LIVENESS_PREFIX", "Liveness", "liveness_key"]

LIVENESS_PREFIX = "/atoll/v1/liveness/"
log = logging.getLogger("atoll.control.liveness")


def liveness_key(cluster: str) -> str:
    return LIVENESS_PREFIX + cluster


def cluster_of(key: str) -> str | None:
    return key[len(LIVENESS_PREFIX) :] if key.startswith(LIVENESS_PREFIX) else None


@dataclass(slots=True)
class _Held:
    lease: LeaseId
    renewed_at: float


class Liveness:
    def __init__(
        self,
        store: Store,
        *,
        ttl: int = 5,
        holder: str = "control-plane",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 2:
            raise ValueError("liveness ttl must be at least 2 seconds")
        self.store = store
        self.ttl = ttl
        self.holder = holder
        self.clock = clock
        self._held: dict[str, _Held] = {}

    async def renew(self, cluster: str) -> float:
        """Record a heartbeat; returns seconds left on the cluster's lease."""
        now = self.clock()
        held = self._held.get(cluster)
        if held is not None and now - held.renewed_at < self.ttl / 3:
            return self.ttl - (now - held.renewed_at)
        if held is None:
            held = await self._adopt(cluster)
        if held is not None:
            try:
                await self.store.keepalive(held.lease)
                held.renewed_at = now
                self._held[cluster] = held
                return float(self.ttl)
            except LeaseNotFoundError:
                log.info(
                    "cluster lease had expired; granting a new one", extra={"cluster": cluster}
                )
        lease = await self.store.grant_lease(self.ttl)
        doc = {"cluster": cluster, "lease": lease, "ttl": self.ttl, "holder": self.holder}
        await self.store.put(liveness_key(cluster), json.dumps(doc).encode(), lease=lease)
        self._held[cluster] = _Held(lease=lease, renewed_at=now)
        log.info("cluster alive", extra={"cluster": cluster, "lease": lease})
        return float(self.ttl)

    async def _adopt(self, cluster: str) -> _Held | None:
        entry = await self.store.get(liveness_key(cluster))
        if entry is None or entry.lease is None:
            return None
        return _Held(lease=entry.lease, renewed_at=0.0)

    async def remaining(self, cluster: str) -> float | None:
        """Seconds left before the cluster is declared dead; None if it is dead."""
        entry = await self.store.get(liveness_key(cluster))
        if entry is None or entry.lease is None:
            return None
        return await self.store.lease_remaining(entry.lease)

    def forget(self, cluster: str) -> None:
        self._held.pop(cluster, None)
