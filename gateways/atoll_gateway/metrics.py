"""Prometheus metrics of the gateway (served on the admin port at ``/metrics``).

Labels: ``listener`` is ``inbound`` (the TLS port) or ``egress`` (local plain
listeners); ``source_cluster`` is the cluster of the verified peer
(``unknown`` in passthrough, where the gateway sees no identity; the gateway's
own cluster for egress); ``destination_cluster`` is the cluster whose
endpoints serve the connection. Reasons are the typed errors' ``reason``
labels (:mod:`atoll_gateway.errors`) plus TLS outcomes (``tls_error``,
``tls_timeout``, ``unauthenticated``, ``forbidden``).

Bytes are counted every few seconds while a connection lives and once more
when it ends (:class:`~atoll_gateway.relay.RelayWatch`; nothing runs per
chunk, which splice could not afford).
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from atoll_gateway.errors import ClientHelloError, RouteError

__all__ = [
    "ACTIVE",
    "BYTES",
    "CONFIG_RELOADS",
    "CONNECTIONS",
    "EJECTIONS",
    "HANDSHAKE_FAILURES",
    "REFUSED",
    "ROUTE_FAILURES",
    "TLS_HANDSHAKES",
    "TUNNELS_IDLE",
    "TUNNEL_STREAMS",
    "UPSTREAM_CONNECT_SECONDS",
    "UPSTREAM_FAILURES",
    "child",
    "count_handshake",
    "count_refusal",
]

_PAIR = ("listener", "source_cluster", "destination_cluster")

CONNECTIONS = Counter(
    "atoll_gateway_connections_total",
    "Connections relayed to an endpoint or remote gateway, by mode",
    [*_PAIR, "mode"],
)
ACTIVE = Gauge("atoll_gateway_active_connections", "Connections being relayed now", _PAIR)
BYTES = Counter(
    "atoll_gateway_bytes_total",
    "Bytes relayed (direction: to_upstream | to_client), counted every few seconds",
    [*_PAIR, "direction"],
)
HANDSHAKE_FAILURES = Counter(
    "atoll_gateway_handshake_failures_total",
    "Connections refused before relaying: bad ClientHello, TLS failure, peer not allowed",
    ["listener", "reason"],
)
TLS_HANDSHAKES = Counter(
    "atoll_gateway_tls_handshakes_total",
    "Completed TLS handshakes (role: server | client; resumed: a session ticket was used)",
    ["listener", "role", "resumed"],
)
TUNNEL_STREAMS = Counter(
    "atoll_gateway_tunnel_streams_total",
    "Streams opened on pooled gateway-to-gateway tunnels (role: client | server; "
    "reused: the tunnel had carried a stream before, so no handshake was needed)",
    ["role", "reused"],
)
TUNNELS_IDLE = Gauge(
    "atoll_gateway_tunnels_idle",
    "Pooled tunnels waiting for their next stream (role: egress, in this gateway's pool; "
    "server, served for a peer's pool)",
    ["role"],
)
ROUTE_FAILURES = Counter(
    "atoll_gateway_route_failures_total", "Server names that route nowhere", ["reason"]
)
UPSTREAM_FAILURES = Counter(
    "atoll_gateway_upstream_failures_total",
    "Failed connection attempts to endpoints or remote gateways",
    ["listener", "destination_cluster", "reason"],
)
REFUSED = Counter(
    "atoll_gateway_refused_total", "Connections refused on arrival", ["listener", "reason"]
)
EJECTIONS = Counter(
    "atoll_gateway_ejections_total", "Endpoints ejected after consecutive connect failures"
)
CONFIG_RELOADS = Counter(
    "atoll_gateway_config_reloads_total", "Configuration file reloads", ["result"]
)
UPSTREAM_CONNECT_SECONDS = Histogram(
    "atoll_gateway_upstream_connect_seconds",
    "Time to connect (and handshake, for TLS) to an endpoint or remote gateway",
    ["listener"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


M = TypeVar("M", bound=MetricWrapperBase)
_CHILDREN: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}


def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, remembered: the per-connection paths ask for the same
    few children over and over, and ``labels()`` takes a lock and builds keys each time.
    Label values here are bounded (listeners, clusters, reasons), so is this cache."""
    key = (id(metric), labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found  # type: ignore[return-value]


def count_handshake(listener: str, role: str, resumed: bool | None) -> None:
    """One completed handshake (``resumed``: ``SSLSocket.session_reused``)."""
    child(TLS_HANDSHAKES, listener, role, "true" if resumed else "false").inc()


def count_refusal(listener: str, exc: Exception) -> None:
    """A connection (or a pooled tunnel's stream) refused before relaying, by error type:
    TLS and authorization outcomes as handshake failures, unknown names as route
    failures (endpoint failures were counted where the connects failed)."""
    if isinstance(exc, ClientHelloError):
        child(HANDSHAKE_FAILURES, listener, exc.reason).inc()
    elif isinstance(exc, RouteError):
        child(ROUTE_FAILURES, exc.reason).inc()
