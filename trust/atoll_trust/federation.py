"""Pure parts of SPIFFE federation: when to poll a foreign bundle endpoint, what a fetch
result does to the stored bundles, and what the bundle endpoint answers.

The I/O (HTTPS client with the https_web / https_spiffe profiles, the HTTP
server) is wired elsewhere; these functions decide, so they are tested without
sockets (SPIFFE Trust Domain and Bundle §5; SPIRE's federation behaviour):

* :func:`next_poll_delay` — poll at a quarter of the bundle's
  ``spiffe_refresh_hint`` (default hint 300 s), never more often than once a
  minute;
* :func:`apply_fetch_result` — a fetched document is parsed as the *configured*
  foreign domain's bundle and stored through :meth:`BundleSet.with_bundle`; a
  transport error, a malformed document or a rejected update (lower sequence…)
  keeps the last good bundle and is recorded in :class:`EndpointStatus` for
  ``atoll trust status``;
* :func:`answer_bundle_request` — the bundle endpoint: ``GET /`` returns the
  domain's bundle JSON as ``application/json``; other paths 404, other methods 405.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from atoll_trust.bundle import DEFAULT_REFRESH_HINT, BundleSet, TrustBundle, render_bundle
from atoll_trust.errors import BundleRejectedError, InvalidBundleError
from atoll_trust.spiffe_id import TrustDomain

__all__ = [
    "MIN_POLL_INTERVAL",
    "BundleEndpointResponse",
    "EndpointStatus",
    "FetchFailed",
    "FetchSucceeded",
    "answer_bundle_request",
    "apply_fetch_result",
    "next_poll_delay",
]

MIN_POLL_INTERVAL = dt.timedelta(minutes=1)


def next_poll_delay(refresh_hint: int | None) -> dt.timedelta:
    """Delay until the next fetch: hint/4, at least one minute."""
    hint = DEFAULT_REFRESH_HINT if refresh_hint is None else refresh_hint
    return max(MIN_POLL_INTERVAL, dt.timedelta(seconds=hint / 4))


@dataclass(frozen=True, slots=True)
class FetchSucceeded:
    """The endpoint answered 200 with ``document``."""

    at: dt.datetime
    document: bytes


@dataclass(frozen=True, slots=True)
class FetchFailed:
    """Transport, TLS or HTTP failure; ``error`` is a one-line description."""

    at: dt.datetime
    error: str


FetchResult = FetchSucceeded | FetchFailed


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """What ``atoll trust status`` shows for one foreign bundle endpoint."""

    trust_domain: TrustDomain
    url: str
    last_attempt: dt.datetime | None = None
    last_success: dt.datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    next_poll_at: dt.datetime | None = None


def apply_fetch_result(
    status: EndpointStatus, result: FetchResult, bundles: BundleSet
) -> tuple[EndpointStatus, BundleSet]:
    """Fold one fetch result into the endpoint status and the bundle set."""
    td = status.trust_domain
    current = bundles.get(td)
    hint = current.refresh_hint if current is not None else None
    error: str | None
    if isinstance(result, FetchFailed):
        error = result.error
    else:
        try:
            bundles = bundles.with_document(result.document, trust_domain=td)
            error = None
        except (InvalidBundleError, BundleRejectedError) as exc:
            error = str(exc)
        stored = bundles.get(td)
        hint = stored.refresh_hint if stored is not None else hint
    next_at = result.at + next_poll_delay(hint)
    if error is None:
        return (
            replace(
                status,
                last_attempt=result.at,
                last_success=result.at,
                last_error=None,
                consecutive_failures=0,
                next_poll_at=next_at,
            ),
            bundles,
        )
    return (
        replace(
            status,
            last_attempt=result.at,
            last_error=error,
            consecutive_failures=status.consecutive_failures + 1,
            next_poll_at=next_at,
        ),
        bundles,
    )


@dataclass(frozen=True, slots=True)
class BundleEndpointResponse:
    status: int
    content_type: str
    body: bytes


def answer_bundle_request(method: str, path: str, bundle: TrustBundle) -> BundleEndpointResponse:
    """The bundle endpoint's answer to ``method path`` (query strings ignored)."""
    if path.split("?", 1)[0] != "/":
        return BundleEndpointResponse(404, "text/plain", b"not found\n")
    if method not in ("GET", "HEAD"):
        return BundleEndpointResponse(405, "text/plain", b"method not allowed\n")
    body = render_bundle(bundle)
    return BundleEndpointResponse(200, "application/json", b"" if method == "HEAD" else body)
