"""The agent's local HTTP API: imports (served from held state), status, health, metrics."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field

from atoll import __version__
from atoll.model import ServiceImport
from atoll.model.base import Frozen

if TYPE_CHECKING:
    from atoll_agent.agent import Agent

__all__ = ["AgentStatus", "build_agent_app"]


class AgentStatus(Frozen):
    cluster: str
    region: str
    control_plane: str
    connected: bool
    server_id: str
    last_error: str
    connects: int
    deltas_accepted: int
    deltas_rejected: int
    last_rejection: str
    report_errors: dict[str, str]
    lease_remaining: float | None
    catalog_index: int | None
    catalog_updated_at: float | None
    exports: int = Field(ge=0)
    imports: int = Field(ge=0)
    #: the agent's federation identity (None in --insecure mode or before enrollment)
    spiffe_id: str | None = None
    svid_not_after: datetime | None = None
    identity_error: str = ""
    #: the cluster's own trust domain and CA (None without a cluster CA)
    trust_domain: str | None = None
    ca_sequence: int | None = None
    #: every trust domain the Workload API serves a bundle of, with its sequence
    bundles: dict[str, int | None] = Field(default_factory=dict)
    workload_sockets: dict[str, str] = Field(default_factory=dict)


def _trust_fields(agent: Agent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ident = agent.identity
    if ident is not None:
        out["identity_error"] = ident.last_error
        if ident.state is not None:
            out["spiffe_id"] = str(ident.state.svid.spiffe_id)
            out["svid_not_after"] = ident.state.svid.not_after
    ca = agent.authority
    if ca is not None:
        out["trust_domain"] = ca.trust_domain.name
        out["ca_sequence"] = ca.state.sequence
        out["bundles"] = {b.trust_domain.name: b.sequence for b in ca.bundles}
        out["workload_sockets"] = {s.workload: str(s.path) for s in ca.server.sockets}
    return out


def build_agent_app(agent: Agent) -> FastAPI:
    app = FastAPI(title=f"Atoll agent ({agent.config.cluster})", version=__version__)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/status")
    async def status() -> AgentStatus:
        s = agent.sync.status()
        return AgentStatus(
            cluster=agent.config.cluster,
            region=agent.config.region,
            control_plane=agent.config.control_plane,
            connected=s.connected,
            server_id=s.server_id,
            last_error=s.last_error,
            connects=s.connects,
            deltas_accepted=s.deltas_accepted,
            deltas_rejected=s.deltas_rejected,
            last_rejection=s.last_rejection,
            report_errors=dict(s.report_errors),
            lease_remaining=s.lease_remaining,
            catalog_index=agent.catalog_index,
            catalog_updated_at=agent.catalog_updated_at,
            exports=agent.exports_reported,
            imports=len(agent.imports),
            **_trust_fields(agent),
        )

    @app.get("/v1/imports")
    async def list_imports() -> list[ServiceImport]:
        return [agent.imports[k] for k in sorted(agent.imports)]

    @app.get("/v1/imports/{namespace}/{name}", response_model=None)
    async def get_import(namespace: str, name: str) -> ServiceImport | JSONResponse:
        found = agent.imports.get(f"{namespace}/{name}")
        if found is None:
            return JSONResponse(
                status_code=404,
                content={"error": f"service {namespace}/{name} is not imported", "field": None},
            )
        return found

    return app
