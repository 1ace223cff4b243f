"""Egress: local plain-TCP listeners that carry imported services to remote clusters.

A local workload connects to the egress listener of an imported service
(plain TCP). :func:`handle_egress` takes the next decision of the service's
ring (:mod:`atoll_gateway.routes`: the same targets, in the same order, that
the DNS strategy would answer for this region) and tries its targets in order:

* a **remote** cluster — mTLS to that cluster's gateway with *this* cluster's
  gateway SVID (resuming the last session with that gateway when there is
  one), trusting only the remote cluster's bundle, SNI
  ``<port>.<service>.<namespace>.svc.<cluster>.<zone>`` and ALPN
  :data:`~atoll_gateway.identity.TUNNEL_ALPN`; the server must present exactly
  ``spiffe://<cluster>.<fed>/atoll/gateway``. A remote gateway whose connects
  keep failing is ejected like an endpoint and skipped while another target
  remains;
* the **local** cluster — straight to a local endpoint (no gateway hop).

The remote gateway terminates, authorizes this cluster's ID against the
service's policy and forwards to its endpoint; with ``proxy_protocol`` the
endpoint learns the caller's SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from atoll.trusthub.naming import cluster_domain, component_id
from atoll_gateway import metrics
from atoll_gateway.accesslog import AccessRecord
from atoll_gateway.balancer import Endpoint
from atoll_gateway.errors import UpstreamError
from atoll_gateway.forward import forward
from atoll_gateway.naming import ServiceName, server_name
from atoll_gateway.routes import EgressRoute, EgressTarget
from atoll_gateway.runtime import Runtime
from atoll_gateway.tlsio import connect_socket
from atoll_gateway.upstream import connect_first, connect_verified

__all__ = ["handle_egress"]

log = logging.getLogger("atoll.gateway.egress")
LISTENER = "egress"


def _peer_key(target: EgressTarget, ep: Endpoint) -> str:
    return f"{target.cluster}/{ep}"


async def _open_gateway(
    rt: Runtime, route: EgressRoute, target: EgressTarget, ep: Endpoint
) -> socket.socket:
    sni = server_name(
        ServiceName(route.namespace, route.name, route.port.port, target.cluster), rt.table.zone
    )
    async with asyncio.timeout(rt.config.connect_timeout + rt.config.handshake_timeout):
        return await connect_verified(
            rt,
            ep,
            rt.identity.client_context(cluster_domain(rt.federation, target.cluster)),
            sni,
            listener=LISTENER,
            session=rt.identity.session(_peer_key(target, ep)),
            expected=component_id(rt.federation, target.cluster, "gateway"),
        )


async def _connect(
    rt: Runtime, rec: AccessRecord, route: EgressRoute
) -> tuple[socket.socket, str | None]:
    """The upstream socket, and the session key when it is a TLS tunnel to a peer gateway."""
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
            else:
                gw = target.gateway
                ep, upstream = await connect_first(
                    rt.balancer, f"gateway/{target.cluster}", [gw], attempts=1,
                    listener=LISTENER, destination=target.cluster,
                    connect=lambda e, t=target: _open_gateway(rt, route, t, e),  # type: ignore[misc]
                )  # fmt: skip
        except UpstreamError as exc:
            last = exc
            continue
        rec.upstream = str(ep)
        return upstream, None if target.gateway is None else _peer_key(target, ep)
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
        upstream, peer = await _connect(rt, rec, route)
        metrics.child(
            metrics.CONNECTIONS, LISTENER, rec.source_cluster, rec.destination_cluster, "egress"
        ).inc()
        handed_over = True
        on_finish = None
        if peer is not None and isinstance(upstream, ssl.SSLSocket):
            tls = upstream
            on_finish = lambda: rt.identity.remember_session(peer, tls)  # noqa: E731
        await forward(rt, rec, sock, upstream, on_finish=on_finish)
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
