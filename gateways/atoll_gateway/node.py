"""The gateway process: inputs in, one route table, listeners that follow it.

``atoll gateway serve`` runs one :class:`GatewayNode` per cluster. Inputs
(see :mod:`atoll_gateway.config` for why each comes from where):

* the **catalog** of its own cluster (a :class:`~atoll_agent.catalog.CatalogSource`,
  by default the agent's registry, read directly: endpoints with address, port
  and health — the import carries only addresses, and this keeps working with
  the control plane down). It is turned into exports with the agent's own
  :func:`~atoll_agent.catalog.build_exports`, re-evaluated every second so TTL
  checks lapse on time;
* a **sync subscription** (node ``gateway/<cluster>``, role ``gateway``) to
  ServiceImport, TrafficPolicy, Region and Cluster, authenticated with the
  gateway's Workload-API SVID exactly like the DNS server's;
* the **Workload API** (SVID and bundles) through :class:`~atoll_gateway.identity.GatewayIdentity`;
* the **config file**, reloaded on SIGHUP or when its mtime changes.

Any change rebuilds the :class:`~atoll_gateway.routes.RouteTable` (pure) and
swaps it in; egress listeners are opened/closed to match. Established
connections are never touched by a swap: they hold the endpoint they were
given. :meth:`GatewayNode.drain` (on SIGTERM/cancellation) stops accepting,
lets in-flight connections finish for ``drain_seconds``, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from atoll import __version__
from atoll.gcfreeze import freeze_startup_objects
from atoll.httpserve import serve_http
from atoll.model import Cluster, Region, ServiceExport, ServiceImport, TrafficPolicy, decode
from atoll.model.base import Frozen
from atoll.sync import HeldState, NodeInfo, SyncClient
from atoll.trusthub.client import WorkloadIdentity
from atoll.trusthub.naming import parse_federation_domain
from atoll_agent.catalog import CatalogSource, build_exports
from atoll_agent.registry import CatalogSnapshot
from atoll_gateway import metrics, native
from atoll_gateway.balancer import Balancer, Endpoint
from atoll_gateway.clienthello import tls_alert
from atoll_gateway.config import GatewayConfig, load_config
from atoll_gateway.egress import handle_egress
from atoll_gateway.errors import ConfigError
from atoll_gateway.identity import ContextSource, GatewayIdentity
from atoll_gateway.inbound import handle_inbound
from atoll_gateway.listener import Listener, bind_listener
from atoll_gateway.relay import pooled_pipes, splice_supported
from atoll_gateway.routes import RouteTable, build_routes, parse_hostport
from atoll_gateway.runtime import Runtime
from atoll_trust.clock import system_clock
from atoll_trust.workload_api.client import X509Source

__all__ = ["SUBSCRIBED", "GatewayNode", "GatewayStatus", "RouteView"]

log = logging.getLogger("atoll.gateway.node")

SUBSCRIBED: tuple[str, ...] = (
    ServiceImport.KIND,
    TrafficPolicy.KIND,
    Region.KIND,
    Cluster.KIND,
)


class RouteView(Frozen):
    service: str
    mode: str
    ports: list[int]
    endpoints: dict[str, list[str]]


class EgressView(Frozen):
    listen: str
    service: str
    port: int
    decisions: list[list[str]]
    notes: list[str]


class GatewayStatus(Frozen):
    cluster: str
    spiffe_id: str | None
    listen: str
    active_connections: int = Field(ge=0)
    draining: bool
    inbound: list[RouteView]
    egress: list[EgressView]
    warnings: list[str]
    sync_connected: bool
    catalog_index: int | None
    #: idle splice pipes kept for reuse (two fds each; not a leak)
    pooled_pipes: int = Field(0, ge=0)
    #: egress: idle pooled tunnels to peer gateways (one fd each)
    tunnels_pooled: int = Field(0, ge=0)
    #: served pooled tunnels waiting for their next stream (one fd each; a peer's pool)
    tunnels_waiting: int = Field(0, ge=0)
    #: the relays this process runs: "native" (compiled, :mod:`atoll_gateway.native`) or
    #: "python", and why
    relays: str = "python"
    relays_detail: str = ""


class GatewayNode:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        catalog: CatalogSource,
        source: ContextSource,
        control_plane: str | None = None,
        state_dir: Path | None = None,
        config_path: Path | None = None,
        config_overrides: dict[str, object] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        clock: Callable[[], float] = time.time,
        use_splice: bool | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.config = config
        #: a process of its own (the CLI): freeze start-up objects out of full GC passes
        self.freeze_gc = freeze_gc
        self.config_path = config_path
        self.config_overrides = config_overrides or {}
        self._config_mtime = self._mtime()
        self.catalog = catalog
        self.source = source
        self.clock = clock
        self.federation = parse_federation_domain(config.federation_domain)
        self.identity = GatewayIdentity(source)
        splice = use_splice
        if splice is None:
            splice = config.relay != "copy" and splice_supported()
        self.runtime = Runtime(
            config=config,
            table=RouteTable(cluster=config.cluster, zone=config.zone),
            identity=self.identity,
            balancer=Balancer(config.outlier, clock=time.monotonic),
            federation=self.federation,
            clock=system_clock,
            splice=splice,
        )
        self.snapshot: CatalogSnapshot | None = None
        self._exports: list[ServiceExport] = []
        self.held: HeldState | None = None
        self.inbound: Listener | None = None
        self.egress: dict[Endpoint, Listener] = {}
        self.sync: SyncClient | None = None
        if control_plane is not None:
            creds: Any = credentials
            options: Any = ()
            if isinstance(source, X509Source) and credentials is None:
                wid = WorkloadIdentity(source, federation=self.federation)
                creds, options = wid.credentials, wid.channel_options()
            self.sync = SyncClient(
                target=control_plane,
                node=NodeInfo(
                    id=f"gateway/{config.cluster}",
                    role="gateway",
                    cluster=config.cluster,
                    software_version=__version__,
                ),
                types=SUBSCRIBED,
                state_file=state_dir / "sync-state.json" if state_dir is not None else None,
                on_update=self._on_update,
                credentials=creds,
                channel_options=options,
            )
            self.held = self.sync.held

    # -- inputs ----------------------------------------------------------------
    def _items(self, kind: type[Any]) -> list[Any]:
        if self.held is None:
            return []
        return [decode(kind, it.body) for it in self.held.items(kind.KIND).values()]

    def exports(self) -> list[ServiceExport]:
        if self.snapshot is None:
            return []
        return build_exports(self.config.cluster, self.snapshot, now=self.clock())

    def rebuild(self) -> RouteTable:
        """Recompute the route table from the current inputs and swap it in."""
        self._exports = self.exports()
        table = build_routes(
            self.config,
            exports=self._exports,
            imports=self._items(ServiceImport),
            policies=self._items(TrafficPolicy),
            regions=self._items(Region),
            clusters=self._items(Cluster),
            previous=self.runtime.table,
        )
        old = self.runtime.table
        self.runtime.table = table
        if table.warnings != old.warnings:
            for w in table.warnings:
                log.warning("route warning", extra={"cluster": self.config.cluster, "warning": w})
        self.runtime.balancer.forget(
            [ep for s in table.inbound.values() for eps in s.endpoints.values() for ep in eps]
            + [t.gateway for r in table.egress for d in r.decisions for t in d if t.gateway]
        )
        if self.inbound is not None and not self.draining:
            self._sync_egress_listeners()
        return table

    async def _on_update(self, state: HeldState, types: frozenset[str]) -> None:
        self.held = state
        self.rebuild()
        log.info(
            "federation state applied",
            extra={"cluster": self.config.cluster, "types": sorted(types)},
        )

    def set_catalog(self, snapshot: CatalogSnapshot) -> None:
        self.snapshot = snapshot
        self.rebuild()

    def set_held(self, state: HeldState) -> None:
        """Use federation state directly (tests and tools without a control plane)."""
        self.held = state
        self.rebuild()

    def reload_config(self) -> bool:
        """Re-read the config file; on error keep the running config. True if applied."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path, **self.config_overrides)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("error").inc()
            log.error("config reload refused", extra={"error": str(exc)})
            return False
        self.apply_config(new)
        metrics.CONFIG_RELOADS.labels("ok").inc()
        return True

    def apply_config(self, new: GatewayConfig) -> None:
        if new.listen != self.config.listen:
            log.warning("the TLS listen address changes only with a restart")
        if new.cluster != self.config.cluster:
            log.warning("the cluster name changes only with a restart")
            new = new.model_copy(update={"cluster": self.config.cluster})
        self.config = new
        self.runtime.use_config(new)
        self.rebuild()
        log.info("config applied", extra={"cluster": new.cluster})

    def _mtime(self) -> float | None:
        try:
            return self.config_path.stat().st_mtime if self.config_path else None
        except OSError:
            return None

    # -- listeners -------------------------------------------------------------
    def start_listeners(self) -> None:
        host, port = parse_hostport(self.config.listen)
        sock = bind_listener(host, port, what="gateway TLS listener")
        self.inbound = Listener(
            self.runtime,
            sock,
            lambda s, c: handle_inbound(self.runtime, s, c),
            name=f"gateway-inbound:{self.config.cluster}",
            listener="inbound",
            refusal=tls_alert("internal_error"),
        )
        self.inbound.start()
        self._sync_egress_listeners()
        state = native.STATE
        log.info("relays", extra={"relays": state.relays, "detail": state.detail})

    def _sync_egress_listeners(self) -> None:
        want = {r.listen for r in self.runtime.table.egress}
        for ep in [e for e in self.egress if e not in want]:
            self.egress.pop(ep).close()
            log.info("egress listener closed", extra={"listen": str(ep)})
        for ep in sorted(want - set(self.egress), key=str):
            try:
                sock = bind_listener(ep.host, ep.port, what=f"egress listener {ep}")
            except Exception as exc:
                log.warning("egress listener failed", extra={"listen": str(ep), "error": str(exc)})
                continue
            listener = Listener(
                self.runtime,
                sock,
                lambda s, c, ep=ep: handle_egress(self.runtime, ep, s, c),  # type: ignore[misc]
                name=f"gateway-egress:{ep}",
                listener="egress",
            )
            listener.start()
            self.egress[ep] = listener

    @property
    def inbound_address(self) -> tuple[str, int]:
        assert self.inbound is not None
        return self.inbound.address

    @property
    def draining(self) -> bool:
        return self.runtime.draining

    async def drain(self, deadline: float | None = None) -> int:
        """Stop accepting; wait for in-flight connections; cancel what is left. Returns
        how many connections had to be cancelled."""
        self.runtime.start_drain()
        if self.inbound is not None:
            self.inbound.close()
        for listener in self.egress.values():
            listener.close()
        self.egress.clear()
        wait = self.config.drain_seconds if deadline is None else deadline
        pending = set(self.runtime.connections)
        log.info("draining", extra={"connections": len(pending), "deadline_s": wait})
        if pending:
            _, still = await asyncio.wait(pending, timeout=wait)
        else:
            still = set()
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=5.0)
        log.info("drained", extra={"cancelled": len(still)})
        return len(still)

    # -- status ----------------------------------------------------------------
    def status(self) -> GatewayStatus:
        t = self.runtime.table
        return GatewayStatus(
            cluster=self.config.cluster,
            spiffe_id=str(self.identity.spiffe_id) if self.identity.ready else None,
            listen=self.config.listen,
            active_connections=len(self.runtime.connections),
            draining=self.draining,
            inbound=[
                RouteView(
                    service=s.key,
                    mode=s.route.mode,
                    ports=[p.port for p in s.ports],
                    endpoints={str(p): [str(e) for e in eps] for p, eps in s.endpoints.items()},
                )
                for s in t.inbound.values()
            ],
            egress=[
                EgressView(
                    listen=str(r.listen),
                    service=r.key,
                    port=r.port.port,
                    decisions=[[x.cluster for x in d] for d in r.decisions],
                    notes=list(r.notes),
                )
                for r in t.egress
            ],
            warnings=list(t.warnings),
            sync_connected=self.sync.status().connected if self.sync is not None else False,
            catalog_index=self.snapshot.index if self.snapshot is not None else None,
            pooled_pipes=pooled_pipes(),
            tunnels_pooled=len(self.runtime.tunnels),
            tunnels_waiting=len(self.runtime.tunnel_waiters),
            relays=native.STATE.relays,
            relays_detail=native.STATE.detail,
        )

    def admin_app(self) -> FastAPI:
        app = FastAPI(title=f"Atoll gateway ({self.config.cluster})", version=__version__)

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/readyz", response_model=None)
        async def readyz() -> dict[str, str] | JSONResponse:
            missing = [
                what
                for what, ok in (
                    ("SVID", self.identity.ready),
                    ("catalog", self.snapshot is not None),
                    ("listener", self.inbound is not None and not self.draining),
                )
                if not ok
            ]
            if missing:
                return JSONResponse(
                    status_code=503, content={"error": f"waiting for {', '.join(missing)}"}
                )
            return {"status": "ready"}

        @app.get("/metrics", include_in_schema=False)
        async def prom() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        @app.get("/v1/status")
        async def status() -> GatewayStatus:
            return self.status()

        @app.post("/v1/reload")
        async def reload() -> dict[str, bool]:
            return {"applied": self.reload_config()}

        return app

    # -- loops -----------------------------------------------------------------
    async def _catalog_loop(self) -> None:
        async for snapshot in self.catalog.watch():
            self.set_catalog(snapshot)

    async def _tick_loop(self) -> None:
        """Every second: re-evaluate TTL health; reload the config file if it changed.

        With ``freeze_gc``, after the first second (imports done, admin app built)
        the start-up objects are frozen out of the collector's full passes
        (:mod:`atoll.gcfreeze`)."""
        frozen = not self.freeze_gc
        while True:
            await asyncio.sleep(1.0)
            if not frozen:
                frozen = True
                freeze_startup_objects(f"gateway/{self.config.cluster}")
            self.runtime.tunnels.expire()
            mtime = self._mtime()
            if mtime != self._config_mtime:
                self._config_mtime = mtime
                self.reload_config()
            elif self.snapshot is not None and self.exports() != self._exports:
                self.rebuild()
                log.info("local endpoint health changed", extra={"cluster": self.config.cluster})

    async def run(self, *, on_listening: Callable[[int], None] | None = None) -> None:
        admin_host, admin_port = parse_hostport(self.config.admin)
        self.rebuild()
        self.start_listeners()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_config)
        try:
            async with asyncio.TaskGroup() as tg:
                if isinstance(self.source, X509Source):
                    tg.create_task(self.source.run(), name="gateway-svid")
                if self.sync is not None:
                    tg.create_task(self.sync.run(), name="gateway-sync")
                tg.create_task(self._catalog_loop(), name="gateway-catalog")
                tg.create_task(self._tick_loop(), name="gateway-tick")
                tg.create_task(
                    serve_http(
                        self.admin_app(),
                        host=admin_host,
                        port=admin_port,
                        what=f"gateway admin {self.config.cluster}",
                        on_listening=on_listening,
                    ),
                    name="gateway-admin",
                )
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await self.drain()
