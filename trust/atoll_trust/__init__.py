"""SPIFFE trust: identities, CAs, SVIDs, bundles, the Workload API (DESIGN §7).

One concept per module; everything but :mod:`.workload_api` and :mod:`.tls` is
pure (time comes in as ``now``, keys through injected factories):

* :mod:`.spiffe_id` — :class:`SpiffeId` / :class:`TrustDomain`, strict parsing;
* :mod:`.errors` — the trust error tree (under :mod:`atoll.errors`' families);
* :mod:`.jose` — key types, JWK, JWS for the JWT-SVID algorithms;
* :mod:`.svid` — :class:`X509Svid`, :class:`JwtSvid` values;
* :mod:`.ca` — authorities and SVID issuance;
* :mod:`.kek` — CA keys sealed at rest under a key-encryption key;
* :mod:`.castate` — the sealed, persisted CA state;
* secret-bearing files are written atomically, 0600, by :func:`atoll.fileio.write_private_file`;
* :mod:`.bundle` — SPIFFE bundle JSON and the per-domain :class:`BundleSet`;
* :mod:`.verify` — X.509-SVID and JWT-SVID verification against the peer's own domain;
* :mod:`.rotation` — SPIRE's rotation schedule as plan/apply functions;
* :mod:`.federation` — bundle endpoint answer, poll schedule, fetch-result folding;
* :mod:`.tls` — SSLContext builders and post-handshake peer verification (asyncio, gRPC);
* :mod:`.workload_api` — the SPIFFE Workload API server (grpc.aio, one socket per workload);
* :mod:`.clock`, :mod:`.testing` — injected time; certificate builders for negative tests.
"""
