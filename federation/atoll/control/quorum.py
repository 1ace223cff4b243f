"""Combine vantage points' probe reports into one verdict per cluster (pure).

Each vantage point casts one vote per cluster: up only if every component it
probes there (DNS server, east-west gateway) answered. A cluster is *failed
by probes* only when a strict majority of the live
vantage points that probe it — and at least ``min_voters`` of them — report
it down. One vantage point alone never decides: if its own network is
partitioned it would see every other cluster down, and failing them all
would turn one cluster's trouble into a federation-wide outage. Reports from
vantage points that are not alive themselves are ignored for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from atoll.model import ProbeReport

__all__ = ["ProbeVerdict", "probe_verdicts"]


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    target: str
    voters: int
    down_votes: int
    failed: bool

    @property
    def reason(self) -> str:
        if self.failed:
            return f"unreachable from {self.down_votes} of {self.voters} vantage points"
        if self.down_votes:
            return f"{self.down_votes} of {self.voters} vantage points report it down (no quorum)"
        return ""


def probe_verdicts(
    reports: Iterable[ProbeReport], alive: Set[str], *, min_voters: int = 2
) -> dict[str, ProbeVerdict]:
    votes: dict[str, list[bool]] = {}
    for r in reports:
        vantage = r.spec.vantage
        if vantage not in alive:
            continue
        # one vote per vantage point and target: up only if every probed path is up
        seen: dict[str, bool] = {}
        for res in r.spec.results:
            if res.target != vantage:
                seen[res.target] = seen.get(res.target, True) and res.up
        for target, up in seen.items():
            votes.setdefault(target, []).append(up)
    out: dict[str, ProbeVerdict] = {}
    for target, vs in votes.items():
        down = sum(1 for up in vs if not up)
        out[target] = ProbeVerdict(
            target=target,
            voters=len(vs),
            down_votes=down,
            failed=len(vs) >= min_voters and down * 2 > len(vs),
        )
    return out
