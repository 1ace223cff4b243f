"""The SPIFFE Workload API, served by the cluster agent on unix sockets.

How callers are identified: one socket per workload
---------------------------------------------------
The Workload API must know *who* is calling to decide which SVIDs to hand out.
SPIRE attests the caller with ``SO_PEERCRED`` on the accepted unix socket (pid,
uid, gid) and derives selectors from them. grpcio does not give a servicer the
accepted socket (over a unix socket ``context.peer()`` is just ``unix:``, and
there is no hook to read ``SO_PEERCRED`` before the HTTP/2 connection is handed
to gRPC core), so that design would need a byte-shuffling proxy in front of
gRPC, plus pid-reuse defences — a lot of machinery in the most security-critical
path.

Atoll instead gives **each workload its own socket** (``<dir>/<workload>.sock``),
created with mode 0600 and owned by the workload's uid/gid when given. The socket
a call arrives on *is* the caller's identity: the servicer behind it is bound to
that workload and can serve nothing else. The kernel's file permission check on
``connect(2)`` does the attestation, which is the same trust SPIRE ultimately
places in uids. In Kubernetes this maps to mounting one socket per pod (what the
SPIFFE CSI driver and Istio's per-pod agent socket do); on a VM, one per service
account. The cost is one small gRPC server per workload on the shared event loop.

Layout
------
* :mod:`.state` — the snapshot hub and the identity manager (issuance, renewal);
* :mod:`.service` — the servicer and pure response builders;
* :mod:`.server` — socket lifecycle;
* :mod:`.client` — :class:`X509Source`, the client Atoll's own components use;
* ``workload.proto`` and generated ``workload_pb2*`` (regenerate with ``generate.py``).
"""

from atoll_trust.workload_api.server import WorkloadApiServer, WorkloadSocket
from atoll_trust.workload_api.service import SECURITY_HEADER, WorkloadApiServicer
from atoll_trust.workload_api.state import (
    IdentityManager,
    SnapshotHub,
    WorkloadRegistration,
    WorkloadSnapshot,
)

__all__ = [
    "SECURITY_HEADER",
    "IdentityManager",
    "SnapshotHub",
    "WorkloadApiServer",
    "WorkloadApiServicer",
    "WorkloadRegistration",
    "WorkloadSnapshot",
    "WorkloadSocket",
]
