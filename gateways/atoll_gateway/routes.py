"""The route table: every decision the data path needs, built by one pure function.

:func:`build_routes` turns the gateway's inputs into an immutable
:class:`RouteTable`, swapped in atomically by the node whenever an input
changes (connections already relaying keep the endpoint they were given;
only new connections see the new table):

* **inbound** — per *exported* local service (``namespace/name``): its ports,
  its local endpoints (healthy ones only) and its :class:`~atoll_gateway.config.RouteConfig`.
  :meth:`RouteTable.inbound_route` resolves a :class:`~atoll_gateway.naming.ServiceName`.
* **egress** — per egress listener: the imported service and port, and the
  *decisions* of the service's TrafficPolicy. These are computed with DNS's own
  code — :func:`atoll_dns.snapshot.build_zone` (the health verdict: control
  plane verdict, drained, ``min_healthy_endpoints``, last healthy set) and
  :func:`atoll_dns.strategy.decide` over every choice in
  :func:`~atoll_dns.strategy.ring_choices` — so the gateway picks exactly the
  clusters a DNS answer would name, in the same order, for a client in the
  gateway's own region. A connection takes the next decision of the ring
  (round-robin and weighted rotate like DNS answers do) and tries its targets
  in order: a remote target is reached through its cluster's gateway
  (``Cluster.spec.addresses["gateway"]``); the gateway's own cluster through its
  local endpoints directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from atoll.model import Cluster, Region, ServiceExport, ServiceImport, ServicePort, TrafficPolicy
from atoll_dns.config import DnsConfig
from atoll_dns.geo import DistanceTable
from atoll_dns.snapshot import ZoneSnapshot, build_zone
from atoll_dns.strategy import decide, ring_choices
from atoll_gateway.balancer import Endpoint
from atoll_gateway.config import GatewayConfig, RouteConfig
from atoll_gateway.errors import RouteError
from atoll_gateway.naming import ServiceName
from atoll_gateway.policy import AllowPolicy

__all__ = [
    "EgressRoute",
    "EgressTarget",
    "InboundService",
    "RouteTable",
    "build_routes",
    "parse_hostport",
]


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class InboundService:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...]
    #: healthy local endpoints per service port number
    endpoints: Mapping[int, tuple[Endpoint, ...]]
    route: RouteConfig
    allow: AllowPolicy

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port_for(self, wanted: int | str | None) -> ServicePort:
        if wanted is None:
            if len(self.ports) != 1:
                raise RouteError(
                    "ambiguous_port", f"{self.key} has {len(self.ports)} ports: name one in the SNI"
                )
            return self.ports[0]
        for p in self.ports:
            if p.port == wanted or (p.name is not None and p.name == wanted):
                return p
        raise RouteError("unknown_port", f"{self.key} has no port {wanted!r}")


@dataclass(frozen=True, slots=True)
class EgressTarget:
    cluster: str
    #: the remote cluster's gateway; None for the local cluster (endpoints used directly)
    gateway: Endpoint | None


@dataclass(frozen=True, slots=True)
class EgressRoute:
    listen: Endpoint
    namespace: str
    name: str
    port: ServicePort
    #: one ordered target list per ring choice (see the module docstring)
    decisions: tuple[tuple[EgressTarget, ...], ...]
    #: why targets were left out (no gateway address), for status and logs
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class RouteTable:
    cluster: str
    zone: str
    inbound: Mapping[tuple[str, str], InboundService] = field(default_factory=dict)
    egress: tuple[EgressRoute, ...] = ()
    #: the zone view the egress decisions came from (carries last-healthy sets forward)
    snapshot: ZoneSnapshot | None = None
    warnings: tuple[str, ...] = ()

    def inbound_route(self, name: ServiceName) -> tuple[InboundService, ServicePort]:
        """The local service and port a server name asks for, or :class:`RouteError`."""
        if name.cluster is not None and name.cluster != self.cluster:
            raise RouteError(
                "wrong_cluster", f"the name pins cluster {name.cluster}; this is {self.cluster}"
            )
        svc = self.inbound.get((name.namespace, name.service))
        if svc is None:
            raise RouteError(
                "unknown_service", f"{name.namespace}/{name.service} is not exported here"
            )
        return svc, svc.port_for(name.port)


def _inbound(
    config: GatewayConfig, exports: Iterable[ServiceExport]
) -> dict[tuple[str, str], InboundService]:
    out: dict[tuple[str, str], InboundService] = {}
    for exp in exports:
        ns, name = exp.metadata.namespace or "default", exp.metadata.name
        ports = tuple(sorted(exp.spec.ports, key=lambda p: p.port))
        by_port: dict[int, tuple[Endpoint, ...]] = {}
        for p in ports:
            eps = [
                Endpoint(
                    str(e.address), e.port if (e.port is not None and len(ports) == 1) else p.port
                )
                for e in exp.spec.endpoints
                if e.healthy
            ]
            by_port[p.port] = tuple(dict.fromkeys(eps))
        route = config.route(ns, name)
        out[(ns, name)] = InboundService(
            namespace=ns,
            name=name,
            ports=ports,
            endpoints=by_port,
            route=route,
            allow=config.allow_for(route),
        )
    return out


def _gateway_addresses(clusters: Iterable[Cluster], warnings: list[str]) -> dict[str, Endpoint]:
    out: dict[str, Endpoint] = {}
    for c in clusters:
        text = c.spec.addresses.get("gateway")
        if text is None:
            continue
        try:
            host, port = parse_hostport(text)
        except ValueError:
            warnings.append(f"cluster {c.metadata.name}: bad gateway address {text!r}")
            continue
        out[c.metadata.name] = Endpoint(host, port)
    return out


def _egress_listeners(
    config: GatewayConfig, imports: Sequence[ServiceImport], warnings: list[str]
) -> list[tuple[Endpoint, ServiceImport, ServicePort]]:
    by_key = {f"{i.metadata.namespace}/{i.metadata.name}": i for i in imports}
    chosen: dict[Endpoint, tuple[ServiceImport, ServicePort]] = {}
    explicit: set[tuple[str, int]] = set()
    for e in config.egress:
        imp = by_key.get(e.service)
        if imp is None:
            warnings.append(f"egress {e.service}: not imported (yet); no listener")
            continue
        ports = imp.spec.ports
        port = next((p for p in ports if e.port is None or p.port == e.port), None)
        if port is None or (e.port is None and len(ports) != 1):
            warnings.append(f"egress {e.service}: name one of its ports {[p.port for p in ports]}")
            continue
        host, lport = parse_hostport(e.listen)
        chosen[Endpoint(host, lport)] = (imp, port)
        explicit.add((e.service, port.port))
    if config.egress_host is not None:
        for key in sorted(by_key):
            imp = by_key[key]
            for p in imp.spec.ports:
                if (key, p.port) in explicit or p.protocol != "TCP":
                    continue
                ep = Endpoint(config.egress_host, p.port)
                if ep in chosen:
                    other = chosen[ep][0]
                    warnings.append(
                        f"egress {key} port {p.port}: {ep} already carries "
                        f"{other.metadata.namespace}/{other.metadata.name}"
                    )
                    continue
                chosen[ep] = (imp, p)
    return [(ep, imp, port) for ep, (imp, port) in chosen.items()]


def build_routes(
    config: GatewayConfig,
    *,
    exports: Iterable[ServiceExport],
    imports: Iterable[ServiceImport] = (),
    policies: Iterable[TrafficPolicy] = (),
    regions: Iterable[Region] = (),
    clusters: Iterable[Cluster] = (),
    previous: RouteTable | None = None,
) -> RouteTable:
    """The route table for these inputs (pure; see the module docstring)."""
    imports = list(imports)
    clusters = list(clusters)
    warnings: list[str] = []
    inbound = _inbound(config, exports)
    snapshot = build_zone(
        DnsConfig(zone=config.zone),
        imports,
        policies,
        regions,
        previous=previous.snapshot if previous is not None else None,
    )
    distances = DistanceTable(snapshot.regions, snapshot.distances)
    own = next((c for c in clusters if c.metadata.name == config.cluster), None)
    region = own.spec.region if own is not None else None
    gateways = _gateway_addresses(clusters, warnings)
    egress: list[EgressRoute] = []
    for listen, imp, port in _egress_listeners(config, imports, warnings):
        ns, name = imp.metadata.namespace or "default", imp.metadata.name
        record = snapshot.service(ns, name)
        notes: list[str] = []
        decisions: list[tuple[EgressTarget, ...]] = []
        for choice in ring_choices(record) if record is not None else ():
            d = decide(record, region=region, distances=distances, choice=choice)  # type: ignore[arg-type]
            targets: list[EgressTarget] = []
            for t in d.targets:
                if t.cluster == config.cluster:
                    targets.append(EgressTarget(t.cluster, None))
                elif t.cluster in gateways:
                    targets.append(EgressTarget(t.cluster, gateways[t.cluster]))
                else:
                    notes.append(f"{t.cluster}: no gateway address")
            decisions.append(tuple(targets))
        egress.append(
            EgressRoute(
                listen=listen,
                namespace=ns,
                name=name,
                port=port,
                decisions=tuple(decisions),
                notes=tuple(dict.fromkeys(notes)),
            )
        )
    egress.sort(key=lambda r: (r.listen.host, r.listen.port))
    return RouteTable(
        cluster=config.cluster,
        zone=config.zone,
        inbound=inbound,
        egress=tuple(egress),
        snapshot=snapshot,
        warnings=tuple(warnings) + snapshot.warnings,
    )
