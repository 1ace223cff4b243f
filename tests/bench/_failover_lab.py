"""The failover benchmark's edges: the lab process, its REST API, a DNS observer.

* :class:`LabProcess` runs ``atoll up`` as a subprocess in its own session
  (so a Ctrl-C in the terminal reaches only the benchmark, which then stops
  the lab in order with SIGINT, as an operator would) and with
  ``PR_SET_PDEATHSIG`` (so even a SIGKILLed benchmark leaves no lab behind;
  the lab's own children die with it the same way). Readiness is the lab's
  manifest appearing, as in ``tests/e2e/test_drills.py``.
* :class:`LabApi` is the handful of control-plane REST calls the benchmark
  makes: the stated timings, cluster readiness, the seconds left on a
  cluster's liveness lease, creating and reading drills. Answers are parsed
  into Atoll's own models, so a changed API fails loudly here.
* :class:`DnsObserver` polls every (surviving) cluster DNS server for the
  demo names on a short fixed period, independently of the drill's own
  verification, and records each poll's answers with the wall-clock time they
  arrived. The drill's runner records a status write before it first looks,
  so its times cannot be shorter than that; the observer shows how much of a
  drain's figure is propagation and how much is the runner looking. Wall
  clock (not monotonic) because the drill's step times are wall-clock UTC
  from the worker, on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
import httpx

from atoll.aio import cancel_and_wait, spawn
from atoll.api.views import ClusterView, TimingsView
from atoll.lab.manifest import Manifest
from atoll.model import Drill

from ._failover_stats import Observation
from ._procs import BenchError, die_with_parent

__all__ = ["DnsObserver", "LabApi", "LabProcess", "demo_qnames"]


class LabProcess:
    """``atoll up`` in a state directory; :meth:`stop` is idempotent."""

    def __init__(self, *, state_dir: Path, loopback: str, lease_ttl: int) -> None:
        self.state_dir = state_dir
        self.argv = (
            sys.executable, "-m", "atoll", "--state-dir", str(state_dir), "up",
            "--loopback", loopback, "--lease-ttl", str(lease_ttl), "--fresh",
            "--output", "json",
        )  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "lab" / "manifest.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "lab" / "logs"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "atoll-up.log"

    def start(self, *, timeout: float) -> Manifest:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.console_log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not self.manifest_path.exists():
            code = self._proc.poll()
            if code is not None:
                raise BenchError(f"atoll up exited with {code}: {self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the lab did not start within {timeout:.0f} s: {self.tail()}")
            time.sleep(0.2)
        return Manifest.model_validate_json(self.manifest_path.read_text())

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.console_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no output)"
        return " | ".join(line[:300] for line in text[-lines:]) or "(no output)"

    def stop(self, *, grace: float = 45.0) -> int | None:
        """SIGINT (``atoll up`` stops its children in order), then SIGKILL after ``grace``."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        return proc.returncode


def demo_qnames(manifest: Manifest) -> list[str]:
    """Fully qualified names of the demo services every cluster exports."""
    zone = manifest.zone.rstrip(".") + "."
    services = sorted({s for c in manifest.clusters for s in c.services})
    return [f"{s.split('/')[1]}.{s.split('/')[0]}.{zone}" for s in services]


class LabApi:
    """The control plane's REST calls the benchmark needs (async, one client)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str) -> httpx.Response:
        try:
            resp = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise BenchError(f"control plane unreachable (GET {path}): {exc}") from exc
        if resp.status_code != 200:
            raise BenchError(f"GET {path}: {resp.status_code} {resp.text[:300]}")
        return resp

    async def timings(self) -> TimingsView:
        return TimingsView.model_validate_json((await self._get("/v1/timings")).content)

    async def clusters(self) -> list[ClusterView]:
        return [ClusterView.model_validate(v) for v in (await self._get("/v1/clusters")).json()]

    async def lease_remaining(self, cluster: str) -> float | None:
        view = ClusterView.model_validate_json((await self._get(f"/v1/clusters/{cluster}")).content)
        return view.lease_remaining

    async def all_ready(self) -> bool:
        """Every cluster connected, alive (lease held) and active."""
        views = await self.clusters()
        return bool(views) and all(
            v.cluster.status.alive
            and v.cluster.status.connected
            and v.cluster.spec.admin_state == "active"
            and v.lease_remaining is not None
            for v in views
        )

    async def create_drill(self, *, kind: str, cluster: str, hold: float) -> str:
        body = {"kind": kind, "clusters": [cluster], "hold_seconds": hold}
        try:
            resp = await self._http.post("/v1/drills", json=body)
        except httpx.HTTPError as exc:
            raise BenchError(f"control plane unreachable (POST /v1/drills): {exc}") from exc
        if resp.status_code != 201:
            raise BenchError(f"POST /v1/drills: {resp.status_code} {resp.text[:300]}")
        return Drill.model_validate_json(resp.content).metadata.name

    async def drill(self, name: str) -> Drill:
        return Drill.model_validate_json((await self._get(f"/v1/drills/{name}")).content)


class DnsObserver:
    """Polls DNS servers every ``interval`` seconds; see the module docstring."""

    def __init__(
        self,
        servers: Mapping[str, tuple[str, int]],
        qnames: Sequence[str],
        *,
        interval: float,
        timeout: float = 0.25,
    ) -> None:
        self.servers = dict(servers)
        self.queries = [dns.message.make_query(q, "A") for q in qnames]
        self.interval = interval
        self.timeout = timeout

    async def _ask(self, host: str, port: int, query: dns.message.Message) -> set[str] | None:
        try:
            resp = await dns.asyncquery.udp(query, host, port=port, timeout=self.timeout)
        except (dns.exception.DNSException, OSError, ValueError):
            return None
        return {
            rr.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
        }

    async def _poll(self, server: str, log: list[Observation]) -> None:
        host, port = self.servers[server]
        while True:
            started = time.monotonic()
            answers = await asyncio.gather(*(self._ask(host, port, q) for q in self.queries))
            union = (
                None
                if any(a is None for a in answers)
                else frozenset(addr for a in answers if a is not None for addr in a)
            )
            log.append(Observation(server=server, at=time.time(), addresses=union))
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    @contextlib.asynccontextmanager
    async def observing(
        self, *, skip: frozenset[str] = frozenset()
    ) -> AsyncIterator[list[Observation]]:
        """Poll every server except ``skip`` while the block runs; yields the live log."""
        log: list[Observation] = []
        tasks = [
            spawn(self._poll(s, log), name=f"bench-dns-observer:{s}")
            for s in sorted(self.servers)
            if s not in skip
        ]
        try:
            yield log
        finally:
            await cancel_and_wait(*tasks)
