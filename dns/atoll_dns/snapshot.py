"""The zone snapshot: everything a DNS server answers from, built by a pure function.

:func:`build_zone` turns the configuration and the control plane's resources
(``ServiceImport``, ``TrafficPolicy``, ``Region``) into one immutable
:class:`ZoneSnapshot`. The server compiles a snapshot into its answer tables and
swaps it in atomically; it also persists the last one it accepted, so a snapshot
is plain validated data (pydantic, frozen, JSON round-trip) and carries no
compiled structure.

Health verdict (DESIGN §6, issue 4 item 4). A target (one cluster serving the
service) is *healthy* when the control plane says so (``ImportTarget.healthy``),
it is not drained, it meets the policy's ``min_healthy_endpoints`` (checked only
when the target reports an endpoint count), and it has at least one address to
answer with. Strategies only ever pick healthy targets.

All targets down. Each service remembers a *last healthy set*: the targets
that were healthy in the most recent snapshot where any was (carried forward
from ``previous``). With ``on_all_unhealthy = "last_healthy"`` (the default) the
strategy runs over that set and answers with a short TTL
(``DnsConfig.unhealthy_ttl``): clients keep reaching what worked last, which is
usually better than nothing during a control-plane-wide glitch, and the short
TTL makes them come back soon. If nothing was ever healthy (fresh start), the
set is every target that has addresses; if none has, the answer is empty
(NODATA). ``servfail`` and ``empty`` are the explicit alternatives.

Services without a TrafficPolicy use ``round_robin`` with ``DnsConfig.default_ttl``.

Versioning. ``digest`` is the SHA-256 of the snapshot's content (serial
excluded); ``serial`` (the SOA serial and the ``zone snapshot version`` metric)
is the caller's, else it grows past ``previous.serial`` whenever the digest
changes, else it is the highest store revision among the inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Literal

from pydantic import Field

from atoll.model.base import Frozen
from atoll.model.cluster import Region
from atoll.model.policy import OnAllUnhealthy, Strategy, TrafficPolicy
from atoll.model.service import ServiceImport
from atoll_dns.config import DnsConfig, NameServerConfig, RegionDistance, RegionNetwork

__all__ = [
    "SNAPSHOT_FORMAT",
    "PolicyRecord",
    "PortRecord",
    "RegionRecord",
    "ServiceRecord",
    "SoaRecord",
    "TargetRecord",
    "ZoneSnapshot",
    "build_zone",
    "snapshot_digest",
]

SNAPSHOT_FORMAT: Literal[1] = 1


class TargetRecord(Frozen):
    """One cluster serving a service, with the DNS server's health verdict."""

    cluster: str
    region: str
    healthy: bool
    ipv4: tuple[IPv4Address, ...] = ()
    ipv6: tuple[IPv6Address, ...] = ()
    #: why the target is not healthy ("" when healthy)
    reason: str = ""
    #: "egress": the addresses are this cluster's gateway egress, not the target's endpoints
    via: Literal["direct", "egress"] = "direct"


class PortRecord(Frozen):
    """A named service port, published as ``_<name>._<proto>.<service>.<ns>.<zone>`` SRV."""

    name: str
    protocol: Literal["tcp", "udp", "sctp"]
    port: int


class PolicyRecord(Frozen):
    """The parts of a TrafficPolicy that answers depend on."""

    strategy: Strategy
    priorities: tuple[tuple[str, ...], ...] = ()
    weights: tuple[tuple[str, int], ...] = ()
    ttl: int = 30
    on_all_unhealthy: OnAllUnhealthy = "last_healthy"
    #: "policy" when a TrafficPolicy exists, "default" otherwise
    source: Literal["policy", "default"] = "default"


class ServiceRecord(Frozen):
    namespace: str
    name: str
    policy: PolicyRecord
    targets: tuple[TargetRecord, ...] = ()
    ports: tuple[PortRecord, ...] = ()
    #: the last healthy set (see module docstring); used only when no target is healthy
    last_healthy: tuple[TargetRecord, ...] = ()

    @property
    def healthy_count(self) -> int:
        return sum(1 for t in self.targets if t.healthy)


class RegionRecord(Frozen):
    name: str
    latitude: float
    longitude: float


class SoaRecord(Frozen):
    mname: str
    rname: str
    refresh: int
    retry: int
    expire: int
    minimum: int
    ttl: int


class ZoneSnapshot(Frozen):
    """An immutable, versioned picture of the federated zone."""

    format: Literal[1] = SNAPSHOT_FORMAT
    zone: str
    serial: int = Field(ge=0)
    digest: str
    soa: SoaRecord
    nameservers: tuple[NameServerConfig, ...]
    ns_ttl: int
    unhealthy_ttl: int
    services: tuple[ServiceRecord, ...] = ()
    regions: tuple[RegionRecord, ...] = ()
    #: config networks first, then Region.spec.client_networks; longest prefix wins
    client_networks: tuple[RegionNetwork, ...] = ()
    distances: tuple[RegionDistance, ...] = ()
    maxmind_regions: tuple[tuple[str, str], ...] = ()
    #: inputs that were ignored (bad addresses, duplicate services), for logs and NACKs
    warnings: tuple[str, ...] = ()

    def service(self, namespace: str, name: str) -> ServiceRecord | None:
        for svc in self.services:
            if svc.namespace == namespace and svc.name == name:
                return svc
        return None

    def region_names(self) -> tuple[str, ...]:
        """Every region a client can be located in (sorted)."""
        names = {r.name for r in self.regions}
        names.update(n.region for n in self.client_networks)
        names.update(region for _, region in self.maxmind_regions)
        return tuple(sorted(names))


def _policy_record(policy: TrafficPolicy | None, default_ttl: int) -> PolicyRecord:
    if policy is None:
        return PolicyRecord(strategy="round_robin", ttl=default_ttl, source="default")
    spec = policy.spec
    return PolicyRecord(
        strategy=spec.strategy,
        priorities=tuple(tuple(group) for group in spec.priorities),
        weights=tuple(sorted(spec.weights.items())),
        ttl=spec.ttl,
        on_all_unhealthy=spec.on_all_unhealthy,
        source="policy",
    )


def _target_record(
    imp: ServiceImport, index: int, min_healthy: int, warnings: list[str], config: DnsConfig
) -> TargetRecord:
    t = imp.spec.targets[index]
    v4: list[IPv4Address] = []
    v6: list[IPv6Address] = []
    for text in t.addresses:
        try:
            addr = ip_address(text)
        except ValueError:
            warnings.append(
                f"{imp.metadata.namespace}/{imp.metadata.name}: cluster {t.cluster}: "
                f"ignored address {text!r} (not an IP address)"
            )
            continue
        if isinstance(addr, IPv4Address):
            if addr not in v4:
                v4.append(addr)
        elif addr not in v6:
            v6.append(addr)
    reason = ""
    if not t.healthy:
        reason = t.reason or "reported unhealthy"
    elif t.admin_state == "drained":
        reason = "cluster drained"
    elif t.endpoints_total > 0 and t.endpoints_healthy < min_healthy:
        reason = f"{t.endpoints_healthy} healthy endpoints < {min_healthy}"
    elif not v4 and not v6:
        reason = "no addresses"
    via: Literal["direct", "egress"] = "direct"
    egress = config.egress_address
    if egress is not None and t.cluster != config.cluster:
        # reached through the gateway: clients connect to the egress, which picks the
        # remote cluster itself (health and strategy unchanged: they are the target's)
        via = "egress"
        v4 = [egress] if isinstance(egress, IPv4Address) else []
        v6 = [egress] if isinstance(egress, IPv6Address) else []
    return TargetRecord(
        cluster=t.cluster,
        region=t.region,
        healthy=not reason,
        ipv4=tuple(v4),
        ipv6=tuple(v6),
        reason=reason,
        via=via,
    )


def _last_healthy(
    targets: tuple[TargetRecord, ...], previous: ServiceRecord | None
) -> tuple[TargetRecord, ...]:
    if any(t.healthy for t in targets):
        return ()
    if previous is not None:
        was = tuple(t for t in previous.targets if t.healthy)
        if was:
            return was
        if previous.last_healthy:
            return previous.last_healthy
    return tuple(
        t.model_copy(update={"healthy": True, "reason": ""}) for t in targets if t.ipv4 or t.ipv6
    )


_PROTOCOLS: dict[str, Literal["tcp", "udp", "sctp"]] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def _ports(imp: ServiceImport) -> tuple[PortRecord, ...]:
    ports = [
        PortRecord(name=p.name, protocol=_PROTOCOLS[p.protocol], port=p.port)
        for p in imp.spec.ports
        if p.name is not None
    ]
    return tuple(sorted(ports, key=lambda p: (p.name, p.protocol)))


def build_zone(
    config: DnsConfig,
    imports: Iterable[ServiceImport],
    policies: Iterable[TrafficPolicy],
    regions: Iterable[Region],
    *,
    previous: ZoneSnapshot | None = None,
    serial: int | None = None,
) -> ZoneSnapshot:
    """Build the zone snapshot from config and control-plane resources (pure).

    ``previous`` (the snapshot being replaced) carries each service's last
    healthy set forward and keeps the serial monotonic. Bad input that would make
    a record unanswerable (an address that is not an IP) is skipped and reported
    in ``warnings``; the schemas of the resources themselves are already validated.
    """
    imports = list(imports)
    policies = list(policies)
    regions = list(regions)
    warnings: list[str] = []
    by_policy = {(p.metadata.namespace or "default", p.metadata.name): p for p in policies}
    prev_services = (
        {(s.namespace, s.name): s for s in previous.services} if previous is not None else {}
    )

    services: dict[tuple[str, str], ServiceRecord] = {}
    for imp in imports:
        key = (imp.metadata.namespace or "default", imp.metadata.name)
        if key in services:
            warnings.append(f"{key[0]}/{key[1]}: duplicate ServiceImport ignored")
            continue
        policy_res = by_policy.get(key)
        policy = _policy_record(policy_res, config.default_ttl)
        min_healthy = policy_res.spec.min_healthy_endpoints if policy_res is not None else 1
        targets = tuple(
            sorted(
                (
                    _target_record(imp, i, min_healthy, warnings, config)
                    for i in range(len(imp.spec.targets))
                ),
                key=lambda t: t.cluster,
            )
        )
        services[key] = ServiceRecord(
            namespace=key[0],
            name=key[1],
            policy=policy,
            targets=targets,
            ports=_ports(imp),
            last_healthy=_last_healthy(targets, prev_services.get(key)),
        )

    region_records = tuple(
        sorted(
            (
                RegionRecord(
                    name=r.metadata.name,
                    latitude=r.spec.latitude,
                    longitude=r.spec.longitude,
                )
                for r in regions
            ),
            key=lambda r: r.name,
        )
    )
    networks: list[RegionNetwork] = list(config.client_networks)
    seen_nets: set[IPv4Network | IPv6Network] = {n.network for n in networks}
    for r in sorted(regions, key=lambda r: r.metadata.name):
        for net in r.spec.client_networks:
            if net in seen_nets:
                warnings.append(
                    f"region {r.metadata.name}: client network {net} already mapped; ignored"
                )
                continue
            seen_nets.add(net)
            networks.append(RegionNetwork(network=net, region=r.metadata.name))

    soa = SoaRecord(
        mname=config.soa_mname(),
        rname=config.soa_rname(),
        refresh=config.soa.refresh,
        retry=config.soa.retry,
        expire=config.soa.expire,
        minimum=config.soa.minimum,
        ttl=config.soa.ttl,
    )
    draft = ZoneSnapshot(
        zone=config.zone,
        serial=0,
        digest="",
        soa=soa,
        nameservers=tuple(config.nameserver_list()),
        ns_ttl=config.ns_ttl,
        unhealthy_ttl=config.unhealthy_ttl,
        services=tuple(services[k] for k in sorted(services)),
        regions=region_records,
        client_networks=tuple(networks),
        distances=tuple(config.distances),
        maxmind_regions=tuple(sorted(config.maxmind_regions.items())),
        warnings=tuple(warnings),
    )
    digest = snapshot_digest(draft)
    if serial is None:
        serial = _next_serial(previous, digest, imports, policies, regions)
    return draft.model_copy(update={"serial": serial, "digest": digest})


def snapshot_digest(snapshot: ZoneSnapshot) -> str:
    """SHA-256 of a snapshot's content, serial and digest excluded."""
    data = snapshot.model_dump_json(exclude={"serial", "digest"})
    return hashlib.sha256(data.encode()).hexdigest()


def _next_serial(
    previous: ZoneSnapshot | None,
    digest: str,
    *inputs: Sequence[ServiceImport] | Sequence[TrafficPolicy] | Sequence[Region],
) -> int:
    revisions = [r.metadata.revision for seq in inputs for r in seq]
    base = max(revisions, default=0)
    if previous is None:
        return max(base, 1)
    if previous.digest == digest:
        return previous.serial
    return max(base, previous.serial + 1)
