"""Federated authoritative DNS with GSLB strategies (DESIGN §6, issue 4).

Layers, each a module, pure ones first:

* :mod:`~atoll_dns.config` — :class:`DnsConfig` (zone, listen address, NS/SOA,
  client-network → region map, MaxMind DB, distances, workers)
* :mod:`~atoll_dns.snapshot` — :func:`build_zone` turns config + ServiceImport /
  TrafficPolicy / Region resources into an immutable :class:`ZoneSnapshot`
* :mod:`~atoll_dns.geo` — client → region (ECS or resolver address), distances
* :mod:`~atoll_dns.strategy` — :func:`decide`: failover, round_robin, weighted,
  geo, all-unhealthy handling, with a decision trace
* :mod:`~atoll_dns.zoneview` — names of the zone and the answer to one question
* :mod:`~atoll_dns.answer` — the slow, dnspython packet path (the reference)
* :mod:`~atoll_dns.fastpath` — precomputed wire answers patched per query
* :mod:`~atoll_dns.server` — sockets, atomic :meth:`DnsServer.apply`,
  persistence (:mod:`~atoll_dns.persist`), SO_REUSEPORT workers
  (:mod:`~atoll_dns.workers`), metrics (:mod:`~atoll_dns.metrics`)
"""

from atoll_dns.config import DnsConfig, NameServerConfig, RegionDistance, RegionNetwork, SoaConfig
from atoll_dns.explain import Explanation, explain
from atoll_dns.geo import DistanceTable, GeoDatabase, Location, Locator
from atoll_dns.persist import load_snapshot, save_snapshot
from atoll_dns.server import DnsServer, run_dns, serve_dns
from atoll_dns.snapshot import ServiceRecord, TargetRecord, ZoneSnapshot, build_zone
from atoll_dns.strategy import Choice, Decision, decide

__all__ = [
    "Choice",
    "Decision",
    "DistanceTable",
    "DnsConfig",
    "DnsServer",
    "Explanation",
    "GeoDatabase",
    "Location",
    "Locator",
    "NameServerConfig",
    "RegionDistance",
    "RegionNetwork",
    "ServiceRecord",
    "SoaConfig",
    "TargetRecord",
    "ZoneSnapshot",
    "build_zone",
    "decide",
    "explain",
    "load_snapshot",
    "run_dns",
    "save_snapshot",
    "serve_dns",
]
