"""Time-to-failover: drain drills and chaos kills in a real lab, against etcd's floors.

Run: ``.venv/bin/python -m tests.bench.bench_failover [--drills 20] [--chaos 20]``
(``--help`` for everything; ``--drills 2 --chaos 2`` is a quick run of ~45 s).

What runs. The benchmark starts its own lab (``atoll up --loopback 127.81
--lease-ttl 5 --fresh`` in a temp state dir: control plane, three clusters
each with registry, agent and DNS server, a Celery worker on the embedded
broker) and drives it through the control plane's REST API, one drill at a
time, never overlapping:

* ``--drills`` drain drills (``POST /v1/drills`` kind ``failover``): the
  target cluster is drained, every DNS server must stop answering with it;
* ``--chaos`` chaos kills (kind ``chaos``): the lab SIGKILLs the target's
  agent and DNS server; the surviving DNS servers must stop answering with it
  once its liveness lease runs out; then the lab restarts them.

Targets rotate over the clusters; each drill holds 0-1 s (seeded). Each
drill's worker records, per DNS server, the seconds from the end of the
disruption until that server stopped answering with the cluster
(``status.measurements``), against the bound the control plane states
(``GET /v1/timings``: ``drain_withdrawal`` / ``death_withdrawal``). The
benchmark reports those per server and per drill (the slowest server: "every
server failed over"), and two figures of its own:

* a DNS observer polling every surviving server every ``--observe-interval``
  (20 ms) — the drill's runner writes its status before it first looks, so
  its drain figures are an upper bound set partly by the runner;
* for chaos kills, the seconds the cluster's lease still had at the kill
  (``lease_remaining`` read just after the kill), which turns "from the
  kill" into "from the last lease renewal" — the comparison etcd allows.

Peers, measured in the same run on a single-node etcd (see
:mod:`tests.bench._failover_etcd`): put -> watch event for drains, and an
abandoned lease of the same TTL for chaos kills (from the last keepalive and
from a kill placed uniformly within a heartbeat). Every Atoll figure is
printed as a ratio against its peer. k8gb and Route 53 cannot run here;
their published convergence times are printed as context only, labelled as
not measured.

Time. Lab start ~10 s, etcd peers ~(0.35 s x chaos + TTL + 3 s), a drain
drill ~2-3 s, a chaos drill ~(TTL + 3.5) s (20 + 20 with TTL 5: ~4 min); the
estimate is printed first and ``--budget-minutes`` stops starting new drills
when it would be exceeded.
Ctrl-C (or SIGTERM) stops the lab with SIGINT and etcd, and prints what was
measured so far. The lab's state directory (logs under ``lab/logs``) is
deleted unless ``--keep-state`` — or a drill failed, when it is kept for
investigation and its path printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atoll.api.views import TimingsView
from atoll.lab.manifest import Manifest
from atoll.model import Drill
from atoll.store import open_store
from atoll.testing.etcd import EtcdError, EtcdServer, etcd_binary

from ._failover_etcd import measure_lease_expiry, measure_put_watch
from ._failover_lab import DnsObserver, LabApi, LabProcess, demo_qnames
from ._failover_stats import (
    DrillOutcome,
    LeaseTrial,
    Observation,
    Report,
    Row,
    ServerTime,
    build_report,
    first_clean,
    format_ratio,
    format_seconds,
    lease_left,
    withdrawal_path,
)
from ._procs import BenchError, signals_as_interrupt

#: seconds a drill may take beyond its hold before the benchmark gives up on it
DRILL_TIMEOUT = 150.0
#: the observer keeps polling this long after the drill's own verification ended
OBSERVE_TAIL = 0.5
#: lease_remaining samples taken right after a chaos kill
LEASE_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class Config:
    drills: int
    chaos: int
    lease_ttl: int
    loopback: str
    etcd_host: str
    observe_interval: float
    seed: int
    budget_minutes: float
    keep_state: bool


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_failover",
        description="Time-to-failover of drain drills and chaos kills in a real Atoll lab, "
        "beside the stated bound and against etcd's floors measured in the same run.",
    )
    p.add_argument("--drills", type=int, default=20, help="drain drills (default 20)")
    p.add_argument("--chaos", type=int, default=20, help="chaos kills (default 20)")
    p.add_argument("--lease-ttl", type=int, default=5, help="lab lease TTL, s (default 5)")
    p.add_argument("--loopback", default="127.81", help="lab loopback range (default 127.81)")
    p.add_argument("--etcd-host", default="127.0.80.1", help="etcd peer address")
    p.add_argument(
        "--observe-interval",
        type=float,
        default=0.02,
        help="seconds between the benchmark's own DNS polls (0: no observer; default 0.02)",
    )
    p.add_argument("--seed", type=int, default=6, help="seed for holds and etcd kill points")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="start no drill that would end after this (default 30)",
    )
    p.add_argument("--keep-state", action="store_true", help="keep the lab's state dir and logs")
    a = p.parse_args(argv)
    if a.drills < 0 or a.chaos < 0 or a.drills + a.chaos == 0:
        p.error("--drills and --chaos must be >= 0 and not both 0")
    if not 2 <= a.lease_ttl <= 60:
        p.error("--lease-ttl must be 2..60")
    if a.observe_interval < 0:
        p.error("--observe-interval must be >= 0")
    return Config(
        drills=a.drills,
        chaos=a.chaos,
        lease_ttl=a.lease_ttl,
        loopback=a.loopback,
        etcd_host=a.etcd_host,
        observe_interval=a.observe_interval,
        seed=a.seed,
        budget_minutes=a.budget_minutes,
        keep_state=a.keep_state,
    )


# -- time -----------------------------------------------------------------------------


def drain_estimate() -> float:
    return 3.0


def chaos_estimate(ttl: float) -> float:
    return ttl + 4.5


def estimate_seconds(cfg: Config) -> float:
    etcd = 0.35 * max(cfg.chaos, 1) + cfg.lease_ttl + 3.0 + 0.05 * cfg.drills
    return (
        20.0
        + etcd
        + cfg.drills * (drain_estimate() + 0.5)
        + cfg.chaos * (chaos_estimate(cfg.lease_ttl) + 0.5)
    )


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s"


def say(msg: str) -> None:
    print(msg, flush=True)


# -- one drill ------------------------------------------------------------------------


def _step_times(d: Drill) -> tuple[float, float] | None:
    step = d.status.step("disrupt")
    if step.started_at is None or step.finished_at is None:
        return None
    return step.started_at.timestamp(), step.finished_at.timestamp()


def _verified(d: Drill) -> bool:
    return d.finished or d.status.step("verify_failover").state in ("done", "failed")


@contextlib.asynccontextmanager
async def _maybe_observing(
    observer: DnsObserver | None, skip: frozenset[str]
) -> AsyncIterator[list[Observation]]:
    if observer is None:
        yield []
        return
    async with observer.observing(skip=skip) as log:
        yield log


async def _wait_ready(api: LabApi, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await api.all_ready():
        if time.monotonic() > deadline:
            views = await api.clusters()
            state = ", ".join(
                f"{v.cluster.metadata.name}: alive={v.cluster.status.alive} "
                f"admin={v.cluster.spec.admin_state} lease={v.lease_remaining}"
                for v in views
            )
            raise BenchError(f"clusters not all alive and active after {timeout:.0f} s: {state}")
        await asyncio.sleep(0.25)


async def run_drill(
    api: LabApi,
    observer: DnsObserver | None,
    *,
    kind: str,
    index: int,
    cluster: str,
    hold: float,
) -> DrillOutcome:
    await _wait_ready(api, 60.0)
    started = time.monotonic()
    name = await api.create_drill(kind=kind, cluster=cluster, hold=hold)
    deadline = started + hold + DRILL_TIMEOUT
    expiries: list[float] = []
    sampling = kind == "chaos"
    skip = frozenset({cluster}) if kind == "chaos" else frozenset()
    async with _maybe_observing(observer, skip) as log:
        while True:
            d = await api.drill(name)
            if sampling and _step_times(d) is not None:
                # the kill is over: no renewal can come any more, so now + remaining
                # is the instant the lease expires (None: it expired already)
                t0 = time.time()
                remaining = await api.lease_remaining(cluster)
                t1 = time.time()
                if remaining is not None:
                    expiries.append((t0 + t1) / 2 + remaining)
                sampling = remaining is not None and len(expiries) < LEASE_SAMPLES
                continue
            if _verified(d):
                await asyncio.sleep(OBSERVE_TAIL)
                break
            if time.monotonic() > deadline:
                raise BenchError(f"drill {name} did not verify its failover in time")
            await asyncio.sleep(0.1)
    while not d.finished:
        if time.monotonic() > deadline:
            raise BenchError(f"drill {name} still {d.status.phase} after {DRILL_TIMEOUT:.0f} s")
        await asyncio.sleep(0.25)
        d = await api.drill(name)
    return outcome_of(
        d,
        kind=kind,
        index=index,
        hold=hold,
        log=log if observer is not None else None,
        expiries=expiries,
        wall_seconds=time.monotonic() - started,
    )


def outcome_of(
    d: Drill,
    *,
    kind: str,
    index: int,
    hold: float,
    log: Sequence[Observation] | None,
    expiries: Sequence[float],
    wall_seconds: float,
) -> DrillOutcome:
    recorded = tuple(
        ServerTime(m.server, m.seconds) for m in d.status.measurements if m.phase == "failover"
    )
    times = _step_times(d)
    observed: tuple[ServerTime, ...] = ()
    left = None
    if times is not None:
        began, ended = times
        if log is not None:
            leaving = frozenset(d.status.leaving_addresses)
            observed = tuple(
                first_clean(log, t.server, leaving, after=began, reference=ended) for t in recorded
            )
        left = lease_left(expiries, ended) if kind == "chaos" else None
    return DrillOutcome(
        kind=kind,
        index=index,
        cluster=d.spec.clusters[0],
        hold=hold,
        name=d.metadata.name,
        phase=d.status.phase,
        error=d.status.error,
        bound=d.status.bound_seconds,
        recorded=recorded,
        observed=observed,
        lease_left_at_kill=left,
        wall_seconds=wall_seconds,
    )


def describe(o: DrillOutcome, total: int, debounce: float) -> str:
    label = "drain" if o.kind == "failover" else "chaos"
    head = f"[{label} {o.index + 1}/{total}] {o.cluster} hold {o.hold:.1f}s: {o.phase}"
    if not o.measured:
        return f"{head}; nothing measured: {o.error[:200]}"
    every = o.every_server
    parts = [
        f"every server {format_seconds(every if every is not None else math.nan, o.bound)}"
        f" (bound {o.bound or 0:.2f}s)"
    ]
    if o.observed:
        seen = o.every_server_observed
        parts.append(f"observer {format_seconds(seen if seen is not None else math.nan, 0.0)}")
    if o.lease_left_at_kill is not None:
        parts.append(f"lease left at kill {o.lease_left_at_kill:.2f}s")
    path = withdrawal_path(o, debounce=debounce)
    if path is not None:
        parts.append(f"withdrawn by {path}")
    parts.append(f"{o.wall_seconds:.1f}s")
    tail = f"; ERROR: {o.error[:300]}" if o.error else ""
    return f"{head}; " + ", ".join(parts) + tail


# -- the run --------------------------------------------------------------------------


@dataclass(slots=True)
class Collected:
    """What has been measured so far (printed even after an interrupt)."""

    timings: TimingsView | None = None
    put_watch: list[float] = field(default_factory=list)
    leases: list[LeaseTrial] = field(default_factory=list)
    drains: list[DrillOutcome] = field(default_factory=list)
    chaos: list[DrillOutcome] = field(default_factory=list)
    skipped: int = 0


async def run_peers(cfg: Config, timings: TimingsView, got: Collected) -> None:
    if etcd_binary() is None:
        raise BenchError("the etcd binary is needed for the peer (apt-get install etcd-server)")
    say(f"[etcd] starting a single-node etcd on {cfg.etcd_host}")
    etcd = EtcdServer(host=cfg.etcd_host)
    try:
        etcd.start()
    except (EtcdError, OSError) as exc:
        raise BenchError(f"the etcd peer did not start: {exc}") from exc
    store = open_store(etcd.url)
    try:
        if cfg.drills:
            got.put_watch = await measure_put_watch(
                store, trials=cfg.drills, prefix="/bench/put-watch/"
            )
            say(f"[etcd] put -> watch: {len(got.put_watch)} trials done")
        if cfg.chaos:
            say(
                f"[etcd] {cfg.chaos} leases of {int(timings.lease_ttl)} s, kept alive every "
                f"{timings.heartbeat_interval:g} s, then abandoned (overlapped)"
            )
            got.leases = await measure_lease_expiry(
                store,
                trials=cfg.chaos,
                ttl=int(timings.lease_ttl),
                heartbeat=timings.heartbeat_interval,
                prefix="/bench/lease/",
                rng=random.Random(cfg.seed),
            )
            say(f"[etcd] lease expiry: {len(got.leases)} trials done")
    finally:
        await store.close()
        etcd.close()


async def run_all(cfg: Config, manifest: Manifest, got: Collected, started: float) -> None:
    api = LabApi(manifest.control_plane.api)
    try:
        got.timings = timings = await api.timings()
        say(
            f"stated bounds (GET /v1/timings): drain {timings.drain_withdrawal:.2f}s, "
            f"death {timings.death_withdrawal:.2f}s (lease {timings.lease_ttl:g}s + expiry sweep "
            f"{timings.expiry_sweep:g}s + debounce {timings.reconcile_debounce:g}s + push "
            f"{timings.push_allowance:g}s); heartbeat {timings.heartbeat_interval:g}s"
        )
        await run_peers(cfg, timings, got)
        observer = None
        if cfg.observe_interval > 0:
            servers = {}
            for c in manifest.clusters:
                if c.dns is not None:
                    host, _, port = c.dns.listen.rpartition(":")
                    servers[c.name] = (host, int(port))
            observer = DnsObserver(servers, demo_qnames(manifest), interval=cfg.observe_interval)
        names = [c.name for c in manifest.clusters]
        rng = random.Random(cfg.seed)
        budget = cfg.budget_minutes * 60
        plan: list[tuple[str, int, float]] = [
            ("failover", i, drain_estimate()) for i in range(cfg.drills)
        ]
        plan += [("chaos", i, chaos_estimate(timings.lease_ttl)) for i in range(cfg.chaos)]
        for kind, i, cost in plan:
            hold = round(rng.uniform(0.0, 1.0), 1)
            if time.monotonic() - started + cost + hold > budget:
                got.skipped += 1
                continue
            total = cfg.drills if kind == "failover" else cfg.chaos
            outcome = await run_drill(
                api, observer, kind=kind, index=i, cluster=names[i % len(names)], hold=hold
            )
            (got.drains if kind == "failover" else got.chaos).append(outcome)
            line = describe(outcome, total, timings.reconcile_debounce)
            say(f"{line}  [elapsed {_clock(time.monotonic() - started)}]")
        if got.skipped:
            say(f"budget of {cfg.budget_minutes:g} min reached: {got.skipped} drill(s) not run")
    finally:
        await api.close()


# -- the report -----------------------------------------------------------------------


def _row_lines(row: Row) -> list[str]:
    s = row.summary
    cells = [format_seconds(v, row.bound) for v in s.values()]
    bound = f"{row.bound:.3f}s" if row.bound is not None else "-"
    line = (
        f"  {row.label:<52} {s.n:>4} "
        + " ".join(f"{c:>9}" for c in cells)
        + f" {bound:>8}  {row.within_bound:<14} {row.within_goal}"
    )
    lines = [line]
    if row.ratio is not None:
        lines.append(
            f"    {'ratio vs ' + row.peer:<50} {'':>4} "
            + " ".join(f"{format_ratio(r):>9}" for r in row.ratio)
        )
    return lines


PUBLISHED = (
    "Context: published figures, NOT measured here (no cluster or cloud in this run):\n"
    "  k8gb converges in about 60 s with its defaults (issue 6; k8gb's Helm chart defaults\n"
    "    reconcileRequeueSeconds: 30 and a Gslb dnsTtlSeconds of 30 s);\n"
    "  Route 53 health checks take 30-90 s to fail an endpoint (issue 6; AWS Route 53\n"
    "    Developer Guide: checkers every 10 or 30 s (default 30), failure threshold 3 by default)."
)


def render(cfg: Config, got: Collected, report: Report, elapsed: float) -> str:
    t = got.timings
    out: list[str] = []
    ttl = t.lease_ttl if t is not None else float(cfg.lease_ttl)
    out.append(
        f"Atoll time-to-failover, lab on {cfg.loopback}.x (3 clusters), lease TTL {ttl:g} s; "
        f"{len(got.drains)} drain drills, {len(got.chaos)} chaos kills; peer: etcd 3.4 single node"
    )
    header = (
        f"  {'':<52} {'n':>4} "
        + " ".join(f"{h:>9}" for h in ("p50", "p90", "p99", "max"))
        + f" {'bound':>8}  {'within bound':<14} within goal"
    )
    for section in report.sections:
        out += ["", section.title, header]
        for row in section.rows:
            out += _row_lines(row)
        for note in section.notes:
            out += textwrap.wrap(
                note, width=110, initial_indent="  note: ", subsequent_indent="        "
            )
    out += ["", PUBLISHED]
    chaos_p99 = _p99(report, "Atoll drill, every server (from kill)")
    if chaos_p99 is not None and math.isfinite(chaos_p99) and chaos_p99 > 0:
        out += textwrap.wrap(
            f"Atoll chaos kill p99 {chaos_p99:.2f} s (measured above) is {60 / chaos_p99:.0f}x "
            f"shorter than k8gb's ~60 s and {30 / chaos_p99:.0f}-{90 / chaos_p99:.0f}x shorter "
            "than Route 53's 30-90 s (published figures, not measured here; resolver caching of "
            "the answer TTL comes on top for every one of them).",
            width=110,
            initial_indent="  ",
            subsequent_indent="    ",
        )
    if chaos_p99 is not None:
        goal = ttl + 1.0
        verdict = "MET" if chaos_p99 <= goal else "NOT MET"
        out.append(
            f"\nGoal (issue 6): chaos withdrawal <= TTL + 1 s = {goal:.2f} s at p99 with a lease "
            f"<= 5 s: p99 {format_seconds(chaos_p99, goal)} -> {verdict}"
        )
    if report.failed:
        out.append(f"\n{len(report.failed)} drill(s) did not succeed:")
        for o in report.failed:
            out.append(f"  {o.name} ({o.kind} of {o.cluster}): {o.phase}: {o.error[:400]}")
    if got.skipped:
        out.append(f"\n{got.skipped} drill(s) skipped by --budget-minutes {cfg.budget_minutes:g}")
    out.append(f"\ntotal run time {_clock(elapsed)}")
    return "\n".join(out)


def _p99(report: Report, label: str) -> float | None:
    for section in report.sections:
        for row in section.rows:
            if row.label == label and row.summary.n:
                return row.summary.p99
    return None


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    say(
        f"bench_failover: {cfg.drills} drain drills + {cfg.chaos} chaos kills, lease TTL "
        f"{cfg.lease_ttl} s, lab on {cfg.loopback}.x, etcd peer on {cfg.etcd_host}; "
        f"estimated run time ~{_clock(estimate_seconds(cfg))} (budget {cfg.budget_minutes:g} min)"
    )
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="atoll-bench-failover-"))
    lab = LabProcess(state_dir=state, loopback=cfg.loopback, lease_ttl=cfg.lease_ttl)
    got = Collected()
    code = 0
    keep = cfg.keep_state
    try:
        code = _measure(cfg, lab, got, started)
        report = build_report(
            drains=got.drains,
            chaos=got.chaos,
            put_watch=got.put_watch,
            leases=got.leases,
            lease_ttl=got.timings.lease_ttl if got.timings else float(cfg.lease_ttl),
            debounce=got.timings.reconcile_debounce if got.timings else None,
            observer_interval=cfg.observe_interval,
        )
        keep = keep or code == 1 or bool(report.failed)
        say("")
        say(render(cfg, got, report, time.monotonic() - started))
        return code
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            say(f"lab state and logs kept in {state} (lab/logs/)")
        else:
            shutil.rmtree(state, ignore_errors=True)


def _measure(cfg: Config, lab: LabProcess, got: Collected, started: float) -> int:
    """Run everything; the lab is stopped (SIGINT) on every way out. Returns the exit code."""
    try:
        with signals_as_interrupt():
            try:
                say(f"[lab] starting: {' '.join(lab.argv[2:])}")
                manifest = lab.start(timeout=120.0)
                say(f"[lab] up in {time.monotonic() - started:.1f} s; logs in {lab.logs_dir}")
                asyncio.run(run_all(cfg, manifest, got, started))
                return 0
            except BenchError as exc:
                say(f"\nbench_failover: error: {exc}")
                return 1
            except KeyboardInterrupt:
                say("\nbench_failover: interrupted; stopping the lab, reporting what was measured")
                return 130
            finally:
                say("[lab] stopping (SIGINT)")
                rc = lab.stop()
                if rc not in (0, None):
                    say(f"[lab] atoll up exited with {rc}: {lab.tail()}")
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


if __name__ == "__main__":
    sys.exit(main())
