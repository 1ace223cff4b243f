"""EtcdStore on a real 3-member etcd cluster while the leader is SIGKILLed.

A writer streams unconditional puts (one new key each) and compare-and-swap
increments of a counter through one EtcdStore (round_robin over all three
members). Meanwhile a watcher runs on a second EtcdStore that uses
``pick_first`` with the leader listed first, so its stream is on the member
we kill and must resume by itself on a survivor. After the kill we require:

* the writer's client failed over: writes were acknowledged after the kill;
* no acknowledged write is lost: every acked key has its acked value, and the
  counter's history is 1, 2, ..., n with every acked increment in it (a CAS
  whose answer was lost may or may not have applied; it is never applied twice);
* the watcher saw every change exactly once, in revision order, identical to
  a replay of the history after the fact, and it did resume (logged);
* the restarted member catches up to the final revision and serves reads.

The run is bounded: writes stop 40 acknowledgements after the kill or after a
deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.errors import ConflictError, StoreUnavailableError
from atoll.store.base import Event, EventType
from atoll.store.etcd import EtcdStore
from atoll.store.watching import watch_closing
from atoll.testing.etcd import EtcdCluster, etcd_binary

pytestmark = pytest.mark.etcd

PREFIX = "ha/"
COUNTER = PREFIX + "counter"
DONE = PREFIX + "zz-done"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (apt-get install etcd-server)")
    with EtcdCluster(3, host="127.0.10.3") as c:
        yield c


class Writer:
    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.acked: dict[str, tuple[bytes, int]] = {}  # key -> (value, revision)
        self.acked_counts: list[tuple[int, int]] = []  # (counter value, revision)
        self.ambiguous = 0
        self.stop = asyncio.Event()
        self.progress = asyncio.Condition()

    async def wait_acked(self, count: int) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: len(self.acked) >= count)

    async def run(self) -> None:
        i = 0
        counter = await self.store.get(COUNTER)
        while not self.stop.is_set():
            i += 1
            key, value = f"{PREFIX}w/{i:05d}", str(i).encode()
            try:
                entry = await self.store.put(key, value)
                self.acked[key] = (value, entry.mod_revision)
                async with self.progress:
                    self.progress.notify_all()
                if counter is None:
                    counter = await self.store.get(COUNTER)
                n = int(counter.value) + 1 if counter else 1
                expect = counter.mod_revision if counter else 0
                counter = await self.store.put(COUNTER, str(n).encode(), expect=expect)
                self.acked_counts.append((n, counter.mod_revision))
            except ConflictError:
                counter = None  # re-read and re-decide; never blindly retry
            except StoreUnavailableError:
                self.ambiguous += 1
                counter = None
                await asyncio.sleep(0.05)


async def test_leader_kill_loses_no_acknowledged_write_and_the_watch_resumes(
    cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atoll.store")
    leader = await asyncio.to_thread(cluster.leader)
    writer_store = EtcdStore(cluster.endpoints, timeout=3.0)
    order = [cluster.endpoints[leader]] + [
        e for i, e in enumerate(cluster.endpoints) if i != leader
    ]
    watch_store = EtcdStore(order, load_balancing="pick_first", timeout=3.0)
    start = await writer_store.revision() + 1
    seen: list[Event] = []

    async def watch() -> None:
        async with watch_closing(watch_store, PREFIX, start_revision=start) as batches:
            async for batch in batches:
                seen.extend(batch.events)
                if any(e.key == DONE for e in batch.events):
                    return

    watcher = spawn(watch(), name="ha-watcher")
    writer = Writer(writer_store)
    writing = spawn(writer.run(), name="ha-writer")
    try:
        async with asyncio.timeout(30):
            await writer.wait_acked(30)
            acked_before_kill = len(writer.acked)
            await asyncio.to_thread(cluster.kill, leader)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await writer.wait_acked(acked_before_kill + 40)
            writer.stop.set()
            await writing
            done = await writer_store.put(DONE, b"")
            await watcher
    finally:
        await cancel_and_wait(writing, watcher)

    # the writer's client failed over to the survivors
    assert len(writer.acked) > acked_before_kill

    # no acknowledged write was lost
    listing = await writer_store.list(PREFIX)
    stored = {e.key: (e.value, e.mod_revision) for e in listing.entries}
    for key, (value, revision) in writer.acked.items():
        assert stored[key] == (value, revision)
    counter_values = [int(e.entry.value) for e in seen if e.key == COUNTER]
    assert counter_values == list(range(1, len(counter_values) + 1))
    counter_revisions = {e.revision: int(e.entry.value) for e in seen if e.key == COUNTER}
    for n, revision in writer.acked_counts:
        assert counter_revisions[revision] == n

    # the watcher saw everything exactly once, in order, and resumed by itself
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions))
    assert all(e.type is EventType.PUT for e in seen)
    replay: list[Event] = []
    async with watch_closing(writer_store, PREFIX, start_revision=start) as batches:
        async for batch in batches:
            replay.extend(batch.events)
            if batch.revision >= done.mod_revision:
                break
    assert seen == replay
    watched = {e.key: (e.entry.value, e.revision) for e in seen}
    for key, acked in writer.acked.items():
        assert watched[key] == acked
    assert any("resuming" in r.getMessage() for r in caplog.records)
    print(
        f"acked {acked_before_kill} before the kill, {len(writer.acked)} in all; "
        f"{writer.ambiguous} ambiguous; {len(seen)} events watched"
    )

    # the killed member comes back and catches up
    await asyncio.to_thread(cluster.restart, leader)
    await asyncio.to_thread(cluster.wait_caught_up, leader, done.mod_revision)
    only_restarted = EtcdStore([cluster.endpoints[leader]], timeout=5.0)
    assert (await only_restarted.list(PREFIX)).entries == listing.entries
    for store in (only_restarted, watch_store, writer_store):
        await store.close()
