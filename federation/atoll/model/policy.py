"""TrafficPolicy: how the federation routes clients to one service.

One policy per ``namespace/service`` (its metadata name is the service's
name). The DNS servers and gateways evaluate it per request; the skeleton
stores and validates it. Strategies (DESIGN §6):

* ``failover`` — ordered priority groups of clusters or regions; the first
  group with a healthy target wins.
* ``round_robin`` — all healthy targets, rotated.
* ``weighted`` — healthy targets picked by per cluster/region weight.
* ``geo`` — the client's region, else the nearest healthy region, then
  ``priorities`` as the fallback order.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from atoll.model.base import Frozen, Resource, register
from atoll.model.names import DnsLabel

__all__ = ["OnAllUnhealthy", "Strategy", "TrafficPolicy", "TrafficPolicySpec"]

Strategy = Literal["failover", "round_robin", "weighted", "geo"]
OnAllUnhealthy = Literal["last_healthy", "servfail", "empty"]


class TrafficPolicySpec(Frozen):
    strategy: Strategy = "failover"
    #: failover/geo order: each group lists cluster or region names
    priorities: list[list[DnsLabel]] = Field(default_factory=list, max_length=64)
    #: weighted: cluster or region name -> relative weight
    weights: dict[DnsLabel, int] = Field(default_factory=dict)
    ttl: int = Field(30, ge=1, le=86_400, description="DNS answer TTL, seconds")
    min_healthy_endpoints: int = Field(1, ge=1, le=10_000)
    on_all_unhealthy: OnAllUnhealthy = "last_healthy"

    @model_validator(mode="after")
    def _strategy_inputs(self) -> TrafficPolicySpec:
        if self.strategy == "weighted":
            if not self.weights:
                raise ValueError("strategy 'weighted' needs spec.weights")
            if any(w < 0 or w > 1_000_000 for w in self.weights.values()):
                raise ValueError("weights must be between 0 and 1000000")
            if sum(self.weights.values()) == 0:
                raise ValueError("at least one weight must be positive")
        if self.strategy == "failover" and not self.priorities:
            raise ValueError("strategy 'failover' needs spec.priorities")
        seen: set[str] = set()
        for group in self.priorities:
            if not group:
                raise ValueError("a priority group cannot be empty")
            for name in group:
                if name in seen:
                    raise ValueError(f"{name!r} appears in more than one priority group")
                seen.add(name)
        return self


@register
class TrafficPolicy(Resource):
    KIND: ClassVar[str] = "TrafficPolicy"
    PLURAL: ClassVar[str] = "policies"
    PATH: ClassVar[tuple[str, ...]] = ("namespace", "name")
    kind: Literal["TrafficPolicy"] = "TrafficPolicy"
    spec: TrafficPolicySpec

    @model_validator(mode="after")
    def _namespaced(self) -> TrafficPolicy:
        if self.metadata.namespace is None:
            raise ValueError("metadata.namespace is required for a TrafficPolicy")
        return self
