"""How long withdrawal takes at worst, derived from the configured timings (pure).

The failover issue asks for a *stated* bound: the control plane computes it
from its own settings and shows it in ``atoll status``; drills verify against
it and the failover benchmark measures the real distribution beside it.

* **A cluster dies** (agent gone): its lease was renewed at most ``ttl / 3``
  before the agent's last heartbeat, and expires ``ttl`` after that renewal;
  the store notices within one expiry sweep; the reconciler's debounce and one
  pass follow; then the push to every DNS server and the zone swap. Worst
  case from the moment the agent stops: ``ttl + sweep + debounce + push``.
* **A cluster is drained** (admin state): no lease involved, only
  ``debounce + push``.

``push`` is a fixed allowance for reconcile + delta + zone compile on a
loaded host (0.5 s by default), stated rather than measured so the bound is a
promise, not an observation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bounds", "Timings", "compute_bounds"]


@dataclass(frozen=True, slots=True)
class Timings:
    lease_ttl: float
    heartbeat_interval: float
    #: how often the store deletes keys of expired leases (SQLite sweeper; etcd ~0.5 s)
    expiry_sweep: float
    reconcile_debounce: float
    push_allowance: float = 0.5


@dataclass(frozen=True, slots=True)
class Bounds:
    timings: Timings
    #: agent (cluster) death -> withdrawn from every DNS server
    death_withdrawal: float
    #: admin drain -> withdrawn from every DNS server
    drain_withdrawal: float


def compute_bounds(t: Timings) -> Bounds:
    if t.heartbeat_interval > t.lease_ttl / 2:
        raise ValueError("heartbeat interval must be at most half the lease TTL")
    return Bounds(
        timings=t,
        death_withdrawal=round(
            t.lease_ttl + t.expiry_sweep + t.reconcile_debounce + t.push_allowance, 3
        ),
        drain_withdrawal=round(t.reconcile_debounce + t.push_allowance, 3),
    )
