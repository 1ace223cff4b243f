"""Why a server answers what it answers: the seam for ``atoll dns query``.

:func:`explain` resolves one question against a snapshot the way the server
does — locate the client (a client subnet as ECS would carry it, else a
resolver address), run the strategy, build the records — and returns the
location, the strategy's decision trace and the answer as zone-file lines.
It has no side effects, so the CLI can run it on the snapshot a server
reports, or on one it builds itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address, ip_network

import dns.name
import dns.rcode
import dns.rdatatype

from atoll_dns.geo import GeoDatabase, Location, Locator
from atoll_dns.snapshot import ZoneSnapshot
from atoll_dns.strategy import Choice, Decision
from atoll_dns.zoneview import ZoneView

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True, slots=True)
class Explanation:
    qname: str
    qtype: str
    rcode: str
    location: Location
    decision: Decision | None
    #: zone-file lines, section by section
    answer: tuple[str, ...]
    authority: tuple[str, ...]
    additional: tuple[str, ...]
    #: ECS scope the server would return for this client subnet (0 if not client dependent)
    scope: int

    def trace(self) -> tuple[str, ...]:
        lines = [self.location.describe()]
        if self.decision is not None:
            lines.extend(self.decision.trace)
        return tuple(lines)


def explain(
    snapshot: ZoneSnapshot,
    qname: str,
    qtype: str = "A",
    *,
    client_subnet: str | None = None,
    resolver: str = "127.0.0.1",
    geo_database: GeoDatabase | None = None,
    choice: Choice = Choice(),
) -> Explanation:
    """Explain the answer to ``qname``/``qtype`` for a client (ECS subnet or resolver address).

    Raises ``ValueError`` for a malformed name, type or address.
    """
    view = ZoneView(snapshot)
    locator = Locator(
        snapshot.client_networks,
        database=geo_database,
        database_regions=dict(snapshot.maxmind_regions),
    )
    if client_subnet is not None:
        net = ip_network(client_subnet, strict=False)
        location = locator.locate(
            1 if net.version == 4 else 2, int(net.network_address), net.prefixlen, ecs=True
        )
    else:
        location = locator.locate_ip(str(ip_address(resolver)))
    name = dns.name.from_text(qname)
    rdtype = dns.rdatatype.from_text(qtype)
    res = view.resolve(name, rdtype, region=location.region, choice=choice)
    scope = location.scope if res.client_dependent and client_subnet is not None else 0
    return Explanation(
        qname=name.to_text(),
        qtype=dns.rdatatype.to_text(rdtype),
        rcode=dns.rcode.to_text(dns.rcode.Rcode.make(res.rcode)),
        location=location,
        decision=res.decision,
        answer=tuple(r.to_text() for r in res.answer),
        authority=tuple(r.to_text() for r in res.authority),
        additional=tuple(r.to_text() for r in res.additional),
        scope=scope,
    )
