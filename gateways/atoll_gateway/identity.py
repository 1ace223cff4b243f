"""The gateway's TLS material: SSL contexts built from the current Workload API context.

The agent's Workload API streams the gateway's X.509-SVID
(``spiffe://<cluster>.<fed>/atoll/gateway``) and every bundle the cluster
federates with. :class:`GatewayIdentity` turns the *current* context into SSL
contexts on demand and caches them until the context changes, so a rotated
SVID or bundle is used by the very next handshake (each connection asks for
its context when it starts; established connections keep theirs).

* :meth:`server_context` — terminating listener: presents our SVID, requires a
  client certificate from any known domain (OpenSSL's coarse filter; the real
  check is :func:`atoll_trust.tls.verify_peer` against the peer's own domain's
  bundle, then the service's allow policy).
* :meth:`client_context` — originating mTLS to a peer in one trust domain: trusts
  only that domain's bundle (no pooling at all) and offers ALPN
  :data:`TUNNEL_ALPN`, which tells a peer gateway to terminate.

:class:`StaticSource` holds a fixed context (tests, benchmarks); the CLI uses
:class:`atoll_trust.workload_api.client.X509Source`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol

from atoll_trust.bundle import BundleSet
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.tls import build_client_context, build_server_context
from atoll_trust.workload_api.client import X509Context

__all__ = ["TUNNEL_ALPN", "ContextSource", "GatewayIdentity", "StaticSource"]

#: ALPN protocol offered by egress connections: "terminate me, I am a peer gateway"
TUNNEL_ALPN = "atoll-tunnel/1"


class ContextSource(Protocol):
    @property
    def current(self) -> X509Context | None: ...


@dataclass(slots=True)
class StaticSource:
    current: X509Context | None


class GatewayIdentity:
    def __init__(self, source: ContextSource) -> None:
        self.source = source
        self._for: X509Context | None = None
        self._server: ssl.SSLContext | None = None
        self._clients: dict[TrustDomain, ssl.SSLContext] = {}

    def _context(self) -> X509Context:
        ctx = self.source.current
        if ctx is None:
            raise SvidVerificationError("the gateway has no SVID yet (Workload API)")
        if ctx is not self._for:
            self._for = ctx
            self._server = None
            self._clients = {}
        return ctx

    @property
    def ready(self) -> bool:
        return self.source.current is not None

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._context().svid.spiffe_id

    @property
    def bundles(self) -> BundleSet:
        return self._context().bundles

    def server_context(self) -> ssl.SSLContext:
        ctx = self._context()
        if self._server is None:
            server = build_server_context(ctx.svid, ctx.bundles)
            server.set_alpn_protocols([TUNNEL_ALPN])
            server.options |= ssl.OP_IGNORE_UNEXPECTED_EOF  # FIN = half-close (relay doc)
            self._server = server
        return self._server

    def client_context(self, peer: TrustDomain) -> ssl.SSLContext:
        ctx = self._context()
        client = self._clients.get(peer)
        if client is None:
            bundle = ctx.bundles.get(peer)
            if bundle is None:
                raise SvidVerificationError(f"no bundle for trust domain {peer} (not federated?)")
            client = build_client_context(ctx.svid, bundle)
            client.set_alpn_protocols([TUNNEL_ALPN])
            client.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
            self._clients[peer] = client
        return client
