"""The leader's reconcile loop: observe, derive, plan, apply — level-triggered.

The reconciler watches everything under ``/atoll/v1/`` (clusters, exports,
imports, liveness keys) into an in-memory observation. Any change marks it
dirty; after a short debounce (bursts of reports coalesce into one pass) it
runs one pass:

    observed --derive()--> desired --plan_actions()--> writes (CAS) --execute()

Derivation and planning are pure (:mod:`.derive`, :mod:`.actions`). Writes are
compare-and-swap on the observed revision; a lost race is not retried — the
winning write arrives through the watch and triggers the next pass. A full
pass also runs every ``resync_interval`` seconds even without changes, so
state converges even if an event were missed. Its own writes come back
through the watch as well; a watch batch made only of those echoes (same key,
same revision as written) does not trigger a pass: derivation does not read
what it writes (imports, export conditions, cluster status fields), so such a
pass would plan nothing — and at 20,000 exports a pass costs over a second of
event-loop time right when the new imports are being pushed.

Only the elected leader runs this loop (:mod:`atoll.store.election`): derived
state has exactly one writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from atoll.control import metrics
from atoll.control.actions import execute, plan_actions
from atoll.control.derive import derive
from atoll.control.liveness import LIVENESS_PREFIX
from atoll.control.quorum import probe_verdicts
from atoll.control.repo import Repo, from_entry
from atoll.errors import AtollError, InvalidError
from atoll.model import (
    ROOT,
    Cluster,
    ProbeReport,
    Resource,
    ServiceExport,
    ServiceImport,
    store_prefix,
)
from atoll.store import Entry
from atoll.store.watching import Changes, Observation, apply_observation, list_and_watch

__all__ = ["Reconciler"]

log = logging.getLogger("atoll.control.reconciler")
R = TypeVar("R", bound=Resource)


@dataclass(slots=True)
class _Decoded:
    """Decoded objects cached by (key, mod_revision): each entry is parsed once."""

    cache: dict[str, tuple[int, Resource | None]] = field(default_factory=dict)

    def get(self, cls: type[R], entry: Entry) -> R | None:
        hit = self.cache.get(entry.key)
        if hit is not None and hit[0] == entry.mod_revision:
            obj = hit[1]
            return obj if isinstance(obj, cls) else None
        try:
            obj = from_entry(cls, entry)
        except InvalidError as exc:
            log.error(
                "skipping undecodable stored object", extra={"key": entry.key, "error": str(exc)}
            )
            obj = None
        self.cache[entry.key] = (entry.mod_revision, obj)
        return obj

    def retain(self, keys: set[str]) -> None:
        for k in [k for k in self.cache if k not in keys]:
            del self.cache[k]


class Reconciler:
    def __init__(
        self,
        repo: Repo,
        *,
        debounce: float = 0.05,
        resync_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.debounce = debounce
        self.resync_interval = resync_interval
        self.clock = clock
        self.passes = 0
        self._state: dict[str, Entry] = {}
        self._decoded = _Decoded()
        self._dirty = asyncio.Event()
        #: (key, revision) written by the last pass, until the watch echoes them
        self._echoes: set[tuple[str, int]] = set()

    async def run(self) -> None:
        """Reconcile until cancelled (the caller cancels on losing leadership)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._observe(), name="reconciler-observe")
            tg.create_task(self._loop(), name="reconciler-loop")

    async def _observe(self) -> None:
        async for obs in list_and_watch(self.repo.store, ROOT):
            self._fold(obs)
            if not self._only_echoes(obs):
                self._dirty.set()

    def _only_echoes(self, obs: Observation) -> bool:
        """True when ``obs`` holds nothing but this reconciler's own last writes."""
        if not isinstance(obs, Changes) or not self._echoes:
            return False
        seen = {(ev.key, ev.revision) for ev in obs.events}
        echoes = seen <= self._echoes
        self._echoes -= seen
        return echoes

    def _written(self, key: str, revision: int) -> None:
        self._echoes.add((key, revision))

    def _fold(self, obs: Observation) -> None:
        self._state = apply_observation(self._state, obs)

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.resync_interval):
                    await self._dirty.wait()
            except TimeoutError:
                pass
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            try:
                await self.reconcile_once()
            except AtollError as exc:
                log.warning("reconcile pass failed; will retry", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def reconcile_once(self) -> None:
        started = self.clock()
        state = self._state
        self._decoded.retain(set(state))
        exports: list[ServiceExport] = []
        clusters: dict[str, Cluster] = {}
        imports: dict[tuple[str, str], ServiceImport] = {}
        alive: set[str] = set()
        probes: list[ProbeReport] = []
        p_exp, p_cl, p_imp, p_probe = (
            store_prefix(ServiceExport),
            store_prefix(Cluster),
            store_prefix(ServiceImport),
            store_prefix(ProbeReport),
        )
        for key, entry in state.items():
            if key.startswith(p_exp):
                if (e := self._decoded.get(ServiceExport, entry)) is not None:
                    exports.append(e)
            elif key.startswith(p_cl):
                if (c := self._decoded.get(Cluster, entry)) is not None:
                    clusters[c.metadata.name] = c
            elif key.startswith(p_imp):
                if (i := self._decoded.get(ServiceImport, entry)) is not None:
                    imports[(i.metadata.namespace or "", i.metadata.name)] = i
            elif key.startswith(p_probe):
                if (pr := self._decoded.get(ProbeReport, entry)) is not None:
                    probes.append(pr)
            elif key.startswith(LIVENESS_PREFIX):
                alive.add(key[len(LIVENESS_PREFIX) :])
        desired = derive(exports, clusters, alive, probe_verdicts(probes, alive))
        actions = plan_actions(desired, imports=imports, exports=exports, clusters=clusters)
        self._echoes.clear()
        result = await execute(self.repo, actions, on_written=self._written) if actions else None
        self.passes += 1
        elapsed = self.clock() - started
        metrics.RECONCILE_SECONDS.observe(elapsed)
        if result is not None:
            metrics.RECONCILE_WRITES.inc(result.applied)
            metrics.RECONCILE_CONFLICTS.inc(result.conflicts)
            log.info(
                "reconciled",
                extra={
                    "writes": result.applied,
                    "conflicts": result.conflicts,
                    "exports": len(exports),
                    "imports": len(desired.imports),
                    "alive": sorted(alive),
                    "seconds": round(elapsed, 4),
                },
            )
