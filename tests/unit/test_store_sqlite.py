"""SqliteStore behaviour the contract suite cannot show: files, restarts, locks, time.

Lease tests run on an injected clock (no sleeping); the background sweeper is
disabled (``sweep_interval=0``) so expiry happens exactly when a call finds
the clock past the deadline, or when the test calls ``expire_leases()``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atoll.aio import spawn
from atoll.errors import (
    CompactedError,
    ConflictError,
    FatalError,
    InvalidError,
    LeaseNotFoundError,
)
from atoll.store.base import Entry, EventType, WatchBatch
from atoll.store.sqlite import SqliteStore
from atoll.store.sqlite_engine import SqliteEngine
from atoll.store.watching import watch_closing


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_store(path: Path, clock: Clock | None = None, **kwargs: object) -> SqliteStore:
    return SqliteStore(path, clock=clock or Clock(), sweep_interval=0, **kwargs)  # type: ignore[arg-type]


async def next_batch(store: SqliteStore, prefix: str, start: int) -> WatchBatch:
    async with asyncio.timeout(5), watch_closing(store, prefix, start_revision=start) as it:
        return await anext(it)


async def test_writes_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(path)
    a = await store.put("k/a", b"1")
    b = await store.put("k/b", b"2", expect=0)
    await store.delete("k/a")
    rev = await store.revision()
    await store.close()

    store = open_store(path)
    assert await store.revision() == rev
    assert await store.get("k/a") is None
    assert await store.get("k/b") == b
    batch = await next_batch(store, "k/", a.mod_revision)  # history survives too
    assert [(e.type, e.key) for e in batch.events] == [
        (EventType.PUT, "k/a"),
        (EventType.PUT, "k/b"),
        (EventType.DELETE, "k/a"),
    ]
    after = await store.put("k/c", b"3")
    assert after.mod_revision == rev + 1
    await store.close()


async def test_a_failed_cas_leaves_everything_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(path)
    v1 = await store.put("k", b"1")
    v2 = await store.put("k", b"2")
    rev = await store.revision()
    with pytest.raises(ConflictError):
        await store.put("k", b"lost", expect=v1.mod_revision)
    with pytest.raises(ConflictError):
        await store.delete("k", expect=v1.mod_revision)
    await store.close()
    store = open_store(path)
    assert await store.revision() == rev
    assert await store.get("k") == v2
    batch = await next_batch(store, "", 1)
    assert [e.entry.value for e in batch.events] == [b"1", b"2"]
    await store.close()


async def test_lease_survives_a_restart_within_its_ttl(tmp_path: Path) -> None:
    path, clock = tmp_path / "s.db", Clock()
    store = open_store(path, clock)
    lease = await store.grant_lease(10)
    await store.put("svc/a", b"up", lease=lease)
    await store.close()

    clock.now += 6
    store = open_store(path, clock)
    assert (await store.get("svc/a")) is not None
    remaining = await store.lease_remaining(lease)
    assert remaining is not None and remaining == pytest.approx(4.0)
    assert await store.keepalive(lease) == 10
    await store.close()

    clock.now += 10.5  # past the TTL restarted by the keepalive, while "down"
    store = open_store(path, clock)
    rev = await store.revision()
    assert await store.get("svc/a") is None  # swept on the first call
    assert await store.lease_remaining(lease) is None
    batch = await next_batch(store, "svc/", rev)
    assert [(e.type, e.key) for e in batch.events] == [(EventType.DELETE, "svc/a")]
    await store.close()


async def test_lease_expiry_in_fake_time_wakes_watchers(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "s.db", clock)
    lease = await store.grant_lease(5)
    put = await store.put("x/a", b"1", lease=lease)
    clock.now += 4.9
    assert await store.expire_leases() == 0
    assert await store.get("x/a") == put

    async with watch_closing(store, "x/", start_revision=put.mod_revision + 1) as batches:

        async def first() -> WatchBatch:
            return await anext(batches)

        waiting = spawn(first(), name="first-batch")
        await asyncio.sleep(0.05)
        assert not waiting.done()
        clock.now += 0.2
        assert await store.expire_leases() == 1
        async with asyncio.timeout(5):
            batch = await waiting
    assert [(e.type, e.key, e.revision) for e in batch.events] == [
        (EventType.DELETE, "x/a", put.mod_revision + 1)
    ]
    await store.close()


async def test_lease_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(path)
    first = await store.grant_lease(5)
    await store.revoke(first)
    await store.close()
    store = open_store(path)
    assert await store.grant_lease(5) > first
    await store.close()


async def test_second_process_cannot_open_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(path)
    await store.put("k", b"v")
    script = textwrap.dedent(
        f"""
        from atoll.errors import FatalError
        from atoll.store.sqlite import SqliteStore
        try:
            SqliteStore({str(path)!r})
        except FatalError as exc:
            print("FatalError:", exc)
        """
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE
    )
    async with asyncio.timeout(60):
        stdout, _ = await child.communicate()
    assert child.returncode == 0
    out = stdout.decode()
    assert out.startswith("FatalError:")
    assert "another process" in out
    with pytest.raises(FatalError, match="already open in this process"):
        SqliteStore(path)  # a second owner in the same process is refused too
    await store.close()
    reopened = open_store(path)  # the lock is released by close()
    assert (await reopened.get("k")) is not None
    await reopened.close()


def test_garbage_file_is_a_fatal_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    garbage = b"this is not a database\x00" * 300
    path.write_bytes(garbage)
    with pytest.raises(FatalError, match="not a usable SQLite file"):
        SqliteStore(path)
    assert path.read_bytes() == garbage


async def test_damaged_store_pages_are_a_fatal_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = open_store(path, synchronous="OFF")
    for i in range(200):
        await store.put(f"k/{i:04d}", b"v" * 200)
    await store.close()  # checkpoints the WAL into the main file
    raw = bytearray(path.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    raw[page:] = b"\xa5" * (len(raw) - page)  # everything but the header page
    path.write_bytes(bytes(raw))
    with pytest.raises(FatalError, match="store"):
        damaged = open_store(path)
        await damaged.list("k/")


def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    before = path.read_bytes()
    with pytest.raises(FatalError, match="not an Atoll store"):
        SqliteStore(path)
    assert path.read_bytes() == before


async def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await SqliteStore(path, sweep_interval=0).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(FatalError, match="schema version 99"):
        SqliteStore(path)


def test_missing_directory_is_a_fatal_error(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="does not exist"):
        SqliteStore(tmp_path / "nope" / "s.db")


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidError):
        SqliteStore(tmp_path / "a.db", synchronous="SOMETIMES")  # type: ignore[arg-type]
    with pytest.raises(InvalidError):
        SqliteStore(tmp_path / "b.db", retain_revisions=0)


async def test_automatic_retention_compacts_old_history(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db", retain_revisions=8)
    for i in range(40):
        await store.put("k", str(i).encode())
    rev = await store.revision()
    with pytest.raises(CompactedError) as info:
        await next_batch(store, "", 2)
    assert info.value.compacted_revision > 2
    batch = await next_batch(store, "", rev - 7)  # the last N revisions are kept
    assert batch.events[0].revision == rev - 7
    await store.close()


async def test_a_watcher_overtaken_by_compaction_gets_compacted_error(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    first = await store.put("k", b"1")
    async with watch_closing(store, "", start_revision=first.mod_revision) as batches:
        assert (await anext(batches)).revision == first.mod_revision
        for i in range(3):
            await store.put("k", b"%d" % i)
        await store.compact(await store.revision())
        with pytest.raises(CompactedError):
            await anext(batches)
    await store.close()


async def test_close_ends_watches_and_later_calls_fail(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    seen: list[WatchBatch] = []

    async def watch() -> None:
        async for batch in store.watch("", start_revision=1):
            seen.append(batch)

    task = spawn(watch(), name="watcher")
    await store.put("k", b"1")
    await asyncio.sleep(0.05)
    await store.close()
    async with asyncio.timeout(5):
        await task  # ended by itself, without error
    assert [b.events[0].key for b in seen] == ["k"]
    with pytest.raises(FatalError, match="closed"):
        await store.get("k")
    await store.close()  # idempotent


async def test_background_sweeper_expires_leases(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "s.db", clock=clock, sweep_interval=0.01)
    lease = await store.grant_lease(1)
    put = await store.put("k", b"v", lease=lease)
    async with watch_closing(store, "", start_revision=put.mod_revision + 1) as batches:

        async def first() -> WatchBatch:
            return await anext(batches)

        waiting = spawn(first(), name="first-batch")
        await asyncio.sleep(0.05)  # the watcher has read and now waits for a change
        clock.now += 2  # nobody calls the store any more: only the sweeper can notice
        async with asyncio.timeout(5):
            batch = await waiting
    assert batch.events[0].type is EventType.DELETE
    await store.close()


def test_group_commit_isolates_each_call(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "s.db", clock=Clock())
    outcomes = engine.run_batch(
        [
            lambda: engine.put(b"a", b"1", 0, None),
            lambda: engine.put(b"a", b"2", 0, None),  # loses: a exists by now
            lambda: engine.put(b"b", b"1", None, 999),  # unknown lease
            lambda: engine.delete(b"a", 2),
            lambda: engine.get(b"a"),
        ]
    )
    (put_a, e1), (_, conflict), (_, no_lease), (deleted, e4), (read, e5) = outcomes
    assert e1 is None and e4 is None and e5 is None
    assert isinstance(put_a, Entry) and put_a.mod_revision == 2
    assert isinstance(conflict, ConflictError) and conflict.actual_revision == 2
    assert isinstance(no_lease, LeaseNotFoundError)
    assert deleted == 3 and read is None
    assert engine.revision == 3
    assert engine.get(b"b") is None
    history = engine.read_history(b"", 0, 100)
    assert [(e.type, e.key, e.revision) for e in history.events] == [
        (EventType.PUT, "a", 2),
        (EventType.DELETE, "a", 3),
    ]
    engine.close()


async def test_concurrent_callers_share_commits_and_each_gets_its_own_answer(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "s.db")

    async def cas(i: int) -> int | str:
        try:
            return (await store.put(f"k{i % 5}", b"%d" % i, expect=0)).mod_revision
        except ConflictError:
            return "lost"

    results = await asyncio.gather(*(cas(i) for i in range(40)))
    won = sorted(r for r in results if isinstance(r, int))
    assert won == list(range(2, 7))  # one winner per key, consecutive revisions
    assert results.count("lost") == 35
    listing = await store.list("")
    assert [e.key for e in listing.entries] == [f"k{i}" for i in range(5)]
    await store.close()
