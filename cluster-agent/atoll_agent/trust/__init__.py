"""The agent's trust duties (DESIGN §7).

* :mod:`.identity` — its federation identity ``spiffe://<fed>/cluster/<X>``:
  enrollment with a join token, persistence, renewal over mTLS;
* :mod:`.authority` — its cluster's own CA (sealed on disk, rotated on
  SPIRE's schedule or on request) and the Workload API it serves;
* :mod:`.bundles` — folding the TrustDomains received over the sync stream
  into the federation bundle and the federated bundle set.
"""
