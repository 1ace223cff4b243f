"""Driving the fan-out benchmark's worker processes: trials, deadlines, figures.

The orchestrator (:mod:`tests.bench.bench_sync`) owns a :class:`Workers` set
(spawned processes running :func:`~tests.bench._fanout_worker.worker_main`)
and talks to it only through the frozen messages of
:mod:`tests.bench._fanout_worker`. A trial (:func:`one_trial`) is: arm every
worker with what the change will look like, wait until all are armed, have
one worker make the change (it answers with t0), then collect every
subscriber's arrival time. Every wait is bounded by the run's
:class:`Deadline`, so a stuck run ends with a one-line error instead of
hanging.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TypeVar

from ._fanout_worker import (
    AgentChange,
    Arm,
    Armed,
    Collect,
    Exit,
    Failed,
    Fired,
    FromWorker,
    ToWorker,
    TrialDone,
    ValueChange,
    worker_main,
)
from ._procs import BenchError, ProcUsage, proc_usage

__all__ = [
    "Deadline",
    "SideResult",
    "Workers",
    "one_trial",
    "percentile",
    "run_trials",
]

M = TypeVar("M", bound=FromWorker)


# -- time budget ---------------------------------------------------------------------------


@dataclass(slots=True)
class Deadline:
    limit: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self, doing: str) -> float:
        left = self.started + self.limit - time.monotonic()
        if left <= 0:
            raise BenchError(f"--duration-limit {self.limit:.0f} s exceeded while {doing}")
        return left

    def elapsed(self) -> float:
        return time.monotonic() - self.started


# -- workers ---------------------------------------------------------------------------------


class Workers:
    """The worker processes and their pipes; every wait is bounded by the deadline."""

    def __init__(self, count: int, loop_kind: str, deadline: Deadline) -> None:
        self.deadline = deadline
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(i, child, loop_kind), name=f"bench-worker-{i}"
            )
            proc.daemon = True
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.conns)

    def send(self, index: int, msg: ToWorker) -> None:
        try:
            self.conns[index].send(msg)
        except OSError as exc:
            raise BenchError(
                f"worker {index} is gone ({exc}); exit code {self.procs[index].exitcode}"
            ) from exc

    def broadcast(self, msg: ToWorker) -> None:
        for i in range(len(self.conns)):
            self.send(i, msg)

    def receive(self, doing: str, timeout: float | None = None) -> FromWorker | None:
        """The next message from any worker, or None after ``timeout`` seconds."""
        limit = self.deadline.remaining(doing)
        ready = wait(self.conns, timeout=min(limit, timeout) if timeout is not None else limit)
        if not ready:
            self.deadline.remaining(doing)
            return None
        conn = ready[0]
        assert isinstance(conn, Connection)
        try:
            msg: FromWorker = conn.recv()
        except (EOFError, OSError) as exc:
            i = self.conns.index(conn)
            raise BenchError(
                f"worker {i} died while {doing} (exit code {self.procs[i].exitcode})"
            ) from exc
        if isinstance(msg, Failed):
            raise BenchError(f"worker {msg.worker} failed while {doing}: {msg.message}")
        return msg

    def gather(
        self,
        kind: type[M],
        count: int,
        doing: str,
        *,
        timeout: float | None = None,
        also: Callable[[FromWorker], None] | None = None,
    ) -> list[M]:
        """Wait for ``count`` messages of ``kind``; others go to ``also`` (or are dropped)."""
        got: list[M] = []
        end = None if timeout is None else time.monotonic() + timeout
        while len(got) < count:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            msg = self.receive(doing, left)
            if isinstance(msg, kind):
                got.append(msg)
            elif msg is not None and also is not None:
                also(msg)
        return got

    def usage(self) -> float:
        """CPU seconds used by all workers so far."""
        total = 0.0
        for p in self.procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(BenchError):
                    total += proc_usage(p.pid).cpu_seconds
        return total

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(Exit())
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for conn in self.conns:
            conn.close()


# -- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); with 20 trials p99 is the slowest trial."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class SideResult:
    """What one side (Atoll or etcd) measured."""

    all_acked: list[float] = field(default_factory=list)  # seconds, one per trial
    per_agent: list[float] = field(default_factory=list)  # seconds, every subscriber x trial
    server: ProcUsage | None = None
    trial_cpu: float = 0.0  # server CPU seconds during the counted trials
    worker_cpu: float = 0.0  # CPU seconds of the worker processes during the counted trials
    trial_wall: float = 0.0
    idle_cpu: float = math.nan  # fraction of a core with all subscribers connected and idle
    notes: dict[str, str] = field(default_factory=dict)


def one_trial(
    workers: Workers,
    trial: int,
    change: AgentChange | ValueChange,
    owner: int,
    fire: ToWorker,
    *,
    timeout: float,
    doing: str,
) -> list[float]:
    """Arm every worker, make the change, return each subscriber's latency (s)."""
    workers.broadcast(Arm(trial, change))
    workers.gather(Armed, len(workers), doing)
    workers.send(owner, fire)
    fired: list[Fired] = []

    def keep_fired(msg: FromWorker) -> None:
        if isinstance(msg, Fired):
            fired.append(msg)

    done = workers.gather(TrialDone, len(workers), doing, timeout=timeout, also=keep_fired)
    if len(done) < len(workers):
        workers.broadcast(Collect(trial))
        done += workers.gather(
            TrialDone, len(workers) - len(done), doing, timeout=10, also=keep_fired
        )
    while not fired:
        msg = workers.receive(doing, 10)
        if msg is None:
            raise BenchError(f"{doing}: the change was never made (no answer from worker {owner})")
        keep_fired(msg)
    missing = sum(d.missing for d in done)
    if missing or len(done) < len(workers):
        raise BenchError(
            f"{doing}: {missing} subscriber(s) did not see the change within {timeout:.0f} s"
        )
    t0 = fired[0].t0
    return [t - t0 for d in done for t in d.times]


def run_trials(
    workers: Workers,
    result: SideResult,
    *,
    count: int,
    warmup: int,
    timeout: float,
    arm: Callable[[int], tuple[AgentChange | ValueChange, int, ToWorker]],
    server_cpu: Callable[[], float],
    label: str,
) -> None:
    """Warm-up plus ``count`` counted trials; ``arm(trial)`` -> (change, owner worker, fire msg)."""
    cpu0 = wall0 = workers0 = 0.0
    for trial in range(warmup + count):
        if trial == warmup:
            cpu0, wall0, workers0 = server_cpu(), time.monotonic(), workers.usage()
        change, owner, fire = arm(trial)
        doing = (
            f"{label} trial {trial - warmup + 1}/{count}" if trial >= warmup else f"{label} warm-up"
        )
        latencies = one_trial(workers, trial, change, owner, fire, timeout=timeout, doing=doing)
        if trial >= warmup:
            result.all_acked.append(max(latencies))
            result.per_agent.extend(latencies)
        time.sleep(0.05)  # let the server's follow-up work (status writes) settle
    result.trial_cpu = server_cpu() - cpu0
    result.trial_wall = time.monotonic() - wall0
    result.worker_cpu = workers.usage() - workers0
