"""A DNS server programmed by the control plane: sync subscription → zone → server.

``atoll dns serve`` runs one :class:`DnsNode` per cluster. It is a subscriber
of the sync protocol (node ``dns/<cluster>``, role ``dns``) for the three
kinds a zone is built from: ServiceImport (targets and their health),
TrafficPolicy (strategy, TTL) and Region (coordinates, client networks).

Every accepted delta rebuilds the zone with the pure
:func:`~atoll_dns.snapshot.build_zone` (carrying the last healthy sets forward
from the snapshot being replaced) and swaps it in atomically with
:meth:`~atoll_dns.server.DnsServer.apply`; only then is the delta ACKed. A
zone the server refuses makes the delta a NACK, visible in ``atoll status``.

Two things persist, for two reasons: the sync client keeps the resources it
accepted (so a reconnect resumes with a delta), and the server keeps the
compiled zone (so a restart answers before anything else happens, even with
the control plane down).

Transport security: with a :class:`~atoll.trusthub.client.WorkloadIdentity`
the node follows its cluster agent's Workload API (its socket ``dns.sock``)
for its SVID ``spiffe://<cluster>.<fed>/atoll/dns`` and the federation bundle,
and connects over mTLS with whatever is current at each (re)connection; it
needs no join token, and a restart works while the control plane is down.
``--insecure`` (plaintext) remains for development.

An admin HTTP listener serves ``/healthz``, ``/readyz`` (a zone is loaded),
``/metrics``, ``/v1/status`` and ``/v1/explain`` — the answer a client would
get and why (the strategy's decision trace), used by ``atoll dns query``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
from fastapi import FastAPI, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from atoll import __version__
from atoll.httpserve import serve_http
from atoll.model import Region, ServiceImport, TrafficPolicy, decode
from atoll.model.base import Frozen
from atoll.sync import HeldState, NodeInfo, SyncClient
from atoll.trusthub.client import WorkloadIdentity
from atoll_dns.config import DnsConfig
from atoll_dns.explain import explain
from atoll_dns.server import DnsServer
from atoll_dns.snapshot import build_zone

__all__ = ["SUBSCRIBED", "DnsNode", "DnsStatus", "ExplainView"]

log = logging.getLogger("atoll.dns.node")

SUBSCRIBED: tuple[str, ...] = (ServiceImport.KIND, TrafficPolicy.KIND, Region.KIND)


class DnsStatus(Frozen):
    cluster: str
    zone: str
    serial: int | None
    services: int = Field(ge=0)
    warnings: list[str]
    connected: bool
    control_plane: str
    last_error: str
    deltas_accepted: int
    deltas_rejected: int
    last_rejection: str


class ExplainView(Frozen):
    qname: str
    qtype: str
    rcode: str
    region: str | None
    scope: int
    answer: list[str]
    authority: list[str]
    additional: list[str]
    trace: list[str]


class DnsNode:
    def __init__(
        self,
        config: DnsConfig,
        *,
        cluster: str,
        control_plane: str,
        state_dir: Path,
        admin_host: str = "127.0.0.1",
        admin_port: int = 0,
        credentials: grpc.ChannelCredentials | None = None,
        identity: WorkloadIdentity | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.control_plane = control_plane
        self.admin_host = admin_host
        self.admin_port = admin_port
        self.server = DnsServer(config, state_dir=state_dir)
        self.identity = identity
        self.sync = SyncClient(
            target=control_plane,
            node=NodeInfo(
                id=f"dns/{cluster}", role="dns", cluster=cluster, software_version=__version__
            ),
            types=SUBSCRIBED,
            state_file=state_dir / "sync-state.json",
            on_update=self._on_update,
            credentials=identity.credentials if identity is not None else credentials,
            channel_options=identity.channel_options() if identity is not None else (),
        )

    async def _on_update(self, state: HeldState, types: frozenset[str]) -> None:
        snapshot = build_zone(
            self.config,
            [decode(ServiceImport, it.body) for it in state.items(ServiceImport.KIND).values()],
            [decode(TrafficPolicy, it.body) for it in state.items(TrafficPolicy.KIND).values()],
            [decode(Region, it.body) for it in state.items(Region.KIND).values()],
            previous=self.server.snapshot,
        )
        for warning in snapshot.warnings:
            log.warning("zone warning", extra={"cluster": self.cluster, "warning": warning})
        if await self.server.apply(snapshot):
            log.info(
                "zone applied",
                extra={
                    "cluster": self.cluster,
                    "serial": snapshot.serial,
                    "services": len(snapshot.services),
                },
            )

    def status(self) -> DnsStatus:
        snap = self.server.snapshot
        s = self.sync.status()
        return DnsStatus(
            cluster=self.cluster,
            zone=self.config.zone,
            serial=snap.serial if snap else None,
            services=len(snap.services) if snap else 0,
            warnings=list(snap.warnings) if snap else [],
            connected=s.connected,
            control_plane=self.control_plane,
            last_error=s.last_error,
            deltas_accepted=s.deltas_accepted,
            deltas_rejected=s.deltas_rejected,
            last_rejection=s.last_rejection,
        )

    def admin_app(self) -> FastAPI:
        app = FastAPI(title=f"Atoll DNS ({self.cluster})", version=__version__)

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/readyz", response_model=None)
        async def readyz() -> dict[str, str] | JSONResponse:
            if self.server.snapshot is None:
                return JSONResponse(
                    status_code=503, content={"error": "no zone yet", "field": None}
                )
            return {"status": "ready"}

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        @app.get("/v1/status")
        async def status() -> DnsStatus:
            return self.status()

        @app.get("/v1/explain", response_model=None)
        async def explain_query(
            name: str = Query(max_length=255),
            type: str = Query("A", max_length=10),
            client_subnet: str | None = Query(None, max_length=64),
            resolver: str = Query("127.0.0.1", max_length=64),
        ) -> ExplainView | JSONResponse:
            snap = self.server.snapshot
            if snap is None:
                return JSONResponse(
                    status_code=503, content={"error": "no zone loaded yet", "field": None}
                )
            try:
                ex = explain(snap, name, type, client_subnet=client_subnet, resolver=resolver)
            except ValueError as exc:
                return JSONResponse(status_code=422, content={"error": str(exc), "field": None})
            return ExplainView(
                qname=ex.qname,
                qtype=ex.qtype,
                rcode=ex.rcode,
                region=ex.location.region,
                scope=ex.scope,
                answer=list(ex.answer),
                authority=list(ex.authority),
                additional=list(ex.additional),
                trace=list(ex.trace()),
            )

        return app

    async def run(self, *, on_listening: Callable[[int], None] | None = None) -> None:
        await self.server.start()
        try:
            async with asyncio.TaskGroup() as tg:
                if self.identity is not None:
                    tg.create_task(self.identity.source.run(), name=f"dns-svid:{self.cluster}")
                tg.create_task(self.sync.run(), name=f"dns-sync:{self.cluster}")
                tg.create_task(
                    serve_http(
                        self.admin_app(),
                        host=self.admin_host,
                        port=self.admin_port,
                        what=f"DNS admin {self.cluster}",
                        on_listening=on_listening,
                    ),
                    name=f"dns-admin:{self.cluster}",
                )
        finally:
            await self.server.stop()
