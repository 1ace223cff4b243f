"""Remembering verified peers: :func:`~atoll_trust.tls.verify_peer` once per certificate.

A gateway sees the same few peers (other clusters' gateways) over and over.
Parsing and verifying their chain in Python on every connection cost as much
as the rest of a new connection, and on a *resumed* TLS session the peer sends
no chain at all — only the leaf survives in the session — so a verifier that
insists on the chain makes resumption impossible.

:class:`PeerVerifier` keys verified results by the leaf certificate's DER
bytes. A hit is reused only while

* every certificate of the verified chain is still valid (checked against
  ``now`` each time),
* the verifier is still bound to the same :class:`~atoll_trust.bundle.BundleSet`
  (the owner makes a new verifier whenever bundles change — a rotation or a
  revoked authority empties the cache), and
* the caller's own checks (``expected`` ID, ``authorize`` rule) pass, which
  run on every call, hit or miss.

Why reuse is sound: the same DER is the same certificate, already verified
against the same anchors; the TLS handshake (full or resumed from a session
that was itself authenticated with this certificate) proves possession of its
key. The cache is bounded (least recently used entries go first); a resumed
session whose leaf was evicted is verified from the leaf alone, which works
when a bundle authority signed the leaf directly (Atoll's cluster CAs do) and
otherwise refuses the connection — the client's next, full handshake passes.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections import OrderedDict

from atoll_trust.bundle import BundleSet
from atoll_trust.errors import SvidVerificationError
from atoll_trust.spiffe_id import SpiffeId
from atoll_trust.tls import Authorizer, authorize_verified, verify_peer
from atoll_trust.verify import VerifiedX509Svid

__all__ = ["PeerVerifier"]


class PeerVerifier:
    """:func:`verify_peer` with a bounded cache of verified leaves (see module doc)."""

    def __init__(self, bundles: BundleSet, *, max_entries: int = 4096) -> None:
        self.bundles = bundles
        self.max_entries = max_entries
        self._cache: OrderedDict[bytes, tuple[VerifiedX509Svid, dt.datetime]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def verify(
        self,
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        *,
        now: dt.datetime,
        expected: SpiffeId | None = None,
        authorize: Authorizer | None = None,
    ) -> VerifiedX509Svid:
        leaf = ssl_object.getpeercert(binary_form=True)
        if not leaf:
            raise SvidVerificationError("peer presented no certificate")
        hit = self._cache.get(leaf)
        if hit is not None:
            if hit[1] > now:
                self._cache.move_to_end(leaf)
                self.hits += 1
                return authorize_verified(hit[0], expected, authorize)
            del self._cache[leaf]  # expired
        self.misses += 1
        verified = verify_peer(ssl_object, self.bundles, now=now)
        self._cache[leaf] = (verified, min(c.not_valid_after_utc for c in verified.chain))
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return authorize_verified(verified, expected, authorize)
