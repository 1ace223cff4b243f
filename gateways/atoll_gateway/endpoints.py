"""Reaching a local endpoint of an exported service, after the gateway has decided to.

Shared by the inbound paths — passthrough, per-connection termination and
streams of pooled tunnels (:mod:`atoll_gateway.tunnelserve`):

* :func:`connect_endpoint` — a healthy endpoint (balanced, retried, outliers
  ejected), recorded in the access log and counted as a connection of the
  record's mode;
* :func:`open_terminated` — how a terminating gateway connects: plain TCP, or
  mTLS with its own SVID when the service sets ``upstream_tls``;
* :func:`authorized_header` — the service's allow policy for a verified peer,
  and the PROXY v2 header (client address, server name, peer SPIFFE ID) when
  the service asks for one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from atoll_gateway import metrics
from atoll_gateway.accesslog import AccessRecord
from atoll_gateway.balancer import Endpoint
from atoll_gateway.errors import ClientHelloError
from atoll_gateway.policy import authorize
from atoll_gateway.proxyproto import TLV_AUTHORITY, TLV_SPIFFE_ID, encode_v2
from atoll_gateway.routes import InboundService
from atoll_gateway.runtime import Runtime
from atoll_gateway.tlsio import connect_socket
from atoll_gateway.upstream import connect_first, connect_verified
from atoll_trust.spiffe_id import SpiffeId

__all__ = ["LISTENER", "authorized_header", "connect_endpoint", "open_terminated"]

LISTENER = "inbound"


async def connect_endpoint(
    rt: Runtime,
    rec: AccessRecord,
    svc: InboundService,
    port: int,
    connect: Callable[[Endpoint], Awaitable[socket.socket]],
) -> socket.socket:
    """A healthy local endpoint of ``svc`` (balanced, retried, outliers ejected),
    recorded in the access log and counted as a connection of ``rec.mode``."""
    ep, upstream = await connect_first(
        rt.balancer,
        svc.key,
        svc.endpoints.get(port, ()),
        attempts=rt.config.connect_attempts,
        listener=LISTENER,
        destination=rt.table.cluster,
        connect=connect,
    )
    rec.upstream = str(ep)
    metrics.child(
        metrics.CONNECTIONS, LISTENER, rec.source_cluster, rec.destination_cluster, rec.mode or ""
    ).inc()
    return upstream


async def open_terminated(rt: Runtime, ep: Endpoint, svc: InboundService) -> socket.socket:
    """A connection to a local endpoint: plain, or mTLS with the gateway's SVID."""
    if not svc.route.upstream_tls:
        return await connect_socket(ep, rt.config.connect_timeout)
    own = rt.identity.spiffe_id.trust_domain
    async with asyncio.timeout(rt.config.connect_timeout):
        return await connect_verified(
            rt,
            ep,
            rt.identity.client_context(own),
            ep.host,
            listener=LISTENER,
            authorize=lambda peer: peer.trust_domain == own,
        )


def authorized_header(
    svc: InboundService,
    peer: SpiffeId,
    server_name: str | None,
    addresses: tuple[tuple[str, int], tuple[str, int]],
) -> bytes:
    """The PROXY header to send the endpoint (``b""`` if the service wants none), once
    ``peer`` passes the service's allow policy — ``forbidden``
    (:class:`~atoll_gateway.errors.ClientHelloError`, a handshake outcome) if not.
    ``addresses`` are the client's and the gateway's."""
    verdict = authorize(svc.allow, peer)
    if not verdict.allowed:
        raise ClientHelloError("forbidden", verdict.reason)
    if not svc.route.proxy_protocol:
        return b""
    tlvs = {TLV_SPIFFE_ID: str(peer).encode()}
    if server_name:
        tlvs[TLV_AUTHORITY] = server_name.encode()
    return encode_v2(addresses[0], addresses[1], tlvs)
