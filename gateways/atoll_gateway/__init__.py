"""East-west gateways: SNI passthrough, SPIFFE-authorized termination, egress (DESIGN §1, §7).

One gateway per cluster (``atoll gateway serve``) has one TLS port for
traffic *into* its cluster and plain local listeners for traffic *out* of it:

* **inbound** (:mod:`.inbound`) — peek the ClientHello (:mod:`.clienthello`,
  :mod:`.peek`), route by SNI (:mod:`.naming`:
  ``[<port>.]<service>.<namespace>.svc[.<cluster>].<zone>``) to a healthy local
  endpoint of an *exported* service; relay without terminating
  (``passthrough``: workload mTLS stays end to end, zero-copy splice) or
  terminate mTLS with the gateway's SVID, verify the peer against its own
  domain's bundle, authorize it (:mod:`.policy`) and forward, optionally with a
  PROXY v2 header naming the peer's SPIFFE ID (:mod:`.proxyproto`);
* **egress** (:mod:`.egress`) — plain TCP from local workloads per imported
  service, carried over mTLS (this cluster's gateway SVID) to the gateway of
  the cluster chosen by DNS's own strategy code (:mod:`.routes`).

Decisions worth knowing:

* **Where endpoints come from** — the cluster's own catalog (the registry the
  agent reads), through the agent's ``build_exports``: it carries ports and
  per-endpoint health (imports carry only addresses) and works without the
  control plane. Remote clusters come from ServiceImport/Cluster over sync.
* **Same verdict as DNS** — egress decisions are computed with
  :func:`atoll_dns.snapshot.build_zone` and :func:`atoll_dns.strategy.decide`
  over the same resources, for the gateway's region.
* **DNS can point at the gateways** — by default DNS names endpoint
  addresses, which the lab's flat loopback network reaches directly; with
  ``atoll dns serve --egress-address`` targets in other clusters are answered
  with the local egress address instead, and the egress picks the cluster.
* **Peer gateways are always terminated** — egress offers the ALPN protocols
  ``atoll-tunnel/2`` and ``atoll-tunnel/1``; an inbound gateway terminates such
  connections whatever the service's mode, and applies each service's allow
  policy to the peer gateway's ID.
* **Tunnels between gateways are pooled** (``atoll-tunnel/2``,
  :mod:`.tunnelproto`) — one mTLS connection carries one client connection
  after another (OPEN/ACCEPT, DATA, FIN or RESET frames; :mod:`.tunnelpool`,
  :mod:`.tunnelrelay`, :mod:`.tunnelserve`), so a new client connection costs
  no TCP or TLS handshake between gateways; the peer is re-verified per stream
  on both sides, and a REFUSE lets the egress fail over to the next cluster
  before any client byte is sent; a client or endpoint that resets mid-stream
  costs a RESET frame, not the tunnel. Like Istio's HBONE in purpose; unlike it,
  streams are sequential, not multiplexed (TCP's flow control is the stream's).
* **Compiled relays** — ``atoll gateway compile`` builds the poller and pump modules
  with mypyc; they are used only while they match the sources
  (:mod:`.native`), before anything imports them (hence first below).
"""

from atoll_gateway import native

native.use_compiled(__path__)

from atoll_gateway.config import GatewayConfig, RouteConfig, load_config  # noqa: E402
from atoll_gateway.node import GatewayNode  # noqa: E402
from atoll_gateway.policy import AllowPolicy  # noqa: E402

__all__ = ["AllowPolicy", "GatewayConfig", "GatewayNode", "RouteConfig", "load_config"]
