"""The running registry: durable group commit, blocking waits, TTL expiry loop, startup."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll.errors import NotFoundError
from atoll_agent.registry.catalog import (
    DeleteService,
    PutInstance,
    PutService,
    SetHealth,
    empty_catalog,
)
from atoll_agent.registry.model import CatalogSnapshot, InstanceSpec, ServiceSpec
from atoll_agent.registry.persistence import StateWriteError, load_state, save_state
from atoll_agent.registry.runtime import Registry
from atoll_agent.registry.testing import FakeClock


def put(name: str) -> PutService:
    return PutService("ns", name, ServiceSpec.model_validate({"ports": [{"port": 80}]}))


def inst(id_: str, **kw: Any) -> PutInstance:
    return PutInstance("ns", "a", id_, InstanceSpec.model_validate({"address": "::1", **kw}))


class GatedPersist:
    """A persist function (runs in a worker thread) that can be held and made to fail."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def __call__(self, snap: CatalogSnapshot) -> None:
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise StateWriteError("disk full")
        self.written.append(snap.index)


async def test_without_a_state_file_changes_publish_at_once() -> None:
    reg = Registry(empty_catalog("e"))
    change = await reg.submit(put("a"))
    assert change.changed and change.before.index == 0 and change.after.index == 1
    assert reg.snapshot is change.after
    again = await reg.submit(put("a"))
    assert not again.changed and reg.snapshot.index == 1


async def test_typed_errors_leave_the_state_alone() -> None:
    reg = Registry(empty_catalog("e"))
    with pytest.raises(NotFoundError):
        await reg.submit(DeleteService("ns", "nope"))
    assert reg.snapshot.index == 0


async def test_group_commit_acknowledges_only_durable_changes() -> None:
    persist = GatedPersist()
    reg = Registry(empty_catalog("e"), persist=persist)
    persist.gate.clear()
    first = spawn(reg.submit(put("a")), name="first")
    await asyncio.to_thread(persist.entered.wait, 10)  # the first write is in progress
    rest = [spawn(reg.submit(put(n)), name=n) for n in ("b", "c", "d")]
    await asyncio.sleep(0)
    assert reg.snapshot.index == 0, "readers never see a change that is not on disk yet"
    assert not first.done() and not any(t.done() for t in rest)
    persist.gate.set()
    changes = await asyncio.gather(first, *rest)
    assert [c.after.index for c in changes] == [1, 2, 3, 4]
    assert persist.written == [1, 4], "the three changes made during the first write share one"
    assert reg.snapshot.index == 4


async def test_a_failed_write_drops_the_pending_changes() -> None:
    persist = GatedPersist()
    reg = Registry(empty_catalog("e"), persist=persist)
    await reg.submit(put("a"))
    persist.fail = True
    with pytest.raises(StateWriteError, match="disk full"):
        await reg.submit(put("b"))
    assert reg.snapshot.index == 1 and reg.snapshot.service("ns", "b") is None
    persist.fail = False
    change = await reg.submit(put("c"))
    assert change.after.index == 2
    assert [s.name for s in reg.snapshot.services] == ["a", "c"]


async def test_wait_for_change_answers_at_once_unless_current() -> None:
    reg = Registry(empty_catalog("e1"))
    await reg.submit(put("a"))
    assert (await reg.wait_for_change(index=0, wait=30)).index == 1  # older index
    assert (await reg.wait_for_change(index=7, wait=30)).index == 1  # index from a past life
    assert (await reg.wait_for_change(index=1, epoch="e0", wait=30)).index == 1  # other epoch
    assert (await reg.wait_for_change(index=1, wait=0)).index == 1


async def test_wait_for_change_wakes_on_change_and_times_out() -> None:
    reg = Registry(empty_catalog("e"))
    waiter = spawn(reg.wait_for_change(index=0, epoch="e", wait=30), name="waiter")
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await reg.submit(put("a"))
    assert (await waiter).index == 1
    assert (await reg.wait_for_change(index=1, wait=0.05)).index == 1


async def test_close_answers_every_waiter() -> None:
    reg = Registry(empty_catalog("e"))
    waiters = [spawn(reg.wait_for_change(index=0, wait=300), name=f"w{i}") for i in range(3)]
    await asyncio.sleep(0.01)
    reg.close()
    assert [(await w).index for w in waiters] == [0, 0, 0]
    assert (await reg.wait_for_change(index=0, wait=300)).index == 0


async def test_expiry_loop_turns_lapsed_instances_critical_in_fake_time() -> None:
    clock = FakeClock()
    reg = Registry(empty_catalog("e"), clock=clock)
    await reg.submit(put("a"))
    await reg.submit(inst("t", ttl_seconds=10))
    await reg.submit(inst("p"))

    async def fake_sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    loop = spawn(reg.run_expiry(interval=1.0, sleep=fake_sleep), name="expiry")
    try:
        snap = await reg.wait_for_change(index=3, wait=10)
    finally:
        await cancel_and_wait(loop)
    svc = snap.service("ns", "a")
    assert svc is not None
    by_id = {i.id: i.health for i in svc.instances}
    assert by_id == {"p": "passing", "t": "critical"}
    assert clock.now >= 1_000_010.0


async def test_a_health_report_refreshes_the_ttl() -> None:
    clock = FakeClock()
    reg = Registry(empty_catalog("e"), clock=clock)
    await reg.submit(put("a"))
    await reg.submit(inst("t", ttl_seconds=10))
    clock.advance(9)
    await reg.submit(SetHealth("ns", "a", "t", "warning"))
    clock.advance(9)
    assert await reg.expire_ttls() == 0
    clock.advance(1)
    assert await reg.expire_ttls() == 1


def test_open_starts_empty_with_a_fresh_epoch_and_persists_it(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    reg = Registry.open(state, clock=FakeClock(), make_epoch=lambda: "fresh")
    assert (reg.snapshot.index, reg.snapshot.epoch) == (0, "fresh")
    assert load_state(state, now=0) == reg.snapshot


def test_open_moves_a_corrupt_file_aside(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "kind": "atoll-registry-catalog", "sha2')
    reg = Registry.open(state, clock=FakeClock(0.0), make_epoch=lambda: "fresh")
    assert reg.snapshot == empty_catalog("fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "state.json",
        "state.json.corrupt-0",
    ]


async def test_open_restarts_ttl_clocks_and_writes_that_back(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    clock = FakeClock()
    first = Registry.open(state, clock=clock, make_epoch=lambda: "e")
    await first.submit(put("a"))
    await first.submit(inst("t", ttl_seconds=10))
    clock.advance(3600)  # down for an hour
    second = Registry.open(state, clock=clock, make_epoch=lambda: "other")
    assert (second.snapshot.epoch, second.snapshot.index) == ("e", 3)
    assert await second.expire_ttls() == 0, "a full TTL to report after the restart"
    on_disk = json.loads(state.read_bytes())["payload"]
    assert on_disk["index"] == 3


def test_state_written_by_open_is_the_published_snapshot(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    save_state(state, empty_catalog("kept"))
    reg = Registry.open(state, clock=FakeClock())
    assert reg.snapshot == empty_catalog("kept")
