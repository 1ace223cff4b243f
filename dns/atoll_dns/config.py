"""Configuration of one Atoll DNS server (what ``atoll up`` or an operator sets).

The configuration says *where* the server listens and *how* the federated zone
looks outside the control plane's data: the zone name, its NS and SOA records,
the client-network → region map used by the geo strategy, an optional
MaxMind-format database, distance overrides between regions, whether other
clusters are reached directly or through this cluster's gateway egress
(``egress_address``), and a few knobs of the packet path. What is *in* the
zone (services, targets, health, policies, region coordinates) comes from the
control plane and is turned into
a :class:`~atoll_dns.snapshot.ZoneSnapshot` by :func:`~atoll_dns.snapshot.build_zone`.

Names are kept as absolute, lowercase text (``"atoll.test."``); a name given
without the trailing dot is taken relative to the zone (``"ns1"`` →
``"ns1.atoll.test."``) for NS and SOA names, and as absolute for the zone.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

import dns.exception
import dns.name
from pydantic import Field, IPvAnyAddress, field_validator, model_validator

from atoll.model.base import Frozen
from atoll.model.names import DnsLabel

__all__ = [
    "DnsConfig",
    "NameServerConfig",
    "RegionDistance",
    "RegionNetwork",
    "SoaConfig",
    "absolute_name",
]


def absolute_name(text: str, *, origin: str | None = None) -> str:
    """Normalise a domain name to absolute lowercase text; raise ``ValueError`` if invalid.

    ``origin`` (absolute) is appended to names without a trailing dot.
    """
    if not text or len(text) > 253 + 1:
        raise ValueError(f"{text!r} is not a domain name")
    try:
        base = dns.name.from_text(origin) if origin is not None else dns.name.root
        name = dns.name.from_text(text, origin=base)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{text!r} is not a domain name: {exc}") from exc
    return name.to_text().lower()


class SoaConfig(Frozen):
    """SOA timers and names (RFC 1035 §3.3.13; negative caching per RFC 2308)."""

    #: primary name server; default: the first configured NS name
    mname: str | None = None
    #: responsible mailbox as a domain name, relative to the zone unless absolute
    rname: str = "hostmaster"
    refresh: int = Field(7200, ge=1, le=2**31 - 1)
    retry: int = Field(3600, ge=1, le=2**31 - 1)
    expire: int = Field(86400, ge=1, le=2**31 - 1)
    #: negative-caching TTL (RFC 2308 §5): how long resolvers cache NXDOMAIN/NODATA
    minimum: int = Field(30, ge=0, le=86400)
    #: TTL of the SOA record itself when asked for at the apex
    ttl: int = Field(3600, ge=0, le=86400)


class NameServerConfig(Frozen):
    """One NS record at the apex; in-zone names get A/AAAA (glue) records."""

    name: str
    addresses: list[IPv4Address | IPv6Address] = Field(default_factory=list, max_length=16)


class RegionNetwork(Frozen):
    """A client network located in a region (the CIDR → region map, longest prefix wins)."""

    network: IPv4Network | IPv6Network
    region: DnsLabel


class RegionDistance(Frozen):
    """An explicit distance between two regions (symmetric), overriding great-circle km."""

    a: DnsLabel
    b: DnsLabel
    distance: float = Field(ge=0.0)


class DnsConfig(Frozen):
    """Everything a DNS server needs besides the control plane's data."""

    zone: str = "atoll.test."
    #: the cluster this server answers for (needed with ``egress_address``)
    cluster: DnsLabel | None = None
    #: answer this address, the cluster's gateway egress, for targets in *other*
    #: clusters — clients then reach them only through the east-west gateways (the
    #: egress picks the remote cluster with the same strategy); None: endpoint addresses
    egress_address: IPvAnyAddress | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(53, ge=0, le=65535, description="0 picks a free port")
    nameservers: list[NameServerConfig] = Field(default_factory=list, max_length=13)
    soa: SoaConfig = Field(default_factory=SoaConfig)
    ns_ttl: int = Field(3600, ge=0, le=86400)
    #: TTL for services without a TrafficPolicy
    default_ttl: int = Field(30, ge=1, le=86400)
    #: TTL while answering with the last healthy set because every target is down
    unhealthy_ttl: int = Field(5, ge=1, le=3600)
    client_networks: list[RegionNetwork] = Field(default_factory=list, max_length=100_000)
    #: MaxMind-format database (GeoLite2/GeoIP2 Country or City, or any MMDB with the
    #: same "country"/"continent" layout), consulted when no client network matches
    maxmind_db: Path | None = None
    #: ISO country code ("DE") or continent code ("EU") → region; country wins
    maxmind_regions: dict[str, DnsLabel] = Field(default_factory=dict)
    distances: list[RegionDistance] = Field(default_factory=list, max_length=10_000)
    #: UDP payload size advertised in our OPT record and the cap for UDP answers
    #: (1232: the DNS flag day 2020 value that avoids IP fragmentation)
    edns_udp_payload: int = Field(1232, ge=512, le=4096)
    tcp_idle_timeout: float = Field(10.0, gt=0.0, le=600.0)
    tcp_max_connections: int = Field(1024, ge=1, le=65535)
    #: worker processes sharing the port with SO_REUSEPORT (1 = in-process only)
    workers: int = Field(1, ge=1, le=64)
    #: Linux: read/answer UDP in batches with recvmmsg/sendmmsg (else one callback per packet)
    udp_batch: bool = True
    #: serve from precomputed wire answers; False forces the dnspython path (debugging)
    fast_path: bool = True
    #: observe the answer latency of one query in this many (0 disables)
    latency_sample_every: int = Field(64, ge=0, le=1_000_000)
    #: exact-query response cache entries (cleared on every snapshot)
    query_cache_size: int = Field(65536, ge=0, le=10_000_000)

    @field_validator("zone")
    @classmethod
    def _zone_absolute(cls, value: str) -> str:
        return absolute_name(value)

    @field_validator("maxmind_regions")
    @classmethod
    def _codes_upper(cls, value: dict[str, str]) -> dict[str, str]:
        for code in value:
            if not (2 <= len(code) <= 3 and code.isalpha() and code.isupper()):
                raise ValueError(f"{code!r} is not an upper-case ISO country/continent code")
        return value

    @model_validator(mode="after")
    def _names(self) -> DnsConfig:
        if self.egress_address is not None and self.cluster is None:
            raise ValueError("egress_address needs cluster (whose targets stay direct)")
        seen: set[str] = set()
        for ns in self.nameservers:
            name = absolute_name(ns.name, origin=self.zone)
            if name in seen:
                raise ValueError(f"name server {name} listed twice")
            seen.add(name)
        if self.soa.mname is not None:
            absolute_name(self.soa.mname, origin=self.zone)
        absolute_name(self.soa.rname, origin=self.zone)
        return self

    def nameserver_list(self) -> list[NameServerConfig]:
        """NS records with absolute names; default ``ns1.<zone>`` glued to the listen address."""
        if self.nameservers:
            return [
                NameServerConfig(
                    name=absolute_name(ns.name, origin=self.zone), addresses=ns.addresses
                )
                for ns in self.nameservers
            ]
        glue: list[IPv4Address | IPv6Address] = []
        try:
            addr = ip_address(self.listen_host)
        except ValueError:
            addr = None
        if addr is not None and not addr.is_unspecified:
            glue.append(addr)
        return [NameServerConfig(name=absolute_name("ns1", origin=self.zone), addresses=glue)]

    def soa_mname(self) -> str:
        if self.soa.mname is not None:
            return absolute_name(self.soa.mname, origin=self.zone)
        return self.nameserver_list()[0].name

    def soa_rname(self) -> str:
        return absolute_name(self.soa.rname, origin=self.zone)
