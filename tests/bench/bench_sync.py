"""Control-plane fan-out: how fast one change reaches N agents, against etcd watch fan-out.

Run: ``.venv/bin/python -m tests.bench.bench_sync [--agents 100] [--trials 20]``
(``--help`` for everything; ``--agents 1000`` is the large configuration,
``--profile out.txt`` samples the control plane with py-spy during the trials).

Atoll side. One control plane runs as a subprocess (``atoll serve``, SQLite
store in a temp dir, loopback), so its memory (VmRSS/VmHWM) and CPU time are
read from /proc. ``--agents`` simulated agents — each a real
:class:`~atoll.sync.SyncClient` with role ``agent`` and heartbeats on, spread
over ``--workers`` processes (one event loop each, uvloop if installed) —
declare their Cluster, report ``--exports`` ServiceExports each and subscribe
to ServiceImport. Service names come from a shared pool of ``--services``
(default 200, see :mod:`._fanout_plan`): at 100 agents a service has targets
in ~10 clusters, like an application deployed to a handful of regions; at
1,000 agents the same pool gives ~100 targets per service (a stress case: the
import set every agent holds is then ~4 MB). Once every agent holds the
complete converged import set and the plane is idle, each trial flips the
health of one endpoint of one export of one random agent (``set_report`` at
t0) and times, for every agent, when the delta carrying the new version of
that service's import has been applied *and* its ACK written (``on_acked``).
That path is the whole control plane: report -> store write -> reconciler
pass (50 ms debounce) -> import write -> store watch -> sync table -> N pushes
-> N ACKs. Per trial, "all acknowledged" is the slowest agent.

Peer. A single-node etcd (:class:`atoll.testing.etcd.EtcdServer`) with N
watchers (one :class:`~atoll.store.etcd.EtcdStore` client and watch stream
each, over the same worker processes) on one key; each trial puts the key and
times the event's arrival at every watcher. This is the floor for "one change,
N subscribers" on this machine: etcd fans out a value it was handed, Atoll
also stores the report, derives the import and stores it, so the ratio says
what derivation and the sync protocol cost on top of raw fan-out.

Figures: latency of the slowest and of every subscriber (p50/p99, nearest
rank; with 20 trials p99 is the slowest trial), server RSS now and peak, server
CPU per trial and while idle (Atoll's idle load is its agents' heartbeats),
and the CPU the simulation itself used. Atoll-only notes: convergence time,
event-loop stalls (a thread polls ``/healthz``, answered on the plane's loop),
reconcile passes per trial, and counts of the plane's overload signs in its
log (liveness leases that expired, leadership lost) — both should be 0.

Both sides run one warm-up trial that is not counted. Simulated agents accept
every body by default (``--validate none``): real agents validate on their own
CPU, here 1,000 of them would share two cores with the server and the figure
would measure the simulation; ``--validate schema`` includes it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._fanout_drive import Deadline, SideResult, Workers, percentile, run_trials
from ._fanout_plan import (
    FederationSpec,
    address_marker,
    endpoint_address,
    import_name,
    services_of,
)
from ._fanout_worker import (
    AgentChange,
    Flip,
    FromWorker,
    Progress,
    Put,
    StartAgents,
    Started,
    StartWatchers,
    StopAll,
    Stopped,
    ToWorker,
    ValueChange,
)
from ._plane_watch import (
    Progressor,
    StallProbe,
    idle_cpu,
    metric_sums,
    overload_signs,
    profiling,
    wait_quiet,
)
from ._procs import (
    BenchError,
    ServerProcess,
    free_port,
    http_get,
    proc_usage,
    signals_as_interrupt,
)

REPO = Path(__file__).resolve().parents[2]
ETCD_KEY = "/bench/fanout"


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """The parsed command line (see ``--help``)."""

    agents: int
    exports: int
    services: int
    endpoints: int
    regions: int
    workers: int
    trials: int
    warmup: int
    trial_timeout: float
    settle_timeout: float
    seed: int
    validate: str
    loop: str
    sqlite_synchronous: str
    lease_ttl: int
    plane_log_level: str
    host: str
    etcd_host: str
    skip_etcd: bool
    duration_limit: float | None
    profile: Path | None
    keep: bool

    @property
    def spec(self) -> FederationSpec:
        return FederationSpec(
            agents=self.agents,
            exports=self.exports,
            services=self.services,
            endpoints=self.endpoints,
            regions=self.regions,
            seed=self.seed,
        )


def estimate_seconds(args: BenchConfig) -> float:
    """Rough wall time of a run (measured on 2 shared cores; scales with N and T)."""
    n, t = args.agents, args.trials + args.warmup
    atoll = 5 + n * 0.07 + t * (0.1 + n * 0.002)
    etcd = 3 + n * 0.005 + t * (0.05 + n * 0.0002)
    return atoll + (0 if args.skip_etcd else etcd)


# -- Atoll side --------------------------------------------------------------------------------


def run_atoll(
    args: BenchConfig, spec: FederationSpec, workers: Workers, tmp: Path, deadline: Deadline
) -> SideResult:
    result = SideResult()
    host = args.host
    api_port, sync_port = free_port(host), free_port(host)
    db = tmp / "plane" / "atoll.db"
    db.parent.mkdir(parents=True)
    store = f"sqlite:///{db}"
    if args.sqlite_synchronous != "FULL":
        store += f"?synchronous={args.sqlite_synchronous}"
    argv = [
        sys.executable,
        "-m",
        "atoll",
        "serve",
        "--store",
        store,
        "--api",
        f"{host}:{api_port}",
        "--sync",
        f"{host}:{sync_port}",
        "--insecure",
        "--server-id",
        "bench-plane",
        "--lease-ttl",
        str(args.lease_ttl),
        "--log-level",
        args.plane_log_level,
    ]
    plane = ServerProcess("control plane", argv, log_path=tmp / "plane.log", cwd=REPO).start()
    with contextlib.ExitStack() as stack:
        stack.callback(plane.stop)
        api = f"http://{host}:{api_port}"
        plane.wait_until(lambda: http_get(f"{api}/readyz")[0] == 200, "/readyz = 200", 60)
        probe = stack.enter_context(StallProbe(f"{api}/healthz"))
        progress = Progressor()
        started = time.monotonic()
        cpu_start = plane.usage().cpu_seconds
        k = len(workers)
        for w in range(k):
            mine = tuple(range(w, spec.agents, k))
            workers.send(w, StartAgents(f"{host}:{sync_port}", spec, mine, args.validate))
        workers.gather(Started, k, "starting agents")
        latest: dict[int, Progress] = {}

        def note(msg: FromWorker) -> None:
            if isinstance(msg, Progress):
                latest[msg.worker] = msg

        while sum(p.converged for p in latest.values()) < spec.agents:
            msg = workers.receive("waiting for every agent to hold the converged import set", 1.0)
            if msg is not None:
                note(msg)
            plane.check_alive("agents were converging")
            connected = sum(p.connected for p in latest.values())
            converged = sum(p.converged for p in latest.values())
            progress.show(
                f"atoll: {connected}/{spec.agents} agents connected, {converged} converged "
                f"({time.monotonic() - started:.0f} s, control plane RSS "
                f"{plane.usage().rss / 2**20:.0f} MB)"
            )
        result.notes["event-loop stalls while converging (/healthz)"] = probe.summary()
        progress.show(f"atoll: all {spec.agents} agents converged", force=True)
        progress.end()
        result.notes["initial convergence"] = f"{time.monotonic() - started:.1f} s"
        settled = wait_quiet(f"{api}/metrics", db, plane, deadline, timeout=args.settle_timeout)
        result.notes["settling after convergence"] = f"{settled:.1f} s"
        result.idle_cpu = idle_cpu(lambda: plane.usage().cpu_seconds)
        conv_cpu = plane.usage().cpu_seconds - cpu_start
        result.notes["control-plane CPU, convergence"] = f"{conv_cpu:.1f} s"
        before = metric_sums(f"{api}/metrics")

        rng = random.Random(args.seed)
        unhealthy: set[tuple[int, int]] = set()

        def arm(trial: int) -> tuple[AgentChange, int, ToWorker]:
            agent, export = rng.randrange(spec.agents), rng.randrange(spec.exports)
            healthy = (agent, export) in unhealthy
            (unhealthy.discard if healthy else unhealthy.add)((agent, export))
            address = endpoint_address(agent, export, 0, endpoints=spec.endpoints)
            change = AgentChange(
                name=import_name(services_of(spec, agent)[export]),
                marker=address_marker(address),
                present=healthy,
            )
            return change, agent % k, Flip(trial, agent, export, healthy)

        def cpu() -> float:
            plane.check_alive("running trials")
            return plane.usage().cpu_seconds

        trials_started = time.monotonic()
        with profiling(args.profile, plane.pid):
            run_trials(
                workers,
                result,
                count=args.trials,
                warmup=args.warmup,
                timeout=args.trial_timeout,
                arm=arm,
                server_cpu=cpu,
                label="atoll",
            )
        result.notes["event-loop stalls during trials (/healthz)"] = probe.summary(
            since=trials_started
        )
        after = metric_sums(f"{api}/metrics")
        passes = after.get("atoll_reconcile_seconds_count", 0) - before.get(
            "atoll_reconcile_seconds_count", 0
        )
        pass_s = after.get("atoll_reconcile_seconds_sum", 0) - before.get(
            "atoll_reconcile_seconds_sum", 0
        )
        pushes = after.get("atoll_sync_pushes_total", 0) - before.get("atoll_sync_pushes_total", 0)
        n_trials = args.trials + args.warmup
        if passes:
            result.notes["reconcile passes / trial, mean pass"] = (
                f"{passes / n_trials:.1f}, {pass_s / passes * 1000:.1f} ms"
            )
        result.notes["pushes / trial"] = f"{pushes / n_trials:.0f}"
        result.server = plane.usage()
        workers.broadcast(StopAll())
        workers.gather(Stopped, k, "stopping agents", timeout=60)
        result.notes.update(overload_signs(plane.log_path))
    return result


# -- etcd side -----------------------------------------------------------------------------------


def run_etcd(
    args: BenchConfig, spec: FederationSpec, workers: Workers, tmp: Path, deadline: Deadline
) -> SideResult:
    from atoll.testing.etcd import EtcdServer, etcd_binary

    if etcd_binary() is None:
        raise BenchError("etcd binary not found (apt-get install etcd-server), or pass --skip-etcd")
    result = SideResult()
    k = len(workers)
    with EtcdServer(host=args.etcd_host, base_dir=tmp / "etcd") as etcd:
        member = etcd.members[0]
        assert member.process is not None
        pid = member.process.pid
        start_revision = member.revision() + 1
        for w in range(k):
            count = len(range(w, spec.agents, k))
            workers.send(
                w, StartWatchers(etcd.endpoint, ETCD_KEY, count, start_revision, writer=w == 0)
            )
        workers.gather(Started, k, "starting etcd watchers")

        def arm(trial: int) -> tuple[ValueChange, int, ToWorker]:
            value = f"trial-{trial}".encode()
            return ValueChange(value), 0, Put(trial, ETCD_KEY, value)

        def cpu() -> float:
            if not member.running:
                raise BenchError(f"etcd exited; log tail: {member.log_tail(5)}")
            return proc_usage(pid).cpu_seconds

        run_trials(
            workers,
            result,
            count=args.trials,
            warmup=args.warmup,
            timeout=args.trial_timeout,
            arm=arm,
            server_cpu=cpu,
            label="etcd",
        )
        result.idle_cpu = idle_cpu(cpu)
        result.server = proc_usage(pid)
        workers.broadcast(StopAll())
        workers.gather(Stopped, k, "stopping etcd watchers", timeout=60)
    return result


# -- report --------------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.1f}"


def _mb(v: float) -> str:
    return "-" if math.isnan(v) else f"{v / 2**20:.1f}"


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 100:.1f}"


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def render(args: BenchConfig, atoll: SideResult, etcd: SideResult | None) -> str:
    n = args.agents
    rows: list[tuple[str, float, float, Callable[[float], str]]] = []

    def side(r: SideResult | None, pick: Callable[[SideResult], float]) -> float:
        return math.nan if r is None else pick(r)

    def add(label: str, pick: Callable[[SideResult], float], fmt: Callable[[float], str]) -> None:
        rows.append((label, pick(atoll), side(etcd, pick), fmt))

    add(f"all {n} acknowledged p50 (ms)", lambda r: percentile(r.all_acked, 50), _ms)
    add(f"all {n} acknowledged p99 (ms)", lambda r: percentile(r.all_acked, 99), _ms)
    add("per-subscriber latency p50 (ms)", lambda r: percentile(r.per_agent, 50), _ms)
    add("per-subscriber latency p99 (ms)", lambda r: percentile(r.per_agent, 99), _ms)
    add("server RSS at end (MB)", lambda r: float(r.server.rss) if r.server else math.nan, _mb)
    add("server RSS peak (MB)", lambda r: float(r.server.peak_rss) if r.server else math.nan, _mb)
    add(
        "server CPU per trial (ms)",
        lambda r: r.trial_cpu / args.trials if args.trials else math.nan,
        _ms,
    )
    add("server CPU while idle (% of a core)", lambda r: r.idle_cpu, _pct)
    add(
        "worker (simulation) CPU per trial (ms)",
        lambda r: r.worker_cpu / args.trials if args.trials else math.nan,
        _ms,
    )
    header = ("figure", "Atoll", "etcd", "Atoll/etcd")
    table = [header] + [(label, fmt(a), fmt(b), _ratio(a, b)) for label, a, b, fmt in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = [
        " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        for r in table
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append("")
    lines.append("Atoll only:")
    for key, value in atoll.notes.items():
        lines.append(f"  {key}: {value}")
    if atoll.server is not None:
        lines.append(f"  control-plane CPU total: {atoll.server.cpu_seconds:.1f} s")
    return "\n".join(lines)


def describe(args: BenchConfig, spec: FederationSpec) -> str:
    per_service = spec.agents * spec.exports / spec.services
    loop = args.loop
    return (
        f"config: agents={spec.agents} exports/agent={spec.exports} services pool={spec.services} "
        f"(~{per_service:.1f} clusters per service) endpoints/export={spec.endpoints} "
        f"regions={spec.regions} workers={args.workers} loop={loop} validate={args.validate} "
        f"trials={args.trials} (+{args.warmup} warm-up) seed={spec.seed}\n"
        f"        atoll serve: sqlite synchronous={args.sqlite_synchronous}, lease-ttl="
        f"{args.lease_ttl} s, heartbeat 1 s, log-level={args.plane_log_level}, host {args.host}; "
        f"etcd: single node 3.4 on {args.etcd_host}, one client + watch stream per watcher; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_sync",
        description="Control-plane fan-out (one export change -> N agents acknowledged), "
        "Atoll vs etcd watch fan-out, measured in the same run.",
    )
    p.add_argument("--agents", type=int, default=100, help="simulated agents = etcd watchers (N)")
    p.add_argument("--exports", type=int, default=20, help="ServiceExports per agent")
    p.add_argument(
        "--services",
        type=int,
        default=200,
        help="shared pool of service names; each service is exported by about "
        "agents*exports/services clusters (10 at the defaults)",
    )
    p.add_argument("--endpoints", type=int, default=2, help="endpoints per export")
    p.add_argument("--regions", type=int, default=10, help="regions the clusters are spread over")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="subscriber processes")
    p.add_argument("--trials", type=int, default=20, help="counted trials per side")
    p.add_argument("--warmup", type=int, default=1, help="uncounted warm-up trials per side")
    p.add_argument("--trial-timeout", type=float, default=30.0, help="seconds per trial")
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=300.0,
        help="max seconds to wait for the control plane to go idle after convergence",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--validate",
        choices=("none", "schema"),
        default="none",
        help="agents accept bodies as-is (none) or decode them with the schema",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop of the worker processes",
    )
    p.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL", "OFF"),
        default="FULL",
        help="durability of the control plane's SQLite store (FULL = the default)",
    )
    p.add_argument("--lease-ttl", type=int, default=5, help="cluster liveness lease, seconds")
    p.add_argument("--plane-log-level", default="info", help="log level of atoll serve")
    p.add_argument("--host", default="127.0.50.1", help="loopback address of the control plane")
    p.add_argument("--etcd-host", default="127.0.50.2", help="loopback address of etcd")
    p.add_argument("--skip-etcd", action="store_true", help="measure Atoll only")
    p.add_argument(
        "--duration-limit",
        type=float,
        default=None,
        help="abort after this many seconds (default: 3 x the estimate, at least 120)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="sample the control plane with py-spy during the trials (collapsed stacks)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, store) for inspection"
    )
    args = p.parse_args(argv)
    if args.workers < 1 or args.trials < 1 or args.warmup < 0:
        p.error("--workers and --trials must be >= 1, --warmup >= 0")
    if args.loop == "auto":
        args.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return BenchConfig(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = args.spec
    try:
        spec.check()
    except ValueError as exc:
        print(f"bench_sync: error: {exc}", file=sys.stderr)
        return 2
    estimate = estimate_seconds(args)
    limit = args.duration_limit or max(120.0, 3 * estimate)
    print(describe(args, spec))
    print(f"estimated run time ~{estimate:.0f} s (limit {limit:.0f} s)", flush=True)
    deadline = Deadline(limit)
    tmp = Path(tempfile.mkdtemp(prefix="atoll-bench-sync-"))
    try:
        with signals_as_interrupt(), contextlib.ExitStack() as stack:
            workers = Workers(args.workers, args.loop, deadline)
            stack.callback(workers.close)
            atoll = run_atoll(args, spec, workers, tmp, deadline)
            etcd = None if args.skip_etcd else run_etcd(args, spec, workers, tmp, deadline)
        print()
        print(render(args, atoll, etcd))
        print(f"\ntotal run time {deadline.elapsed():.0f} s")
        return 0
    except BenchError as exc:
        print(f"\nbench_sync: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench_sync: interrupted; every process was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"bench_sync: temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
