"""SqliteStore: the embedded default :class:`~atoll.store.base.Store` (one file, no server).

Concurrency model. SQLite calls block, and a durable commit waits for fsync,
so none of them may run on the event loop (the loop would starve). Every call
goes to one dedicated thread that owns the connection; calls run one at a
time, in the order they were made, which makes every compare-and-swap
trivially atomic. Calls that queue up while the thread is busy run as one
*group commit*: one transaction, each call in its own savepoint (a lost CAS
undoes only itself), one fsync for all, and no caller hears back before that
commit — so N concurrent writers cost about one fsync, not N. A call
cancelled before the thread picks it up is dropped, never applied. When a
batch changed the revision, the DB thread tells the loop
(``call_soon_threadsafe``) and the loop wakes the in-process watchers, which
then read the history table from their own position onward. A watcher never
holds the DB thread while it waits.

Durability. WAL journal with ``synchronous=FULL`` by default: an acknowledged
write survives power loss. ``NORMAL`` (may lose the last transactions on power
loss, never corrupts) or ``OFF`` are for tests and benchmarks.

Leases. Expiry is wall-clock time (``clock``, injected; ``time.time`` by
default) stored in the file, so a lease survives a restart while it is within
its TTL. Expired leases are swept before every call and by a background task
every ``sweep_interval`` seconds, so their keys' DELETE events reach watchers
even when nobody writes.

History. Watches read a history table; ``compact(rev)`` and the automatic
retention of the last ``retain_revisions`` revisions trim it, and a watch
from before the compaction point raises :class:`~atoll.errors.CompactedError`.

Ownership. One process owns the file (an ``flock`` beside it); a second
process, or a second store object on the same file, fails with
:class:`~atoll.errors.FatalError`. Opening happens in the constructor, on the
DB thread, and the constructor waits for it (milliseconds), so a bad path, a
locked or corrupt file fails right where the store is created.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from atoll.aio import Sleep, cancel_and_wait, spawn
from atoll.errors import AtollError, FatalError
from atoll.store.base import Entry, LeaseId, Listing, WatchBatch
from atoll.store.keys import (
    check_expect,
    check_lease,
    check_revision,
    check_ttl,
    check_value,
    encode_key,
    encode_prefix,
)
from atoll.store.sqlite_engine import Outcome, SqliteEngine, Synchronous

__all__ = ["SqliteStore"]

log = logging.getLogger("atoll.store")
T = TypeVar("T")

#: how many revisions one watch read covers at most
_WATCH_WINDOW = 1000
#: how many queued calls one group commit takes at most
_MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[[], object]
    future: concurrent.futures.Future[Any]


def _settle(call: _Call, outcome: Outcome, path: Path) -> None:
    value, error = outcome
    if isinstance(error, sqlite3.Error):
        wrapped = FatalError(f"store {path}: {error}")
        wrapped.__cause__ = error
        error = wrapped
    if error is None:
        call.future.set_result(value)
    else:
        call.future.set_exception(error)


class SqliteStore:
    """The embedded store; see the module docstring for the model."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        synchronous: Synchronous = "FULL",
        retain_revisions: int | None = 10_000,
        sweep_interval: float = 0.25,
    ) -> None:
        self.path = Path(path).absolute()
        self._sleep = sleep
        #: seconds between expired-lease sweeps (part of the stated withdrawal bound)
        self.sweep_interval = sweep_interval
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        opened: concurrent.futures.Future[SqliteEngine] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve,
            args=(
                opened,
                functools.partial(
                    SqliteEngine,
                    self.path,
                    clock=clock,
                    synchronous=synchronous,
                    retain_revisions=retain_revisions,
                ),
            ),
            name=f"atoll-sqlite:{self.path.name}",
            daemon=True,
        )
        self._thread.start()
        self._engine = opened.result()  # raises the engine's FatalError/InvalidError
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- plumbing ---------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._changed = asyncio.Event()
            if self.sweep_interval > 0:
                self._sweeper = spawn(self._sweep_forever(), name="atoll-sqlite-sweeper")
        elif self._loop is not loop:
            raise FatalError("a SqliteStore must be used from the event loop that first used it")
        return loop

    def _wake_watchers(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _serve(
        self,
        opened: concurrent.futures.Future[SqliteEngine],
        open_engine: Callable[[], SqliteEngine],
    ) -> None:
        """The DB thread: open the engine, then run queued calls in group commits."""
        try:
            engine = open_engine()
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(engine)
        stop = False
        while not stop:
            first = self._calls.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    more = self._calls.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            live = [c for c in batch if c.future.set_running_or_notify_cancel()]
            if not live:  # every caller gave up before its turn: nothing to run
                continue
            before = engine.revision
            try:
                outcomes = engine.run_batch([c.fn for c in live])
            except Exception as exc:  # e.g. BEGIN failed: the disk is gone
                failed = FatalError(f"store {self.path}: {exc}")
                outcomes = [(None, failed)] * len(live)
            for call, outcome in zip(live, outcomes, strict=True):
                _settle(call, outcome, self.path)
            if engine.revision != before and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self._loop.call_soon_threadsafe(self._wake_watchers)
        engine.close()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise FatalError(f"store {self.path} is closed")
        self._bind()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls.put(_Call(functools.partial(fn, *args), future))
        return cast(T, await asyncio.wrap_future(future))

    async def _sweep_forever(self) -> None:
        while not self._closed:
            await self._sleep(self.sweep_interval)
            try:
                await self._run(self._engine.sweep)
            except AtollError as exc:
                log.error("lease sweep failed", extra={"store": str(self.path), "error": str(exc)})

    # -- Store protocol -----------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        return await self._run(self._engine.get, encode_key(key))

    async def list(self, prefix: str) -> Listing:
        return await self._run(self._engine.list, encode_prefix(prefix))

    async def revision(self) -> int:
        return await self._run(self._engine.current_revision)

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expect: int | None = None,
        lease: LeaseId | None = None,
    ) -> Entry:
        raw = encode_key(key)
        check_value(value)
        check_expect(expect)
        if lease is not None:
            check_lease(lease)
        return await self._run(self._engine.put, raw, value, expect, lease)

    async def delete(self, key: str, *, expect: int | None = None) -> int | None:
        raw = encode_key(key)
        check_expect(expect)
        return await self._run(self._engine.delete, raw, expect)

    async def delete_prefix(self, prefix: str) -> int:
        return await self._run(self._engine.delete_prefix, encode_prefix(prefix))

    async def grant_lease(self, ttl: int) -> LeaseId:
        return await self._run(self._engine.grant_lease, check_ttl(ttl))

    async def keepalive(self, lease: LeaseId) -> int:
        return await self._run(self._engine.keepalive, check_lease(lease))

    async def lease_remaining(self, lease: LeaseId) -> float | None:
        return await self._run(self._engine.lease_remaining, check_lease(lease))

    async def revoke(self, lease: LeaseId) -> None:
        await self._run(self._engine.revoke, check_lease(lease))

    async def compact(self, revision: int) -> None:
        await self._run(self._engine.compact, check_revision(revision, field="revision"))

    async def expire_leases(self) -> int:
        """Sweep expired leases now (the background sweeper does this every
        ``sweep_interval``); returns how many expired. A seam for fake-time tests."""
        return await self._run(self._engine.sweep)

    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]:
        raw = encode_prefix(prefix)
        check_revision(start_revision, field="start_revision")
        return self._watch(raw, start_revision)

    async def _watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        position = start_revision - 1
        while not self._closed:
            self._bind()
            assert self._changed is not None
            changed = self._changed  # taken before the read: no lost wake-up
            read = await self._run(self._engine.read_history, prefix, position, _WATCH_WINDOW)
            position = max(position, read.scanned_to)
            if read.events:
                yield WatchBatch(events=read.events, revision=read.events[-1].revision)
            if position >= self._engine.revision:
                await changed.wait()

    async def close(self) -> None:
        """Stop the sweeper, end open watches, close the file and release the lock."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._sweeper)
        self._wake_watchers()
        self._calls.put(None)  # after every call already queued
        await asyncio.to_thread(self._thread.join)
