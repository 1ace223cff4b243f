"""Orchestration behind ``atoll up``: start, seed, converge, report, stop.

Order matters and each step waits for the previous one to be *healthy*:

1. the trust material: key-encryption keys for the control plane and each
   agent (0600 files under ``<state>/trust/``, created once and kept, since a
   lab restarted on its old state must open its old CAs);
2. the control plane (embedded SQLite store, REST API, mTLS sync server,
   enrollment port); then the federation bundle is fetched from its API into
   ``<state>/trust/federation-bundle.json`` — the lab's trust bootstrap,
   over loopback;
3. the regions, written through the REST API;
4. one registry per cluster, then its demo services and instances;
5. one agent per cluster, with a fresh one-time join token, the bundle file
   and its KEK (a restarted lab's agents reuse their persisted SVIDs and
   ignore the token); each serves the Workload API to its DNS server and a
   demo workload;
6. one DNS server per cluster, authenticated with the SVID its agent's
   Workload API gives it;
7. one demo workload server per cluster (on the ``demo/web`` instance
   addresses) and one east-west gateway per cluster (SVID from the agent's
   Workload API, endpoints from the registry, imports over sync; config file
   ``<cluster state>/gateway.json`` terminates ``demo/web``);
8. convergence: every demo service is imported, with every cluster as a
   healthy target, by the control plane *and* by every agent.

Nothing runs with ``--insecure``: every sync stream is mTLS.

Any failure stops what was started and raises :class:`LabError` quoting the
failing component's log. Shutdown stops agents before registries before the
control plane, so no agent outlives what it reports to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from atoll.errors import NotFoundError
from atoll.lab.manifest import (
    ClusterEntry,
    ComponentEntry,
    ControlPlaneEntry,
    DnsEntry,
    GatewayEntry,
    Manifest,
    RegionEntry,
)
from atoll.lab.supervisor import Child, LabError, Supervisor
from atoll.lab.topology import (
    DEMO_GATEWAY_SERVICE,
    DEMO_NAMESPACE,
    FEDERATION_DOMAIN,
    LAB_WORKLOADS,
    ClusterPlan,
    LabPlan,
)

__all__ = ["Lab"]

Progress = Callable[[str], None]
#: seconds a forced rotation's new CA is published before it signs (short: one machine)
CA_PUBLISH_LEAD = 3.0
#: a lab agent's join token is used seconds after it is created
JOIN_TOKEN_TTL = 600


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "atoll", *args]


class Lab:
    def __init__(self, plan: LabPlan, *, progress: Progress = lambda _msg: None) -> None:
        self.plan = plan
        self.progress = progress
        self.supervisor = Supervisor()
        self.control_plane: Child | None = None
        self.registries: dict[str, Child] = {}
        self.agents: dict[str, Child] = {}
        self.dns: dict[str, Child] = {}
        self.gateways: dict[str, Child] = {}
        self.demos: dict[str, Child] = {}
        self.worker: Child | None = None
        self.started_at = datetime.now(UTC)

    @property
    def manifest_path(self) -> Path:
        return self.plan.state_dir / "manifest.json"

    def wipe(self) -> None:
        if self.plan.state_dir.exists():
            shutil.rmtree(self.plan.state_dir)

    # -- commands ------------------------------------------------------------
    def control_plane_argv(self) -> list[str]:
        p = self.plan
        return _py(
            "serve",
            "--store", p.store_url,
            "--api", f"{p.control_ip}:{p.api_port}",
            "--sync", p.sync_target,
            "--enroll", p.enroll_target,
            "--federation-domain", FEDERATION_DOMAIN,
            "--kek-file", str(p.kek_file),
            "--bundle-endpoint", f"{p.control_ip}:{p.bundle_port}",
            "--ca-publish-lead", str(CA_PUBLISH_LEAD),
            "--server-id", "lab-control-plane",
            "--lease-ttl", str(p.lease_ttl),
            "--broker", p.broker_url,
        )  # fmt: skip

    def worker_argv(self) -> list[str]:
        return _py(
            "worker",
            "--broker", self.plan.broker_url,
            "--lab-control", self.plan.control_url,
            "--concurrency", "2",
        )  # fmt: skip

    def registry_argv(self, c: ClusterPlan) -> list[str]:
        return _py(
            "registry",
            "--listen", f"{c.ip}:{c.registry_port}",
            "--state-file", str(c.state_dir / "registry.json"),
        )  # fmt: skip

    def agent_argv(self, c: ClusterPlan, join_token: str) -> list[str]:
        p = self.plan
        workloads = [f"--workload={name}={path}" for name, path in LAB_WORKLOADS.items()]
        return _py(
            "agent",
            "--cluster", c.name,
            "--region", c.region,
            "--zone", c.zone,
            "--control-plane", p.sync_target,
            "--state-dir", str(c.agent_state_dir),
            "--registry-url", c.registry_url,
            "--listen", f"{c.ip}:{c.agent_port}",
            "--address", f"dns={c.dns_listen}",
            "--address", f"gateway={c.gateway_listen}",
            "--address", f"gateway-admin={c.gateway_admin_url}",
            "--federation-domain", FEDERATION_DOMAIN,
            "--join-token", join_token,
            "--federation-bundle", str(p.bundle_file),
            "--enroll", p.enroll_target,
            "--kek-file", str(c.kek_file),
            "--ca-publish-lead", str(CA_PUBLISH_LEAD),
            *workloads,
        )  # fmt: skip

    def dns_argv(self, c: ClusterPlan) -> list[str]:
        ns = [f"--nameserver={o.nameserver}={o.ip}" for o in self.plan.clusters]
        return _py(
            "dns", "serve",
            "--cluster", c.name,
            "--control-plane", self.plan.sync_target,
            "--state-dir", str(c.state_dir / "dns"),
            "--listen", c.dns_listen,
            "--admin", f"{c.ip}:{c.dns_admin_port}",
            "--zone", self.plan.zone,
            *ns,
            "--workload-socket", str(c.workload_socket("dns")),
            "--federation-domain", FEDERATION_DOMAIN,
            *(["--egress-address", c.egress_host] if self.plan.dns_via_gateways else []),
        )  # fmt: skip

    def gateway_config_file(self, c: ClusterPlan) -> Path:
        return c.state_dir / "gateway.json"

    def gateway_argv(self, c: ClusterPlan) -> list[str]:
        return _py(
            "gateway", "serve",
            "--cluster", c.name,
            "--control-plane", self.plan.sync_target,
            "--state-dir", str(c.state_dir / "gateway"),
            "--config", str(self.gateway_config_file(c)),
            "--listen", c.gateway_listen,
            "--admin", f"{c.ip}:{c.gateway_admin_port}",
            "--zone", self.plan.zone,
            "--egress-host", c.egress_host,
            "--registry-url", c.registry_url,
            "--workload-socket", str(c.workload_socket("gateway")),
            "--federation-domain", FEDERATION_DOMAIN,
        )  # fmt: skip

    def demo_argv(self, c: ClusterPlan) -> list[str]:
        svc = next(s for s in c.services if s.name == DEMO_GATEWAY_SERVICE)
        listen = [f"--listen={i.address}:{i.port}" for i in svc.instances]
        return _py(
            "gateway", "demo-server",
            "--cluster", c.name,
            "--service", f"{DEMO_NAMESPACE}/{svc.name}",
            *listen,
        )  # fmt: skip

    def write_gateway_config(self, c: ClusterPlan) -> None:
        """The lab's gateway policy: demo/web terminated with PROXY v2; the rest passthrough."""
        doc = {
            "services": {
                f"{DEMO_NAMESPACE}/{DEMO_GATEWAY_SERVICE}": {
                    "mode": "terminate",
                    "proxy_protocol": True,
                }
            }
        }
        path = self.gateway_config_file(c)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")

    # -- lifecycle -----------------------------------------------------------
    async def start(self, *, within: float = 60.0) -> Manifest:
        try:
            await self._start(within)
        except BaseException:
            await self.stop()
            raise
        manifest = self.manifest()
        write_manifest(self.manifest_path, manifest)
        return manifest

    async def _start(self, within: float) -> None:
        p = self.plan
        sup = self.supervisor
        self.progress("preparing keys")
        ensure_kek(p.kek_file)
        for c in p.clusters:
            ensure_kek(c.kek_file)
        self.progress("starting the control plane")
        p.store_path.parent.mkdir(parents=True, exist_ok=True)
        self.control_plane = await sup.start(
            "control-plane",
            self.control_plane_argv(),
            log_path=self.plan.state_dir / "logs" / "control-plane.log",
            health_url=f"{p.api_url}/readyz",
        )
        await sup.wait_healthy(self.control_plane)
        self.progress("starting the job worker")
        self.worker = await sup.start(
            "worker",
            self.worker_argv(),
            log_path=p.state_dir / "logs" / "worker.log",
            health_url=None,
        )
        async with httpx.AsyncClient(timeout=5.0) as http:
            self.progress("fetching the federation bundle")
            await _fetch_bundle(http, p.api_url, p.bundle_file)
            self.progress("creating regions")
            for r in p.regions:
                await _put(
                    http,
                    f"{p.api_url}/v1/regions/{r.name}",
                    {
                        "kind": "Region",
                        "metadata": {"name": r.name},
                        "spec": {
                            "display_name": r.display_name,
                            "latitude": r.latitude,
                            "longitude": r.longitude,
                            "client_networks": list(r.client_networks),
                        },
                    },
                )
            for c in p.clusters:
                self.progress(f"starting registry of {c.name} on {c.ip}")
                child = await sup.start(
                    f"registry-{c.name}",
                    self.registry_argv(c),
                    log_path=p.state_dir / "logs" / f"registry-{c.name}.log",
                    health_url=f"{c.registry_url}/healthz",
                )
                self.registries[c.name] = child
            for c in p.clusters:
                await sup.wait_healthy(self.registries[c.name])
                self.progress(f"registering demo services in {c.name}")
                await _seed(http, c)
            for c in p.clusters:
                self.progress(f"starting agent of {c.name}")
                token = await _join_token(http, p.api_url, c.name)
                self.agents[c.name] = await sup.start(
                    f"agent-{c.name}",
                    self.agent_argv(c, token),
                    log_path=p.state_dir / "logs" / f"agent-{c.name}.log",
                    health_url=f"{c.agent_url}/healthz",
                )
            for c in p.clusters:
                self.progress(f"starting DNS server of {c.name} on {c.dns_listen}")
                self.dns[c.name] = await sup.start(
                    f"dns-{c.name}",
                    self.dns_argv(c),
                    log_path=p.state_dir / "logs" / f"dns-{c.name}.log",
                    health_url=f"{c.dns_admin_url}/healthz",
                )
            for c in p.clusters:
                self.progress(f"starting the demo server and gateway of {c.name}")
                self.demos[c.name] = await sup.start(
                    f"demo-{c.name}",
                    self.demo_argv(c),
                    log_path=p.state_dir / "logs" / f"demo-{c.name}.log",
                    health_url=None,
                )
                self.write_gateway_config(c)
                self.gateways[c.name] = await sup.start(
                    f"gateway-{c.name}",
                    self.gateway_argv(c),
                    log_path=p.state_dir / "logs" / f"gateway-{c.name}.log",
                    health_url=f"{c.gateway_admin_url}/readyz",
                )
            for c in p.clusters:
                await sup.wait_healthy(self.agents[c.name])
                await sup.wait_healthy(self.dns[c.name])
                await sup.wait_healthy(self.gateways[c.name])
            await self._converge(http, within)

    async def _converge(self, http: httpx.AsyncClient, within: float) -> None:
        p = self.plan
        want = {(DEMO_NAMESPACE, s.name) for c in p.clusters for s in c.services}
        clusters = {c.name for c in p.clusters}
        urls = [f"{p.api_url}/v1/imports"] + [f"{c.agent_url}/v1/imports" for c in p.clusters]
        deadline = time.monotonic() + within
        while True:
            done = 0
            for url in urls:
                try:
                    imports = (await http.get(url)).json()
                except (httpx.HTTPError, ValueError):
                    continue
                have = {
                    (i["metadata"]["namespace"], i["metadata"]["name"])
                    for i in imports
                    if {t["cluster"] for t in i["spec"]["targets"] if t["healthy"]} == clusters
                }
                done += want <= have
            done += sum(
                [
                    await _dns_converged(c, p.zone, len(clusters), via_gateways=p.dns_via_gateways)
                    for c in p.clusters
                ]
            )
            total = len(urls) + len(p.clusters)
            self.progress(f"waiting for the federation to converge ({done}/{total} views)")
            if done == total:
                return
            if died := self.supervisor.exited():
                c = died[0]
                raise LabError(
                    f"{c.name} exited during start-up; its log ends with:\n{c.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"the federation did not converge within {within:.0f}s; "
                    f"see the logs in {p.state_dir / 'logs'}"
                )
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await self.supervisor.stop_all()
        self.manifest_path.unlink(missing_ok=True)

    # -- chaos (the lab control API) -------------------------------------------
    def _cluster(self, name: str) -> ClusterPlan:
        for c in self.plan.clusters:
            if c.name == name:
                return c
        raise NotFoundError(f"no cluster {name!r} in this lab")

    async def kill_cluster(self, name: str) -> list[str]:
        """SIGKILL the cluster's agent, DNS server and gateway, as a crash would."""
        self._cluster(name)
        killed = []
        for child in (self.agents.get(name), self.dns.get(name), self.gateways.get(name)):
            if child is not None and child.proc.returncode is None:
                await self.supervisor.kill(child)
                killed.append(child.name)
        return killed

    async def start_cluster(self, name: str) -> list[str]:
        """Start the cluster's agent, DNS server and gateway again (same command lines)."""
        c = self._cluster(name)
        started = []
        for table, log_name in (
            (self.agents, f"agent-{name}"),
            (self.dns, f"dns-{name}"),
            (self.gateways, f"gateway-{name}"),
        ):
            old = table.get(name)
            if old is None or old.proc.returncode is None:
                continue
            table[name] = await self.supervisor.start(
                old.name, old.argv, log_path=old.log_path, health_url=old.health_url
            )
            started.append(log_name)
        for table in (self.agents, self.dns, self.gateways):
            if c.name in table:
                await self.supervisor.wait_healthy(table[c.name])
        write_manifest(self.manifest_path, self.manifest())
        return started

    # -- manifest --------------------------------------------------------------
    def manifest(self) -> Manifest:
        p = self.plan
        assert self.control_plane is not None
        cp = self.control_plane

        def entry(child: Child, url: str) -> ComponentEntry:
            return ComponentEntry(url=url, pid=child.pid, argv=list(child.argv), log=child.log_path)

        return Manifest(
            control=p.control_url,
            broker=p.broker_url,
            worker=entry(self.worker, "") if self.worker is not None else None,
            state_dir=p.state_dir,
            pid=os.getpid(),
            started_at=self.started_at,
            control_plane=ControlPlaneEntry(
                url=p.api_url,
                api=p.api_url,
                sync=p.sync_target,
                enroll=p.enroll_target,
                trust_domain=FEDERATION_DOMAIN,
                bundle_file=p.bundle_file,
                bundle_endpoint=p.bundle_endpoint,
                bundle_endpoint_profile="https_spiffe",
                bundle_endpoint_spiffe_id=f"spiffe://{FEDERATION_DOMAIN}/control-plane",
                kek_file=p.kek_file,
                store=p.store_url,
                pid=cp.pid,
                argv=list(cp.argv),
                log=cp.log_path,
            ),
            regions=[
                RegionEntry(
                    name=r.name,
                    display_name=r.display_name,
                    latitude=r.latitude,
                    longitude=r.longitude,
                    client_networks=list(r.client_networks),
                )
                for r in p.regions
            ],
            zone=p.zone,
            clusters=[
                ClusterEntry(
                    name=c.name,
                    region=c.region,
                    zone=c.zone,
                    address=c.ip,
                    registry=entry(self.registries[c.name], c.registry_url),
                    agent=entry(self.agents[c.name], c.agent_url),
                    dns=DnsEntry(
                        url=c.dns_admin_url,
                        pid=self.dns[c.name].pid,
                        argv=list(self.dns[c.name].argv),
                        log=self.dns[c.name].log_path,
                        listen=c.dns_listen,
                        zone=p.zone,
                    ),
                    gateway=GatewayEntry(
                        url=c.gateway_admin_url,
                        pid=self.gateways[c.name].pid,
                        argv=list(self.gateways[c.name].argv),
                        log=self.gateways[c.name].log_path,
                        listen=c.gateway_listen,
                        egress_host=c.egress_host,
                        config_file=self.gateway_config_file(c),
                    )
                    if c.name in self.gateways
                    else None,
                    demo=entry(self.demos[c.name], "") if c.name in self.demos else None,
                    services=[f"{DEMO_NAMESPACE}/{s.name}" for s in c.services],
                    trust_domain=f"{c.name}.{FEDERATION_DOMAIN}",
                    workload_sockets={w: c.workload_socket(w) for w in LAB_WORKLOADS},
                )
                for c in p.clusters
            ],
        )


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write the manifest atomically as plain JSON (readable by any tool)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.replace(path)


def ensure_kek(path: Path) -> None:
    """Create a random KEK file (0600, in a 0700 directory) unless one exists."""
    if path.exists():
        return
    from atoll.fileio import write_private_file
    from atoll_trust.kek import generate_kek_text

    write_private_file(path, (generate_kek_text() + "\n").encode())


async def _fetch_bundle(http: httpx.AsyncClient, api_url: str, path: Path) -> None:
    try:
        resp = await http.get(f"{api_url}/v1/trust/bundle")
    except httpx.HTTPError as exc:
        raise LabError(f"fetching the federation bundle failed: {exc}") from exc
    if resp.status_code != 200:
        raise LabError(f"GET /v1/trust/bundle: {resp.status_code} {resp.text}")
    await asyncio.to_thread(path.write_bytes, resp.content)


async def _join_token(http: httpx.AsyncClient, api_url: str, cluster: str) -> str:
    try:
        resp = await http.post(
            f"{api_url}/v1/join-tokens",
            json={"cluster": cluster, "ttl_seconds": JOIN_TOKEN_TTL},
        )
    except httpx.HTTPError as exc:
        raise LabError(f"creating a join token for {cluster} failed: {exc}") from exc
    if resp.status_code != 201:
        raise LabError(f"POST /v1/join-tokens: {resp.status_code} {resp.text}")
    return str(resp.json()["token"])


async def _put(http: httpx.AsyncClient, url: str, body: object) -> None:
    try:
        resp = await http.put(url, json=body)
    except httpx.HTTPError as exc:
        raise LabError(f"PUT {url} failed: {exc}") from exc
    if resp.status_code >= 300:
        raise LabError(f"PUT {url}: {resp.status_code} {resp.text}")


async def _seed(http: httpx.AsyncClient, c: ClusterPlan) -> None:
    for s in c.services:
        base = f"{c.registry_url}/v1/services/{DEMO_NAMESPACE}/{s.name}"
        await _put(http, base, {"ports": [{"name": s.port_name, "port": s.port}], "export": True})
        for inst in s.instances:
            await _put(
                http,
                f"{base}/instances/{inst.id}",
                {"address": inst.address, "port": inst.port, "zone": c.zone, "health": "passing"},
            )


async def _dns_converged(
    c: ClusterPlan, zone: str, clusters: int, *, via_gateways: bool = False
) -> bool:
    """True once the cluster's DNS server answers every demo service with every cluster
    (through the gateways: its own endpoints and one egress record for the others)."""
    import dns.asyncquery
    import dns.exception
    import dns.message
    import dns.rdatatype

    for s in c.services:
        query = dns.message.make_query(f"{s.name}.{DEMO_NAMESPACE}.{zone}", "A")
        try:
            resp = await dns.asyncquery.udp(query, c.ip, port=c.dns_port, timeout=1.0)
        except (dns.exception.DNSException, OSError):
            return False
        found = sum(len(rrset) for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A)
        if via_gateways:
            want = len(s.instances) + (1 if clusters > 1 else 0)
        else:
            want = clusters * len(s.instances)
        if found < want:
            return False
    return True
