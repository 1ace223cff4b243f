"""The control plane's side of SPIFFE trust: the federation CA, enrollment, mTLS, bundles.

Security model (who presents what, verified against what):

* **Control-plane replicas** present ``spiffe://<fed>/control-plane`` (DNS SAN
  ``control-plane.<fed>``), minted per replica from the federation CA, which
  all replicas share sealed in the store. Clients trust only the federation
  domain's bundle for it and check the DNS SAN as the gRPC target name; no
  other SVID carries that name.
* **Agents** enroll once with a one-time, expiring join token over
  server-authenticated TLS (enrollment port) and get
  ``spiffe://<fed>/cluster/<X>``; they renew it over mTLS with the current one.
  The sync port requires it; it is verified against the federation bundle.
* **DNS servers and gateways** present ``spiffe://X.<fed>/atoll/<role>`` from
  their agent's Workload API, verified against cluster X's bundle as X's
  agent reported it.
* **Authorization**: the SPIFFE ID must be the one the node's role and cluster
  call for; a node then reports only its own cluster's objects and receives
  only the bundles that federate with its domain.

Modules: :mod:`.naming` (pure IDs), :mod:`.tokens` (join tokens),
:mod:`.castore` (CA in the store), :mod:`.servertls` (own SVID, reloading
credentials), :mod:`.enroll` (Enroll/Renew), :mod:`.authz` (sync authorizer),
:mod:`.domains` (TrustDomain decisions), :mod:`.foreign` (federation client),
:mod:`.endpoint` (bundle endpoint), :mod:`.hub` (assembly),
:mod:`.client` (the client side for agents and DNS servers).
"""
