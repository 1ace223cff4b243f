"""list_and_watch: snapshot, changes, and recovery by re-listing (on SQLite, no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from atoll.errors import StoreUnavailableError
from atoll.store.base import Entry, Event, EventType, Listing, WatchBatch
from atoll.store.sqlite import SqliteStore
from atoll.store.watching import Changes, Observation, Snapshot, apply_observation, list_and_watch


def entry(key: str, value: bytes, rev: int) -> Entry:
    return Entry(key=key, value=value, create_revision=rev, mod_revision=rev, version=1)


def test_apply_observation_is_a_pure_fold() -> None:
    a1, b1 = entry("a", b"1", 2), entry("b", b"1", 3)
    state = apply_observation({"stale": entry("stale", b"", 1)}, Snapshot((a1, b1), 3))
    assert state == {"a": a1, "b": b1}  # a snapshot replaces everything
    a2 = entry("a", b"2", 4)
    gone = Entry(key="b", value=b"", create_revision=0, mod_revision=5, version=0)
    after = apply_observation(
        state, Changes((Event(EventType.PUT, a2), Event(EventType.DELETE, gone)), 5)
    )
    assert after == {"a": a2}
    assert state == {"a": a1, "b": b1}  # the input is untouched


class FlakyStore(SqliteStore):
    """Fails the first listing and the first watch with a retryable error."""

    list_failures = 1
    watch_failures = 1

    async def list(self, prefix: str) -> Listing:
        if self.list_failures:
            self.list_failures -= 1
            raise StoreUnavailableError("no leader")
        return await super().list(prefix)

    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]:
        inner = super().watch(prefix, start_revision=start_revision)
        if not self.watch_failures:
            return inner
        self.watch_failures -= 1
        return self._fail_after_one(inner)

    async def _fail_after_one(self, inner: AsyncIterator[WatchBatch]) -> AsyncIterator[WatchBatch]:
        yield await anext(inner)
        raise StoreUnavailableError("connection reset")


async def test_retryable_failures_lead_to_a_fresh_snapshot(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "s.db", sweep_interval=0)
    await store.put("p/a", b"1")
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    seen: list[Observation] = []
    state: dict[str, Entry] = {}
    observations = list_and_watch(store, "p/", sleep=fake_sleep)
    async with asyncio.timeout(5):
        for _ in range(3):
            obs = await anext(observations)
            seen.append(obs)
            state = apply_observation(state, obs)
            if len(seen) == 1:
                await store.put("p/b", b"1")  # delivered, then the watch breaks
            if len(seen) == 2:
                await store.put("p/c", b"1")  # never delivered by the broken watch
    await observations.aclose()  # type: ignore[attr-defined]
    first, second, third = seen
    assert isinstance(first, Snapshot) and not first.resync
    assert isinstance(second, Changes) and [e.key for e in second.events] == ["p/b"]
    assert isinstance(third, Snapshot) and third.resync
    assert sorted(state) == ["p/a", "p/b", "p/c"]  # converged despite the missed event
    assert len(delays) == 2  # one backoff per failure, through the injected sleep
    await store.close()


async def test_list_and_watch_ends_when_the_store_closes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", sweep_interval=0)
    observations = list_and_watch(store, "")
    assert isinstance(await anext(observations), Snapshot)

    async def rest() -> list[Observation]:
        return [o async for o in observations]

    async with asyncio.timeout(5):
        pending = asyncio.gather(rest())
        await asyncio.sleep(0.05)
        await store.close()
        (remaining,) = await pending
    assert remaining == []
