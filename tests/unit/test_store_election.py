"""LeaderElection in fake time, on a real SqliteStore driven by the same fake clock.

Every sleep (the elections', the store's lease sweeper's, the backoffs') goes
through :class:`FakeTime`; the test advances time in small steps and lets the
system settle after each step (other tasks run; queued store calls finish).
Lease expiry in the store follows the same clock, so "the store expired the
lease" and "the leader noticed" are ordered exactly as they would be in real
time, without waiting for it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atoll.aio import Backoff, cancel_and_wait, spawn
from atoll.errors import InvalidError
from atoll.store.base import Entry, LeaseId, Listing, Store, WatchBatch
from atoll.store.election import LeaderElection, LeadershipLostError
from atoll.store.sqlite import SqliteStore

TTL = 6


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(delay, 0.0), next(self._seq), future))
        await future

    async def advance(self, seconds: float, store: Store, step: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            while self._sleepers and self._sleepers[0][0] <= self.now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await settle(store)


async def settle(store: Store) -> None:
    for _ in range(4):
        for _ in range(30):
            await asyncio.sleep(0)
        await store.revision()  # the DB thread is FIFO: earlier calls have finished


class Proxy:
    """A Store that forwards to another, except keepalives can be made to hang."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.hang_keepalive = False

    async def keepalive(self, lease: LeaseId) -> int:
        if self.hang_keepalive:
            await asyncio.Event().wait()
        return await self.inner.keepalive(lease)

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def list(self, prefix: str) -> Listing:
        return await self.inner.list(prefix)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: LeaseId | None = None
    ) -> Entry:
        return await self.inner.put(key, value, expect=expect, lease=lease)

    async def delete(self, key: str, *, expect: int | None = None) -> int | None:
        return await self.inner.delete(key, expect=expect)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    async def grant_lease(self, ttl: int) -> LeaseId:
        return await self.inner.grant_lease(ttl)

    async def lease_remaining(self, lease: LeaseId) -> float | None:
        return await self.inner.lease_remaining(lease)

    async def revoke(self, lease: LeaseId) -> None:
        await self.inner.revoke(lease)

    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]:
        return self.inner.watch(prefix, start_revision=start_revision)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def close(self) -> None:
        await self.inner.close()


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.time = FakeTime()
        self.store = SqliteStore(
            tmp_path / "s.db",
            clock=self.time,
            sleep=self.time.sleep,
            sweep_interval=0.1,
            synchronous="OFF",
        )
        self.tasks: list[asyncio.Task[object]] = []
        self.log: list[tuple[float, str, bool]] = []

    def candidate(self, name: str, store: Store | None = None) -> LeaderElection:
        election = LeaderElection(
            store or self.store,
            "leader",
            name,
            ttl=TTL,
            clock=self.time,
            sleep=self.time.sleep,
            backoff=Backoff(base=0.1, cap=1.0, rng=random.Random(name)),
            on_change=lambda leading: self.log.append((self.time.now, name, leading)),
        )
        self.tasks.append(spawn(election.run(), name=f"election-{name}"))
        return election

    async def advance(self, seconds: float) -> None:
        await self.time.advance(seconds, self.store)

    async def close(self) -> None:
        await cancel_and_wait(*self.tasks)
        await self.store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    await w.close()


async def test_exactly_one_leader_and_everyone_knows_it(world: World) -> None:
    a = world.candidate("a")
    await world.advance(0.5)
    b, c = world.candidate("b"), world.candidate("c")
    await world.advance(TTL * 2)  # several renewals
    assert [e.is_leader for e in (a, b, c)] == [True, False, False]
    assert {e.current_leader() for e in (a, b, c)} == {"a"}
    entry = await world.store.get("leader")
    assert entry is not None and entry.value == b"a" and entry.lease == a.lease
    assert [(name, leading) for _, name, leading in world.log] == [("a", True)]


async def test_a_leader_that_cannot_renew_steps_down_before_anyone_else_leads(
    world: World,
) -> None:
    proxy = Proxy(world.store)
    a = world.candidate("a", proxy)
    await world.advance(0.5)
    b = world.candidate("b")
    await world.advance(1.0)
    writes: list[float] = []
    outcome: list[BaseException] = []

    async def writer() -> None:
        try:
            async with a.leadership():
                while True:
                    assert a.is_leader
                    writes.append(world.time.now)
                    await world.time.sleep(0.1)
        except LeadershipLostError as exc:
            outcome.append(exc)

    task = spawn(writer(), name="writer")
    await world.advance(1.0)
    proxy.hang_keepalive = True  # from now on no renewal completes
    await world.advance(3 * TTL)
    await cancel_and_wait(task)

    (lost_at,) = [t for t, name, leading in world.log if name == "a" and not leading]
    (won_at,) = [t for t, name, leading in world.log if name == "b" and leading]
    assert lost_at <= won_at  # never two leaders at once
    assert b.is_leader and not a.is_leader
    assert writes and max(writes) < lost_at  # the writer stopped before the demotion
    assert len(outcome) == 1 and "deadline" in str(outcome[0])
    changes = [(name, leading) for _, name, leading in world.log]
    assert changes.index(("a", False)) < changes.index(("b", True))
    assert a.current_leader() == "b"  # a went back to following


async def test_a_revoked_lease_demotes_and_a_follower_takes_over(world: World) -> None:
    a = world.candidate("a")
    await world.advance(0.5)
    b = world.candidate("b")
    await world.advance(1.0)
    lease = a.lease
    assert lease is not None
    await world.store.revoke(lease)  # e.g. an operator, or the store lost it
    await world.advance(TTL / 2)  # within one renewal period
    assert b.is_leader and not a.is_leader
    assert a.current_leader() == "b"


async def test_a_deleted_key_demotes_the_leader_at_its_next_renewal(world: World) -> None:
    a = world.candidate("a")
    await world.advance(0.5)
    b = world.candidate("b")
    await world.advance(1.0)
    await world.store.delete("leader")  # a's lease is still alive, but the key is gone
    await world.advance(TTL / 2)
    assert b.is_leader and not a.is_leader
    entry = await world.store.get("leader")
    assert entry is not None and entry.value == b"b"


async def test_leaving_the_election_hands_over_at_once(world: World) -> None:
    a = world.candidate("a")
    await world.advance(0.5)
    b = world.candidate("b")
    await world.advance(1.0)
    await cancel_and_wait(world.tasks[0])  # a shuts down: revokes its lease
    await world.advance(0.5)  # far less than the TTL
    assert b.is_leader and not a.is_leader


async def test_is_leader_follows_the_clock_even_if_nothing_runs(world: World) -> None:
    a = world.candidate("a")
    await world.advance(0.5)
    assert a.is_leader
    world.time.now += TTL  # a paused process: no task has run since
    assert not a.is_leader
    assert a.current_leader() is None and a.lease is None


async def test_ttl_must_leave_room_for_renewals(world: World) -> None:
    with pytest.raises(InvalidError):
        LeaderElection(world.store, "leader", "x", ttl=1)
    with pytest.raises(InvalidError):
        LeaderElection(world.store, "bad key\n", "x")
