"""The federation client: fetch foreign domains' bundles from their SPIFFE bundle endpoints.

A foreign domain is registered with ``atoll trust federate --domain D --url U
--profile P [--spiffe-id ID] [--bundle FILE]`` (a ``foreign/...`` TrustDomain
resource). The leader polls each endpoint (SPIFFE Trust Domain and Bundle §5):

* **when**: at the bundle's ``spiffe_refresh_hint`` / 4, at most once a minute
  (:func:`~atoll_trust.federation.next_poll_delay`); the next poll time is
  kept in ``status.fetch.next_poll_at``, so a new leader continues the
  schedule;
* **https_web**: an ordinary HTTPS GET verified against the Web PKI (the
  system trust store, or the CA bundle the control plane was given);
* **https_spiffe**: TLS against the roots of the *last stored bundle of that
  domain* (bootstrapped by the operator with ``--bundle``), then the server's
  certificate is verified as an X.509-SVID of that domain naming exactly the
  configured SPIFFE ID — before the body is used;
* **what it does with the answer**: :func:`~atoll_trust.federation.apply_fetch_result`
  (pure) — a malformed document, a lower sequence or a transport error keeps
  the last good bundle and is recorded in ``status.fetch`` for
  ``atoll trust status``.

The fetch is injected (:data:`Fetcher`) so the loop is tested without sockets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable

import httpx

from atoll.aio import Sleep
from atoll.control.repo import Repo, mutate
from atoll.errors import AtollError
from atoll.model import BundleEndpointSpec, TrustDomain
from atoll.trusthub import metrics
from atoll.trusthub.domains import bundle_of, foreign_after_fetch
from atoll_trust.bundle import MAX_BUNDLE_BYTES, BundleSet, TrustBundle
from atoll_trust.errors import SvidVerificationError
from atoll_trust.federation import (
    EndpointStatus,
    FetchFailed,
    FetchResult,
    FetchSucceeded,
    apply_fetch_result,
)
from atoll_trust.spiffe_id import parse_spiffe_id, parse_trust_domain
from atoll_trust.tls import build_client_context, verify_peer

__all__ = ["Fetcher", "fetch_bundle", "poll_foreign_domains", "poll_once"]

log = logging.getLogger("atoll.trusthub.foreign")

Fetcher = Callable[[BundleEndpointSpec, TrustBundle | None, dt.datetime], Awaitable[FetchResult]]
IDLE = 60.0


async def fetch_bundle(
    endpoint: BundleEndpointSpec,
    anchor: TrustBundle | None,
    now: dt.datetime,
    *,
    web_verify: ssl.SSLContext | bool = True,
    deadline: float = 10.0,
) -> FetchResult:
    """GET the endpoint under its profile; never raises (failures are FetchFailed)."""
    try:
        if endpoint.profile == "https_web":
            verify: ssl.SSLContext | bool = web_verify
        else:
            if anchor is None or not anchor.x509_authorities:
                return FetchFailed(
                    now, "https_spiffe needs a bootstrap bundle of the domain (--bundle FILE)"
                )
            verify = build_client_context(None, anchor)
        async with (
            httpx.AsyncClient(verify=verify, timeout=deadline) as http,
            http.stream("GET", endpoint.url) as resp,
        ):
            if endpoint.profile == "https_spiffe":
                assert anchor is not None and endpoint.spiffe_id is not None
                stream = resp.extensions["network_stream"]
                verify_peer(
                    stream.get_extra_info("ssl_object"),
                    BundleSet([anchor]),
                    now=now,
                    expected=parse_spiffe_id(endpoint.spiffe_id),
                )
            if resp.status_code != 200:
                return FetchFailed(now, f"HTTP {resp.status_code} from {endpoint.url}")
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BUNDLE_BYTES:
                    return FetchFailed(now, f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
        return FetchSucceeded(now, body)
    except SvidVerificationError as exc:
        return FetchFailed(now, f"endpoint identity refused: {exc}")
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        return FetchFailed(now, f"{type(exc).__name__}: {exc}")


def _status_of(res: TrustDomain) -> EndpointStatus:
    assert res.spec.endpoint is not None
    f = res.status.fetch
    return EndpointStatus(
        trust_domain=parse_trust_domain(res.spec.trust_domain),
        url=res.spec.endpoint.url,
        last_attempt=f.last_attempt if f else None,
        last_success=f.last_success if f else None,
        last_error=f.last_error if f else None,
        consecutive_failures=f.consecutive_failures if f else 0,
        next_poll_at=f.next_poll_at if f else None,
    )


async def poll_once(
    repo: Repo, res: TrustDomain, *, fetch: Fetcher, now: dt.datetime
) -> TrustDomain | None:
    """Fetch one foreign domain now and store the outcome (last good bundle kept)."""
    assert res.spec.endpoint is not None
    anchor = bundle_of(res)
    result = await fetch(res.spec.endpoint, anchor, now)
    status, bundles = apply_fetch_result(
        _status_of(res), result, BundleSet([anchor] if anchor is not None else [])
    )
    metrics.FOREIGN_FETCHES.labels(result="ok" if status.last_error is None else "error").inc()
    if status.last_error is not None:
        log.warning(
            "foreign bundle fetch failed; keeping the last good bundle",
            extra={"trust_domain": res.spec.trust_domain, "error": status.last_error},
        )

    def fold(current: TrustDomain | None) -> TrustDomain | None:
        if current is None or current.spec.endpoint != res.spec.endpoint:
            return None  # removed or re-registered meanwhile
        return foreign_after_fetch(current, status, bundles, now=now)

    return await mutate(repo, TrustDomain, ("foreign", res.metadata.name), fold)


async def poll_foreign_domains(
    repo: Repo,
    *,
    clock: Callable[[], dt.datetime],
    sleep: Sleep = asyncio.sleep,
    fetch: Fetcher | None = None,
) -> None:
    """The leader's loop over every foreign domain (forever)."""
    fetcher: Fetcher = fetch or (lambda ep, anchor, now: fetch_bundle(ep, anchor, now))
    while True:
        wait = IDLE
        try:
            domains, _ = await repo.list(TrustDomain, "foreign")
            for res in domains:
                if res.spec.endpoint is None:
                    continue
                now = clock()
                due = res.status.fetch.next_poll_at if res.status.fetch else None
                if due is None or due <= now:
                    stored = await poll_once(repo, res, fetch=fetcher, now=now)
                    fetched = stored.status.fetch if stored is not None else None
                    due = fetched.next_poll_at if fetched is not None else None
                if due is not None:
                    wait = min(wait, max(1.0, (due - clock()).total_seconds()))
        except AtollError as exc:
            log.warning("foreign domain poll pass failed", extra={"error": str(exc)})
        await sleep(wait)
