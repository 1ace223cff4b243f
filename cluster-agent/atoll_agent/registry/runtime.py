"""The running registry: the current snapshot, durable writes, change notification.

:class:`Registry` is the only stateful piece of the registry. It holds two
snapshots:

* ``pending`` — the newest state, to which each new operation is applied (so
  operations are serialized: :func:`~atoll_agent.registry.catalog.apply` runs
  without an ``await``, one at a time on the event loop);
* ``published`` — the newest state that is on disk. Readers and blocking
  queries only ever see this one, so nothing a client observes can be lost by
  a crash.

Writes use *group commit*. A writer applies its operation to ``pending`` and
waits until a snapshot at least as new is on disk. One flusher task writes the
latest ``pending`` (in a worker thread: fsync must not stall the loop); all
operations that arrived while the previous write was in progress are persisted
together by the next one. A burst of N writes therefore costs a few fsyncs,
not N, and no writer is acknowledged before its change is durable. If a write
fails, ``pending`` falls back to ``published`` and every writer waiting on it
gets :class:`~atoll_agent.registry.persistence.StateWriteError`: those changes
never happened (their indexes are reused by later changes, which is safe since
no reader ever saw them). Without a state file, changes publish immediately.

Blocking queries (:meth:`Registry.wait_for_change`) wait on an
:class:`asyncio.Event` that is replaced on every publish; checking the index
and starting to wait happen without an ``await`` in between, so no change can
slip past. :meth:`Registry.close` wakes every waiter, so a shutting-down server
answers its long polls at once instead of holding them for minutes.

TTL checks are expired by :meth:`Registry.run_expiry`, a loop that applies
:class:`~atoll_agent.registry.catalog.ExpireTtls` every ``interval`` seconds of
injected sleep, so a lapsed instance turns critical in the catalog and wakes
the watchers within about one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from atoll.aio import Sleep, spawn
from atoll_agent.registry.catalog import (
    ExpireTtls,
    GraceTtls,
    Operation,
    apply,
    empty_catalog,
    expired_instances,
)
from atoll_agent.registry.model import CatalogSnapshot, Limits
from atoll_agent.registry.persistence import StateWriteError, load_state, save_state

__all__ = ["Change", "Clock", "Registry", "new_epoch"]

log = logging.getLogger("atoll.registry")

Clock = Callable[[], float]
Persist = Callable[[CatalogSnapshot], None]


def new_epoch() -> str:
    """A fresh random epoch id for a catalog that starts from nothing."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Change:
    """The result of one operation: the state it was applied to, and the state after it."""

    before: CatalogSnapshot
    after: CatalogSnapshot

    @property
    def changed(self) -> bool:
        return self.after is not self.before


class Registry:
    """The registry's state: apply operations durably, answer reads and blocking queries."""

    def __init__(
        self,
        snapshot: CatalogSnapshot,
        *,
        clock: Clock = time.time,
        limits: Limits = Limits(),
        persist: Persist | None = None,
    ) -> None:
        self._clock = clock
        self._limits = limits
        self._persist = persist
        self._published = snapshot
        self._pending = snapshot
        self._changed = asyncio.Event()
        self._closed = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def open(
        cls,
        state_file: Path | None,
        *,
        clock: Clock = time.time,
        limits: Limits = Limits(),
        make_epoch: Callable[[], str] = new_epoch,
    ) -> Registry:
        """Load ``state_file`` (or start empty) and return a registry persisting to it.

        A loaded catalog gets :class:`~atoll_agent.registry.catalog.GraceTtls`
        (every live TTL clock restarts now), written back before returning.
        Raises :class:`~atoll.errors.FatalError` as :func:`load_state` does.
        """
        if state_file is None:
            return cls(empty_catalog(make_epoch()), clock=clock, limits=limits)
        now = clock()
        loaded = load_state(state_file, now=now)
        snapshot = (
            empty_catalog(make_epoch()) if loaded is None else apply(loaded, GraceTtls(), now=now)
        )
        if snapshot is not loaded:
            save_state(state_file, snapshot)
        log.info(
            "registry state loaded",
            extra={
                "state_file": str(state_file),
                "index": snapshot.index,
                "services": len(snapshot.services),
                "instances": snapshot.instance_count,
            },
        )
        return cls(snapshot, clock=clock, limits=limits, persist=partial(save_state, state_file))

    @property
    def snapshot(self) -> CatalogSnapshot:
        """The newest durable (published) snapshot."""
        return self._published

    @property
    def clock(self) -> Clock:
        return self._clock

    async def submit(self, op: Operation) -> Change:
        """Apply ``op`` at the current time and return once the result is durable.

        Raises the typed errors of :func:`~atoll_agent.registry.catalog.apply`,
        or :class:`~atoll_agent.registry.persistence.StateWriteError` when the
        state file could not be written (the change is then dropped).
        """
        return await self._submit(op, self._clock())

    async def _submit(self, op: Operation, now: float) -> Change:
        before = self._pending
        after = apply(before, op, now=now, limits=self._limits)
        self._pending = after
        if after is self._published:
            return Change(before, after)
        if self._persist is None:
            self._publish(after)
            return Change(before, after)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((after.index, done))
        if self._flusher is None:
            self._flusher = spawn(self._flush(self._persist), name="registry-state-flush")
        await done
        return Change(before, after)

    async def _flush(self, persist: Persist) -> None:
        try:
            while self._pending is not self._published:
                snap = self._pending
                try:
                    await asyncio.to_thread(persist, snap)
                except Exception as exc:
                    self._fail_pending(exc)
                    return
                self._publish(snap)
                waiting, self._waiters = self._waiters, []
                for index, done in waiting:
                    if index > snap.index:
                        self._waiters.append((index, done))
                    elif not done.done():
                        done.set_result(None)
        finally:
            self._flusher = None

    def _fail_pending(self, exc: Exception) -> None:
        err = exc if isinstance(exc, StateWriteError) else StateWriteError(str(exc))
        lost = self._pending.index - self._published.index
        log.error(
            "registry state write failed; pending changes dropped",
            extra={"error": str(exc), "changes": lost, "index": self._published.index},
        )
        self._pending = self._published
        waiting, self._waiters = self._waiters, []
        for _, done in waiting:
            if not done.done():
                done.set_exception(err)

    def _publish(self, snap: CatalogSnapshot) -> None:
        self._published = snap
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(
        self, *, index: int, epoch: str | None = None, wait: float
    ) -> CatalogSnapshot:
        """A blocking query: the published snapshot once it differs from ``(epoch, index)``.

        Returns at once when the current index is not ``index`` (newer, or older
        after a reset), when ``epoch`` is given and differs, or when the
        registry is closed; otherwise waits up to ``wait`` seconds for a
        change and returns the snapshot as it is then (unchanged on timeout).
        """
        snap = self._published
        if (
            self._closed
            or wait <= 0
            or snap.index != index
            or (epoch is not None and epoch != snap.epoch)
        ):
            return snap
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await changed.wait()
        return self._published

    def close(self) -> None:
        """Answer every blocking query now, and all later ones immediately."""
        self._closed = True
        self._changed.set()

    async def expire_ttls(self) -> int:
        """Mark instances whose TTL lapsed critical; return how many turned critical."""
        now = self._clock()
        expired = expired_instances(self._pending, now)
        if not expired:
            return 0
        change = await self._submit(ExpireTtls(), now)
        for svc, inst in expired:
            log.info(
                "instance TTL check expired; now critical",
                extra={
                    "namespace": svc.namespace,
                    "service": svc.name,
                    "instance": inst.id,
                    "ttl_seconds": inst.ttl_seconds,
                    "index": change.after.index,
                },
            )
        return len(expired)

    async def run_expiry(self, *, interval: float = 1.0, sleep: Sleep = asyncio.sleep) -> None:
        """Forever: every ``interval`` (injected ``sleep``), expire lapsed TTL checks."""
        while True:
            await sleep(interval)
            try:
                await self.expire_ttls()
            except Exception:
                log.exception("TTL expiry pass failed; retrying next interval")
