"""REST routes for drills and the stated timing bounds.

``POST /v1/drills`` records a drill and hands it to the job queue; workers
report progress with ``PUT /v1/drills/{name}/status`` (compare-and-swap on
the revision in ``If-Match``); anyone follows with ``GET``. ``GET
/v1/timings`` states the withdrawal bounds the drills verify against.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header
from pydantic import Field, model_validator

from atoll.api.views import TimingsView, timings_view
from atoll.control.bounds import Bounds
from atoll.control.repo import Repo, mutate
from atoll.errors import InvalidError, NotFoundError, RetryableError
from atoll.model import Cluster, Drill, DrillSpec, DrillStatus, Metadata
from atoll.model.base import Frozen
from atoll.model.drill import DrillKind
from atoll.model.names import DnsLabel

__all__ = ["DrillContext", "DrillRequest", "drill_router"]


@dataclass(frozen=True, slots=True)
class DrillContext:
    repo: Repo
    bounds: Callable[[], Bounds]
    #: hands a drill name to the job queue; None when no broker is configured
    enqueue: Callable[[str], None] | None


class DrillRequest(Frozen):
    kind: DrillKind = "failover"
    clusters: list[DnsLabel] = Field(default_factory=list, max_length=64)
    region: DnsLabel | None = None
    hold_seconds: float = Field(10.0, ge=0.0, le=3600.0)
    bound_seconds: float | None = Field(None, gt=0.0, le=3600.0)
    zone: str = Field("atoll.test.", min_length=1, max_length=253)

    @model_validator(mode="after")
    def _one_target(self) -> DrillRequest:
        if bool(self.clusters) == (self.region is not None):
            raise ValueError("give either clusters or a region")
        return self


def drill_router(ctx: DrillContext) -> APIRouter:
    router = APIRouter(tags=["drills"])
    repo = ctx.repo

    @router.get("/v1/timings")
    async def timings() -> TimingsView:
        return timings_view(ctx.bounds())

    @router.post("/v1/drills", status_code=201)
    async def create_drill(body: DrillRequest) -> Drill:
        if ctx.enqueue is None:
            raise RetryableError(
                "no job broker is configured: start the control plane with --broker "
                "(redis://... or filesystem:///dir) and run `atoll worker` against it"
            )
        clusters, _ = await repo.list(Cluster)
        known = {c.metadata.name: c for c in clusters}
        if body.region is not None:
            targets = sorted(n for n, c in known.items() if c.spec.region == body.region)
            if not targets:
                raise InvalidError(f"region {body.region!r} has no clusters", field="region")
        else:
            missing = [n for n in body.clusters if n not in known]
            if missing:
                raise InvalidError(f"unknown cluster(s): {', '.join(missing)}", field="clusters")
            targets = list(body.clusters)
        now = datetime.now(UTC)
        name = f"drill-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        drill = Drill(
            metadata=Metadata(name=name, owner="api"),
            spec=DrillSpec(
                kind=body.kind,
                clusters=targets,
                region=body.region,
                hold_seconds=body.hold_seconds,
                bound_seconds=body.bound_seconds,
                zone=body.zone,
            ),
            status=DrillStatus(heartbeat_at=now),
        )
        stored = await repo.put(drill, expect=0)
        ctx.enqueue(name)
        return stored

    @router.get("/v1/drills")
    async def list_drills() -> list[Drill]:
        drills, _ = await repo.list(Drill)
        return sorted(drills, key=lambda d: d.metadata.created_revision, reverse=True)

    @router.get("/v1/drills/{name}")
    async def get_drill(name: str) -> Drill:
        found = await repo.get(Drill, (name,))
        if found is None:
            raise NotFoundError(f"drill {name!r} not found")
        return found

    @router.put("/v1/drills/{name}/status")
    async def put_status(name: str, body: DrillStatus, if_match: Annotated[int, Header()]) -> Drill:
        found = await repo.get(Drill, (name,))
        if found is None:
            raise NotFoundError(f"drill {name!r} not found")
        return await repo.put(found.model_copy(update={"status": body}), expect=if_match)

    @router.post("/v1/drills/{name}/cancel")
    async def cancel(name: str) -> Drill:
        def change(d: Drill | None) -> Drill | None:
            if d is None or d.finished:
                return None
            return d.model_copy(
                update={"status": d.status.model_copy(update={"cancel_requested": True})}
            )

        updated = await mutate(repo, Drill, (name,), change)
        if updated is None:
            raise NotFoundError(f"drill {name!r} not found")
        return updated

    return router
