"""Connecting to endpoints and remote gateways: timeouts, retries, outlier bookkeeping.

:func:`connect_first` tries endpoints in the balancer's order (at most
``connect_attempts`` of them) with a connect timeout each; every failure is
counted and fed to outlier ejection, every success resets it. Before the
first byte has been relayed, trying the next endpoint is safe: the client has
seen nothing yet. :func:`connect_verified` is one such attempt over mTLS: the
handshake, its count, and the SPIFFE verification of the server.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from atoll_gateway import metrics
from atoll_gateway.balancer import Balancer, Endpoint
from atoll_gateway.errors import UpstreamError
from atoll_gateway.runtime import Runtime
from atoll_gateway.tlsio import connect_tls
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId
from atoll_trust.tls import Authorizer

__all__ = ["CONNECT_ERRORS", "connect_first", "connect_verified"]

T = TypeVar("T")
CONNECT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    ssl.SSLError,
    SvidVerificationError,
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, SvidVerificationError):
        return "unauthenticated"
    return "error"


async def connect_first(
    balancer: Balancer,
    key: str,
    endpoints: tuple[Endpoint, ...] | list[Endpoint],
    *,
    attempts: int,
    listener: str,
    destination: str,
    connect: Callable[[Endpoint], Awaitable[T]],
) -> tuple[Endpoint, T]:
    order = balancer.order(key, endpoints)[:attempts]
    if not order:
        metrics.child(metrics.UPSTREAM_FAILURES, listener, destination, "no_endpoint").inc()
        raise UpstreamError("no_endpoint", f"{key} has no healthy endpoint in {destination}")
    last: BaseException | None = None
    for ep in order:
        started = time.perf_counter()
        try:
            result = await connect(ep)
        except CONNECT_ERRORS as exc:
            last = exc
            metrics.child(metrics.UPSTREAM_FAILURES, listener, destination, _reason(exc)).inc()
            if balancer.failure(ep):
                metrics.EJECTIONS.inc()
            continue
        metrics.child(metrics.UPSTREAM_CONNECT_SECONDS, listener).observe(
            time.perf_counter() - started
        )
        balancer.success(ep)
        return ep, result
    raise UpstreamError(
        "connect_failed",
        f"{key}: {len(order)} endpoint(s) failed; last: {type(last).__name__}: {last}",
    )


async def connect_verified(
    rt: Runtime,
    endpoint: Endpoint,
    ctx: ssl.SSLContext,
    server_hostname: str,
    *,
    listener: str,
    session: ssl.SSLSession | None = None,
    expected: SpiffeId | None = None,
    authorize: Authorizer | None = None,
) -> ssl.SSLSocket:
    """mTLS to ``endpoint`` (bound the time with ``asyncio.timeout``), the server verified
    against its own domain's bundle (and ``expected``/``authorize``); closed if it is not."""
    tls = await connect_tls(endpoint, ctx, server_hostname, session=session)
    metrics.count_handshake(listener, "client", tls.session_reused)
    try:
        rt.identity.verifier.verify(tls, now=rt.clock(), expected=expected, authorize=authorize)
    except BaseException:
        tls.close()
        raise
    return tls
