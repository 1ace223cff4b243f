"""The serving side of a pooled tunnel: one stream after another until the peer stops.

A peer gateway's egress that negotiated ALPN
:data:`~atoll_gateway.identity.TUNNEL_ALPN_POOLED` has been verified at the
handshake (:mod:`atoll_gateway.inbound`); :func:`serve_tunnel` then loops:

1. wait for an ``OPEN`` (up to ``idle_timeout``; a drain ends the wait at once);
2. check the peer again — :class:`~atoll_trust.peercache.PeerVerifier` against
   the *current* bundles (a cache hit unless the bundles rotated or the
   certificate expired), so a tunnel never outlives its peer's trust;
3. route the named service, apply its allow policy, connect an endpoint
   (:mod:`atoll_gateway.endpoints`) — any failure is a ``REFUSE`` with the
   reason, and the tunnel waits for the next ``OPEN``;
4. ``ACCEPT`` and relay the stream (:class:`~atoll_gateway.tunnelrelay.TunnelRelay`).

Each stream is one access-log line and one connection in the metrics, like
a per-connection tunnel; the tunnel itself is logged by the inbound handler
when it closes (mode ``tunnel``, with how many streams it carried).
"""

from __future__ import annotations

import ssl

from atoll_gateway import metrics
from atoll_gateway.accesslog import AccessRecord
from atoll_gateway.endpoints import LISTENER, authorized_header, connect_endpoint, open_terminated
from atoll_gateway.errors import ClientHelloError, GatewayError, UpstreamError
from atoll_gateway.forward import forward
from atoll_gateway.naming import parse_server_name
from atoll_gateway.runtime import Runtime
from atoll_gateway.tunnelio import read_frame, send_frame
from atoll_gateway.tunnelproto import (
    OPEN,
    FrameReader,
    TunnelProtocolError,
    accept_frame,
    refuse_frame,
)
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId

__all__ = ["serve_tunnel"]


async def serve_tunnel(rt: Runtime, tls: ssl.SSLSocket, client: str, source_cluster: str) -> int:
    """Serve streams on ``tls`` (verified, handshake done) until the peer closes the
    tunnel, it idles out, a drain begins, or a stream fails; returns how many streams
    were opened. The caller closes ``tls``."""
    streams = 0
    idle = metrics.child(metrics.TUNNELS_IDLE, "server")
    while True:
        reader = FrameReader()
        idle.inc()
        try:
            frame = await read_frame(
                tls,
                reader,
                timeout=rt.config.idle_timeout,
                stop=lambda: rt.draining,
                wake=rt.tunnel_waiters,
            )
        except (TimeoutError, ConnectionAbortedError):  # idle too long, or reclaimed
            return streams
        finally:
            idle.dec()
        if frame is None:
            return streams
        if frame.type != OPEN:
            raise TunnelProtocolError(f"expected OPEN, got {frame.name}")
        metrics.child(metrics.TUNNEL_STREAMS, "server", "true" if streams else "false").inc()
        streams += 1
        if not await _stream(rt, tls, reader, frame.server_name(), client, source_cluster):
            return streams


def _peer(rt: Runtime, tls: ssl.SSLSocket) -> SpiffeId:
    """The tunnel's peer, verified again against the current bundles (a cache hit unless
    they rotated or its certificate expired): ``unauthenticated`` if it no longer is."""
    try:
        return rt.identity.verifier.verify(tls, now=rt.clock()).spiffe_id
    except SvidVerificationError as exc:
        raise ClientHelloError("unauthenticated", str(exc)) from exc


async def _stream(
    rt: Runtime,
    tls: ssl.SSLSocket,
    reader: FrameReader,
    name: str,
    client: str,
    source_cluster: str,
) -> bool:
    """One stream; True when the tunnel can carry the next one."""
    rec = AccessRecord(listener=LISTENER, client=client, sni=name, mode="terminate")
    rec.destination_cluster = rt.table.cluster
    rec.source_cluster = source_cluster
    timeout = rt.config.handshake_timeout
    try:
        try:
            peer = _peer(rt, tls)
            rec.source_id = str(peer)
            table = rt.table
            svc, port = table.inbound_route(parse_server_name(name, table.zone))
            rec.service = f"{svc.key}:{port.port}"
            header = authorized_header(
                svc, peer, name, (tls.getpeername()[:2], tls.getsockname()[:2])
            )
            upstream = await connect_endpoint(
                rt, rec, svc, port.port, lambda e: open_terminated(rt, e, svc)
            )
        except (GatewayError, UpstreamError) as exc:
            metrics.count_refusal(LISTENER, exc)
            rec.fail(exc.reason, str(exc))
            await send_frame(tls, refuse_frame(exc.reason, str(exc)), timeout=timeout)
            # a peer no longer trusted loses its tunnel; one that sent data it should
            # have held back leaves it in an unknown state
            return exc.reason != "unauthenticated" and not reader.take_rest()
        try:
            await send_frame(tls, accept_frame(), timeout=timeout)
        except BaseException:
            upstream.close()
            raise
        return await forward(
            rt, rec, tls, upstream, tunnel="client", prefix=header, read=reader.take_rest()
        )
    except (OSError, TimeoutError) as exc:
        rec.fail("tunnel_error", f"{type(exc).__name__}: {exc}")
        return False
    finally:
        rec.emit()
