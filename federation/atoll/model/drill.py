"""Drill: a failover exercise, recorded as a job in the store.

A drill takes clusters out of service on purpose — ``failover`` drains them
(admin state), ``chaos`` kills their processes — verifies that every DNS
server stops pointing at them within a bound, holds, restores, verifies the
way back, and reports. It runs on a worker (Celery); its *whole* state lives
in this resource, so any CLI or API client can follow it, a worker that dies
can be replaced by another that resumes from the recorded steps, and the
control plane can roll back a drill nobody is running any more.

``spec`` is what was asked; ``status`` is written by the worker holding the
drill (``status.worker``, refreshed by ``status.heartbeat_at``) and, when that
worker is gone, by the control plane's janitor.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from atoll.model.base import Frozen, Resource, register
from atoll.model.cluster import AdminState
from atoll.model.names import DnsLabel

__all__ = [
    "TERMINAL_PHASES",
    "Drill",
    "DrillKind",
    "DrillPhase",
    "DrillSpec",
    "DrillStatus",
    "DrillStep",
    "Measurement",
    "PlanRow",
    "StepName",
]

DrillKind = Literal["failover", "chaos"]
DrillPhase = Literal["pending", "running", "succeeded", "failed", "rolled_back", "cancelled"]
TERMINAL_PHASES: frozenset[str] = frozenset({"succeeded", "failed", "rolled_back", "cancelled"})
StepName = Literal[
    "plan", "baseline", "disrupt", "verify_failover", "hold", "restore", "verify_restore"
]
STEP_ORDER: tuple[StepName, ...] = (
    "plan",
    "baseline",
    "disrupt",
    "verify_failover",
    "hold",
    "restore",
    "verify_restore",
)


class DrillSpec(Frozen):
    kind: DrillKind = "failover"
    #: the clusters taken out (a --region drill lists every cluster of the region)
    clusters: list[DnsLabel] = Field(min_length=1, max_length=64)
    region: DnsLabel | None = None
    hold_seconds: float = Field(10.0, ge=0.0, le=3600.0)
    #: seconds every DNS server gets to stop answering with the clusters; None =
    #: the bound the control plane computes from its timings
    bound_seconds: float | None = Field(None, gt=0.0, le=3600.0)
    #: the federated DNS zone to query (e.g. "atoll.test.")
    zone: str = Field("atoll.test.", min_length=1, max_length=253)

    @model_validator(mode="after")
    def _unique(self) -> DrillSpec:
        if len(set(self.clusters)) != len(self.clusters):
            raise ValueError("a cluster is listed twice")
        return self


class DrillStep(Frozen):
    name: StepName
    state: Literal["pending", "running", "done", "failed", "skipped"] = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    detail: str = Field("", max_length=4000)


class Measurement(Frozen):
    """Time from the disruption (or the restore) until one server's answers changed."""

    server: DnsLabel
    path: Literal["dns", "gateway"] = "dns"
    phase: Literal["failover", "restore"]
    seconds: float | None = Field(None, ge=0.0, description="None: not observed (see note)")
    within_bound: bool
    note: str = Field("", max_length=500)


class PlanRow(Frozen):
    """Where one service's traffic goes when the drilled clusters leave."""

    service: str
    leaving: list[DnsLabel]
    remaining: list[DnsLabel]
    healthy_endpoints_leaving: int = Field(ge=0)
    healthy_endpoints_remaining: int = Field(ge=0)
    warnings: list[str] = Field(default_factory=list)


class DrillStatus(Frozen):
    phase: DrillPhase = "pending"
    worker: str | None = None
    heartbeat_at: datetime | None = None
    attempt: int = Field(0, ge=0)
    steps: list[DrillStep] = Field(default_factory=lambda: [DrillStep(name=n) for n in STEP_ORDER])
    #: admin states before the drill, to restore (and to roll back to)
    restore_states: dict[DnsLabel, AdminState] = Field(default_factory=dict)
    bound_seconds: float | None = None
    plan: list[PlanRow] = Field(default_factory=list)
    #: DNS server (cluster) -> qname -> addresses answered before the disruption
    baseline: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    #: addresses of the leaving clusters: none may be answered after failover
    leaving_addresses: list[str] = Field(default_factory=list)
    measurements: list[Measurement] = Field(default_factory=list)
    cancel_requested: bool = False
    summary: str = Field("", max_length=8000)
    error: str = Field("", max_length=4000)

    def step(self, name: StepName) -> DrillStep:
        return next(s for s in self.steps if s.name == name)


@register
class Drill(Resource):
    KIND: ClassVar[str] = "Drill"
    PLURAL: ClassVar[str] = "drills"
    kind: Literal["Drill"] = "Drill"
    spec: DrillSpec
    status: DrillStatus = Field(default_factory=DrillStatus)

    @property
    def finished(self) -> bool:
        return self.status.phase in TERMINAL_PHASES
