"""The lab's control API: kill and restart a cluster's processes, for chaos drills.

Served by ``atoll up`` itself (it owns the processes, so restarted ones are
still its children and still stop on Ctrl-C). Loopback only, and only in a
lab — production clusters are never killed by Atoll.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from atoll.errors import AtollError, NotFoundError
from atoll.lab.manifest import Manifest

__all__ = ["LabActions", "build_control_app"]


class LabActions(Protocol):
    def manifest(self) -> Manifest: ...

    async def kill_cluster(self, name: str) -> list[str]:
        """SIGKILL the cluster's agent and DNS server; returns the components killed."""
        ...

    async def start_cluster(self, name: str) -> list[str]:
        """Start whatever of the cluster is not running; returns the components started."""
        ...


def build_control_app(lab: LabActions) -> FastAPI:
    app = FastAPI(title="Atoll lab control", docs_url=None, redoc_url=None)

    @app.exception_handler(AtollError)
    async def _err(_: object, exc: AtollError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 409
        return JSONResponse(status_code=status, content={"error": str(exc), "field": None})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/lab")
    async def lab_manifest() -> Manifest:
        return lab.manifest()

    @app.post("/v1/clusters/{name}/kill")
    async def kill(name: str) -> dict[str, list[str]]:
        return {"killed": await lab.kill_cluster(name)}

    @app.post("/v1/clusters/{name}/start")
    async def start(name: str) -> dict[str, list[str]]:
        return {"started": await lab.start_cluster(name)}

    return app
