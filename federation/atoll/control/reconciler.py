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

Passes are *incremental*: the reconciler keeps the store's view partitioned
by kind with two indexes (service group -> its exports, cluster -> the groups
it exports to), and a pass recomputes only the groups a change touched — an
export or import of the group, or a cluster-wide change (its spec, its
liveness, its probe verdict) of a cluster in the group. Groups are
independent in :func:`~atoll.control.derive.derive_imports`, so this gives
exactly what a full pass would; a full pass still runs after every relist,
after a failed pass, and every ``resync_interval``. At 20,000 exports a full
pass costs about a second of event-loop time; a one-export change touches one
group.

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
from atoll.control.derive import Derived, cluster_statuses, derive_imports
from atoll.control.liveness import LIVENESS_PREFIX
from atoll.control.quorum import ProbeVerdict, probe_verdicts
from atoll.control.repo import Repo, from_entry
from atoll.errors import AtollError, InvalidError
from atoll.model import (
    ROOT,
    Cluster,
    ProbeReport,
    Resource,
    ServiceExport,
    ServiceImport,
    store_key,
    store_prefix,
)
from atoll.store import Entry, EventType
from atoll.store.watching import Changes, Observation, Snapshot, list_and_watch

__all__ = ["Reconciler"]

log = logging.getLogger("atoll.control.reconciler")
R = TypeVar("R", bound=Resource)
Group = tuple[str, str]

_P_EXPORT = store_prefix(ServiceExport)
_P_IMPORT = store_prefix(ServiceImport)
_P_CLUSTER = store_prefix(Cluster)
_P_PROBE = store_prefix(ProbeReport)


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


def _import_group(key: str) -> Group:
    ns, _, name = key[len(_P_IMPORT) :].partition("/")
    return (ns, name)


@dataclass(slots=True)
class _Observed:
    """The reconciler's view of the store, partitioned by kind, with the indexes
    that let a pass recompute only the service groups a change touched."""

    exports: dict[str, Entry] = field(default_factory=dict)
    clusters: dict[str, Entry] = field(default_factory=dict)
    imports: dict[str, Entry] = field(default_factory=dict)
    probes: dict[str, Entry] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    #: (namespace, name) -> export keys of that service
    groups: dict[Group, set[str]] = field(default_factory=dict)
    #: cluster -> groups it exports to
    cluster_groups: dict[str, set[Group]] = field(default_factory=dict)

    def clear(self) -> None:
        for part in (self.exports, self.clusters, self.imports, self.probes, self.groups):
            part.clear()
        self.alive.clear()
        self.cluster_groups.clear()


class Reconciler:
    def __init__(
        self,
        repo: Repo,
        *,
        debounce: float = 0.05,
        resync_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.debounce = debounce
        self.resync_interval = resync_interval
        self.clock = clock
        self.passes = 0
        self._seen = _Observed()
        self._decoded = _Decoded()
        self._dirty = asyncio.Event()
        #: groups to recompute in the next pass; ``_full`` recomputes all of them
        self._dirty_groups: set[Group] = set()
        self._full = True
        #: the desired import of every group, as of the last pass (for cluster status)
        self._desired: dict[Group, ServiceImport] = {}
        self._last_verdicts: dict[str, ProbeVerdict] = {}
        self._last_alive: set[str] = set()
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

    # -- folding observations into the indexed view ------------------------------
    def _fold(self, obs: Observation) -> None:
        if isinstance(obs, Snapshot):
            self._seen.clear()
            self._decoded.cache.clear()
            for entry in obs.entries:
                self._put(entry)
            self._full = True
            return
        for ev in obs.events:
            # this reconciler's own writes change nothing it has to recompute
            own = (ev.key, ev.revision) in self._echoes
            dirty_before = set(self._dirty_groups) if own else None
            if ev.type is EventType.PUT:
                self._put(ev.entry)
            else:
                self._delete(ev.key)
            if dirty_before is not None:
                self._dirty_groups = dirty_before

    def _put(self, entry: Entry) -> None:
        key, seen = entry.key, self._seen
        if key.startswith(_P_EXPORT):
            cluster, ns, name = key[len(_P_EXPORT) :].split("/", 2)
            group = (ns, name)
            seen.exports[key] = entry
            seen.groups.setdefault(group, set()).add(key)
            seen.cluster_groups.setdefault(cluster, set()).add(group)
            self._dirty_groups.add(group)
        elif key.startswith(_P_IMPORT):
            seen.imports[key] = entry
            self._dirty_groups.add(_import_group(key))
        elif key.startswith(_P_CLUSTER):
            seen.clusters[key] = entry
            self._dirty_groups |= seen.cluster_groups.get(key[len(_P_CLUSTER) :], set())
        elif key.startswith(_P_PROBE):
            seen.probes[key] = entry
        elif key.startswith(LIVENESS_PREFIX):
            seen.alive.add(key[len(LIVENESS_PREFIX) :])

    def _delete(self, key: str) -> None:
        seen = self._seen
        self._decoded.cache.pop(key, None)
        if key.startswith(_P_EXPORT):
            cluster, ns, name = key[len(_P_EXPORT) :].split("/", 2)
            group = (ns, name)
            seen.exports.pop(key, None)
            members = seen.groups.get(group, set())
            members.discard(key)
            if not members:
                seen.groups.pop(group, None)
            if not any(k.startswith(f"{_P_EXPORT}{cluster}/") for k in members):
                seen.cluster_groups.get(cluster, set()).discard(group)
            self._dirty_groups.add(group)
        elif key.startswith(_P_IMPORT):
            seen.imports.pop(key, None)
            self._dirty_groups.add(_import_group(key))
        elif key.startswith(_P_CLUSTER):
            seen.clusters.pop(key, None)
            self._dirty_groups |= seen.cluster_groups.get(key[len(_P_CLUSTER) :], set())
        elif key.startswith(_P_PROBE):
            seen.probes.pop(key, None)
        elif key.startswith(LIVENESS_PREFIX):
            seen.alive.discard(key[len(LIVENESS_PREFIX) :])

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.resync_interval):
                    await self._dirty.wait()
            except TimeoutError:
                self._full = True  # level-triggered safety net: recompute everything
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            try:
                await self.reconcile_once()
            except AtollError as exc:
                log.warning("reconcile pass failed; will retry", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
                self._full = True
                self._dirty.set()

    # -- one pass ------------------------------------------------------------------
    def _objects(self, cls: type[R], entries: dict[str, Entry]) -> list[R]:
        return [o for e in entries.values() if (o := self._decoded.get(cls, e)) is not None]

    async def reconcile_once(self) -> None:
        """One pass over the groups that changed (all of them after a relist/resync)."""
        started = self.clock()
        seen = self._seen
        clusters = {c.metadata.name: c for c in self._objects(Cluster, seen.clusters)}
        alive = set(seen.alive)
        verdicts = probe_verdicts(self._objects(ProbeReport, seen.probes), alive)
        # liveness and probe verdicts are cluster-wide: their changes touch that cluster's groups
        moved = (alive ^ self._last_alive) | {
            c
            for c in set(verdicts) | set(self._last_verdicts)
            if verdicts.get(c) != self._last_verdicts.get(c)
        }
        for cluster in moved:
            self._dirty_groups |= seen.cluster_groups.get(cluster, set())
        if self._full:
            groups = set(seen.groups) | {_import_group(k) for k in seen.imports}
        else:
            groups = set(self._dirty_groups)
        self._full = False
        self._dirty_groups.clear()
        self._last_alive, self._last_verdicts = alive, verdicts

        exports = [
            e
            for g in groups
            for key in seen.groups.get(g, ())
            if (e := self._decoded.get(ServiceExport, seen.exports[key])) is not None
        ]
        imports: dict[Group, ServiceImport] = {}
        for g in groups:
            entry = seen.imports.get(store_key(ServiceImport, g))
            if entry is not None and (i := self._decoded.get(ServiceImport, entry)) is not None:
                imports[g] = i
        previous = {g: {t.cluster for t in i.spec.targets} for g, i in imports.items()}
        wanted, conditions = derive_imports(exports, clusters, alive, verdicts, previous)
        for g in groups:
            if g in wanted:
                self._desired[g] = wanted[g]
            else:
                self._desired.pop(g, None)
        desired = Derived(
            imports=wanted,
            export_conditions=conditions,
            cluster_status=cluster_statuses(clusters, alive, self._desired, verdicts),
        )
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
                    "groups": len(groups),
                    "exports": len(exports),
                    "alive": sorted(alive),
                    "seconds": round(elapsed, 4),
                },
            )
