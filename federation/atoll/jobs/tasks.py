"""Celery tasks. Each is a thin shell: the work is an asyncio runner fed by the store."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from atoll.drill.adapters import (
    AdminStateDisruptor,
    ApiDrillClient,
    DnsResolver,
    GatewayRouteProbe,
)
from atoll.drill.chaos import LabChaos
from atoll.drill.runner import Disruptor, DrillRunner
from atoll.jobs.app import RUN_DRILL

__all__ = ["register_tasks", "run_drill_once"]

log = logging.getLogger("atoll.jobs")


async def run_drill_once(name: str, api: str, *, worker_id: str, lab_control: str | None) -> str:
    """Run (or resume) drill ``name`` against the control plane at ``api``; returns its phase."""
    client = ApiDrillClient(api)
    try:
        drill = await client.get_drill(name)
        disruptor: Disruptor
        if drill.spec.kind == "chaos":
            if lab_control is None:
                why = (
                    "chaos drills kill processes: they need a worker started by `atoll up` "
                    "(which passes --lab-control)"
                )
                log.error(why, extra={"drill": name})
                failed = drill.status.model_copy(update={"phase": "failed", "error": why})
                return (await client.put_status(drill, failed)).status.phase
            disruptor = LabChaos(lab_control)
        else:
            disruptor = AdminStateDisruptor(client, reason=f"drill {name}")
        runner = DrillRunner(
            client, DnsResolver(), disruptor, worker_id=worker_id, routes=GatewayRouteProbe()
        )
        done = await runner.run(name)
        return done.status.phase
    finally:
        await client.close()


def register_tasks(
    app: Any, *, lab_control: str | None = None, api_override: str | None = None
) -> None:
    @app.task(name=RUN_DRILL, bind=True)  # type: ignore[untyped-decorator]
    def run_drill(self: Any, name: str, api: str) -> str:
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
        log.info("drill task received", extra={"drill": name, "worker": worker_id})
        return asyncio.run(
            run_drill_once(name, api_override or api, worker_id=worker_id, lab_control=lab_control)
        )
