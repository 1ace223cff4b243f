"""ProbeReport: what one cluster's agent sees of the others (active health checks).

Each agent probes every other cluster's federation-facing components (its DNS
server today; its east-west gateway once gateways exist) and reports the
debounced results as one ProbeReport named after itself — the *vantage
point*. The control plane combines the reports with a quorum
(:mod:`atoll.control.derive`): a cluster is failed by probes only when a
majority of (at least two) live vantage points cannot reach it, so one
vantage point's own network trouble never fails a healthy cluster.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from atoll.model.base import Frozen, Resource, register
from atoll.model.names import DnsLabel

__all__ = ["ProbeReport", "ProbeReportSpec", "ProbeResult"]


class ProbeResult(Frozen):
    target: DnsLabel
    path: Literal["dns", "gateway"] = "dns"
    up: bool
    detail: str = Field("", max_length=300)


class ProbeReportSpec(Frozen):
    vantage: DnsLabel
    interval_seconds: float = Field(gt=0.0, le=3600.0)
    rise: int = Field(ge=1, le=100)
    fall: int = Field(ge=1, le=100)
    results: list[ProbeResult] = Field(default_factory=list, max_length=10_000)


@register
class ProbeReport(Resource):
    KIND: ClassVar[str] = "ProbeReport"
    PLURAL: ClassVar[str] = "probes"
    kind: Literal["ProbeReport"] = "ProbeReport"
    spec: ProbeReportSpec
