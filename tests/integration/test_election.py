"""LeaderElection for real: two candidate *processes* on one real etcd.

Each candidate is this file run as a script (``python test_election.py
child ...``): it runs a LeaderElection on an EtcdStore and, while leader,
writes ``<prefix>writes/<id>`` every 100 ms inside ``leadership()``, each
write carrying the leader's lease — the fencing the election documents: a
process stopped between its ``is_leader`` check and its write sends the
write on waking, and only the lease makes the store reject it. It reports
what happens as JSON lines on stdout (leader / lost / following / wrote /
fenced), which the test reads.

* SIGKILL the leader's process: the other becomes leader, and not before the
  dead leader's lease could have run out (its last renewal + TTL).
* SIGSTOP the leader for longer than the TTL (a paused process, a GC pause,
  a VM stall): the other takes over; when the paused one resumes it steps
  down by itself, and the store's history shows none of its writes after the
  new leader's key was created.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TTL = 2
GUARD = 30.0
CHILD = str(Path(__file__).resolve())


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def child(endpoint: str, prefix: str, candidate: str) -> None:
    from atoll.errors import LeaseNotFoundError, StoreUnavailableError
    from atoll.store.election import LeaderElection, LeadershipLostError
    from atoll.store.etcd import EtcdStore

    host, port = endpoint.rsplit(":", 1)
    store = EtcdStore([(host, int(port))], timeout=2.0)
    election = LeaderElection(
        store,
        prefix + "leader",
        candidate,
        ttl=TTL,
        on_change=lambda leading: emit("leader" if leading else "lost"),
    )

    async def write_while_leader() -> None:
        n = 0
        while True:
            try:
                async with election.leadership():
                    while True:
                        lease = election.lease  # None unless leading, checked right before
                        if lease is not None:
                            n += 1
                            key = f"{prefix}writes/{candidate}"
                            try:
                                entry = await store.put(key, b"%d" % n, lease=lease)
                            except LeaseNotFoundError:  # the lease ran out meanwhile
                                emit("fenced")
                            else:
                                emit("wrote", revision=entry.mod_revision)
                        await asyncio.sleep(0.1)
            except LeadershipLostError as exc:
                emit("writer-stopped", reason=exc.reason)
            except StoreUnavailableError:
                await asyncio.sleep(0.1)

    async def report_leader() -> None:
        seen: str | None = None
        while True:
            current = election.current_leader()
            if current != seen and current not in (None, candidate):
                emit("following", leader=current)
            seen = current
            await asyncio.sleep(0.05)

    emit("ready")
    async with asyncio.TaskGroup() as group:
        group.create_task(election.run())
        group.create_task(write_while_leader())
        group.create_task(report_leader())


# -- the test side -------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self.changed.set()

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(GUARD):
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                self.changed.clear()
                await self.changed.wait()

    def times(self, name: str) -> list[float]:
        return [e["t"] for e in self.events if e["event"] == name]


@pytest.fixture(scope="module")
def etcd() -> Iterator[Any]:
    from atoll.testing.etcd import EtcdServer, etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (apt-get install etcd-server)")
    with EtcdServer(host="127.0.10.4") as server:
        yield server


@pytest.fixture
async def spawn_candidate(etcd: Any) -> AsyncIterator[Callable[[str, str], Any]]:
    from atoll.aio import cancel_and_wait, spawn

    started: list[tuple[Candidate, asyncio.Task[None]]] = []

    async def start(name: str, prefix: str) -> Candidate:
        host, port = etcd.endpoint
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            CHILD,
            "child",
            f"{host}:{port}",
            prefix,
            name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        candidate = Candidate(name, process)
        started.append((candidate, spawn(candidate.pump(), name=f"pump-{name}")))
        return candidate

    yield start
    for candidate, pump in started:
        with contextlib.suppress(ProcessLookupError):
            candidate.process.send_signal(signal.SIGCONT)
            candidate.process.kill()
        await candidate.process.wait()
        await cancel_and_wait(pump)


async def leader_and_follower(
    spawn_candidate: Callable[[str, str], Any], prefix: str
) -> tuple[Candidate, Candidate]:
    a: Candidate = await spawn_candidate("a", prefix)
    await a.wait_for(lambda e: e["event"] == "wrote")
    b: Candidate = await spawn_candidate("b", prefix)
    await b.wait_for(lambda e: e["event"] == "following" and e["leader"] == "a")
    return a, b


@pytest.mark.etcd
async def test_sigkilled_leader_is_replaced_after_its_lease_runs_out(
    etcd: Any, spawn_candidate: Callable[[str, str], Any]
) -> None:
    from atoll.store.etcd import EtcdStore

    prefix = f"election/{uuid.uuid4().hex[:8]}/"
    a, b = await leader_and_follower(spawn_candidate, prefix)
    killed_at = time.time()
    a.process.kill()
    won = await b.wait_for(lambda e: e["event"] == "leader")
    await b.wait_for(lambda e: e["event"] == "wrote")
    # a renews every TTL/3, so its lease had at least 2/3 TTL left when it died
    assert won["t"] - killed_at >= TTL * 2 / 3 - 0.1
    store = EtcdStore([etcd.endpoint])
    entry = await store.get(prefix + "leader")
    assert entry is not None and entry.value == b"b"
    await store.close()


@pytest.mark.etcd
async def test_a_paused_leader_steps_down_and_writes_nothing_after_the_takeover(
    etcd: Any, spawn_candidate: Callable[[str, str], Any]
) -> None:
    from atoll.store.base import EventType
    from atoll.store.etcd import EtcdStore
    from atoll.store.watching import watch_closing

    store = EtcdStore([etcd.endpoint])
    prefix = f"election/{uuid.uuid4().hex[:8]}/"
    start = await store.revision() + 1
    a, b = await leader_and_follower(spawn_candidate, prefix)
    a.process.send_signal(signal.SIGSTOP)
    await b.wait_for(lambda e: e["event"] == "leader")
    await b.wait_for(lambda e: e["event"] == "wrote")
    a.process.send_signal(signal.SIGCONT)
    stopped = await a.wait_for(lambda e: e["event"] == "writer-stopped")
    await a.wait_for(lambda e: e["event"] == "following" and e["leader"] == "b")
    assert "deadline" in stopped["reason"]
    await asyncio.sleep(0.5)  # give a chance to any late write by a

    leader_key = await store.get(prefix + "leader")
    assert leader_key is not None and leader_key.value == b"b"
    took_over = leader_key.create_revision
    marker = await store.put(prefix + "writes/~end", b"")
    writes: dict[str, list[int]] = {"a": [], "b": []}
    async with (
        asyncio.timeout(GUARD),
        watch_closing(store, prefix + "writes/", start_revision=start) as batches,
    ):
        async for batch in batches:
            for e in batch.events:
                if e.revision >= marker.mod_revision:
                    continue
                who = e.key.rsplit("/", 1)[1]
                if e.type is EventType.PUT:
                    writes[who].append(e.revision)
                else:  # a's lease ran out: its keys went with it, before b took over
                    assert who == "a" and e.revision < took_over
            if batch.revision >= marker.mod_revision:
                break
    assert writes["a"] and writes["b"]
    assert max(writes["a"]) < took_over < min(writes["b"])
    assert len(a.times("lost")) == 1 and len(a.times("leader")) == 1
    await store.close()


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "child":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("endpoint")
    parser.add_argument("prefix")
    parser.add_argument("candidate")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(child(args.endpoint, args.prefix, args.candidate))
