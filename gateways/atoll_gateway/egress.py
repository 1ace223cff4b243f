"""Egress: local plain-TCP listeners that carry imported services to remote clusters.

A local workload connects to the egress listener of an imported service
(plain TCP). :func:`handle_egress` takes the next decision of the service's
ring (:mod:`atoll_gateway.routes`: the same targets, in the same order, that
the DNS strategy would answer for this region) and tries its targets in order:

* a **remote** cluster — a stream on a *pooled tunnel* to that cluster's
  gateway (:mod:`atoll_gateway.tunnelproto`): an idle tunnel from
  ``rt.tunnels`` when there is one, else a new mTLS connection with *this*
  cluster's gateway SVID (resuming the last session with that gateway when
  there is one), trusting only the remote cluster's bundle, SNI
  ``<port>.<service>.<namespace>.svc.<cluster>.<zone>`` and ALPN
  :data:`~atoll_gateway.identity.TUNNEL_ALPNS`; the server must present exactly
  ``spiffe://<cluster>.<fed>/atoll/gateway``. The stream is relayed once the
  peer ACCEPTs; a REFUSE (no endpoint there, not allowed) moves on to the
  next target, and the tunnel goes back to the pool whenever a stream ends
  cleanly. A peer that only speaks ``atoll-tunnel/1`` gets the connection
  itself (one tunnel per client connection). A remote gateway whose connects
  keep failing is ejected like an endpoint and skipped while another target
  remains;
* the **local** cluster — straight to a local endpoint (no gateway hop).

The remote gateway terminates, authorizes this cluster's ID against the
service's policy (per stream) and forwards to its endpoint; with
``proxy_protocol`` the endpoint learns the caller's SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from dataclasses import dataclass

from atoll.trusthub.naming import cluster_domain, component_id
from atoll_gateway import metrics
from atoll_gateway.accesslog import AccessRecord
from atoll_gateway.balancer import Endpoint
from atoll_gateway.errors import UpstreamError
from atoll_gateway.forward import forward
from atoll_gateway.identity import TUNNEL_ALPN_POOLED
from atoll_gateway.naming import ServiceName, server_name
from atoll_gateway.relay import abort
from atoll_gateway.routes import EgressRoute, EgressTarget
from atoll_gateway.runtime import Runtime
from atoll_gateway.tlsio import connect_socket
from atoll_gateway.tunnelio import read_frame, send_frame
from atoll_gateway.tunnelpool import Tunnel
from atoll_gateway.tunnelproto import ACCEPT, REFUSE, FrameReader, TunnelProtocolError, open_frame
from atoll_gateway.upstream import connect_first, connect_verified
from atoll_trust.errors import SvidVerificationError

__all__ = ["handle_egress"]

log = logging.getLogger("atoll.gateway.egress")
LISTENER = "egress"


def _peer_key(target: EgressTarget, ep: Endpoint) -> str:
    return f"{target.cluster}/{ep}"


@dataclass(slots=True)
class _Upstream:
    """Where a local connection goes: a socket, and what kind of tunnel it is."""

    sock: socket.socket
    #: a stream opened on this pooled tunnel (returned to the pool if it ends cleanly)
    tunnel: Tunnel | None = None
    #: pooled: tunnel bytes that arrived with ACCEPT (the stream's first frames)
    read: bytes = b""
    #: a per-connection TLS tunnel to this peer: keep its session when it ends
    session_key: str | None = None


async def _open_gateway(
    rt: Runtime, target: EgressTarget, ep: Endpoint, context: ssl.SSLContext, sni: str
) -> ssl.SSLSocket:
    async with asyncio.timeout(rt.config.connect_timeout + rt.config.handshake_timeout):
        return await connect_verified(
            rt,
            ep,
            context,
            sni,
            listener=LISTENER,
            session=rt.identity.session(_peer_key(target, ep)),
            expected=component_id(rt.federation, target.cluster, "gateway"),
        )


async def _open_stream(
    rt: Runtime, route: EgressRoute, target: EgressTarget, ep: Endpoint
) -> _Upstream:
    """A stream to ``target``'s gateway: on a pooled tunnel when one is idle, else on a
    new connection (pooled if the peer speaks it, per-connection if it predates pooling).

    A pooled tunnel that fails before ACCEPT is replaced by a new connection once (no
    client byte has left yet); a REFUSE is an :class:`UpstreamError` (the next target
    is tried) and leaves the tunnel in the pool."""
    key = _peer_key(target, ep)
    context = rt.identity.client_context(cluster_domain(rt.federation, target.cluster))
    tunnel = rt.tunnels.take(key, context)
    name = server_name(
        ServiceName(route.namespace, route.name, route.port.port, target.cluster), rt.table.zone
    )
    cfg = rt.config
    while True:
        reused = tunnel is not None
        if tunnel is None:
            tls = await _open_gateway(rt, target, ep, context, name)
            if tls.selected_alpn_protocol() != TUNNEL_ALPN_POOLED:
                return _Upstream(tls, session_key=key)
            tunnel = Tunnel(tls, key, tls.context, rt.tunnels.clock())
        elif not _still_trusted(rt, tunnel.tls, target):
            tunnel.close()
            tunnel = None
            continue
        reader = FrameReader()
        try:
            if reused:  # a peer that vanished without a word: the kernel gives up quickly
                _ack_timeout(tunnel.tls, cfg.connect_timeout)
            await send_frame(tunnel.tls, open_frame(name), timeout=cfg.handshake_timeout)
            # the peer connects its endpoint before it answers
            wait = cfg.connect_timeout * cfg.connect_attempts + cfg.handshake_timeout
            frame = await read_frame(tunnel.tls, reader, timeout=wait)
            if frame is None:
                raise ConnectionResetError(errno.ECONNRESET, "the peer gateway closed the tunnel")
            if reused:
                _ack_timeout(tunnel.tls, None)
        except (OSError, TimeoutError, TunnelProtocolError) as exc:
            abort(tunnel.tls)
            tunnel.close()
            if reused:  # an idle tunnel the peer was closing: a new one instead
                tunnel = None
                continue
            if isinstance(exc, TunnelProtocolError):
                raise OSError(errno.EPROTO, str(exc)) from exc
            raise
        except BaseException:  # cancelled (a drain deadline): mid-OPEN, not reusable
            abort(tunnel.tls)
            tunnel.close()
            raise
        metrics.child(metrics.TUNNEL_STREAMS, "client", "true" if tunnel.streams else "false").inc()
        tunnel.streams += 1
        if frame.type == ACCEPT:
            return _Upstream(tunnel.tls, tunnel=tunnel, read=reader.take_rest())
        if frame.type == REFUSE and not reader.take_rest():
            _keep(rt, tunnel)
            reason, detail = frame.refusal()
            metrics.child(metrics.UPSTREAM_FAILURES, LISTENER, target.cluster, "peer_refused").inc()
            raise UpstreamError("peer_refused", f"{target.cluster}: {reason}: {detail}")
        abort(tunnel.tls)
        tunnel.close()
        raise OSError(errno.EPROTO, f"tunnel protocol: {frame.name} where ACCEPT was due")


def _still_trusted(rt: Runtime, tls: ssl.SSLSocket, target: EgressTarget) -> bool:
    """The peer gateway of a pooled tunnel, checked again before a stream (a cache hit
    unless its certificate expired since): the serving side does the same."""
    try:
        rt.identity.verifier.verify(
            tls, now=rt.clock(), expected=component_id(rt.federation, target.cluster, "gateway")
        )
    except SvidVerificationError:
        return False
    return True


def _ack_timeout(sock: socket.socket, seconds: float | None) -> None:
    """``TCP_USER_TIMEOUT``: how long sent bytes may stay unacknowledged before the
    kernel drops the connection (None: the system's default). Set while an OPEN
    waits on a reused tunnel, so a peer that disappeared behind a partition (no
    reset, no FIN) costs ``connect_timeout`` rather than the whole wait for
    ACCEPT, which must allow for the peer's own endpoint connects; only while
    waiting, since a slow reader mid-stream must not be cut off."""
    ms = 0 if seconds is None else max(1, int(seconds * 1000))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)


def _keep(rt: Runtime, tunnel: Tunnel) -> None:
    """Back to the pool (its TLS session kept for new tunnels, once per tunnel)."""
    if not tunnel.session_kept:
        tunnel.session_kept = True
        rt.identity.remember_session(tunnel.key, tunnel.tls)
    rt.tunnels.give(tunnel)


async def _connect(rt: Runtime, rec: AccessRecord, route: EgressRoute) -> _Upstream:
    """The upstream of a local connection: the first target of the ring that takes it."""
    if not route.decisions or not any(route.decisions):
        raise UpstreamError("no_healthy_target", f"{route.key} has no reachable healthy target")
    targets = route.decisions[rt.next_decision(route.key, len(route.decisions))]
    # a remote gateway that is ejected goes last (still tried if nothing else works)
    targets = tuple(sorted(
        targets, key=lambda t: t.gateway is not None and rt.balancer.is_ejected(t.gateway)
    ))  # fmt: skip
    attempts = rt.config.connect_attempts
    last: UpstreamError | None = None
    for target in targets:
        rec.destination_cluster = target.cluster
        try:
            if target.gateway is None:
                svc = rt.table.inbound.get((route.namespace, route.name))
                endpoints = svc.endpoints.get(route.port.port, ()) if svc else ()
                limit = rt.config.connect_timeout
                ep, upstream = await connect_first(
                    rt.balancer, route.key, endpoints, attempts=attempts, listener=LISTENER,
                    destination=target.cluster, connect=lambda e, s=limit: connect_socket(e, s),  # type: ignore[misc]
                )  # fmt: skip
                rec.upstream = str(ep)
                return _Upstream(upstream)
            ep, up = await connect_first(
                rt.balancer, f"gateway/{target.cluster}", [target.gateway], attempts=1,
                listener=LISTENER, destination=target.cluster,
                connect=lambda e, t=target: _open_stream(rt, route, t, e),  # type: ignore[misc]
            )  # fmt: skip
            rec.upstream = str(ep)
            return up
        except UpstreamError as exc:
            last = exc
    raise last or UpstreamError("no_healthy_target", f"{route.key}: no target")


async def handle_egress(rt: Runtime, listen: Endpoint, sock: socket.socket, client: str) -> None:
    """Serve one local connection on an egress listener (see the module docstring)."""
    rec = AccessRecord(listener=LISTENER, client=client, mode="egress")
    rec.source_cluster = rt.table.cluster
    handed_over = False
    try:
        route = next((r for r in rt.table.egress if r.listen == listen), None)
        if route is None:
            raise UpstreamError("no_route", f"no egress route on {listen} any more")
        rec.service = f"{route.key}:{route.port.port}"
        up = await _connect(rt, rec, route)
        metrics.child(
            metrics.CONNECTIONS, LISTENER, rec.source_cluster, rec.destination_cluster, "egress"
        ).inc()
        handed_over = True
        if up.tunnel is not None:
            if await forward(rt, rec, sock, up.sock, tunnel="upstream", read=up.read):
                _keep(rt, up.tunnel)
            return
        on_finish = None
        if up.session_key is not None and isinstance(up.sock, ssl.SSLSocket):
            tls, key = up.sock, up.session_key
            on_finish = lambda: rt.identity.remember_session(key, tls)  # noqa: E731
        await forward(rt, rec, sock, up.sock, on_finish=on_finish)
    except UpstreamError as exc:
        rec.fail(exc.reason, str(exc))
    except asyncio.CancelledError:
        rec.fail("cancelled", "drain deadline or shutdown")
        raise
    except Exception as exc:  # the one catch-all of a connection
        log.exception("egress connection failed", extra={"client": client})
        rec.fail("internal", f"{type(exc).__name__}: {exc}")
    finally:
        if not handed_over:
            sock.close()
        rec.emit()
