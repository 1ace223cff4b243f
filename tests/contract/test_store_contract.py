"""One contract for every Store backend (DESIGN §4): SQLite and a real etcd.

Each test runs against both backends (the ``backend`` fixture) and uses only
the Store protocol, so a behaviour difference between the embedded store and
etcd fails here.

* ``sqlite``: a fresh SqliteStore file in the test's tmp dir (default,
  durable settings; a fast sweeper so lease expiry shows up promptly).
* ``etcd``: one real single-member etcd for the whole module (127.0.10.1,
  fast elections so 1 s leases work), a fresh EtcdStore client per test, and
  a unique key prefix per test so tests never see each other's keys. Skipped
  with a reason when the etcd binary is missing.

Waits on real time (lease expiry) are bounded by ``asyncio.timeout`` guards
that only stop a hung test; no assertion is about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.aio import spawn
from atoll.errors import (
    CompactedError,
    ConflictError,
    InvalidError,
    LeaseNotFoundError,
)
from atoll.store.base import Entry, Event, EventType, Store, WatchBatch
from atoll.store.watching import (
    Changes,
    Snapshot,
    apply_observation,
    list_and_watch,
    watch_closing,
)
from atoll.testing.etcd import EtcdServer, etcd_binary

GUARD = 15.0  # seconds; only to stop a hung test


@dataclass(frozen=True)
class Backend:
    name: str
    store: Store
    #: every key a test uses starts with this (unique per test)
    prefix: str

    def k(self, name: str) -> str:
        return self.prefix + name


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (apt-get install etcd-server)")
    with EtcdServer(host="127.0.10.1") as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    prefix = f"contract/{uuid.uuid4().hex[:12]}/"
    store: Store
    if request.param == "sqlite":
        from atoll.store.sqlite import SqliteStore

        store = SqliteStore(tmp_path / "store.db", sweep_interval=0.05)
    else:
        from atoll.store.etcd import EtcdStore

        server: EtcdServer = request.getfixturevalue("etcd_server")
        store = EtcdStore(server.endpoints)
    try:
        yield Backend(name=request.param, store=store, prefix=prefix)
    finally:
        await store.close()


async def collect(
    store: Store, prefix: str, start: int, *, until: int | None = None, count: int | None = None
) -> list[Event]:
    """Events from ``start`` until revision ``until`` or ``count`` events are seen."""
    events: list[Event] = []
    async with (
        asyncio.timeout(GUARD),
        watch_closing(store, prefix, start_revision=start) as batches,
    ):
        async for batch in batches:
            assert batch.revision == batch.events[-1].revision
            events.extend(batch.events)
            if until is not None and batch.revision >= until:
                break
            if count is not None and len(events) >= count:
                break
    return events


# -- get / list / revisions ---------------------------------------------------------


async def test_missing_key_and_empty_prefix(backend: Backend) -> None:
    store = backend.store
    assert await store.get(backend.k("nothing")) is None
    listing = await store.list(backend.prefix)
    assert listing.entries == ()
    assert listing.revision == await store.revision()


async def test_put_assigns_revisions_and_versions(backend: Backend) -> None:
    store, key = backend.store, backend.k("a")
    rev0 = await store.revision()
    first = await store.put(key, b"one")
    assert (first.create_revision, first.mod_revision, first.version) == (rev0 + 1, rev0 + 1, 1)
    assert first.lease is None
    second = await store.put(key, b"two")
    assert (second.create_revision, second.mod_revision, second.version) == (rev0 + 1, rev0 + 2, 2)
    assert await store.get(key) == second
    assert await store.revision() == rev0 + 2


async def test_delete_then_recreate_starts_a_new_life(backend: Backend) -> None:
    store, key = backend.store, backend.k("a")
    await store.put(key, b"1")
    await store.put(key, b"2")
    deleted_at = await store.delete(key)
    again = await store.put(key, b"3")
    assert deleted_at is not None
    assert again.create_revision == again.mod_revision == deleted_at + 1
    assert again.version == 1


async def test_list_is_sorted_and_bounded_by_prefix(backend: Backend) -> None:
    store, p = backend.store, backend.prefix
    for name in ("c", "a", "b/x", "b", "a0"):
        await store.put(p + "ns/" + name, name.encode())
    await store.put(p + "ns0/outside", b"x")  # shares the text "ns" but not the prefix "ns/"
    await store.put(p + "n", b"x")
    listing = await store.list(p + "ns/")
    assert [e.key for e in listing.entries] == [p + "ns/" + n for n in ("a", "a0", "b", "b/x", "c")]
    assert [e.value for e in listing.entries] == [b"a", b"a0", b"b", b"b/x", b"c"]
    assert listing.revision == await store.revision()
    assert len((await store.list(p)).entries) == 7


# -- compare-and-swap --------------------------------------------------------------------


async def test_create_only(backend: Backend) -> None:
    store, key = backend.store, backend.k("lock")
    created = await store.put(key, b"mine", expect=0)
    rev = await store.revision()
    with pytest.raises(ConflictError) as info:
        await store.put(key, b"theirs", expect=0)
    assert info.value.actual_revision == created.mod_revision
    assert info.value.key == key
    assert (await store.get(key)) == created
    assert await store.revision() == rev  # a failed CAS writes nothing


async def test_stale_revision_loses(backend: Backend) -> None:
    store, key = backend.store, backend.k("obj")
    v1 = await store.put(key, b"1")
    v2 = await store.put(key, b"2", expect=v1.mod_revision)
    assert v2.version == 2
    with pytest.raises(ConflictError) as info:
        await store.put(key, b"3", expect=v1.mod_revision)
    assert info.value.expected == v1.mod_revision
    assert info.value.actual_revision == v2.mod_revision
    assert (await store.get(key)) == v2


async def test_expecting_a_revision_of_an_absent_key_conflicts(backend: Backend) -> None:
    store, key = backend.store, backend.k("ghost")
    with pytest.raises(ConflictError) as info:
        await store.put(key, b"x", expect=1)
    assert info.value.actual_revision == 0
    assert await store.get(key) is None


async def test_delete_semantics(backend: Backend) -> None:
    store, key = backend.store, backend.k("d")
    rev = await store.revision()
    assert await store.delete(key) is None  # absent, no expect: nothing happens
    assert await store.revision() == rev
    with pytest.raises(ConflictError) as info:
        await store.delete(key, expect=5)  # absent with expect: conflict
    assert info.value.actual_revision == 0
    v1 = await store.put(key, b"1")
    v2 = await store.put(key, b"2")
    with pytest.raises(ConflictError):
        await store.delete(key, expect=v1.mod_revision)
    assert await store.get(key) == v2
    deleted_at = await store.delete(key, expect=v2.mod_revision)
    assert deleted_at == v2.mod_revision + 1
    assert await store.get(key) is None


async def test_delete_prefix_is_one_revision(backend: Backend) -> None:
    store, p = backend.store, backend.prefix
    for name in ("x/1", "x/2", "x/3", "y/1"):
        await store.put(p + name, b"v")
    rev = await store.revision()
    assert await store.delete_prefix(p + "x/") == 3
    assert await store.revision() == rev + 1
    assert [e.key for e in (await store.list(p)).entries] == [p + "y/1"]
    events = await collect(store, p, rev + 1, count=3)
    assert {e.key for e in events} == {p + "x/1", p + "x/2", p + "x/3"}
    assert {(e.type, e.revision) for e in events} == {(EventType.DELETE, rev + 1)}
    assert await store.delete_prefix(p + "x/") == 0
    assert await store.revision() == rev + 1


async def test_concurrent_cas_has_exactly_one_winner(backend: Backend) -> None:
    store, key = backend.store, backend.k("race")

    async def create(i: int) -> bool:
        try:
            await store.put(key, str(i).encode(), expect=0)
        except ConflictError:
            return False
        return True

    results = await asyncio.gather(*(create(i) for i in range(12)))
    assert results.count(True) == 1
    base = await store.get(key)
    assert base is not None and base.value == str(results.index(True)).encode()

    async def update(i: int) -> bool:
        try:
            await store.put(key, b"u%d" % i, expect=base.mod_revision)
        except ConflictError:
            return False
        return True

    results = await asyncio.gather(*(update(i) for i in range(12)))
    assert results.count(True) == 1
    final = await store.get(key)
    assert final is not None and final.version == 2


# -- leases ----------------------------------------------------------------------------------


async def test_lease_expiry_deletes_its_keys_with_delete_events(backend: Backend) -> None:
    store, p = backend.store, backend.prefix
    lease = await store.grant_lease(1)
    start = await store.revision() + 1
    a = await store.put(p + "a", b"1", lease=lease)
    await store.put(p + "b", b"2", lease=lease)
    await store.put(p + "keep", b"3")
    assert a.lease == lease
    assert (await store.get(p + "a")) == a
    events = await collect(store, p, start, count=5)  # 3 puts, then the 2 expiry deletes
    deletes = [e for e in events if e.type is EventType.DELETE]
    assert {e.key for e in deletes} == {p + "a", p + "b"}
    assert len({e.revision for e in deletes}) == 1  # one revision for the whole lease
    assert all(e.entry.value == b"" and e.entry.version == 0 for e in deletes)
    assert [e.key for e in (await store.list(p)).entries] == [p + "keep"]
    assert await store.lease_remaining(lease) is None
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease)
    with pytest.raises(LeaseNotFoundError):
        await store.put(p + "late", b"x", lease=lease)
    assert await store.get(p + "late") is None


async def test_keepalive_extends_the_lease(backend: Backend) -> None:
    store, key = backend.store, backend.k("alive")
    lease = await store.grant_lease(1)
    await store.put(key, b"x", lease=lease)
    for _ in range(6):  # 1.8 s > the 1 s TTL
        await asyncio.sleep(0.3)
        assert await store.keepalive(lease) >= 1
    assert (await store.get(key)) is not None
    remaining = await store.lease_remaining(lease)
    assert remaining is not None and 0 <= remaining <= 2
    await store.revoke(lease)


async def test_revoke_deletes_keys_at_once(backend: Backend) -> None:
    store, key = backend.store, backend.k("r")
    lease = await store.grant_lease(30)
    await store.put(key, b"x", lease=lease)
    rev = await store.revision()
    await store.revoke(lease)
    assert await store.get(key) is None
    assert await store.revision() == rev + 1
    assert await store.lease_remaining(lease) is None
    await store.revoke(lease)  # revoking a missing lease is a no-op
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease)


async def test_lease_without_keys_and_unknown_lease(backend: Backend) -> None:
    store, key = backend.store, backend.k("u")
    lease = await store.grant_lease(30)
    rev = await store.revision()
    await store.revoke(lease)  # no keys: no revision
    assert await store.revision() == rev
    with pytest.raises(LeaseNotFoundError):
        await store.put(key, b"x", lease=lease)
    assert await store.get(key) is None


# -- watch ---------------------------------------------------------------------------------


async def test_watch_from_a_past_revision_replays_history_then_follows(backend: Backend) -> None:
    store, p = backend.store, backend.prefix
    start = await store.revision() + 1
    await store.put(p + "a", b"1")
    await store.put(p + "b", b"1")
    await store.put(p + "a", b"2")
    await store.delete(p + "b")
    await store.put(backend.prefix.rstrip("/") + "-sibling", b"not mine")
    history = await collect(store, p, start, count=4)
    assert [(e.type, e.key, e.entry.value) for e in history] == [
        (EventType.PUT, p + "a", b"1"),
        (EventType.PUT, p + "b", b"1"),
        (EventType.PUT, p + "a", b"2"),
        (EventType.DELETE, p + "b", b""),
    ]
    assert [e.revision for e in history] == list(range(start, start + 4))
    assert history[2].entry.version == 2 and history[2].entry.create_revision == start

    async def later() -> None:
        await asyncio.sleep(0.05)
        await store.put(p + "c", b"live")

    writer = spawn(later(), name="later-writer")
    live = await collect(store, p, start + 4, count=1)
    await writer
    assert [(e.key, e.entry.value) for e in live] == [(p + "c", b"live")]


async def test_watch_delivers_concurrent_writes_in_revision_order(backend: Backend) -> None:
    store, p = backend.store, backend.prefix
    start = await store.revision() + 1

    async def writer(w: int) -> None:
        for i in range(10):
            await store.put(f"{p}w{w}", str(i).encode())

    await asyncio.gather(*(writer(w) for w in range(5)))
    events = await collect(store, p, start, count=50)
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 50
    for w in range(5):  # per key, values arrive in the order written
        assert [e.entry.value for e in events if e.key == f"{p}w{w}"] == [
            str(i).encode() for i in range(10)
        ]


async def test_watch_from_a_compacted_revision_raises(backend: Backend) -> None:
    store, key = backend.store, backend.k("c")
    first = await store.put(key, b"1")
    await store.put(key, b"2")
    third = await store.put(key, b"3")
    await store.compact(third.mod_revision)
    with pytest.raises(CompactedError) as info:
        await collect(store, backend.prefix, first.mod_revision, count=1)
    assert info.value.compacted_revision >= third.mod_revision
    assert info.value.requested == first.mod_revision
    # the compaction point itself is still watchable
    events = await collect(store, backend.prefix, third.mod_revision, count=1)
    assert [e.entry.value for e in events] == [b"3"]
    await store.compact(first.mod_revision)  # already compacted: no-op
    with pytest.raises(InvalidError):
        await store.compact(await store.revision() + 10)


async def test_closing_a_watch_ends_it(backend: Backend) -> None:
    store = backend.store
    start = await store.revision() + 1
    async with watch_closing(store, backend.prefix, start_revision=start) as batches:

        async def first() -> WatchBatch:
            return await anext(batches)

        waiting = spawn(first(), name="first-batch")
        await asyncio.sleep(0.1)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert await store.put(backend.k("after"), b"x")  # the store still works


async def test_closing_the_store_ends_its_watches(backend: Backend) -> None:
    store = backend.store
    start = await store.revision() + 1
    await store.put(backend.k("x"), b"1")
    seen: list[WatchBatch] = []

    async def watch() -> None:
        async for batch in store.watch(backend.prefix, start_revision=start):
            seen.append(batch)

    watcher = spawn(watch(), name="watcher")
    async with asyncio.timeout(GUARD):
        while not seen:
            await asyncio.sleep(0.01)
        await store.close()
        await watcher  # ends by itself, without an error
    assert [e.key for b in seen for e in b.events] == [backend.k("x")]


# -- list_and_watch ------------------------------------------------------------------------


async def test_list_and_watch_relists_after_compaction(backend: Backend) -> None:
    store, p = backend.store, backend.prefix
    await store.put(p + "a", b"1")
    await store.put(p + "b", b"1")
    observations = list_and_watch(store, p)
    state: dict[str, Entry] = {}
    async with asyncio.timeout(GUARD):
        first = await anext(observations)
        assert isinstance(first, Snapshot) and not first.resync
        assert [e.key for e in first.entries] == [p + "a", p + "b"]
        state = apply_observation({}, first)
        # the consumer is slow: history it has not watched yet is compacted away
        await store.put(p + "a", b"2")
        await store.delete(p + "b")
        await store.put(p + "c", b"1")
        await store.compact(await store.revision())
        second = await anext(observations)
        assert isinstance(second, Snapshot) and second.resync
        state = apply_observation(state, second)
        assert {k: e.value for k, e in state.items()} == {p + "a": b"2", p + "c": b"1"}
        # and it follows live changes after the re-list
        await store.put(p + "d", b"1")
        third = await anext(observations)
        assert isinstance(third, Changes)
        state = apply_observation(state, third)
    await observations.aclose()  # type: ignore[attr-defined]
    listing = await store.list(p)
    assert {k: e.value for k, e in state.items()} == {e.key: e.value for e in listing.entries}


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s, p: s.put("", b"x"), "key"),
        (lambda s, p: s.put(p + "é", b"x"), "key"),
        (lambda s, p: s.put(p + "tab\t", b"x"), "key"),
        (lambda s, p: s.put(p + "k", "text"), "value"),
        (lambda s, p: s.put(p + "k", b"x" * (1024 * 1024 + 1)), "value"),
        (lambda s, p: s.put(p + "k", b"x", expect=-1), "expect"),
        (lambda s, p: s.put(p + "k", b"x", lease=0), "lease"),
        (lambda s, p: s.delete(p + "k", expect=-3), "expect"),
        (lambda s, p: s.get(p + "\n"), "key"),
        (lambda s, p: s.list("ü"), "prefix"),
        (lambda s, p: s.grant_lease(0), "ttl"),
        (lambda s, p: s.compact(0), "revision"),
    ],
)
async def test_bad_input_is_rejected_without_a_write(
    backend: Backend, call: Callable[[Store, str], Awaitable[object]], field: str
) -> None:
    store = backend.store
    rev = await store.revision()
    with pytest.raises(InvalidError) as info:
        await call(store, backend.prefix)
    assert info.value.field == field
    assert await store.revision() == rev
    assert (await store.list(backend.prefix)).entries == ()


async def test_bad_watch_arguments(backend: Backend) -> None:
    with pytest.raises(InvalidError):
        backend.store.watch(backend.prefix, start_revision=0)
    with pytest.raises(InvalidError):
        backend.store.watch("ñ", start_revision=1)
