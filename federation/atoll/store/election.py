"""Leader election over any Store: a leased key created only if absent.

Campaign: grant a lease of ``ttl`` seconds and ``put(key, candidate_id,
expect=0, lease=...)``. Exactly one candidate's create succeeds (CAS); the
others revoke their lease, read who leads, and watch the key; when it is
deleted (the leader's lease expired or was revoked) they campaign again.

Holding: the leader renews the lease every ``ttl / 3`` and checks that the key
is still its own. Safety rests on one local deadline: a renewal sent at local
time ``t`` that succeeds means the store keeps the lease until at least
``t + ttl`` (the store started its TTL *after* we sent the request), so the
leader may act as leader until then and not a moment longer. If no renewal
completes before the deadline — store unreachable, process paused, event loop
starved — the leader steps down *at* the deadline, before any other candidate
can have been elected; :attr:`LeaderElection.is_leader` compares the clock to
the deadline itself, so even a caller that wakes from a long pause sees
``False`` before its next write. ``LeaseNotFoundError`` or a key that is gone
or no longer ours demotes at once.

Writers stop through :meth:`LeaderElection.leadership` (the body is cancelled
and :class:`LeadershipLostError` raised when leadership ends), the
``on_change`` callback, or by checking ``is_leader`` before each write.
Without fencing tokens a write already in flight when the deadline passes can
still land; writes that must be fenced should carry the leader's lease
(:attr:`LeaderElection.lease`), which the store rejects once it is gone.

Time and sleep are injected, so the protocol is tested in fake time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

from atoll.aio import Backoff, Sleep, cancel_and_wait, spawn
from atoll.errors import (
    CompactedError,
    ConflictError,
    FatalError,
    InvalidError,
    LeaseNotFoundError,
    RetryableError,
)
from atoll.store.base import EventType, LeaseId, Store
from atoll.store.keys import check_ttl, encode_key
from atoll.store.watching import watch_closing

__all__ = ["LeaderElection", "LeadershipLostError"]

log = logging.getLogger("atoll.store.election")
T = TypeVar("T")


class LeadershipLostError(FatalError):
    """This process stopped being leader while acting as leader."""

    def __init__(self, key: str, candidate_id: str, reason: str) -> None:
        super().__init__(f"{candidate_id} lost leadership of {key}: {reason}")
        self.key = key
        self.candidate_id = candidate_id
        self.reason = reason


class _DeadlinePassed(Exception):
    pass


async def _outcome(aw: Awaitable[T]) -> tuple[T | None, Exception | None]:
    try:
        return await aw, None
    except Exception as exc:
        return None, exc


class LeaderElection:
    """One candidate in an election on ``key``; drive it with :meth:`run`."""

    def __init__(
        self,
        store: Store,
        key: str,
        candidate_id: str,
        *,
        ttl: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        encode_key(key)
        if isinstance(ttl, int) and ttl < 2:
            raise InvalidError("ttl must be at least 2 seconds (renewals every ttl/3)", field="ttl")
        self.store = store
        self.key = key
        self.candidate_id = candidate_id
        self.ttl = check_ttl(ttl)
        self._value = candidate_id.encode()
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff(base=0.1, cap=float(ttl))
        self._on_change = on_change
        self._lease: LeaseId | None = None
        self._leading = False
        self._deadline = 0.0
        self._renewed_at = 0.0
        self._leader_id: str | None = None
        self._changed: asyncio.Event | None = None
        self._loss_callbacks: set[Callable[[str], None]] = set()

    # -- observation ---------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while leading *and* before the lease deadline."""
        return self._leading and self._clock() < self._deadline

    @property
    def lease(self) -> LeaseId | None:
        """The leader's lease while leading (attach writes to it to fence them)."""
        return self._lease if self.is_leader else None

    def current_leader(self) -> str | None:
        """This candidate's id while leader; else the last leader seen (None: none/unknown)."""
        if self._leading:
            return self.candidate_id if self.is_leader else None
        return self._leader_id

    def _notify(self) -> None:
        if self._changed is not None:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    async def wait_leader(self) -> None:
        """Return once this candidate is leader."""
        while not self.is_leader:
            await self._wait_change()

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[None]:
        """Wait for leadership, then run the body while it lasts.

        If leadership ends first, the body is cancelled and
        :class:`LeadershipLostError` raised in its place.
        """
        await self.wait_leader()
        task = asyncio.current_task()
        assert task is not None
        lost: list[str] = []

        def on_lost(reason: str) -> None:
            if not lost:
                lost.append(reason)
                task.cancel()

        self._loss_callbacks.add(on_lost)
        try:
            yield
        except asyncio.CancelledError:
            if lost and task.uncancel() == 0:
                raise LeadershipLostError(self.key, self.candidate_id, lost[0]) from None
            raise
        else:
            if lost:  # lost after the body's last await: absorb the pending cancel
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)
                task.uncancel()
                raise LeadershipLostError(self.key, self.candidate_id, lost[0])
        finally:
            self._loss_callbacks.discard(on_lost)

    # -- state changes ------------------------------------------------------------------

    def _gain(self, lease: LeaseId, sent_at: float) -> None:
        self._lease = lease
        self._leading = True
        self._renewed_at = sent_at
        self._deadline = sent_at + self.ttl
        self._leader_id = self.candidate_id
        log.info("became leader", extra={"key": self.key, "candidate": self.candidate_id})
        self._notify()
        if self._on_change is not None:
            self._on_change(True)

    def _lose(self, reason: str) -> None:
        if not self._leading:
            return
        self._leading = False
        self._leader_id = None
        log.warning(
            "lost leadership",
            extra={"key": self.key, "candidate": self.candidate_id, "reason": reason},
        )
        self._notify()
        if self._on_change is not None:
            self._on_change(False)
        for callback in list(self._loss_callbacks):
            callback(reason)

    def _see_leader(self, leader: str | None) -> None:
        if leader != self._leader_id:
            self._leader_id = leader
            self._notify()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> NoReturn:
        """Campaign, lead, follow — forever. Cancel it to leave the election
        (a leader then revokes its lease so another candidate takes over at once)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            while True:
                try:
                    if await self._campaign():
                        self._backoff.reset()
                        await self._hold()
                    else:
                        await self._follow()
                        continue  # the key was deleted: campaign at once
                except CompactedError:
                    continue
                except (RetryableError, LeaseNotFoundError) as exc:
                    log.warning(
                        "election step failed; retrying",
                        extra={"key": self.key, "candidate": self.candidate_id, "error": str(exc)},
                    )
                finally:
                    await self._release()
                await self._sleep(self._backoff.next_delay())
        finally:
            self._lose("election stopped")
            await self._release()

    async def _release(self) -> None:
        """Step down (if leading) and revoke our lease, best effort."""
        lease, self._lease = self._lease, None
        if self._leading:
            self._lose("released")
        if lease is not None:
            with contextlib.suppress(Exception):
                await self.store.revoke(lease)

    async def _campaign(self) -> bool:
        sent_at = self._clock()
        lease = await self.store.grant_lease(self.ttl)
        try:
            await self.store.put(self.key, self._value, expect=0, lease=lease)
        except ConflictError:
            with contextlib.suppress(Exception):
                await self.store.revoke(lease)
            return False
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.revoke(lease)
            raise
        self._gain(lease, sent_at)
        return True

    async def _before_deadline(self, aw: Awaitable[T]) -> T:
        """``aw``'s result, or _DeadlinePassed if the lease deadline comes first."""
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise _DeadlinePassed
        work = spawn(_outcome(aw), name=f"election-call:{self.key}")
        timer = spawn(_outcome(self._sleep(remaining)), name=f"election-deadline:{self.key}")
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(timer)
            if not work.done():
                await cancel_and_wait(work)
        if work.cancelled():
            raise _DeadlinePassed
        result, error = work.result()
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    async def _hold(self) -> None:
        lease = self._lease
        assert lease is not None
        next_renewal = self._renewed_at + self.ttl / 3
        while True:
            delay = next_renewal - self._clock()
            if delay > 0:
                await self._sleep(delay)
            sent_at = self._clock()
            if sent_at >= self._deadline:
                self._lose("lease deadline passed before renewal")
                return
            try:
                granted = await self._before_deadline(self.store.keepalive(lease))
                entry = await self._before_deadline(self.store.get(self.key))
            except _DeadlinePassed:
                self._lose("no renewal completed before the lease deadline")
                return
            except LeaseNotFoundError:
                self._lose("lease expired or was revoked")
                return
            except RetryableError as exc:
                log.warning(
                    "lease renewal failed; retrying",
                    extra={"key": self.key, "candidate": self.candidate_id, "error": str(exc)},
                )
                next_renewal = min(self._clock() + self.ttl / 10, self._deadline)
                continue
            if entry is None or entry.lease != lease or entry.value != self._value:
                self._lose("the leader key was deleted or overwritten")
                return
            self._renewed_at = sent_at
            self._deadline = sent_at + granted
            next_renewal = sent_at + self.ttl / 3

    async def _follow(self) -> None:
        entry = await self.store.get(self.key)
        if entry is None:
            self._see_leader(None)
            return
        self._see_leader(entry.value.decode(errors="replace"))
        async with watch_closing(
            self.store, self.key, start_revision=entry.mod_revision + 1
        ) as batches:
            async for batch in batches:
                for event in batch.events:
                    if event.key != self.key:
                        continue
                    if event.type is EventType.DELETE:
                        self._see_leader(None)
                        return
                    self._see_leader(event.entry.value.decode(errors="replace"))
        raise FatalError(f"the store ended the watch on {self.key} (store closed?)")
