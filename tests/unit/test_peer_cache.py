"""PeerVerifier: verify a peer certificate once, reuse it only while that stays sound.

Every case runs a real TLS 1.3 handshake between two in-memory ``SSLObject``s
(a pair of :class:`ssl.MemoryBIO` s, no sockets) with the gateway's contexts,
then asks the verifier about the peer. The server trusts two domains (OpenSSL's
pooled first filter), so a cross-domain forgery reaches the verifier and must
be refused there.
"""

from __future__ import annotations

import datetime as dt
import ssl

import pytest

from atoll_gateway.testing import TestPki
from atoll_trust.errors import SvidVerificationError
from atoll_trust.peercache import PeerVerifier
from atoll_trust.spiffe_id import SpiffeId, TrustDomain
from atoll_trust.svid import X509Svid
from atoll_trust.tls import build_client_context, build_server_context

EAST, WEST = "east.peers.test", "west.peers.test"
PKI = TestPki(EAST, WEST)
SERVER = PKI.svid(EAST, "atoll/gateway")
#: the server's coarse OpenSSL filter accepts both domains' roots
SERVER_CTX = build_server_context(SERVER, PKI.bundles())
WEST_GW = TrustDomain(WEST).spiffe_id("atoll", "gateway")


def _client_ctx(svid: X509Svid) -> ssl.SSLContext:
    bundle = PKI.bundles().get(TrustDomain(EAST))
    assert bundle is not None
    return build_client_context(svid, bundle)


def _handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext = SERVER_CTX
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A completed handshake between two in-memory TLS ends: ``(server, client)``."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname="gw.east")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj, out, peer_in in (
            ("client", client, c_out, s_in),
            ("server", server, s_out, c_in),
        ):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            if data := out.read():
                peer_in.write(data)
        if all(done.values()):
            return server, client
    raise AssertionError(f"handshake did not complete: {done}")


def _peer(svid: X509Svid) -> ssl.SSLObject:
    """The server's end of a handshake with a client presenting ``svid``."""
    server, _ = _handshake(_client_ctx(svid))
    return server


def _not_after(svid: X509Svid) -> dt.datetime:
    return min(c.not_valid_after_utc for c in svid.chain)


NOW = PKI.now + dt.timedelta(seconds=1)


def test_second_verify_of_the_same_peer_is_a_hit_with_the_same_id() -> None:
    svid = PKI.svid(WEST, "atoll/gateway")
    verifier = PeerVerifier(PKI.bundles())
    first = verifier.verify(_peer(svid), now=NOW)
    assert (verifier.hits, verifier.misses, len(verifier)) == (0, 1, 1)
    # a new connection (a new handshake) presenting the same certificate
    second = verifier.verify(_peer(svid), now=NOW)
    assert (verifier.hits, verifier.misses, len(verifier)) == (1, 1, 1)
    assert first.spiffe_id == second.spiffe_id == WEST_GW


def test_the_server_side_too_identifies_its_peer() -> None:
    """The client verifying the server: the server's chain (leaf and root) is accepted."""
    _, client = _handshake(_client_ctx(PKI.svid(WEST, "atoll/gateway")))
    verifier = PeerVerifier(PKI.bundles())
    expected = SERVER.spiffe_id
    assert verifier.verify(client, now=NOW, expected=expected).spiffe_id == expected
    assert verifier.verify(client, now=NOW, expected=expected).spiffe_id == expected
    assert (verifier.hits, verifier.misses) == (1, 1)


def test_expected_and_authorize_are_applied_on_hits() -> None:
    peer = _peer(PKI.svid(WEST, "atoll/gateway"))
    verifier = PeerVerifier(PKI.bundles())
    asked: list[SpiffeId] = []

    def allow_nothing(spiffe_id: SpiffeId) -> bool:
        asked.append(spiffe_id)
        return False

    verifier.verify(peer, now=NOW, expected=WEST_GW)
    other = TrustDomain(WEST).spiffe_id("someone", "else")
    with pytest.raises(SvidVerificationError, match="expected"):
        verifier.verify(peer, now=NOW, expected=other)
    with pytest.raises(SvidVerificationError, match="not authorized"):
        verifier.verify(peer, now=NOW, authorize=allow_nothing)
    assert asked == [WEST_GW]
    # both refusals were answered from the cache, and the entry is still good
    assert (verifier.hits, verifier.misses) == (2, 1)
    ok = verifier.verify(peer, now=NOW, expected=WEST_GW, authorize=lambda i: i == WEST_GW)
    assert ok.spiffe_id == WEST_GW
    assert (verifier.hits, verifier.misses, len(verifier)) == (3, 1, 1)


def test_refusal_on_a_miss_still_caches_the_verified_certificate() -> None:
    """The authorization rule is the caller's, the certificate's validity is not:
    a peer refused for *this* caller is still a verified certificate."""
    peer = _peer(PKI.svid(WEST, "atoll/gateway"))
    verifier = PeerVerifier(PKI.bundles())
    with pytest.raises(SvidVerificationError):
        verifier.verify(peer, now=NOW, authorize=lambda _i: False)
    assert verifier.verify(peer, now=NOW).spiffe_id == WEST_GW
    assert (verifier.hits, verifier.misses) == (1, 1)


def test_an_expired_entry_is_not_reused_and_reverification_fails() -> None:
    svid = PKI.svid(WEST, "atoll/gateway")
    peer = _peer(svid)
    verifier = PeerVerifier(PKI.bundles())
    verifier.verify(peer, now=NOW)
    end = _not_after(svid)
    # still valid one second before the end of the chain's validity: a hit
    verifier.verify(peer, now=end - dt.timedelta(seconds=1))
    assert (verifier.hits, verifier.misses) == (1, 1)
    for late in (end + dt.timedelta(seconds=1), end + dt.timedelta(days=1)):
        with pytest.raises(SvidVerificationError):
            verifier.verify(peer, now=late)
    assert (verifier.hits, verifier.misses) == (1, 3)


def test_a_forged_certificate_is_refused_and_never_cached() -> None:
    """West's gateway ID signed by east's CA: OpenSSL's pooled roots accept the handshake,
    the per-domain check does not — and the same ID's real certificate being cached
    does not vouch for the forgery (the cache is keyed by certificate, not by ID)."""
    verifier = PeerVerifier(PKI.bundles())
    verifier.verify(_peer(PKI.svid(WEST, "atoll/gateway")), now=NOW)
    forged = _peer(PKI.forged(WEST, "atoll/gateway", signer=EAST))
    for _ in range(2):
        with pytest.raises(SvidVerificationError):
            verifier.verify(forged, now=NOW)
    assert (verifier.hits, verifier.misses, len(verifier)) == (0, 3, 1)


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    svids = [PKI.svid(WEST, f"peer/{i}") for i in range(3)]
    p1, p2, p3 = (_peer(s) for s in svids)
    verifier = PeerVerifier(PKI.bundles(), max_entries=2)
    verifier.verify(p1, now=NOW)
    verifier.verify(p2, now=NOW)
    verifier.verify(p1, now=NOW)  # a hit: p1 is now the most recently used
    assert (verifier.hits, verifier.misses, len(verifier)) == (1, 2, 2)
    verifier.verify(p3, now=NOW)  # evicts p2, the least recently used
    assert (verifier.misses, len(verifier)) == (3, 2)
    verifier.verify(p1, now=NOW)
    verifier.verify(p3, now=NOW)
    assert (verifier.hits, verifier.misses) == (3, 3)
    assert verifier.verify(p2, now=NOW).spiffe_id == svids[1].spiffe_id
    assert (verifier.hits, verifier.misses, len(verifier)) == (3, 4, 2)


def test_a_verifier_on_bundles_without_the_domain_does_not_trust_the_peer() -> None:
    """A rotation that drops a domain builds a new verifier: nothing of the old one's
    cache carries over."""
    peer = _peer(PKI.svid(WEST, "atoll/gateway"))
    before = PeerVerifier(PKI.bundles(EAST, WEST))
    assert before.verify(peer, now=NOW).spiffe_id == WEST_GW
    after = PeerVerifier(PKI.bundles(EAST))
    with pytest.raises(SvidVerificationError):
        after.verify(peer, now=NOW)
    assert (after.hits, after.misses, len(after)) == (0, 1, 0)


def test_a_peer_without_a_certificate_is_refused() -> None:
    anonymous_server = build_server_context(SERVER, PKI.bundles())
    anonymous_server.verify_mode = ssl.CERT_NONE  # does not ask the client for one
    server, _ = _handshake(_client_ctx(PKI.svid(WEST, "atoll/gateway")), anonymous_server)
    verifier = PeerVerifier(PKI.bundles())
    with pytest.raises(SvidVerificationError, match="no certificate"):
        verifier.verify(server, now=NOW)
    assert (verifier.hits, verifier.misses, len(verifier)) == (0, 0, 0)
