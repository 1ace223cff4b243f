"""The REST API: read the federation, write its intent.

Resources are the schemas of :mod:`atoll.model`, unchanged. Paths mirror
store paths: ``/v1/<plural>/<path...>``. Operators write Regions and
TrafficPolicies (PUT = create or replace, DELETE) and a Cluster's admin
state; exports are written only by agents (over the sync stream) and imports
only by the control plane, so the API serves those read-only.

Concurrency: every object carries ``metadata.revision``. A PUT whose body (or
``If-Match`` header) names a revision is a compare-and-swap and fails with
409 if the object changed since; revision 0 or absent means "create or
overwrite". Errors are JSON ``{"error": ..., "field": ...}``: 422 for invalid
bodies (naming the field), 404 for unknown names or kinds, 409 for a lost
CAS, 503 when the store is unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from atoll import __version__
from atoll.api.drills import DrillContext, drill_router
from atoll.api.trust import TrustApi, build_trust_router
from atoll.api.views import (
    AdminStateBody,
    ClusterView,
    ErrorBody,
    NodeView,
    ServiceRow,
    StatusView,
    SubscriptionView,
    timings_view,
)
from atoll.control.bounds import Bounds
from atoll.control.liveness import Liveness
from atoll.control.repo import Repo, mutate
from atoll.errors import (
    ConflictError,
    InvalidError,
    NotFoundError,
    RetryableError,
    UserError,
)
from atoll.model import (
    Cluster,
    Region,
    Resource,
    ServiceExport,
    ServiceImport,
    TrafficPolicy,
    kind_by_plural,
)
from atoll.sync import NodeStatus

__all__ = ["ApiContext", "build_app"]

log = logging.getLogger("atoll.api")
R = TypeVar("R", bound=Resource)
ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


@dataclass(frozen=True, slots=True)
class ApiContext:
    repo: Repo
    liveness: Liveness
    server_id: str
    nodes: Callable[[], list[NodeStatus]]
    leader: Callable[[], str | None]
    is_leader: Callable[[], bool]
    ready: Callable[[], bool]
    #: the trust hub; None on an --insecure control plane
    trust: TrustApi | None = None
    #: the stated withdrawal bounds (from the configured timings)
    bounds: Callable[[], Bounds] | None = None
    #: hands a drill to the job queue; None when no broker is configured
    enqueue: Callable[[str], None] | None = None


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "field": field})


def _node_view(n: NodeStatus) -> NodeView:
    return NodeView(
        id=n.node.id,
        role=n.node.role,
        cluster=n.node.cluster,
        peer=n.peer,
        connected=n.connected,
        connected_at=n.connected_at,
        disconnected_at=n.disconnected_at,
        software_version=n.node.software_version,
        reports=n.reports,
        last_report_error=n.last_report_error,
        subscriptions=[
            SubscriptionView(
                type=s.type,
                acked_version=s.acked_version,
                pending_nonce=s.pending_nonce,
                held=s.held,
                pushes=s.pushes,
                nacks=s.nacks,
                last_nack_message=s.last_nack.message if s.last_nack else None,
                last_nack_version=s.last_nack.system_version if s.last_nack else None,
                last_nack_resources=list(s.last_nack.resources) if s.last_nack else [],
                last_nack_at=s.last_nack_at,
            )
            for s in n.subscriptions
        ],
    )


def _service_rows(imports: list[ServiceImport]) -> list[ServiceRow]:
    return [
        ServiceRow(
            namespace=imp.metadata.namespace or "",
            name=imp.metadata.name,
            ports=[
                f"{p.name + ':' if p.name else ''}{p.port}/{p.protocol}" for p in imp.spec.ports
            ],
            clusters={
                t.cluster: f"{t.endpoints_healthy}/{t.endpoints_total}" for t in imp.spec.targets
            },
            conflicts=[c.cluster for c in imp.status.conflicts],
        )
        for imp in imports
    ]


def build_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Atoll control plane",
        version=__version__,
        description="Federation state: clusters, exports, imports, traffic policies, regions.",
    )
    repo = ctx.repo

    # -- errors ------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in ("body", "path", "query", "header"):
            loc = loc[1:]
        field = ".".join(loc) or None
        return _error(422, f"{field or 'request'}: {first.get('msg')}", field)

    @app.exception_handler(UserError)
    async def _user(_: Request, exc: UserError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return _error(404, str(exc))
        if isinstance(exc, ConflictError):
            return _error(409, f"{exc}; re-read the object and retry")
        field = exc.field if isinstance(exc, InvalidError) else None
        return _error(422, str(exc), field)

    @app.exception_handler(RetryableError)
    async def _retry(_: Request, exc: RetryableError) -> JSONResponse:
        return _error(503, f"store unavailable, retry shortly: {exc}")

    # -- health ------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        if not ctx.ready():
            return _error(503, "not ready: store or sync feeds still starting")
        await repo.store.revision()  # raises StoreUnavailable -> 503
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- clusters ----------------------------------------------------------
    async def cluster_view(c: Cluster) -> ClusterView:
        return ClusterView(cluster=c, lease_remaining=await ctx.liveness.remaining(c.metadata.name))

    @app.get("/v1/clusters", tags=["clusters"])
    async def list_clusters() -> list[ClusterView]:
        clusters, _ = await repo.list(Cluster)
        return [await cluster_view(c) for c in clusters]

    @app.get("/v1/clusters/{name}", tags=["clusters"], responses=ERRORS)
    async def get_cluster(name: str) -> ClusterView:
        return await cluster_view(await _must(Cluster, (name,)))

    @app.put("/v1/clusters/{name}/admin-state", tags=["clusters"], responses=ERRORS)
    async def set_admin_state(name: str, body: AdminStateBody) -> Cluster:
        await _must(Cluster, (name,))

        def change(current: Cluster | None) -> Cluster | None:
            if current is None:
                return None
            spec = current.spec.model_copy(update={"admin_state": body.admin_state})
            return current.model_copy(update={"spec": spec})

        updated = await mutate(repo, Cluster, (name,), change)
        if updated is None:
            raise NotFoundError(f"cluster {name!r} not found")
        log.info(
            "cluster admin state set",
            extra={"cluster": name, "admin_state": body.admin_state, "reason": body.reason},
        )
        return updated

    # -- exports / imports (read-only) ---------------------------------------
    @app.get("/v1/exports", tags=["services"])
    async def list_exports(
        cluster: str | None = None, namespace: str | None = None
    ) -> list[ServiceExport]:
        exports, _ = await (
            repo.list(ServiceExport, cluster) if cluster else repo.list(ServiceExport)
        )
        return [e for e in exports if namespace is None or e.metadata.namespace == namespace]

    @app.get("/v1/exports/{cluster}/{namespace}/{name}", tags=["services"], responses=ERRORS)
    async def get_export(cluster: str, namespace: str, name: str) -> ServiceExport:
        return await _must(ServiceExport, (cluster, namespace, name))

    @app.get("/v1/imports", tags=["services"])
    async def list_imports(namespace: str | None = None) -> list[ServiceImport]:
        imports, _ = await (
            repo.list(ServiceImport, namespace) if namespace else repo.list(ServiceImport)
        )
        return imports

    @app.get("/v1/imports/{namespace}/{name}", tags=["services"], responses=ERRORS)
    async def get_import(namespace: str, name: str) -> ServiceImport:
        return await _must(ServiceImport, (namespace, name))

    # -- regions -----------------------------------------------------------
    @app.get("/v1/regions", tags=["regions"])
    async def list_regions() -> list[Region]:
        return (await repo.list(Region))[0]

    @app.get("/v1/regions/{name}", tags=["regions"], responses=ERRORS)
    async def get_region(name: str) -> Region:
        return await _must(Region, (name,))

    @app.put("/v1/regions/{name}", tags=["regions"], responses=ERRORS, status_code=200)
    async def put_region(
        name: str,
        body: Region,
        response: Response,
        if_match: Annotated[int | None, Header()] = None,
    ) -> Region:
        return await _put(body, (name,), response, if_match)

    @app.delete("/v1/regions/{name}", tags=["regions"], responses=ERRORS, status_code=204)
    async def delete_region(
        name: str, if_match: Annotated[int | None, Header()] = None
    ) -> Response:
        return await _delete(Region, (name,), if_match)

    # -- traffic policies ----------------------------------------------------
    @app.get("/v1/policies", tags=["policies"])
    async def list_policies(namespace: str | None = None) -> list[TrafficPolicy]:
        return (
            await (repo.list(TrafficPolicy, namespace) if namespace else repo.list(TrafficPolicy))
        )[0]

    @app.get("/v1/policies/{namespace}/{name}", tags=["policies"], responses=ERRORS)
    async def get_policy(namespace: str, name: str) -> TrafficPolicy:
        return await _must(TrafficPolicy, (namespace, name))

    @app.put("/v1/policies/{namespace}/{name}", tags=["policies"], responses=ERRORS)
    async def put_policy(
        namespace: str,
        name: str,
        body: TrafficPolicy,
        response: Response,
        if_match: Annotated[int | None, Header()] = None,
    ) -> TrafficPolicy:
        return await _put(body, (namespace, name), response, if_match)

    @app.delete(
        "/v1/policies/{namespace}/{name}", tags=["policies"], responses=ERRORS, status_code=204
    )
    async def delete_policy(
        namespace: str, name: str, if_match: Annotated[int | None, Header()] = None
    ) -> Response:
        return await _delete(TrafficPolicy, (namespace, name), if_match)

    # -- sync nodes and the status summary ----------------------------------
    @app.get("/v1/nodes", tags=["sync"])
    async def list_nodes() -> list[NodeView]:
        return [_node_view(n) for n in ctx.nodes()]

    @app.get("/v1/status", tags=["status"])
    async def status() -> StatusView:
        clusters, revision = await repo.list(Cluster)
        imports, _ = await repo.list(ServiceImport)
        return StatusView(
            server_id=ctx.server_id,
            leader=ctx.leader(),
            is_leader=ctx.is_leader(),
            store_revision=revision,
            clusters=[await cluster_view(c) for c in clusters],
            services=_service_rows(imports),
            nodes=[_node_view(n) for n in ctx.nodes()],
            timings=timings_view(ctx.bounds()) if ctx.bounds is not None else None,
        )

    # -- drills and timings ------------------------------------------------------
    if ctx.bounds is not None:
        app.include_router(
            drill_router(DrillContext(repo=repo, bounds=ctx.bounds, enqueue=ctx.enqueue))
        )

    # -- trust: join tokens, bundles, rotation, federation, status -------------
    app.include_router(build_trust_router(repo, ctx.trust, clock=lambda: datetime.now(UTC)))

    # -- anything else under /v1 is an unknown kind ---------------------------
    @app.api_route(
        "/v1/{plural}", methods=["GET", "PUT", "POST", "DELETE"], include_in_schema=False
    )
    @app.api_route(
        "/v1/{plural}/{rest:path}",
        methods=["GET", "PUT", "POST", "DELETE"],
        include_in_schema=False,
    )
    async def unknown(plural: str, rest: str = "") -> Response:
        kind_by_plural(plural)  # raises NotFoundError for unknown kinds -> 404
        return _error(405, f"{plural} are read-only or use other paths; see /docs")

    # -- helpers -------------------------------------------------------------
    async def _must(cls: type[R], path: tuple[str, ...]) -> R:
        obj = await repo.get(cls, path)
        if obj is None:
            raise NotFoundError(f"{cls.KIND} {'/'.join(path)} not found")
        return obj

    async def _put(body: R, path: tuple[str, ...], response: Response, if_match: int | None) -> R:
        if body.path() != path:
            raise InvalidError(
                f"metadata.name: the body names {'/'.join(body.path())} "
                f"but the URL names {'/'.join(path)}",
                field="metadata.name",
            )
        expect = if_match if if_match is not None else (body.metadata.revision or None)
        existing = await repo.get(type(body), path)
        stored = await repo.put(body, expect=expect)
        response.status_code = 201 if existing is None else 200
        log.info(
            "resource written", extra={"key": stored.key(), "revision": stored.metadata.revision}
        )
        return stored

    async def _delete(cls: type[Resource], path: tuple[str, ...], if_match: int | None) -> Response:
        if not await repo.delete(cls, path, expect=if_match):
            raise NotFoundError(f"{cls.KIND} {'/'.join(path)} not found")
        return Response(status_code=204)

    return app
