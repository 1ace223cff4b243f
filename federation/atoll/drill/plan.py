"""Pure drill planning: what leaves, what remains, what each region would be answered.

Two ways a cluster can leave, and they differ the way they differ in
production:

* ``drain`` — the operator's admin state: the cluster stays listed in every
  import, marked drained and unhealthy (so DNS still knows it, and a policy
  that answers "the last healthy set" could still fall back to it);
* ``fail`` — the cluster is gone (its agent's lease expired): the control
  plane withdraws it from every import entirely.

Predictions build the zone with :func:`atoll_dns.snapshot.build_zone` and
decide per client region with :func:`atoll_dns.strategy.decide` — the very
functions the DNS servers run — so ``--dry-run`` and ``what-if`` cannot
drift from what the servers will actually answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Literal

from atoll.model import ImportTarget, PlanRow, Region, ServiceImport, TrafficPolicy
from atoll_dns.config import DnsConfig
from atoll_dns.geo import DistanceTable
from atoll_dns.snapshot import build_zone
from atoll_dns.strategy import decide

__all__ = ["Leave", "Prediction", "WhatIfRow", "disrupt", "plan_failover", "predict", "what_if"]

Leave = Literal["drain", "fail"]


def _leaving_target(t: ImportTarget) -> ImportTarget:
    return t.model_copy(update={"admin_state": "drained", "healthy": False, "addresses": []})


def disrupt(imports: Iterable[ServiceImport], down: Set[str], how: Leave) -> list[ServiceImport]:
    """The imports as the control plane would derive them once ``down`` leave."""
    out: list[ServiceImport] = []
    for imp in imports:
        targets = [
            (_leaving_target(t) if how == "drain" else None) if t.cluster in down else t
            for t in imp.spec.targets
        ]
        kept = [t for t in targets if t is not None]
        if not kept:
            continue  # every exporter failed: the import is withdrawn
        out.append(imp.model_copy(update={"spec": imp.spec.model_copy(update={"targets": kept})}))
    return out


def plan_failover(imports: Iterable[ServiceImport], down: Set[str]) -> list[PlanRow]:
    """For every service served by a leaving cluster: who takes over, with warnings."""
    rows: list[PlanRow] = []
    for imp in imports:
        leaving = [t for t in imp.spec.targets if t.cluster in down]
        if not leaving:
            continue
        remaining = [t for t in imp.spec.targets if t.cluster not in down and t.healthy]
        out_eps = sum(t.endpoints_healthy for t in leaving)
        in_eps = sum(t.endpoints_healthy for t in remaining)
        warnings: list[str] = []
        if not remaining:
            warnings.append(
                "no healthy cluster remains: DNS answers per the policy's on_all_unhealthy"
            )
        elif in_eps < out_eps:
            warnings.append(
                f"capacity: {in_eps} healthy endpoint(s) remain for the {out_eps} leaving"
            )
        rows.append(
            PlanRow(
                service=f"{imp.metadata.namespace}/{imp.metadata.name}",
                leaving=sorted(t.cluster for t in leaving),
                remaining=sorted(t.cluster for t in remaining),
                healthy_endpoints_leaving=out_eps,
                healthy_endpoints_remaining=in_eps,
                warnings=warnings,
            )
        )
    return sorted(rows, key=lambda r: r.service)


@dataclass(frozen=True, slots=True)
class Prediction:
    service: str
    #: the client's region (None: a client no region map knows)
    client_region: str | None
    outcome: str
    clusters: tuple[str, ...]
    addresses: tuple[str, ...]
    ttl: int
    trace: tuple[str, ...]


def predict(
    imports: Sequence[ServiceImport],
    policies: Sequence[TrafficPolicy],
    regions: Sequence[Region],
    *,
    zone: str = "atoll.test.",
) -> list[Prediction]:
    """The A/AAAA answer every service gets, per client region (and for an unknown one)."""
    snapshot = build_zone(DnsConfig(zone=zone), imports, policies, regions)
    distances = DistanceTable(snapshot.regions, snapshot.distances)
    client_regions: list[str | None] = [r.metadata.name for r in regions]
    client_regions.append(None)
    out: list[Prediction] = []
    for svc in snapshot.services:
        for region in client_regions:
            d = decide(
                svc, region=region, distances=distances, unhealthy_ttl=snapshot.unhealthy_ttl
            )
            out.append(
                Prediction(
                    service=f"{svc.namespace}/{svc.name}",
                    client_region=region,
                    outcome=d.outcome,
                    clusters=tuple(t.cluster for t in d.targets),
                    addresses=tuple(sorted(str(a) for t in d.targets for a in (*t.ipv4, *t.ipv6))),
                    ttl=d.ttl,
                    trace=d.trace,
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class WhatIfRow:
    service: str
    client_region: str | None
    before: Prediction
    after: Prediction | None

    @property
    def changed(self) -> bool:
        return self.after is None or self.after.clusters != self.before.clusters


def what_if(
    imports: Sequence[ServiceImport],
    policies: Sequence[TrafficPolicy],
    regions: Sequence[Region],
    *,
    down: Set[str],
    how: Leave = "fail",
    zone: str = "atoll.test.",
) -> list[WhatIfRow]:
    """Answers before and after ``down`` leave, per service and client region."""
    before = predict(imports, policies, regions, zone=zone)
    after = {
        (p.service, p.client_region): p
        for p in predict(disrupt(imports, down, how), policies, regions, zone=zone)
    }
    return [
        WhatIfRow(p.service, p.client_region, p, after.get((p.service, p.client_region)))
        for p in before
    ]
