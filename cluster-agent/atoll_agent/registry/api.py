"""The registry's HTTP API (FastAPI), built by :func:`build_registry_app`.

Routes (JSON bodies; every catalog response carries ``X-Atoll-Index``)::

    PUT    /v1/services/{namespace}/{name}                     ServiceSpec -> service
    GET    /v1/services/{namespace}/{name}                     -> service with instances
    DELETE /v1/services/{namespace}/{name}                     removes its instances too
    GET    /v1/services[?namespace=ns]                         -> {index, services}
    PUT    /v1/services/{namespace}/{name}/instances/{id}      InstanceSpec -> instance
    DELETE /v1/services/{namespace}/{name}/instances/{id}
    PUT    /v1/services/{namespace}/{name}/instances/{id}/health   {"health": ...}
    GET    /v1/services/{namespace}/{name}/instances           -> {index, instances}
    GET    /v1/catalog?index=N&epoch=E&wait=30s                blocking query -> snapshot
    GET    /healthz, /metrics

PUTs answer 201 when they created the object, 200 otherwise; objects carry an
``ETag`` of their ``modify_index``. ``If-Match: "<modify_index>"`` and
``If-None-Match: *`` make a PUT or DELETE conditional (412 when the object
changed or exists), the compare-and-swap of the catalog operations.

``GET /v1/catalog`` is a blocking query in the manner of Consul's: with
``index`` equal to the current index (and ``epoch`` equal, when given) it
waits up to ``wait`` (Go-style duration: ``500ms``, ``30s``, ``5m``, ``1m30s``;
default 60s, silently capped at ``max_wait``, 5 minutes) for a change;
otherwise it answers at once. The snapshot is serialized once per index and
the bytes are shared by every long poll it answers.

Errors are JSON ``{"error", "message", "field"}``: 404 for an unknown service
or instance (registering an instance of an unknown service says to register
the service first), 412 for a failed precondition, 413 for an oversized body,
422 for invalid input — FastAPI's validation errors are reshaped to name the
field in one line (``path.namespace: Value error, 'Shop' is not a DNS label:
...``) and keep pydantic's list in ``detail`` — and 503 when the state file
could not be written (retry).
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atoll.errors import (
    AtollError,
    ConflictError,
    InvalidError,
    NotFoundError,
    RetryableError,
    UserError,
)
from atoll.model.base import Frozen
from atoll.model.names import DnsLabel
from atoll_agent.registry.catalog import (
    DeleteInstance,
    DeleteService,
    PutInstance,
    PutService,
    SetHealth,
    require_service,
)
from atoll_agent.registry.metrics import CatalogCollector, RequestMetrics
from atoll_agent.registry.model import (
    CatalogSnapshot,
    Health,
    InstanceId,
    InstanceSpec,
    RegisteredService,
    ServiceInstance,
    ServiceSpec,
)
from atoll_agent.registry.runtime import Registry

__all__ = [
    "DEFAULT_WAIT",
    "MAX_BODY_BYTES",
    "MAX_WAIT",
    "Deleted",
    "HealthReport",
    "InstanceList",
    "ServiceList",
    "build_registry_app",
    "parse_wait",
]

DEFAULT_WAIT = 60.0
MAX_WAIT = 300.0
MAX_BODY_BYTES = 1 << 20

INDEX_HEADER = "X-Atoll-Index"


class ServiceList(Frozen):
    index: int
    services: tuple[RegisteredService, ...]


class InstanceList(Frozen):
    index: int
    namespace: str
    service: str
    instances: tuple[ServiceInstance, ...]


class Deleted(Frozen):
    index: int


class HealthReport(Frozen):
    health: Health


class Healthz(Frozen):
    status: str
    index: int


class ErrorBody(Frozen):
    error: str
    message: str
    field: str | None = None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wait(text: str) -> float:
    """Seconds in a Go-style duration (``30s``, ``500ms``, ``1m30s``) or a bare number.

    Raises ``ValueError`` for anything else (negative, empty, unknown unit).
    """
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if not text or _DURATION.sub("", text) != "":
        raise ValueError(
            f"{text!r} is not a duration: use e.g. 500ms, 30s, 5m or 1m30s (or seconds)"
        )
    return sum(float(n) * _UNIT[unit] for n, unit in _DURATION.findall(text))


def _expect(if_match: str | None, if_none_match: str | None) -> int | None:
    """The compare-and-swap expectation from ``If-Match`` / ``If-None-Match: *``."""
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise InvalidError("If-None-Match: only '*' is supported", field="If-None-Match")
        return 0
    if if_match is None:
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidError(
            f'If-Match: {if_match!r} is not an ETag this API issued (e.g. "12")',
            field="If-Match",
        )
    return int(tag)


def _json(model: BaseModel, *, index: int, status: int = 200, etag: int | None = None) -> Response:
    headers = {INDEX_HEADER: str(index)}
    if etag is not None:
        headers["ETag"] = f'"{etag}"'
    return Response(
        model.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


def _error(status: int, kind: str, message: str, field: str | None = None) -> JSONResponse:
    body = ErrorBody(error=kind, message=message, field=field)
    return JSONResponse(body.model_dump(), status_code=status)


class _BodyLimit:
    """Reject request bodies over ``limit`` bytes with 413, before any parsing."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                too_big = _error(413, "too_large", f"request body over {self.limit} bytes")
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _CatalogBytes:
    """The JSON of the last snapshot served, reused while the index stays the same."""

    def __init__(self) -> None:
        self._snapshot: CatalogSnapshot | None = None
        self._body = b""

    def encode(self, snapshot: CatalogSnapshot) -> bytes:
        if snapshot is not self._snapshot:
            self._snapshot, self._body = snapshot, snapshot.model_dump_json().encode()
        return self._body


Namespace = Annotated[DnsLabel, Path(description="namespace (DNS label)")]
Name = Annotated[DnsLabel, Path(description="service name (DNS label)")]
Id = Annotated[InstanceId, Path(description="instance id (DNS label or UUID)")]
IfMatch = Annotated[str | None, Header(description='"<modify_index>" of the object')]
IfNoneMatch = Annotated[str | None, Header(description="* : only if absent")]


def build_registry_app(
    registry: Registry,
    *,
    metrics: CollectorRegistry | None = None,
    default_wait: float = DEFAULT_WAIT,
    max_wait: float = MAX_WAIT,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The registry's ASGI app over ``registry``.

    ``metrics`` is the Prometheus registry ``/metrics`` serves; by default a
    new one (with process metrics), so several apps can live in one process.
    """
    if metrics is None:
        metrics = CollectorRegistry()
        ProcessCollector(registry=metrics)
    metrics.register(CatalogCollector(registry))
    app = FastAPI(
        title="Atoll registry",
        summary="Per-cluster service catalog: services, instances and their health",
        version="1",
    )
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(RequestMetrics, registry=metrics)
    catalog_bytes = _CatalogBytes()

    @app.exception_handler(AtollError)
    async def _atoll_error(request: Request, exc: AtollError) -> JSONResponse:
        field = exc.field if isinstance(exc, InvalidError) else None
        if isinstance(exc, NotFoundError):
            return _error(404, "not_found", str(exc))
        if isinstance(exc, ConflictError):
            return _error(412, "precondition_failed", str(exc))
        if isinstance(exc, InvalidError):
            return _error(422, "invalid", str(exc), field)
        if isinstance(exc, UserError):
            return _error(400, "bad_request", str(exc))
        if isinstance(exc, RetryableError):
            return _error(503, "unavailable", str(exc))
        return _error(500, "internal", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"]) or "(request)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        body = ErrorBody(error="invalid", message=f"{field}: {first['msg']}{more}", field=field)
        return JSONResponse(
            {**body.model_dump(), "detail": jsonable_encoder(errors)}, status_code=422
        )

    errors: dict[int | str, dict[str, object]] = {
        404: {"model": ErrorBody},
        412: {"model": ErrorBody},
        422: {"model": ErrorBody},
        503: {"model": ErrorBody},
    }

    @app.put("/v1/services/{namespace}/{name}", response_model=RegisteredService, responses=errors)
    async def put_service(
        namespace: Namespace,
        name: Name,
        spec: ServiceSpec,
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        op = PutService(namespace, name, spec, expect=_expect(if_match, if_none_match))
        change = await registry.submit(op)
        svc = change.after.service(namespace, name)
        assert svc is not None
        created = change.before.service(namespace, name) is None
        return _json(
            svc, index=change.after.index, status=201 if created else 200, etag=svc.modify_index
        )

    @app.get("/v1/services/{namespace}/{name}", response_model=RegisteredService, responses=errors)
    async def get_service(namespace: Namespace, name: Name) -> Response:
        snap = registry.snapshot
        svc = require_service(snap, namespace, name)
        return _json(svc, index=snap.index, etag=svc.modify_index)

    @app.delete("/v1/services/{namespace}/{name}", response_model=Deleted, responses=errors)
    async def delete_service(
        namespace: Namespace, name: Name, if_match: IfMatch = None
    ) -> Response:
        change = await registry.submit(
            DeleteService(namespace, name, expect=_expect(if_match, None))
        )
        return _json(Deleted(index=change.after.index), index=change.after.index)

    @app.get("/v1/services", response_model=ServiceList)
    async def list_services(
        namespace: Annotated[DnsLabel | None, Query(description="only this namespace")] = None,
    ) -> Response:
        snap = registry.snapshot
        services = tuple(s for s in snap.services if namespace is None or s.namespace == namespace)
        return _json(ServiceList(index=snap.index, services=services), index=snap.index)

    @app.put(
        "/v1/services/{namespace}/{name}/instances/{instance_id}",
        response_model=ServiceInstance,
        responses=errors,
    )
    async def put_instance(
        namespace: Namespace,
        name: Name,
        instance_id: Id,
        spec: InstanceSpec,
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        expect = _expect(if_match, if_none_match)
        change = await registry.submit(PutInstance(namespace, name, instance_id, spec, expect))
        inst = _instance(change.after, namespace, name, instance_id)
        before = change.before.service(namespace, name)
        created = before is None or before.instance(instance_id) is None
        return _json(
            inst, index=change.after.index, status=201 if created else 200, etag=inst.modify_index
        )

    @app.delete(
        "/v1/services/{namespace}/{name}/instances/{instance_id}",
        response_model=Deleted,
        responses=errors,
    )
    async def delete_instance(
        namespace: Namespace, name: Name, instance_id: Id, if_match: IfMatch = None
    ) -> Response:
        op = DeleteInstance(namespace, name, instance_id, expect=_expect(if_match, None))
        change = await registry.submit(op)
        return _json(Deleted(index=change.after.index), index=change.after.index)

    @app.put(
        "/v1/services/{namespace}/{name}/instances/{instance_id}/health",
        response_model=ServiceInstance,
        responses=errors,
    )
    async def put_health(
        namespace: Namespace, name: Name, instance_id: Id, report: HealthReport
    ) -> Response:
        change = await registry.submit(SetHealth(namespace, name, instance_id, report.health))
        inst = _instance(change.after, namespace, name, instance_id)
        return _json(inst, index=change.after.index, etag=inst.modify_index)

    @app.get(
        "/v1/services/{namespace}/{name}/instances", response_model=InstanceList, responses=errors
    )
    async def list_instances(namespace: Namespace, name: Name) -> Response:
        snap = registry.snapshot
        svc = require_service(snap, namespace, name)
        body = InstanceList(
            index=snap.index, namespace=namespace, service=name, instances=svc.instances
        )
        return _json(body, index=snap.index)

    @app.get("/v1/catalog", response_model=CatalogSnapshot, responses=errors)
    async def get_catalog(
        index: Annotated[int | None, Query(ge=0, description="block while this is current")] = None,
        epoch: Annotated[str | None, Query(max_length=64, description="epoch of index")] = None,
        wait: Annotated[
            str | None, Query(max_length=32, description="longest wait, e.g. 30s (max 5m)")
        ] = None,
    ) -> Response:
        if index is None:
            snap = registry.snapshot
        else:
            try:
                seconds = parse_wait(wait) if wait is not None else default_wait
            except ValueError as exc:
                raise InvalidError(f"query.wait: {exc}", field="query.wait") from None
            snap = await registry.wait_for_change(
                index=index, epoch=epoch, wait=min(seconds, max_wait)
            )
        return Response(
            catalog_bytes.encode(snap),
            media_type="application/json",
            headers={INDEX_HEADER: str(snap.index), "X-Atoll-Epoch": snap.epoch},
        )

    @app.get("/healthz")
    async def healthz() -> Healthz:
        return Healthz(status="ok", index=registry.snapshot.index)

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app


def _instance(
    snap: CatalogSnapshot, namespace: str, service: str, instance_id: str
) -> ServiceInstance:
    svc = snap.service(namespace, service)
    inst = svc.instance(instance_id) if svc is not None else None
    assert inst is not None, "the operation just wrote it"
    return inst
