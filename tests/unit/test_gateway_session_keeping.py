"""Which TLS sessions the egress keeps: reading one is dear, so a resumed one stays.

``SSLSocket.session`` costs ~0.35 ms in CPython (a TLS 1.3 session is
re-encoded and re-parsed, certificate included), so
:meth:`GatewayIdentity.remember_session` reads it only after a full handshake,
or once the kept session is half way through its ticket lifetime. The socket
here is a stand-in that counts reads of ``session``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atoll_gateway.identity import GatewayIdentity, StaticSource
from atoll_gateway.testing import TestPki
from atoll_trust.spiffe_id import TrustDomain

EAST, WEST = "east.keep.test", "west.keep.test"
PKI = TestPki(EAST, WEST)


@dataclass
class FakeSession:
    time: float
    timeout: float = 7200.0
    has_ticket: bool = True


@dataclass
class FakeTls:
    context: object
    session_reused: bool
    new_session: FakeSession
    reads: list[int] = field(default_factory=list)

    @property
    def session(self) -> FakeSession:
        self.reads.append(1)
        return self.new_session


def kept(ident: GatewayIdentity) -> object:
    return ident.session("east/gw")


def identity() -> GatewayIdentity:
    return GatewayIdentity(StaticSource(PKI.context(WEST, "atoll/gateway")))


def test_a_full_handshake_stores_its_session() -> None:
    ident = identity()
    ctx = ident.client_context(TrustDomain(EAST))
    tls = FakeTls(ctx, session_reused=False, new_session=FakeSession(time=1000.0))
    ident.remember_session("east/gw", tls, now=1000.0)  # type: ignore[arg-type]
    assert kept(ident) is tls.new_session
    assert len(tls.reads) == 1


def test_a_resumed_connection_keeps_the_fresh_session_without_reading() -> None:
    ident = identity()
    ctx = ident.client_context(TrustDomain(EAST))
    first = FakeTls(ctx, session_reused=False, new_session=FakeSession(time=1000.0))
    ident.remember_session("east/gw", first, now=1000.0)  # type: ignore[arg-type]
    resumed = FakeTls(ctx, session_reused=True, new_session=FakeSession(time=1100.0))
    ident.remember_session("east/gw", resumed, now=1100.0)  # type: ignore[arg-type]
    assert resumed.reads == []  # not read: the ~0.35 ms was saved
    assert kept(ident) is first.new_session


def test_a_session_half_way_through_its_lifetime_is_refreshed() -> None:
    ident = identity()
    ctx = ident.client_context(TrustDomain(EAST))
    first = FakeTls(ctx, session_reused=False, new_session=FakeSession(time=1000.0, timeout=600))
    ident.remember_session("east/gw", first, now=1000.0)  # type: ignore[arg-type]
    later = FakeTls(ctx, session_reused=True, new_session=FakeSession(time=1301.0))
    ident.remember_session("east/gw", later, now=1301.0)  # type: ignore[arg-type]
    assert len(later.reads) == 1
    assert kept(ident) is later.new_session


def test_a_session_without_a_ticket_is_not_kept() -> None:
    ident = identity()
    ctx = ident.client_context(TrustDomain(EAST))
    tls = FakeTls(ctx, False, FakeSession(time=1000.0, has_ticket=False))
    ident.remember_session("east/gw", tls, now=1000.0)  # type: ignore[arg-type]
    assert ident.session("east/gw") is None
