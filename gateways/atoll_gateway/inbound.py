"""The inbound TLS port: peek the ClientHello, route by SNI, pass through or terminate.

Per connection (:func:`handle_inbound`):

1. **Peek** the ClientHello (:mod:`atoll_gateway.peek`) within
   ``hello_timeout``; bad bytes, truncation, oversize and slow senders end
   here with a typed :class:`~atoll_gateway.errors.ClientHelloError`.
2. **Route**: the SNI (:mod:`atoll_gateway.naming`) names a local exported
   service and port in the current :class:`~atoll_gateway.routes.RouteTable`;
   unknown names get a TLS ``unrecognized_name`` alert.
3. **Passthrough** (the service's mode, unless the client is a peer gateway):
   connect to a healthy local endpoint (balancer, outlier ejection, connect
   timeout, retries) and relay the untouched TLS stream — the ClientHello is
   still in the socket, so the endpoint's own certificate reaches the client
   and workload mTLS stays end to end.
4. **Terminate** (mode ``terminate``, or a tunnel ALPN from a peer gateway's
   egress): TLS handshake with the gateway's *current*
   SVID, requiring a client certificate; the peer is verified against its own
   trust domain's bundle (:class:`atoll_trust.peercache.PeerVerifier`) and then the
   service's allow policy (:func:`atoll_gateway.policy.authorize`). Then a
   connection to the endpoint — plain, or mTLS with the gateway's SVID when
   ``upstream_tls`` — optionally prefixed with a PROXY v2 header carrying the
   verified peer ID (:mod:`atoll_gateway.proxyproto`).
5. **Pooled tunnel** (ALPN :data:`~atoll_gateway.identity.TUNNEL_ALPN_POOLED`
   negotiated): after the handshake and verification of step 4 the connection
   carries one stream after another, each naming its own service
   (:mod:`atoll_gateway.tunnelserve`); the SNI only had to route somewhere.

Every path ends in one access-log line and the counters of
:mod:`atoll_gateway.metrics`; nothing raised by one connection escapes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass

from atoll.trusthub.naming import cluster_of_domain
from atoll_gateway import metrics
from atoll_gateway.accesslog import AccessRecord
from atoll_gateway.clienthello import ClientHello, tls_alert
from atoll_gateway.endpoints import (
    LISTENER,
    authorized_header,
    connect_endpoint,
    open_terminated,
)
from atoll_gateway.errors import ClientHelloError, RouteError, UpstreamError
from atoll_gateway.forward import forward
from atoll_gateway.identity import TUNNEL_ALPN, TUNNEL_ALPN_POOLED
from atoll_gateway.naming import parse_server_name
from atoll_gateway.peek import peek_client_hello
from atoll_gateway.routes import InboundService
from atoll_gateway.runtime import Runtime
from atoll_gateway.tlsio import accept_tls, connect_socket
from atoll_gateway.tunnelproto import TunnelProtocolError
from atoll_gateway.tunnelserve import serve_tunnel
from atoll_trust.errors import SvidVerificationError

__all__ = ["Conn", "handle_inbound"]

log = logging.getLogger("atoll.gateway.inbound")


@dataclass(slots=True)
class Conn:
    """The accepted socket, until a relay or the TLS layer takes it over."""

    sock: socket.socket
    handed_over: bool = False

    def take(self) -> socket.socket:
        self.handed_over = True
        return self.sock

    def close(self) -> None:
        """Close; unread bytes are read first, so the close is a FIN rather than a reset
        (a reset can overtake an alert we just sent)."""
        if self.handed_over or self.sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            for _ in range(16):
                if not self.sock.recv(65536):
                    break
        self.sock.close()


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.send(data)


async def _passthrough(
    rt: Runtime, rec: AccessRecord, conn: Conn, svc: InboundService, port: int
) -> None:
    rec.mode = "passthrough"
    upstream = await connect_endpoint(
        rt, rec, svc, port, lambda e: connect_socket(e, rt.config.connect_timeout)
    )
    await forward(rt, rec, conn.take(), upstream)


async def _terminate(
    rt: Runtime,
    rec: AccessRecord,
    conn: Conn,
    svc: InboundService,
    port: int,
    hello: ClientHello,
) -> None:
    rec.mode = "terminate"
    try:
        server_ctx = rt.identity.server_context()
    except SvidVerificationError as exc:
        raise ClientHelloError("no_identity", str(exc)) from exc
    try:
        async with asyncio.timeout(rt.config.handshake_timeout):
            client = await accept_tls(conn.take(), server_ctx)
    except TimeoutError as exc:
        raise ClientHelloError("tls_timeout", "TLS handshake timed out") from exc
    except (ssl.SSLError, OSError) as exc:
        raise ClientHelloError("tls_error", f"TLS handshake: {exc}") from exc
    metrics.count_handshake(LISTENER, "server", client.session_reused)
    try:
        try:
            verified = rt.identity.verifier.verify(client, now=rt.clock())
        except SvidVerificationError as exc:
            raise ClientHelloError("unauthenticated", str(exc)) from exc
        peer = verified.spiffe_id
        rec.source_id = str(peer)
        rec.source_cluster = (
            cluster_of_domain(rt.federation, peer.trust_domain) or peer.trust_domain.name
        )
        if client.selected_alpn_protocol() == TUNNEL_ALPN_POOLED:
            rec.mode = "tunnel"
            streams = await serve_tunnel(rt, client, rec.client, rec.source_cluster)
            rec.detail = f"{streams} stream(s)"
            return
        header = authorized_header(
            svc, peer, hello.server_name, (client.getpeername()[:2], client.getsockname()[:2])
        )
        connected = await connect_endpoint(
            rt, rec, svc, port, lambda e: open_terminated(rt, e, svc)
        )
        await forward(rt, rec, client, connected, prefix=header)
    finally:
        client.close()  # a no-op once the relay has closed it


async def handle_inbound(rt: Runtime, sock: socket.socket, client: str) -> None:
    """Serve one connection on the TLS port (see the module docstring)."""
    rec = AccessRecord(listener=LISTENER, client=client)
    rec.destination_cluster = rt.table.cluster
    conn = Conn(sock)
    hello: ClientHello | None = None
    try:
        hello = await peek_client_hello(
            sock, max_size=rt.config.max_client_hello, timeout=rt.config.hello_timeout
        )
        rec.sni = hello.server_name
        table = rt.table
        svc, port = table.inbound_route(parse_server_name(hello.server_name, table.zone))
        rec.service = f"{svc.key}:{port.port}"
        tunnel = TUNNEL_ALPN in hello.alpn or TUNNEL_ALPN_POOLED in hello.alpn
        if svc.route.mode == "passthrough" and not tunnel:
            await _passthrough(rt, rec, conn, svc, port.port)
        else:
            await _terminate(rt, rec, conn, svc, port.port, hello)
    except ClientHelloError as exc:
        metrics.count_refusal(LISTENER, exc)
        rec.fail(exc.reason, str(exc))
    except TunnelProtocolError as exc:
        rec.fail(exc.reason, str(exc))
    except RouteError as exc:
        metrics.count_refusal(LISTENER, exc)
        rec.fail(exc.reason, str(exc))
        if not conn.handed_over:
            _send(sock, tls_alert("unrecognized_name"))
    except UpstreamError as exc:
        rec.fail(exc.reason, str(exc))
        if not conn.handed_over:
            _send(sock, tls_alert("internal_error"))
    except asyncio.CancelledError:
        rec.fail("cancelled", "drain deadline or shutdown")
        raise
    except Exception as exc:  # the one catch-all of a connection: log it, never crash
        log.exception("connection failed", extra={"client": client})
        rec.fail("internal", f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
        rec.emit()
