"""Prometheus metrics of the sync protocol (server and client sides)."""

from prometheus_client import Counter, Gauge

CONNECTED = Gauge("atoll_sync_connected_streams", "Open sync streams", ["role"])
PUSHES = Counter("atoll_sync_pushes_total", "Deltas pushed to subscribers", ["type"])
NACKS = Counter("atoll_sync_nacks_total", "Deltas rejected by subscribers", ["type"])
REPORTS = Counter("atoll_sync_reports_total", "Reports received", ["type", "result"])
CLIENT_APPLIED = Counter(
    "atoll_sync_client_deltas_total", "Deltas a subscriber accepted or rejected", ["type", "result"]
)
CLIENT_CONNECTED = Gauge("atoll_sync_client_connected", "1 while the subscriber's stream is up")
CLIENT_RECONNECTS = Counter("atoll_sync_client_reconnects_total", "Stream (re)connection attempts")
