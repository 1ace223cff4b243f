"""Worker processes of the fan-out benchmark: many subscribers on one event loop.

The orchestrator (:mod:`tests.bench.bench_sync`) starts ``--workers`` of these
with :mod:`multiprocessing` (spawn) and drives them over a pipe with the
frozen messages below. A worker runs, on one asyncio loop (uvloop when
available), either its share of the simulated agents — real
:class:`~atoll.sync.SyncClient` objects — or its share of the etcd watchers
of the peer measurement. It never decides anything about the benchmark; it
starts and stops subscribers and timestamps what they see.

Trials are two-phase so no subscriber can see a change before it is armed:
every worker first gets :class:`Arm` (what the change will look like) and
answers :class:`Armed`; only then does one worker make the change
(:class:`Flip` for agents, :class:`Put` for etcd) and answer :class:`Fired`
with its ``time.monotonic()`` just before. Each subscriber's arrival is
timestamped with ``time.monotonic()`` too (CLOCK_MONOTONIC is system-wide on
Linux, so times compare across processes); a worker answers
:class:`TrialDone` once all of its subscribers have the change, or what it
has when told to :class:`Collect`.

For agents, "has the change" means: the delta carrying the new version of
the import was applied *and* its ACK was written to the stream — timed in
``SyncClient``'s ``on_acked`` hook, which runs right after the ACK write.
For etcd watchers it means the watch event was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from atoll.aio import cancel_and_wait, spawn
from atoll.store.etcd import EtcdStore
from atoll.sync import HeldState, Item, NodeInfo, SyncClient, schema_validator

from ._fanout_plan import (
    FederationSpec,
    cluster_item,
    cluster_name,
    expected_imports,
    export_items,
    healthy_targets,
)
from ._procs import die_with_parent

__all__ = [
    "AgentChange",
    "Arm",
    "Armed",
    "Collect",
    "Exit",
    "Failed",
    "Fired",
    "Flip",
    "Progress",
    "Put",
    "StartAgents",
    "StartWatchers",
    "Started",
    "StopAll",
    "Stopped",
    "TrialDone",
    "ValueChange",
    "worker_main",
]

IMPORT = "ServiceImport"

# -- orchestrator -> worker ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartAgents:
    target: str
    spec: FederationSpec
    agents: tuple[int, ...]
    #: "none" (accept every body) or "schema" (decode with the kind's schema, as agents do)
    validate: str


@dataclass(frozen=True, slots=True)
class StartWatchers:
    endpoint: tuple[str, int]
    key: str
    count: int
    start_revision: int
    #: this worker also owns the writer that makes the change
    writer: bool


@dataclass(frozen=True, slots=True)
class AgentChange:
    """Import ``name`` will (``present``) or will not list the quoted address ``marker``."""

    name: str
    marker: bytes
    present: bool


@dataclass(frozen=True, slots=True)
class ValueChange:
    value: bytes


@dataclass(frozen=True, slots=True)
class Arm:
    trial: int
    change: AgentChange | ValueChange


@dataclass(frozen=True, slots=True)
class Flip:
    trial: int
    agent: int
    export: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class Put:
    trial: int
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Collect:
    trial: int


@dataclass(frozen=True, slots=True)
class StopAll:
    pass


@dataclass(frozen=True, slots=True)
class Exit:
    pass


# -- worker -> orchestrator ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    worker: int
    subscribers: int


@dataclass(frozen=True, slots=True)
class Progress:
    worker: int
    connected: int
    converged: int
    total: int


@dataclass(frozen=True, slots=True)
class Armed:
    worker: int
    trial: int


@dataclass(frozen=True, slots=True)
class Fired:
    worker: int
    trial: int
    t0: float


@dataclass(frozen=True, slots=True)
class TrialDone:
    worker: int
    trial: int
    #: monotonic arrival time per subscriber that got the change
    times: tuple[float, ...]
    missing: int


@dataclass(frozen=True, slots=True)
class Stopped:
    worker: int


@dataclass(frozen=True, slots=True)
class Failed:
    worker: int
    message: str


ToWorker = StartAgents | StartWatchers | Arm | Flip | Put | Collect | StopAll | Exit
FromWorker = Started | Progress | Armed | Fired | TrialDone | Stopped | Failed


@dataclass(slots=True)
class _Trial:
    id: int
    change: AgentChange | ValueChange
    expected: int
    times: dict[int, float] = field(default_factory=dict)
    done: bool = False


def _accept_all(type_: str, item: Item) -> None:
    return None


class _Worker:
    def __init__(self, index: int, conn: Connection) -> None:
        self.index = index
        self.conn = conn
        self.tasks: list[asyncio.Task[Any]] = []
        self.clients: dict[int, SyncClient] = {}
        self.stores: list[EtcdStore] = []
        self.writer: EtcdStore | None = None
        self.spec: FederationSpec | None = None
        self.unhealthy: dict[int, set[tuple[int, int]]] = {}
        self.expected: dict[str, frozenset[str]] = {}
        self.targets_cache: dict[tuple[str, str], frozenset[str]] = {}
        self.converged: set[int] = set()
        self.trial: _Trial | None = None
        self.finished = asyncio.Event()

    # -- plumbing ------------------------------------------------------------------
    def send(self, msg: FromWorker) -> None:
        self.conn.send(msg)

    def fail(self, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with contextlib.suppress(OSError):
            self.send(Failed(self.index, detail))
        self.finished.set()

    def read_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reader thread: blocking receives, dispatched on the loop (the pipe stays
        blocking, so the loop's own sends never see EAGAIN)."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):  # the orchestrator is gone
                loop.call_soon_threadsafe(self.finished.set)
                return
            loop.call_soon_threadsafe(self.dispatch_safely, msg)

    def dispatch_safely(self, msg: ToWorker) -> None:
        try:
            self.dispatch(msg)
        except Exception as exc:
            self.fail(exc)

    def run_async(self, coro: Any, name: str) -> None:
        task: asyncio.Task[Any] = spawn(coro, name=name)

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                assert exc is not None
                self.fail(exc)

        task.add_done_callback(done)

    def dispatch(self, msg: ToWorker) -> None:
        if isinstance(msg, StartAgents):
            self.start_agents(msg)
        elif isinstance(msg, StartWatchers):
            self.run_async(self.start_watchers(msg), "start-watchers")
        elif isinstance(msg, Arm):
            n = len(self.clients) if isinstance(msg.change, AgentChange) else len(self.stores)
            self.trial = _Trial(id=msg.trial, change=msg.change, expected=n)
            self.send(Armed(self.index, msg.trial))
            self.maybe_done()
        elif isinstance(msg, Flip):
            self.flip(msg)
        elif isinstance(msg, Put):
            self.run_async(self.put(msg), "put")
        elif isinstance(msg, Collect):
            trial = self.trial
            if trial is not None and trial.id == msg.trial and not trial.done:
                self.finish_trial(trial)
        elif isinstance(msg, StopAll):
            self.run_async(self.stop_all(), "stop")
        elif isinstance(msg, Exit):
            self.finished.set()

    # -- agents ----------------------------------------------------------------------
    def start_agents(self, msg: StartAgents) -> None:
        self.spec = spec = msg.spec
        self.expected = expected_imports(spec)
        validate = schema_validator() if msg.validate == "schema" else _accept_all
        for agent in msg.agents:
            cluster = cluster_name(agent)
            client = SyncClient(
                target=msg.target,
                node=NodeInfo(
                    id=f"agent/{cluster}", role="agent", cluster=cluster, software_version="bench"
                ),
                types=[IMPORT],
                validate=validate,
                heartbeat=True,
                on_acked=self.acked_hook(agent),
            )
            client.set_report("Cluster", [cluster_item(spec, agent)])
            self.unhealthy[agent] = set()
            client.set_report("ServiceExport", export_items(spec, agent, set()))
            self.clients[agent] = client
            self.tasks.append(spawn(client.run(), name=f"agent-{cluster}"))
        self.tasks.append(spawn(self.report_progress(), name="progress"))
        self.send(Started(self.index, len(self.clients)))

    def acked_hook(self, agent: int) -> Callable[[str, HeldState], None]:
        def on_acked(type_: str, held: HeldState) -> None:
            trial = self.trial
            if trial is not None:
                change = trial.change
                if trial.done or agent in trial.times or not isinstance(change, AgentChange):
                    return
                item = held.items(IMPORT).get(change.name)
                if item is not None and (change.marker in item.body) == change.present:
                    trial.times[agent] = time.monotonic()
                    self.maybe_done()
            elif agent not in self.converged and self.is_converged(held):
                self.converged.add(agent)

        return on_acked

    def is_converged(self, held: HeldState) -> bool:
        items = held.items(IMPORT)
        if len(items) != len(self.expected):
            return False
        for name, want in self.expected.items():
            item = items.get(name)
            if item is None:
                return False
            key = (name, item.version)
            got = self.targets_cache.get(key)
            if got is None:
                got = self.targets_cache[key] = healthy_targets(item.body)
            if got != want:
                return False
        return True

    async def report_progress(self) -> None:
        """Progress every 0.5 s until every agent of this worker has converged."""
        while True:
            connected = sum(1 for c in self.clients.values() if c.connected)
            self.send(Progress(self.index, connected, len(self.converged), len(self.clients)))
            if len(self.converged) == len(self.clients):
                return
            await asyncio.sleep(0.5)

    def flip(self, msg: Flip) -> None:
        spec = self.spec
        assert spec is not None
        unhealthy = self.unhealthy[msg.agent]
        if msg.healthy:
            unhealthy.discard((msg.export, 0))
        else:
            unhealthy.add((msg.export, 0))
        items = export_items(spec, msg.agent, unhealthy)
        t0 = time.monotonic()
        self.clients[msg.agent].set_report("ServiceExport", items)
        self.send(Fired(self.index, msg.trial, t0))

    # -- etcd watchers ---------------------------------------------------------------
    async def start_watchers(self, msg: StartWatchers) -> None:
        for i in range(msg.count):
            store = EtcdStore([msg.endpoint], timeout=30.0)
            self.stores.append(store)
            self.tasks.append(spawn(self.watch(i, store, msg), name=f"watch-{i}"))
        if msg.writer:
            self.writer = EtcdStore([msg.endpoint], timeout=30.0)
        self.send(Started(self.index, len(self.stores)))

    async def watch(self, index: int, store: EtcdStore, msg: StartWatchers) -> None:
        async for batch in store.watch(msg.key, start_revision=msg.start_revision):
            now = time.monotonic()
            trial = self.trial
            if trial is None or trial.done or index in trial.times:
                continue
            change = trial.change
            if isinstance(change, ValueChange) and any(
                ev.entry.value == change.value for ev in batch.events
            ):
                trial.times[index] = now
                self.maybe_done()

    async def put(self, msg: Put) -> None:
        assert self.writer is not None
        t0 = time.monotonic()
        await self.writer.put(msg.key, msg.value)
        self.send(Fired(self.index, msg.trial, t0))

    # -- trials ----------------------------------------------------------------------
    def maybe_done(self) -> None:
        trial = self.trial
        if trial is not None and not trial.done and len(trial.times) >= trial.expected:
            self.finish_trial(trial)

    def finish_trial(self, trial: _Trial) -> None:
        trial.done = True
        self.send(
            TrialDone(
                self.index,
                trial.id,
                tuple(trial.times.values()),
                missing=trial.expected - len(trial.times),
            )
        )

    # -- shutdown --------------------------------------------------------------------
    async def stop_all(self) -> None:
        self.trial = None
        tasks, self.tasks = self.tasks, []
        await cancel_and_wait(*tasks)
        stores = [*self.stores, *([self.writer] if self.writer else [])]
        self.stores, self.writer = [], None
        for store in stores:
            with contextlib.suppress(Exception):
                await store.close()
        self.clients.clear()
        self.converged.clear()
        self.targets_cache.clear()
        gc.collect()
        self.send(Stopped(self.index))

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = threading.Thread(
            target=self.read_forever, args=(loop,), name="orchestrator-pipe", daemon=True
        )
        reader.start()
        try:
            await self.finished.wait()
        finally:
            await cancel_and_wait(*self.tasks)
            for store in [*self.stores, *([self.writer] if self.writer else [])]:
                with contextlib.suppress(Exception):
                    await store.close()


def _run_loop(coro_factory: Callable[[], Any], loop_kind: str) -> None:
    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(coro_factory())
    else:
        asyncio.run(coro_factory())


def worker_main(index: int, conn: Connection, loop_kind: str) -> None:
    """Entry point of one worker process (multiprocessing target)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator handles Ctrl-C
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    worker = _Worker(index, conn)
    try:
        _run_loop(worker.main, loop_kind)
    except BaseException as exc:  # report, then die: the orchestrator prints it
        worker.fail(exc)
        raise
