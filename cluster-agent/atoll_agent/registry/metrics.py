"""Prometheus metrics of the registry.

Catalog gauges are not kept up to date on every write: a custom collector
reads the published snapshot when Prometheus scrapes (one pass over the
instances), so the write path carries no metric bookkeeping and the gauges can
never drift from the catalog. Instance counts use the *effective* health at
scrape time (a lapsed TTL counts as critical even before the expiry loop has
recorded it).

Request metrics come from a plain ASGI middleware. The ``route`` label is the
matched route *template* (``/v1/services/{namespace}/{name}``), never the raw
path, so label cardinality stays bounded; requests that match no route are
``route="unmatched"``.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atoll_agent.registry.model import HEALTH_STATES, effective_health
from atoll_agent.registry.runtime import Registry

__all__ = ["CatalogCollector", "RequestMetrics"]


class CatalogCollector(Collector):
    """Gauges computed from the registry's published snapshot at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        snap = self._registry.snapshot
        now = self._registry.clock()
        index = GaugeMetricFamily("atoll_registry_index", "Current catalog index")
        index.add_metric([], snap.index)
        services = GaugeMetricFamily(
            "atoll_registry_services", "Registered services", labels=["exported"]
        )
        exported = sum(1 for s in snap.services if s.export)
        services.add_metric(["true"], exported)
        services.add_metric(["false"], len(snap.services) - exported)
        tally = Tally(
            effective_health(inst, now) for svc in snap.services for inst in svc.instances
        )
        instances = GaugeMetricFamily(
            "atoll_registry_instances",
            "Registered instances by effective health",
            labels=["health"],
        )
        for health in HEALTH_STATES:
            instances.add_metric([health], tally[health])
        yield index
        yield services
        yield instances


class RequestMetrics:
    """ASGI middleware counting requests by route template, method and status."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "atoll_registry_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "atoll_registry_request_seconds",
            "HTTP request duration (blocking queries include their wait)",
            ["route", "method"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes the app becomes a 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.requests.labels(route, method, str(status)).inc()
            self.seconds.labels(route, method).observe(time.perf_counter() - start)
