"""Prometheus metrics of the control plane's trust hub."""

from prometheus_client import Counter, Gauge

ENROLLMENTS = Counter(
    "atoll_trust_enrollments_total", "Enroll and Renew calls by outcome", ["rpc", "result"]
)
JOIN_TOKENS = Counter("atoll_trust_join_tokens_created_total", "Join tokens issued")
CA_ROTATIONS = Counter(
    "atoll_trust_ca_rotations_total", "Federation CA rotation steps applied", ["action"]
)
SVID_MINTS = Counter("atoll_trust_server_svid_mints_total", "Control-plane SVIDs minted")
FOREIGN_FETCHES = Counter(
    "atoll_trust_foreign_fetches_total", "Foreign bundle endpoint fetches", ["result"]
)
CA_NOT_AFTER = Gauge(
    "atoll_trust_ca_not_after_seconds", "Unix time the active federation CA certificate expires"
)
