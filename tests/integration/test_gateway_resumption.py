"""TLS session resumption on the egress path, over real loopback sockets.

West's gateway connects to east's gateway the way :mod:`atoll_gateway.egress`
does: :func:`~atoll_gateway.tlsio.connect_tls` with
``identity.client_context(east)`` and the session remembered for that peer,
:class:`~atoll_gateway.identity.GatewayIdentity.verifier` expecting east's
gateway ID, a :class:`~atoll_gateway.relay.CopyRelay` whose ``on_finish`` keeps
the session. East runs a tiny echo server that ``accept_tls``'s with
``identity.server_context()`` and verifies the client with its own verifier.

What must hold: the first connection is a full handshake and the next one
resumes, and a resumed connection — which carries no certificate chain — is
still identified on both sides; nothing made with an old SVID (sessions,
contexts, verified peers) is reused after a rotation.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from atoll.aio import cancel_and_wait, spawn
from atoll_gateway.balancer import Endpoint
from atoll_gateway.identity import TUNNEL_ALPN_POOLED, GatewayIdentity, StaticSource
from atoll_gateway.relay import CopyRelay
from atoll_gateway.testing import TestPki
from atoll_gateway.tlsio import accept_tls, connect_tls
from atoll_trust.clock import system_clock
from atoll_trust.peercache import PeerVerifier
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.tls import peer_chain
from tests.gatewaykit import poll_read, poll_recv_tls, poll_send

HOST = "127.0.94.2"
EAST, WEST = "east.resume.test", "west.resume.test"
PKI = TestPki(EAST, WEST)
EAST_GW = TrustDomain(EAST).spiffe_id("atoll", "gateway")
WEST_GW = TrustDomain(WEST).spiffe_id("atoll", "gateway")
SNI = "8080.echo.demo.svc.east.atoll.test"


def gateway_context(domain: str) -> StaticSource:
    """A fresh Workload API context (a new SVID: what a rotation delivers)."""
    return StaticSource(PKI.context(domain, "atoll/gateway"))


# -- the east side: a terminating echo server -------------------------------------------


@dataclass
class Accepted:
    reused: bool
    peer: SpiffeId
    alpn: str | None


@dataclass
class EchoServer:
    identity: GatewayIdentity
    port: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            task = spawn(self._connection(sock), name="echo-connection")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connection(self, sock: socket.socket) -> None:
        try:
            async with asyncio.timeout(10):
                tls = await accept_tls(sock, self.identity.server_context())
        except Exception as exc:
            self.errors.append(exc)
            return
        try:
            verified = self.identity.verifier.verify(tls, now=system_clock(), expected=WEST_GW)
            self.accepted.append(
                Accepted(bool(tls.session_reused), verified.spiffe_id, tls.selected_alpn_protocol())
            )
            async with asyncio.timeout(10):
                while data := await poll_recv_tls(tls):
                    await poll_send(tls, data)
        except Exception as exc:
            self.errors.append(exc)
        finally:
            tls.close()


@pytest.fixture
async def east() -> AsyncIterator[EchoServer]:
    listener = socket.create_server((HOST, 0))
    listener.setblocking(False)
    server = EchoServer(GatewayIdentity(gateway_context(EAST)), listener.getsockname()[1])
    accepting = spawn(server.serve(listener), name="echo-accept")
    try:
        yield server
    finally:
        await cancel_and_wait(accepting, *server.tasks)
        listener.close()
    assert server.errors == []


# -- the west side: egress connections --------------------------------------------------


@dataclass
class Call:
    reused: bool
    peer: SpiffeId
    #: the certificates the server's end sent on this connection
    chain: int
    #: a verifier with an empty cache on the same connection
    fresh_peer: SpiffeId
    echo: bytes


async def call(
    identity: GatewayIdentity,
    east: EchoServer,
    payload: bytes = b"ping\n",
    *,
    before_remember: Callable[[], None] | None = None,
) -> Call:
    """One egress connection: handshake, verify, relay one echo, remember the session."""
    key = f"east/{HOST}:{east.port}"
    ctx = identity.client_context(TrustDomain(EAST))
    async with asyncio.timeout(10):
        tls = await connect_tls(Endpoint(HOST, east.port), ctx, SNI, session=identity.session(key))
    try:
        assert tls.selected_alpn_protocol() == TUNNEL_ALPN_POOLED
        reused, chain = bool(tls.session_reused), len(peer_chain(tls))
        now = system_clock()
        peer = identity.verifier.verify(tls, now=now, expected=EAST_GW).spiffe_id
        fresh = PeerVerifier(identity.bundles).verify(tls, now=now, expected=EAST_GW)
    except BaseException:
        tls.close()
        raise

    def on_finish() -> None:
        if before_remember is not None:
            before_remember()
        identity.remember_session(key, tls)

    app, inner = socket.socketpair()
    app.setblocking(False)
    inner.setblocking(False)
    job = spawn(CopyRelay(inner, tls, on_finish=on_finish).run(), name="egress-relay")
    try:
        async with asyncio.timeout(10):
            app.send(payload)
            app.shutdown(socket.SHUT_WR)
            echo = await poll_read(app)
            await job
    finally:
        await cancel_and_wait(job)
        app.close()
    return Call(reused, peer, chain, fresh.spiffe_id, echo)


def key_of(east: EchoServer) -> str:
    return f"east/{HOST}:{east.port}"


# -- tests ------------------------------------------------------------------------------


async def test_the_second_connection_resumes_and_is_still_identified(east: EchoServer) -> None:
    west = GatewayIdentity(gateway_context(WEST))
    assert west.session(key_of(east)) is None

    first = await call(west, east)
    assert (first.reused, first.peer, first.echo) == (False, EAST_GW, b"ping\n")
    assert first.chain >= 1
    assert west.session(key_of(east)) is not None
    assert (west.verifier.hits, west.verifier.misses) == (0, 1)

    second = await call(west, east, b"again\n")
    assert (second.reused, second.peer, second.echo) == (True, EAST_GW, b"again\n")
    # no chain crossed the wire: the verifier answered from its cache ...
    assert second.chain == 1
    assert (west.verifier.hits, west.verifier.misses) == (1, 1)
    # ... and an empty cache still identifies the leaf the session holds
    assert second.fresh_peer == EAST_GW

    # east identified the client on both connections, the resumed one from its cache
    assert [(a.reused, a.peer, a.alpn) for a in east.accepted] == [
        (False, WEST_GW, TUNNEL_ALPN_POOLED),
        (True, WEST_GW, TUNNEL_ALPN_POOLED),
    ]
    assert (east.identity.verifier.hits, east.identity.verifier.misses) == (1, 1)

    # sessions are per peer
    assert west.session("east/elsewhere:1") is None


async def test_a_rotated_svid_drops_sessions_and_verified_peers(east: EchoServer) -> None:
    source = gateway_context(WEST)
    west = GatewayIdentity(source)
    await call(west, east)
    assert (await call(west, east)).reused
    old_verifier, old_ctx = west.verifier, west.client_context(TrustDomain(EAST))

    source.current = PKI.context(WEST, "atoll/gateway")  # the Workload API rotated the SVID
    assert west.session(key_of(east)) is None
    assert west.verifier is not old_verifier
    assert len(west.verifier) == 0
    assert west.client_context(TrustDomain(EAST)) is not old_ctx

    after = await call(west, east)
    assert (after.reused, after.peer) == (False, EAST_GW)
    assert (west.verifier.hits, west.verifier.misses) == (0, 1)
    # east saw the new client certificate: a full verification there too
    assert east.accepted[-1].reused is False
    # and the new SVID's session resumes as before
    assert (await call(west, east)).reused


async def test_a_session_from_an_older_client_context_is_not_stored(east: EchoServer) -> None:
    source = gateway_context(WEST)
    west = GatewayIdentity(source)

    def rotate_midway() -> None:
        # the SVID rotates while this connection is open, and another connection
        # already made the new client context
        source.current = PKI.context(WEST, "atoll/gateway")
        west.client_context(TrustDomain(EAST))

    first = await call(west, east, before_remember=rotate_midway)
    assert first.reused is False
    assert west.session(key_of(east)) is None
    # the next connection, with the new context, is a full handshake that works
    # (a session of another SSLContext would make wrap_socket raise ValueError)
    second = await call(west, east)
    assert (second.reused, second.peer) == (False, EAST_GW)
    assert (await call(west, east)).reused


async def test_a_rotation_seen_only_after_remembering_still_drops_the_session(
    east: EchoServer,
) -> None:
    source = gateway_context(WEST)
    west = GatewayIdentity(source)

    def rotate() -> None:
        source.current = PKI.context(WEST, "atoll/gateway")

    await call(west, east, before_remember=rotate)
    assert west.session(key_of(east)) is None
    assert (await call(west, east)).reused is False


async def test_a_server_rotation_falls_back_to_a_full_handshake(east: EchoServer) -> None:
    """East's new SVID comes with a new server context (new ticket keys): west's stored
    ticket cannot be resumed, the handshake falls back to a full one and west verifies
    east's new certificate."""
    west = GatewayIdentity(gateway_context(WEST))
    await call(west, east)
    assert west.session(key_of(east)) is not None
    east_source = east.identity.source
    assert isinstance(east_source, StaticSource)
    east_source.current = PKI.context(EAST, "atoll/gateway")

    after = await call(west, east)
    assert (after.reused, after.peer) == (False, EAST_GW)
    assert (west.verifier.hits, west.verifier.misses) == (0, 2)
    assert (await call(west, east)).reused
