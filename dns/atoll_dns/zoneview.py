"""The federated zone as a DNS tree, and the lookup that answers one question.

A :class:`ZoneView` is built once per :class:`~atoll_dns.snapshot.ZoneSnapshot`.
It knows every name in the zone and resolves ``(qname, qtype, client region,
choice)`` into a :class:`Resolution`: rcode, authoritative flag and the
answer/authority/additional RRsets (dnspython objects). Both packet paths use
it — the slow path per query, the fast path once per precomputed answer — so
they cannot disagree about *what* to answer; they differ only in how bytes are
parsed and assembled.

Names (``<zone>`` is the configured apex, e.g. ``atoll.test.``):

* apex — SOA, NS (additional: A/AAAA glue of in-zone name servers)
* in-zone name server names — A/AAAA from the config
* ``<service>.<namespace>.<zone>`` — A/AAAA of the targets the strategy picks
* ``_<port>._<proto>.<service>.<namespace>.<zone>`` — one SRV (RFC 2782)
  ``0 0 <port> <service>.<namespace>.<zone>`` for each *named* service port,
  with the same decision's A/AAAA in the additional section. Unnamed ports
  (single-port services without a name) get no SRV record.
* every ancestor of those names inside the zone (``<namespace>.<zone>``,
  ``_<proto>.<service>...``) is an empty non-terminal: NODATA, not NXDOMAIN
  (RFC 8020).

Other answers: NXDOMAIN with the SOA in authority for names that do not exist
(RFC 2308 negative answer; SOA TTL = min(SOA TTL, minimum)); NODATA (NOERROR,
SOA) for existing names and other types; REFUSED outside the zone and for zone
transfers (AXFR/IXFR are not offered); ANY returns every RRset of the node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from atoll_dns.geo import DistanceTable
from atoll_dns.snapshot import PortRecord, ServiceRecord, ZoneSnapshot
from atoll_dns.strategy import Choice, Decision, decide

__all__ = ["Node", "Resolution", "ZoneView"]

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
SRV = dns.rdatatype.SRV
SOA = dns.rdatatype.SOA
NS = dns.rdatatype.NS
ANY = dns.rdatatype.ANY
TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


@dataclass(frozen=True, slots=True)
class Node:
    """One name of the zone: static RRsets, or a service / SRV name, or neither (ENT)."""

    name: dns.name.Name
    static: dict[int, dns.rrset.RRset] = field(default_factory=dict)
    service: ServiceRecord | None = None
    port: PortRecord | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    rcode: int
    authoritative: bool
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()
    #: the answer depends on the client's region: ECS scope applies (RFC 7871)
    client_dependent: bool = False
    #: metrics label: the strategy of the service answered, else "none"
    strategy: str = "none"
    decision: Decision | None = None


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(IN, rdtype, text)


def _rrset(
    name: dns.name.Name, rdtype: int, ttl: int, rdatas: Iterable[dns.rdata.Rdata]
) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, IN, dns.rdatatype.RdataType.make(rdtype))
    for rd in rdatas:
        rrset.add(rd, ttl)
    rrset.update_ttl(ttl)
    return rrset


def _addresses(name: dns.name.Name, decision: Decision, rdtype: int) -> dns.rrset.RRset | None:
    if rdtype == A:
        rds: list[dns.rdata.Rdata] = [_rdata(A, str(a)) for t in decision.targets for a in t.ipv4]
    else:
        rds = [_rdata(AAAA, str(a)) for t in decision.targets for a in t.ipv6]
    if not rds:
        return None
    # the same address from two clusters is one record
    return _rrset(name, rdtype, decision.ttl, dict.fromkeys(rds))


class ZoneView:
    """A snapshot turned into names → nodes, answering one question at a time."""

    def __init__(self, snapshot: ZoneSnapshot) -> None:
        self.snapshot = snapshot
        self.origin = dns.name.from_text(snapshot.zone)
        self.distances = DistanceTable(snapshot.regions, snapshot.distances)
        #: every region a client can be placed in, plus None (unlocated)
        self.region_keys: tuple[str | None, ...] = (*snapshot.region_names(), None)
        self.nodes: dict[dns.name.Name, Node] = {}
        self._dependent: dict[tuple[str, str], bool] = {}
        soa = snapshot.soa
        self.soa_rdata = dns.rdata.from_text(
            IN,
            SOA,
            f"{soa.mname} {soa.rname} {snapshot.serial % 2**32} "
            f"{soa.refresh} {soa.retry} {soa.expire} {soa.minimum}",
        )
        #: SOA MNAME and RNAME (their compression depends on the query name)
        self.soa_names = (dns.name.from_text(soa.mname), dns.name.from_text(soa.rname))
        self.negative_soa = _rrset(self.origin, SOA, min(soa.ttl, soa.minimum), [self.soa_rdata])
        apex: dict[int, dns.rrset.RRset] = {
            SOA: _rrset(self.origin, SOA, soa.ttl, [self.soa_rdata]),
            NS: _rrset(
                self.origin,
                NS,
                snapshot.ns_ttl,
                [_rdata(NS, ns.name) for ns in snapshot.nameservers],
            ),
        }
        self._add(Node(self.origin, apex))
        self.glue: list[dns.rrset.RRset] = []
        for ns in snapshot.nameservers:
            name = dns.name.from_text(ns.name)
            if not name.is_subdomain(self.origin) or not ns.addresses:
                continue
            static: dict[int, dns.rrset.RRset] = {}
            v4 = [_rdata(A, str(a)) for a in ns.addresses if a.version == 4]
            v6 = [_rdata(AAAA, str(a)) for a in ns.addresses if a.version == 6]
            if v4:
                static[A] = _rrset(name, A, snapshot.ns_ttl, v4)
            if v6:
                static[AAAA] = _rrset(name, AAAA, snapshot.ns_ttl, v6)
            self._add(Node(name, static))
            self.glue.extend(static.values())
        for svc in snapshot.services:
            name = dns.name.Name((svc.name.encode(), svc.namespace.encode(), *self.origin.labels))
            self._add(Node(name, service=svc))
            for port in svc.ports:
                srv = dns.name.Name(
                    (f"_{port.name}".encode(), f"_{port.protocol}".encode(), *name.labels)
                )
                self._add(Node(srv, service=svc, port=port))

    def _add(self, node: Node) -> None:
        existing = self.nodes.get(node.name)
        if existing is not None and (existing.static or existing.service is not None):
            if node.static or node.service is not None:
                merged = Node(
                    node.name,
                    {**existing.static, **node.static},
                    existing.service or node.service,
                    existing.port or node.port,
                )
                self.nodes[node.name] = merged
            return
        self.nodes[node.name] = node
        # empty non-terminals up to the apex
        parent = node.name.parent() if node.name != self.origin else None
        while parent is not None and parent != self.origin and parent not in self.nodes:
            self.nodes[parent] = Node(parent)
            parent = parent.parent()

    def service_name(self, svc: ServiceRecord) -> dns.name.Name:
        return dns.name.Name((svc.name.encode(), svc.namespace.encode(), *self.origin.labels))

    def decision(self, svc: ServiceRecord, region: str | None, choice: Choice) -> Decision:
        return decide(
            svc,
            region=region,
            distances=self.distances,
            choice=choice,
            unhealthy_ttl=self.snapshot.unhealthy_ttl,
        )

    def client_dependent(self, svc: ServiceRecord) -> bool:
        """Whether the answer for ``svc`` differs between client regions (then ECS scope > 0)."""
        key = (svc.namespace, svc.name)
        hit = self._dependent.get(key)
        if hit is None:
            if svc.policy.strategy != "geo":
                hit = False
            else:
                seen = {
                    (d.targets, d.ttl, d.outcome)
                    for d in (self.decision(svc, r, Choice()) for r in self.region_keys)
                }
                hit = len(seen) > 1
            self._dependent[key] = hit
        return hit

    def in_zone(self, qname: dns.name.Name) -> bool:
        return qname.is_subdomain(self.origin)

    def resolve(
        self, qname: dns.name.Name, qtype: int, *, region: str | None, choice: Choice = Choice()
    ) -> Resolution:
        """Answer one IN-class question (the caller handles classes, opcodes and EDNS)."""
        if not qname.is_subdomain(self.origin) or qtype in TRANSFERS:
            return Resolution(dns.rcode.REFUSED, False)
        node = self.nodes.get(qname)
        if node is None:
            return Resolution(dns.rcode.NXDOMAIN, True, authority=(self.negative_soa,))
        answer: list[dns.rrset.RRset] = []
        additional: list[dns.rrset.RRset] = []
        for rdtype in (SOA, NS, A, AAAA) if qtype == ANY else (qtype,):
            rrset = node.static.get(rdtype)
            if rrset is not None:
                answer.append(rrset)
                if rdtype == NS:
                    additional.extend(self.glue)
        svc = node.service
        if svc is None:
            if answer:
                return Resolution(dns.rcode.NOERROR, True, tuple(answer), (), tuple(additional))
            return Resolution(dns.rcode.NOERROR, True, authority=(self.negative_soa,))
        wants: tuple[int, ...] = ()
        if node.port is not None and qtype in (SRV, ANY):
            wants = (SRV,)
        elif node.port is None and qtype in (A, AAAA):
            wants = (qtype,)
        elif node.port is None and qtype == ANY:
            wants = (A, AAAA)
        if not wants:
            return Resolution(
                dns.rcode.NOERROR, True, authority=(self.negative_soa,), strategy="none"
            )
        decision = self.decision(svc, region, choice)
        dependent = self.client_dependent(svc)
        strategy = svc.policy.strategy
        if decision.outcome == "servfail":
            return Resolution(dns.rcode.SERVFAIL, False, (), (), (), dependent, strategy, decision)
        if node.port is not None:
            target = self.service_name(svc)
            if decision.targets:
                srv = _rdata(SRV, f"0 0 {node.port.port} {target}")
                answer.append(_rrset(qname, SRV, decision.ttl, [srv]))
                for rdtype in (A, AAAA):
                    glue = _addresses(target, decision, rdtype)
                    if glue is not None:
                        additional.append(glue)
        else:
            for rdtype in wants:
                rrset = _addresses(qname, decision, rdtype)
                if rrset is not None:
                    answer.append(rrset)
        if not answer:
            return Resolution(
                dns.rcode.NOERROR, True, (), (self.negative_soa,), (), dependent, strategy, decision
            )
        return Resolution(
            dns.rcode.NOERROR,
            True,
            tuple(answer),
            (),
            tuple(additional),
            dependent,
            strategy,
            decision,
        )
