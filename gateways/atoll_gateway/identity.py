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
  only that domain's bundle (no pooling of trust) and offers the ALPN
  protocols :data:`TUNNEL_ALPNS`, which tell a peer gateway to terminate —
  pooled tunnels first, per-connection tunnels for gateways that predate them.
* :attr:`verifier` — :class:`~atoll_trust.peercache.PeerVerifier` over the
  current bundles: each peer certificate is verified once, not per connection.
* :meth:`session` / :meth:`remember_session` — the last TLS session per peer
  gateway, so a new connection resumes (no certificate exchange, no
  signatures) instead of a full handshake; the server side issues TLS 1.3
  tickets (OpenSSL's default, two per handshake).

All of it is dropped when the Workload API context changes, so nothing made
with an old SVID or bundle outlives a rotation.

:class:`StaticSource` holds a fixed context (tests, benchmarks); the CLI uses
:class:`atoll_trust.workload_api.client.X509Source`.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Protocol

from atoll_trust.bundle import BundleSet
from atoll_trust.errors import SvidVerificationError
from atoll_trust.peercache import PeerVerifier
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.tls import build_client_context, build_server_context
from atoll_trust.workload_api.client import X509Context

__all__ = [
    "TUNNEL_ALPN",
    "TUNNEL_ALPNS",
    "TUNNEL_ALPN_POOLED",
    "ContextSource",
    "GatewayIdentity",
    "StaticSource",
]

#: ALPN of a per-connection tunnel: "terminate me, I am a peer gateway" (one
#: connection per client connection; what gateways before pooling speak)
TUNNEL_ALPN = "atoll-tunnel/1"
#: ALPN of a pooled tunnel (:mod:`atoll_gateway.tunnelproto`): streams one after another
TUNNEL_ALPN_POOLED = "atoll-tunnel/2"
#: both, in preference order (egress offers both; a gateway picks the first it knows)
TUNNEL_ALPNS = [TUNNEL_ALPN_POOLED, TUNNEL_ALPN]


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
        self._verifier: PeerVerifier | None = None
        self._sessions: dict[str, ssl.SSLSession] = {}

    def _context(self) -> X509Context:
        ctx = self.source.current
        if ctx is None:
            raise SvidVerificationError("the gateway has no SVID yet (Workload API)")
        if ctx is not self._for:
            # a new SVID or bundle set: new SSL contexts, sessions and verified peers
            self._for = ctx
            self._server = None
            self._clients = {}
            self._verifier = None
            self._sessions = {}
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

    @property
    def verifier(self) -> PeerVerifier:
        """Verifies peers against the current bundles, remembering verified leaves."""
        ctx = self._context()
        if self._verifier is None:
            self._verifier = PeerVerifier(ctx.bundles)
        return self._verifier

    def session(self, key: str) -> ssl.SSLSession | None:
        """The last TLS session with the peer ``key`` (resumed by the next connection)."""
        self._context()
        return self._sessions.get(key)

    def remember_session(self, key: str, tls: ssl.SSLSocket, *, now: float | None = None) -> None:
        """Keep ``tls``'s session for the next connection to ``key`` (call before closing:
        TLS 1.3 tickets arrive after the handshake, with the first bytes read).

        A connection that resumed the kept session leaves it in place until half
        its ticket lifetime has passed: reading ``SSLSocket.session`` costs
        ~0.35 ms (CPython re-encodes and re-parses a TLS 1.3 session, peer
        certificate included), more than the resumed handshake saved. Reusing a
        ticket is fine between gateways (the privacy concern of RFC 8446 §C.4 is
        linkability, and peers are known); OpenSSL's stateless tickets allow it.
        """
        if not any(tls.context is c for c in self._clients.values()):
            return  # made with an older context (rotated since): not resumable with the new one
        kept = self._sessions.get(key)
        if kept is not None and tls.session_reused:
            age = (time.time() if now is None else now) - kept.time
            if age < kept.timeout / 2:
                return
        session = tls.session
        if session is not None and session.has_ticket:
            self._sessions[key] = session

    def server_context(self) -> ssl.SSLContext:
        ctx = self._context()
        if self._server is None:
            server = build_server_context(ctx.svid, ctx.bundles)
            server.set_alpn_protocols(TUNNEL_ALPNS)
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
            client.set_alpn_protocols(TUNNEL_ALPNS)
            client.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
            self._clients[peer] = client
        return client
