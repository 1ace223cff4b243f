"""The drill engine: plan, baseline, disrupt, verify, hold, restore, verify, report.

One :class:`DrillRunner` drives one :class:`~atoll.model.Drill` through its
steps (``STEP_ORDER``). Everything it learns is written into the drill's
status *before* it acts on it (the admin states to restore are saved before
anything is drained), so a runner that dies can be replaced by another that
skips the finished steps and continues — or by the control plane's janitor,
which rolls back what the status says was changed.

I/O is injected (:class:`DrillApi` for the control plane, :class:`Resolver`
for DNS, :class:`Disruptor` for how clusters leave and return, and the clock
and sleep), so the step logic runs against fakes in unit tests and against
the real lab in the end-to-end test.

Verification asks *every* DNS server (each cluster declares its DNS address
as ``spec.addresses["dns"]``) for every affected service, concurrently, until
no answer contains an address of a leaving cluster; the time from the end of
the disruption to that moment is the server's time-to-failover. A server that
misses the bound fails the drill, which then restores what it changed
(automatic rollback) and ends ``rolled_back``. Restore is verified against the
baseline answers recorded before the disruption.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

from atoll.aio import cancel_and_wait, spawn
from atoll.drill.plan import plan_failover
from atoll.errors import AtollError, ConflictError
from atoll.model import Cluster, Drill, DrillStatus, Measurement, ServiceImport
from atoll.model.cluster import AdminState
from atoll.model.drill import STEP_ORDER, StepName

__all__ = [
    "Disruptor",
    "DrillApi",
    "DrillRunner",
    "Resolver",
    "RouteProbe",
    "StepFailedError",
    "TakenOverError",
]

log = logging.getLogger("atoll.drill")

Path = Literal["dns", "gateway"]
HEARTBEAT_INTERVAL = 2.0
POLL_INTERVAL = 0.05
#: restore may need processes to restart and re-register: give it this long at least
RESTORE_FLOOR = 30.0


class StepFailedError(AtollError):
    """A step could not complete (the drill rolls back)."""


class TakenOverError(AtollError):
    """Another worker holds the drill now (this one was presumed dead); stop quietly."""


class DrillApi(Protocol):
    async def get_drill(self, name: str) -> Drill: ...

    async def put_status(self, drill: Drill, status: DrillStatus) -> Drill:
        """CAS on ``drill.metadata.revision``; raises ConflictError if it moved."""
        ...

    async def clusters(self) -> list[Cluster]: ...

    async def imports(self) -> list[ServiceImport]: ...

    async def bounds(self) -> tuple[float, float]:
        """(death_withdrawal, drain_withdrawal) seconds, as the control plane states them."""
        ...


class Resolver(Protocol):
    async def addresses(self, server: str, qname: str) -> frozenset[str] | None:
        """A/AAAA addresses ``server`` (host:port) answers for ``qname``; None on failure."""
        ...


class RouteProbe(Protocol):
    async def routes(self, admin_url: str) -> dict[str, frozenset[str]] | None:
        """Clusters a gateway's egress may pick, per service; None when unreachable."""
        ...


class Disruptor(Protocol):
    kind: str

    async def disrupt(self, clusters: Sequence[str]) -> None: ...

    async def restore(self, states: Mapping[str, AdminState]) -> None: ...

    def servers_down(self, clusters: Sequence[str]) -> set[str]:
        """DNS servers (by cluster) the disruption takes down with it."""
        ...


def _now() -> datetime:
    return datetime.now(UTC)


class DrillRunner:
    def __init__(
        self,
        api: DrillApi,
        resolver: Resolver,
        disruptor: Disruptor,
        *,
        worker_id: str,
        now: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        routes: RouteProbe | None = None,
    ) -> None:
        self.api = api
        self.resolver = resolver
        self.route_probe = routes
        self.disruptor = disruptor
        self.worker_id = worker_id
        self.now = now
        self.monotonic = monotonic
        self.sleep = sleep
        self.heartbeat_interval = heartbeat_interval
        # heartbeats run beside the steps in real time even when the steps run in
        # fake time (a fake clock shared by two loops would race itself)
        self.heartbeat_sleep = heartbeat_sleep
        self._drill: Drill | None = None
        self._lock = asyncio.Lock()

    # -- status persistence ------------------------------------------------------
    @property
    def drill(self) -> Drill:
        assert self._drill is not None
        return self._drill

    async def _save(self, change: Callable[[DrillStatus], DrillStatus]) -> DrillStatus:
        """Apply ``change`` to the latest status with CAS, re-reading after a lost race."""
        async with self._lock:
            for _ in range(10):
                drill = self.drill
                new = change(drill.status).model_copy(update={"heartbeat_at": self.now()})
                try:
                    self._drill = await self.api.put_status(drill, new)
                    return self._drill.status
                except ConflictError:
                    self._drill = await self.api.get_drill(drill.metadata.name)
                    if self._drill.status.worker not in (None, self.worker_id):
                        raise TakenOverError(
                            f"drill taken over by {self._drill.status.worker}"
                        ) from None
            raise StepFailedError("could not record drill status (too many conflicts)")

    async def _set_step(self, name: StepName, **fields: object) -> None:
        def change(st: DrillStatus) -> DrillStatus:
            steps = [s.model_copy(update=fields) if s.name == name else s for s in st.steps]
            return st.model_copy(update={"steps": steps})

        await self._save(change)

    async def _heartbeats(self) -> None:
        while True:
            await self.heartbeat_sleep(self.heartbeat_interval)
            await self._save(lambda st: st)

    # -- the run ------------------------------------------------------------------
    async def run(self, name: str) -> Drill:
        self._drill = await self.api.get_drill(name)
        if self.drill.finished:
            log.info("drill already finished", extra={"drill": name})
            return self.drill
        await self._save(
            lambda st: st.model_copy(
                update={"phase": "running", "worker": self.worker_id, "attempt": st.attempt + 1}
            )
        )
        log.info("drill running", extra={"drill": name, "attempt": self.drill.status.attempt})
        beats = spawn(self._heartbeats(), name=f"drill-heartbeat:{name}")
        try:
            await self._steps()
        except TakenOverError as exc:
            # never roll back a drill someone else is running
            log.warning("drill taken over; stopping", extra={"drill": name, "reason": str(exc)})
        except (StepFailedError, AtollError, OSError) as exc:
            log.warning("drill failed; rolling back", extra={"drill": name, "error": str(exc)})
            await self._rollback(str(exc))
        finally:
            await cancel_and_wait(beats)
        return self.drill

    async def _steps(self) -> None:
        handlers: dict[StepName, Callable[[], Awaitable[str]]] = {
            "plan": self._plan,
            "baseline": self._baseline,
            "disrupt": self._disrupt,
            "verify_failover": self._verify_failover,
            "hold": self._hold,
            "restore": self._restore,
            "verify_restore": self._verify_restore,
        }
        for name in STEP_ORDER:
            if self.drill.status.step(name).state == "done":
                continue
            if self.drill.status.cancel_requested and name in (
                "disrupt",
                "verify_failover",
                "hold",
            ):
                raise StepFailedError("cancelled by the operator")
            step = self.drill.status.step(name)
            # a step resumed after a lost worker keeps its original start time
            started = step.started_at if step.state == "running" and step.started_at else self.now()
            await self._set_step(name, state="running", started_at=started, detail="")
            try:
                detail = await handlers[name]()
            except StepFailedError as exc:
                await self._set_step(name, state="failed", finished_at=self.now(), detail=str(exc))
                raise
            await self._set_step(name, state="done", finished_at=self.now(), detail=detail)
        await self._save(
            lambda st: st.model_copy(update={"phase": "succeeded", "summary": self.summary()})
        )

    # -- steps -----------------------------------------------------------------------
    async def _plan(self) -> str:
        spec = self.drill.spec
        imports = await self.api.imports()
        rows = plan_failover(imports, set(spec.clusters))
        leaving = sorted(
            {
                a
                for imp in imports
                for t in imp.spec.targets
                if t.cluster in spec.clusters
                for a in t.addresses
            }
        )
        death, drain = await self.api.bounds()
        bound = spec.bound_seconds or (death if spec.kind == "chaos" else drain)
        await self._save(
            lambda st: st.model_copy(
                update={"plan": rows, "leaving_addresses": leaving, "bound_seconds": bound}
            )
        )
        warn = sum(len(r.warnings) for r in rows)
        return f"{len(rows)} service(s) move; {warn} warning(s); bound {bound:.2f}s"

    def _qnames(self) -> list[str]:
        zone = self.drill.spec.zone.rstrip(".") + "."
        return [
            f"{r.service.split('/')[1]}.{r.service.split('/')[0]}.{zone}"
            for r in self.drill.status.plan
        ]

    async def _servers(self) -> dict[str, str]:
        """cluster -> DNS address (host:port) of every cluster that declares one."""
        return {
            c.metadata.name: c.spec.addresses["dns"]
            for c in await self.api.clusters()
            if "dns" in c.spec.addresses
        }

    async def _gateways(self) -> dict[str, str]:
        """cluster -> gateway admin URL of every cluster that declares one."""
        if self.route_probe is None:
            return {}
        return {
            c.metadata.name: c.spec.addresses["gateway-admin"]
            for c in await self.api.clusters()
            if "gateway-admin" in c.spec.addresses
        }

    async def _answers(self, servers: Mapping[str, str]) -> dict[str, dict[str, list[str]]]:
        async def one(server: str, qname: str) -> tuple[str, str, list[str] | None]:
            got = await self.resolver.addresses(servers[server], qname)
            return server, qname, None if got is None else sorted(got)

        results = await asyncio.gather(*(one(s, q) for s in servers for q in self._qnames()))
        out: dict[str, dict[str, list[str]]] = {}
        for server, qname, addrs in results:
            if addrs is not None:
                out.setdefault(server, {})[qname] = addrs
        return out

    async def _baseline(self) -> str:
        servers = await self._servers()
        if not servers:
            raise StepFailedError("no cluster declares a DNS server (spec.addresses['dns'])")
        baseline = await self._answers(servers)
        await self._save(lambda st: st.model_copy(update={"baseline": baseline}))
        return f"{len(baseline)} DNS server(s) x {len(self._qnames())} name(s) recorded"

    async def _disrupt(self) -> str:
        spec = self.drill.spec
        if not self.drill.status.restore_states:
            clusters = {c.metadata.name: c for c in await self.api.clusters()}
            missing = [n for n in spec.clusters if n not in clusters]
            if missing:
                raise StepFailedError(f"unknown cluster(s): {', '.join(missing)}")
            states = {n: clusters[n].spec.admin_state for n in spec.clusters}
            # saved before acting, so a rollback knows what to restore
            await self._save(lambda st: st.model_copy(update={"restore_states": states}))
        await self.disruptor.disrupt(spec.clusters)
        return f"{self.disruptor.kind}: {', '.join(spec.clusters)}"

    async def _measure(
        self,
        phase: Literal["failover", "restore"],
        checks: Mapping[tuple[Path, str], Callable[[], Awaitable[bool]]],
        deadline: float,
        start: float,
    ) -> list[Measurement]:
        """Poll every check together until each has passed once (or the deadline);
        the time of a check's first pass, from ``start``, is its measurement."""
        bound = self.drill.status.bound_seconds or deadline
        seen: dict[tuple[Path, str], float] = {}
        while True:
            elapsed = self.monotonic() - start
            pending = [k for k in checks if k not in seen]
            passed = await asyncio.gather(*(checks[k]() for k in pending))
            for key, ok in zip(pending, passed, strict=True):
                if ok:
                    seen[key] = self.monotonic() - start
            if len(seen) == len(checks) or elapsed > deadline:
                break
            await self.sleep(POLL_INTERVAL)
        return [
            Measurement(
                server=server,
                path=path,
                phase=phase,
                seconds=round(seen[(path, server)], 3) if (path, server) in seen else None,
                within_bound=(path, server) in seen and seen[(path, server)] <= bound,
            )
            for path, server in sorted(checks)
        ]

    def _dns_check(
        self, address: str, done: Callable[[dict[str, list[str]]], bool]
    ) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            answers: dict[str, list[str]] = {}
            for qname in self._qnames():
                got = await self.resolver.addresses(address, qname)
                if got is None:
                    return False
                answers[qname] = sorted(got)
            return done(answers)

        return check

    def _gateway_check(self, admin_url: str) -> Callable[[], Awaitable[bool]]:
        leaving = set(self.drill.spec.clusters)
        services = {r.service for r in self.drill.status.plan}
        probe = self.route_probe

        async def check() -> bool:
            assert probe is not None
            routes = await probe.routes(admin_url)
            return routes is not None and not any(
                routes.get(svc, frozenset()) & leaving for svc in services
            )

        return check

    async def _verify_failover(self) -> str:
        leaving = set(self.drill.status.leaving_addresses)
        down = self.disruptor.servers_down(self.drill.spec.clusters)
        step = self.drill.status.step("disrupt")
        start = self._elapsed_since(step.finished_at)
        bound = self.drill.status.bound_seconds or 10.0

        def clean(answers: dict[str, list[str]]) -> bool:
            return all(not (set(a) & leaving) for a in answers.values())

        checks: dict[tuple[Path, str], Callable[[], Awaitable[bool]]] = {
            ("dns", c): self._dns_check(a, clean)
            for c, a in (await self._servers()).items()
            if c not in down
        }
        checks.update(
            (("gateway", c), self._gateway_check(u))
            for c, u in (await self._gateways()).items()
            if c not in down
        )
        if self.monotonic() - start > bound:
            # resumed after a worker was lost and the bound had already passed: the
            # timing was not watched, so only the outcome can be verified
            ms = await self._measure("failover", checks, bound, self.monotonic())
            ms = [
                m.model_copy(
                    update={
                        "seconds": None,
                        "note": "resumed after the bound had passed: outcome verified, "
                        "timing not observed",
                    }
                )
                for m in ms
            ]
        else:
            ms = await self._measure("failover", checks, bound, start)
        await self._save(lambda st: st.model_copy(update={"measurements": [*st.measurements, *ms]}))
        late = [f"{m.path} {m.server}" for m in ms if not m.within_bound]
        if late:
            raise StepFailedError(
                f"{', '.join(late)} still pointed at the drilled clusters "
                f"after the {bound:.2f}s bound (DNS answers or gateway routes)"
            )
        worst = max((m.seconds or 0.0) for m in ms) if ms else 0.0
        dns_n = sum(1 for m in ms if m.path == "dns")
        gw_n = len(ms) - dns_n
        return (
            f"{dns_n} DNS server(s) and {gw_n} gateway(s) failed over; "
            f"slowest {worst:.3f}s (bound {bound:.2f}s)"
        )

    def _elapsed_since(self, when: datetime | None) -> float:
        """A monotonic start time equivalent to wall-clock ``when`` (resume-safe)."""
        if when is None:
            return self.monotonic()
        return self.monotonic() - max(0.0, (self.now() - when).total_seconds())

    async def _hold(self) -> str:
        # counted from the hold's first start, so a resumed drill does not hold twice
        end = self._elapsed_since(self.drill.status.step("hold").started_at) + (
            self.drill.spec.hold_seconds
        )
        while self.monotonic() < end:
            if self.drill.status.cancel_requested:
                return "cut short: cancel requested"
            await self.sleep(min(0.5, max(0.0, end - self.monotonic())))
        return f"held {self.drill.spec.hold_seconds:.1f}s"

    async def _restore(self) -> str:
        await self.disruptor.restore(self.drill.status.restore_states)
        return "restored " + ", ".join(
            f"{c}={s}" for c, s in sorted(self.drill.status.restore_states.items())
        )

    async def _verify_restore(self) -> str:
        baseline = self.drill.status.baseline
        servers = {c: a for c, a in (await self._servers()).items() if c in baseline}
        start = self._elapsed_since(self.drill.status.step("restore").finished_at)
        deadline = max(RESTORE_FLOOR, 3 * (self.drill.status.bound_seconds or 0.0))

        def back(server: str) -> Callable[[dict[str, list[str]]], bool]:
            def done(answers: dict[str, list[str]]) -> bool:
                return all(set(answers.get(q, ())) == set(a) for q, a in baseline[server].items())

            return done

        checks: dict[tuple[Path, str], Callable[[], Awaitable[bool]]] = {
            ("dns", c): self._dns_check(a, back(c)) for c, a in servers.items()
        }
        ms = await self._measure("restore", checks, deadline, start)
        ms = [m.model_copy(update={"within_bound": m.seconds is not None}) for m in ms]
        await self._save(lambda st: st.model_copy(update={"measurements": [*st.measurements, *ms]}))
        missing = [m.server for m in ms if m.seconds is None]
        if missing:
            raise StepFailedError(f"DNS server(s) {', '.join(missing)} did not return to baseline")
        return f"{len(ms)} DNS server(s) back to their baseline answers"

    # -- rollback and report --------------------------------------------------------------
    async def _rollback(self, error: str) -> None:
        status = self.drill.status
        # restore_states is saved before anything is disrupted: it says what to undo
        disrupted = bool(status.restore_states)
        restored = status.step("restore").state == "done"
        if disrupted and not restored:
            try:
                await self.disruptor.restore(status.restore_states)
                await self._set_step(
                    "restore", state="done", finished_at=self.now(), detail="rollback"
                )
            except (AtollError, OSError) as exc:
                error = f"{error}; ROLLBACK FAILED: {exc}"
        phase = "rolled_back" if disrupted else "failed"
        await self._save(
            lambda st: st.model_copy(
                update={"phase": phase, "error": error, "summary": self.summary(error)}
            )
        )

    def summary(self, error: str = "") -> str:
        d = self.drill
        st = d.status
        fo = [m for m in st.measurements if m.phase == "failover"]
        lines = [
            f"Drill {d.metadata.name}: {d.spec.kind} of {', '.join(d.spec.clusters)}"
            + (f" (region {d.spec.region})" if d.spec.region else ""),
            f"Bound: {st.bound_seconds:.2f}s" if st.bound_seconds is not None else "Bound: -",
        ]
        for m in fo:
            took = f"{m.seconds:.3f}s" if m.seconds is not None else "not observed"
            if m.path == "gateway":
                lines.append(
                    f"  gateway {m.server}: egress moved in {took}"
                    + ("" if m.within_bound else " (LATE)")
                )
                continue
            lines.append(
                f"  DNS {m.server}: failed over in {took}" + ("" if m.within_bound else " (LATE)")
            )
        for r in st.plan:
            moved = ", ".join(r.remaining) or "nowhere"
            lines.append(
                f"  {r.service}: {', '.join(r.leaving)} -> {moved}"
                + "".join(f" [{w}]" for w in r.warnings)
            )
        ok = "every DNS server failed over within the bound and came back"
        lines.append(f"Result: {'FAILED: ' + error if error else ok}")
        return "\n".join(lines)
