"""Which targets answer a query: the pure decision of a TrafficPolicy strategy.

:func:`decide` takes one service (targets with health, its policy), the
client's region, the distance table and a :class:`Choice` (the injected
randomness: a rotation for ``round_robin``, a number in [0, 1) for
``weighted``) and returns a :class:`Decision`: the chosen targets, the TTL, and
a human-readable trace of why (shown by ``atoll dns query``). Nothing here does
I/O, reads a clock or draws random numbers, so every case is table-tested.

Strategies (issue 4 item 2; names in ``priorities``/``weights`` are cluster or
region names, a cluster name wins over a region name):

* ``failover`` — the first priority group with a healthy target answers with
  all its healthy targets (ordered as the group lists them). Targets named in
  no group form an implicit last group, so a healthy but unlisted cluster is
  preferred to the all-unhealthy fallback.
* ``round_robin`` — all healthy targets, ordered by cluster name and rotated
  by ``choice.rotation``.
* ``weighted`` — one target, drawn with probability proportional to its
  weight. A region's weight is split evenly among its healthy clusters (the
  region gets its share, not each cluster). If no positively weighted target is
  healthy, the healthy zero-weight targets are drawn uniformly.
* ``geo`` — the healthy targets of the region nearest to the client's
  (distance 0 for its own region). Equal distances are broken by failover
  rank, then region name. A client in an unknown region (not located, or with
  no distance data) falls back to the failover order; with no priorities at
  all, it gets every healthy target.

When no target is healthy, ``policy.on_all_unhealthy`` decides: the strategy
runs over the service's *last healthy set* with the short TTL (default,
``outcome="last_healthy"``), or the answer is empty, or SERVFAIL — see
:mod:`atoll_dns.snapshot` for how that set is kept.

For the precomputed packet path, :func:`ring_choices` lists the finitely many
choices whose answers, served in turn, honour the strategy: every rotation for
``round_robin``, and for ``weighted`` a ring of evenly spaced picks visited in
an interleaved order, so each target gets its exact share of every full turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from atoll.model.policy import Strategy
from atoll_dns.geo import DistanceTable
from atoll_dns.snapshot import PolicyRecord, ServiceRecord, TargetRecord

__all__ = ["Choice", "Decision", "Outcome", "decide", "ring_choices"]

Outcome = Literal["answer", "last_healthy", "empty", "servfail"]

#: largest ring of precomputed variants for a weighted service
MAX_WEIGHT_RING = 256
#: largest ring of rotations for a round_robin service
MAX_ROTATIONS = 64


@dataclass(frozen=True, slots=True)
class Choice:
    """Injected randomness: a rotation (round_robin) and a pick in [0, 1) (weighted)."""

    rotation: int = 0
    pick: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    strategy: Strategy
    outcome: Outcome
    targets: tuple[TargetRecord, ...]
    ttl: int
    #: the client's region was consulted (geo)
    uses_region: bool
    #: the result depends on the Choice (a rotating strategy with several candidates)
    uses_choice: bool
    trace: tuple[str, ...]


def _pool(service: ServiceRecord) -> tuple[tuple[TargetRecord, ...], bool]:
    """The candidates: healthy targets, or the last healthy set; and whether it is the latter."""
    healthy = tuple(t for t in service.targets if t.healthy)
    if healthy:
        return healthy, False
    return service.last_healthy, True


def _rank(policy: PolicyRecord, target: TargetRecord) -> tuple[int, int]:
    """(group index, position in group) of the first group naming the cluster or its region."""
    for gi, group in enumerate(policy.priorities):
        for pos, name in enumerate(group):
            if name == target.cluster:
                return gi, pos
        for pos, name in enumerate(group):
            if name == target.region:
                return gi, pos
    return len(policy.priorities), 0


def _names(targets: Sequence[TargetRecord]) -> str:
    return (
        ", ".join(
            f"{t.cluster}({t.region}){' via egress' if t.via == 'egress' else ''}" for t in targets
        )
        or "none"
    )


def _failover(
    policy: PolicyRecord, pool: Sequence[TargetRecord], trace: list[str]
) -> tuple[TargetRecord, ...]:
    ranked = sorted(pool, key=lambda t: (*_rank(policy, t), t.cluster))
    if not ranked:
        return ()
    best = _rank(policy, ranked[0])[0]
    for gi in range(best):
        trace.append(f"priority group {gi + 1} {list(policy.priorities[gi])}: no healthy target")
    chosen = tuple(t for t in ranked if _rank(policy, t)[0] == best)
    label = (
        f"priority group {best + 1} {list(policy.priorities[best])}"
        if best < len(policy.priorities)
        else "targets outside every priority group"
    )
    trace.append(f"{label}: {_names(chosen)}")
    return chosen


def _round_robin(
    pool: Sequence[TargetRecord], rotation: int, trace: list[str]
) -> tuple[TargetRecord, ...]:
    ordered = sorted(pool, key=lambda t: t.cluster)
    if not ordered:
        return ()
    k = rotation % len(ordered)
    chosen = tuple(ordered[k:] + ordered[:k])
    trace.append(f"round_robin over {len(ordered)} targets, rotation {k}: {_names(chosen)}")
    return chosen


def _effective_weights(
    policy: PolicyRecord, pool: Sequence[TargetRecord]
) -> list[tuple[TargetRecord, float]]:
    weights = dict(policy.weights)
    per_region: dict[str, int] = {}
    for t in pool:
        if t.cluster not in weights:
            per_region[t.region] = per_region.get(t.region, 0) + 1
    out: list[tuple[TargetRecord, float]] = []
    for t in sorted(pool, key=lambda t: t.cluster):
        if t.cluster in weights:
            out.append((t, float(weights[t.cluster])))
        elif t.region in weights:
            out.append((t, weights[t.region] / per_region[t.region]))
        else:
            out.append((t, 0.0))
    return out


def _weighted(
    policy: PolicyRecord, pool: Sequence[TargetRecord], pick: float, trace: list[str]
) -> tuple[TargetRecord, ...]:
    weighted = [(t, w) for t, w in _effective_weights(policy, pool) if w > 0]
    if not weighted:
        weighted = [(t, 1.0) for t in sorted(pool, key=lambda t: t.cluster)]
        if not weighted:
            return ()
        trace.append("no positively weighted target is healthy: drawing uniformly")
    total = sum(w for _, w in weighted)
    point = min(max(pick, 0.0), math.nextafter(1.0, 0.0)) * total
    acc = 0.0
    chosen = weighted[-1][0]
    for t, w in weighted:
        acc += w
        if point < acc:
            chosen = t
            break
    shares = ", ".join(f"{t.cluster}={w / total:.0%}" for t, w in weighted)
    trace.append(f"weighted draw {pick:.3f} over [{shares}]: {chosen.cluster}({chosen.region})")
    return (chosen,)


def _geo(
    policy: PolicyRecord,
    pool: Sequence[TargetRecord],
    region: str | None,
    distances: DistanceTable,
    trace: list[str],
) -> tuple[TargetRecord, ...]:
    if not pool:
        return ()
    if region is None or not distances.knows(region):
        why = "client region unknown" if region is None else f"no distance data for {region}"
        if policy.priorities:
            trace.append(f"{why}: failover order")
            return _failover(policy, pool, trace)
        trace.append(f"{why} and no priorities: every healthy target")
        return tuple(sorted(pool, key=lambda t: t.cluster))
    by_region: dict[str, list[TargetRecord]] = {}
    for t in pool:
        by_region.setdefault(t.region, []).append(t)

    def key(r: str) -> tuple[float, int, str]:
        d = distances.distance(region, r)
        rank = min(_rank(policy, t)[0] for t in by_region[r])
        return (math.inf if d is None else d, rank, r)

    order = sorted(by_region, key=key)
    nearest = order[0]
    d = distances.distance(region, nearest)
    dist = "no distance data" if d is None else f"{d:.0f} km"
    ties = [r for r in order[1:] if key(r)[0] == key(nearest)[0]]
    tie = f" (tie with {', '.join(ties)} broken by failover rank, then name)" if ties else ""
    chosen = tuple(sorted(by_region[nearest], key=lambda t: (_rank(policy, t), t.cluster)))
    trace.append(
        f"client region {region}: nearest healthy region {nearest} ({dist}){tie}: {_names(chosen)}"
    )
    return chosen


def decide(
    service: ServiceRecord,
    *,
    region: str | None,
    distances: DistanceTable,
    choice: Choice = Choice(),
    unhealthy_ttl: int = 5,
) -> Decision:
    """The targets that answer for ``service`` for a client in ``region`` (pure)."""
    policy = service.policy
    trace: list[str] = [
        f"{service.namespace}/{service.name}: strategy {policy.strategy} "
        f"({'TrafficPolicy' if policy.source == 'policy' else 'no TrafficPolicy: default'}), "
        f"{service.healthy_count}/{len(service.targets)} targets healthy"
    ]
    for t in service.targets:
        if not t.healthy:
            trace.append(f"target {t.cluster}({t.region}) excluded: {t.reason}")
    pool, fallback = _pool(service)
    ttl = policy.ttl
    outcome: Outcome = "answer"
    if fallback:
        if policy.on_all_unhealthy == "servfail":
            trace.append("every target is unhealthy: SERVFAIL (on_all_unhealthy=servfail)")
            return Decision(policy.strategy, "servfail", (), 0, False, False, tuple(trace))
        if policy.on_all_unhealthy == "empty" or not pool:
            why = "on_all_unhealthy=empty" if pool else "no last healthy set known"
            trace.append(f"every target is unhealthy: empty answer ({why})")
            return Decision(policy.strategy, "empty", (), 0, False, False, tuple(trace))
        ttl = min(ttl, unhealthy_ttl)
        outcome = "last_healthy"
        trace.append(
            f"every target is unhealthy: serving the last healthy set "
            f"[{_names(pool)}] with TTL {ttl}"
        )
    uses_region = False
    uses_choice = False
    if policy.strategy == "failover":
        chosen = _failover(policy, pool, trace)
    elif policy.strategy == "round_robin":
        chosen = _round_robin(pool, choice.rotation, trace)
        uses_choice = len(pool) > 1
    elif policy.strategy == "weighted":
        chosen = _weighted(policy, pool, choice.pick, trace)
        uses_choice = len(pool) > 1
    else:
        chosen = _geo(policy, pool, region, distances, trace)
        uses_region = True
    if not chosen:
        outcome = "empty"
    return Decision(policy.strategy, outcome, chosen, ttl, uses_region, uses_choice, tuple(trace))


def _coprime_stride(n: int) -> int:
    """A stride near n/φ that is coprime with n, to visit 0..n-1 interleaved."""
    base = max(1, round(n * 0.6180339887))
    for delta in range(n):
        for s in (base + delta, base - delta):
            if 0 < s < n and math.gcd(s, n) == 1:
                return s
    return 1


def ring_choices(service: ServiceRecord) -> tuple[Choice, ...]:
    """The choices a precomputed server cycles through for ``service`` (see module doc)."""
    pool, _ = _pool(service)
    strategy = service.policy.strategy
    if strategy == "round_robin" and len(pool) > 1:
        return tuple(Choice(rotation=k) for k in range(min(len(pool), MAX_ROTATIONS)))
    if strategy == "weighted" and len(pool) > 1:
        weights = [w for _, w in _effective_weights(service.policy, pool) if w > 0]
        if len(weights) <= 1:
            return (Choice(),) if weights else _uniform_ring(len(pool))
        slots = MAX_WEIGHT_RING
        if all(w.is_integer() for w in weights):
            g = 0
            for w in weights:
                g = math.gcd(g, int(w))
            total = int(sum(weights)) // g
            if total <= MAX_WEIGHT_RING:
                slots = total
        stride = _coprime_stride(slots)
        return tuple(Choice(pick=(((i * stride) % slots) + 0.5) / slots) for i in range(slots))
    return (Choice(),)


def _uniform_ring(n: int) -> tuple[Choice, ...]:
    return tuple(Choice(pick=(i + 0.5) / n) for i in range(min(n, MAX_WEIGHT_RING)))
