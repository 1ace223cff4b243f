"""Prometheus metrics of a DNS server, cheap enough for the packet path.

The packet path only increments plain Python integers (a ``defaultdict`` keyed
by ``(rcode, qtype, strategy)`` in the engine) and, for one query in
``DnsConfig.latency_sample_every``, adds a latency to a bucket list. A custom
collector turns that into metric families when Prometheus scrapes — no
prometheus_client label lookup or lock per query. Worker processes ship their
counters to the parent, which merges them here.

Families:

* ``atoll_dns_queries_total{rcode,qtype,strategy}`` — answered queries; qtype
  is a mnemonic from a fixed list or ``other`` (bounded cardinality);
  strategy is the answering service's strategy, ``none`` for other names
* ``atoll_dns_dropped_total`` — packets answered with silence (garbage, responses)
* ``atoll_dns_packet_errors_total`` — exceptions caught on the packet path (a bug)
* ``atoll_dns_slow_path_total`` — packets answered by the dnspython path
* ``atoll_dns_answer_latency_seconds`` — sampled handler time, packet in → bytes out
* ``atoll_dns_zone_serial`` — serial (version) of the zone snapshot being served
* ``atoll_dns_zone_applied_total`` — snapshots applied since start
* ``atoll_dns_healthy_targets{name}`` / ``atoll_dns_targets{name}`` — per service name
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import dns.rcode
import dns.rdatatype
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from atoll_dns.snapshot import ZoneSnapshot

__all__ = [
    "LATENCY_BUCKETS",
    "DnsMetrics",
    "MetricsState",
    "StatKey",
    "qtype_label",
    "rcode_label",
]

LATENCY_BUCKETS = (
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)

_QTYPES = frozenset(
    int(dns.rdatatype.from_text(t))
    for t in [
        *("A", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "AAAA", "SRV", "NAPTR", "DS"),
        *("RRSIG", "NSEC", "DNSKEY", "SVCB", "HTTPS", "CAA", "ANY", "AXFR", "IXFR", "OPT"),
        "NULL",
    ]
)

#: (rcode, qtype or None, strategy) — the labels of ``atoll_dns_queries_total``
StatKey = tuple[int, "int | None", str]


def qtype_label(qtype: int | None) -> str:
    if qtype is None:
        return "none"
    return (
        dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)) if qtype in _QTYPES else "other"
    )


def rcode_label(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
    except ValueError:
        return str(rcode)


@dataclass(frozen=True, slots=True)
class MetricsState:
    """A worker process's counters, shipped to the parent (picklable)."""

    counts: dict[StatKey, int]
    latency_counts: list[int]
    latency_sum: float
    dropped: int
    errors: int
    slow: int = 0


class DnsMetrics(Collector):
    """Counters fed by the engine(s), rendered at scrape time."""

    def __init__(self) -> None:
        #: callables returning query counts (the engines of this process)
        self.sources: list[Callable[[], Mapping[StatKey, int]]] = []
        #: callables returning slow-path packet counts (engines of this process)
        self.slow_sources: list[Callable[[], int]] = []
        #: latest state reported by each worker process
        self.workers: dict[int, MetricsState] = {}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.dropped = 0
        self.errors = 0
        self.serial = 0
        self.applied = 0
        self.targets: dict[str, tuple[int, int]] = {}

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def zone_applied(self, snapshot: ZoneSnapshot) -> None:
        self.serial = snapshot.serial
        self.applied += 1
        self.targets = {
            f"{s.name}.{s.namespace}.{snapshot.zone}": (s.healthy_count, len(s.targets))
            for s in snapshot.services
        }

    def state(self) -> MetricsState:
        return MetricsState(
            self.totals(),
            list(self.latency_counts),
            self.latency_sum,
            self.dropped,
            self.errors,
            sum(f() for f in self.slow_sources),
        )

    def totals(self) -> dict[StatKey, int]:
        """Query counts of this process's engines plus every worker's."""
        out: dict[StatKey, int] = {}
        sources = [*(f() for f in self.sources), *(w.counts for w in self.workers.values())]
        for source in sources:
            for key, value in list(source.items()):
                out[key] = out.get(key, 0) + value
        return out

    def collect(self) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "atoll_dns_queries", "DNS queries answered", labels=["rcode", "qtype", "strategy"]
        )
        merged: dict[tuple[str, str, str], int] = {}
        for (rcode, qtype, strategy), value in self.totals().items():
            labels = (rcode_label(rcode), qtype_label(qtype), strategy)
            merged[labels] = merged.get(labels, 0) + value
        for labels, value in sorted(merged.items()):
            queries.add_metric(list(labels), value)
        yield queries
        workers = list(self.workers.values())
        yield CounterMetricFamily(
            "atoll_dns_dropped",
            "packets answered with silence",
            value=self.dropped + sum(w.dropped for w in workers),
        )
        yield CounterMetricFamily(
            "atoll_dns_packet_errors",
            "exceptions caught on the packet path",
            value=self.errors + sum(w.errors for w in workers),
        )
        yield CounterMetricFamily(
            "atoll_dns_slow_path",
            "packets answered by the dnspython path instead of precomputed answers",
            value=sum(f() for f in self.slow_sources) + sum(w.slow for w in workers),
        )
        latency = list(self.latency_counts)
        for w in workers:
            latency = [a + b for a, b in zip(latency, w.latency_counts, strict=True)]
        acc = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), latency, strict=True):
            acc += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        yield HistogramMetricFamily(
            "atoll_dns_answer_latency_seconds",
            "sampled time from packet in hand to response bytes sent",
            buckets=buckets,
            sum_value=self.latency_sum + sum(w.latency_sum for w in workers),
        )
        yield GaugeMetricFamily(
            "atoll_dns_zone_serial", "serial of the zone snapshot served", value=self.serial
        )
        yield CounterMetricFamily(
            "atoll_dns_zone_applied", "zone snapshots applied", value=self.applied
        )
        healthy = GaugeMetricFamily(
            "atoll_dns_healthy_targets", "healthy targets per service name", labels=["name"]
        )
        total = GaugeMetricFamily("atoll_dns_targets", "targets per service name", labels=["name"])
        for name, (h, t) in sorted(self.targets.items()):
            healthy.add_metric([name], h)
            total.add_metric([name], t)
        yield healthy
        yield total
