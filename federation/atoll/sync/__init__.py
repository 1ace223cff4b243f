"""The sync protocol (DESIGN §5): delta pushes with ACK/NACK over one gRPC stream.

* :mod:`.table` — the server's per-type resource set with a change log.
* :mod:`.pushing` — pure server-side subscription state machine.
* :mod:`.receiving` — pure client-side accept/reject of a delta.
* :mod:`.server` / :mod:`.client` — the grpc.aio edges.
* ``v1/sync.proto`` — the wire contract (regenerate with ``python -m atoll.protogen``).
"""

from atoll.sync.client import ClientStatus, SyncClient, schema_validator
from atoll.sync.pushing import NackRecord, Push, Subscription
from atoll.sync.receiving import Decision, HeldState, Validator, apply_delta
from atoll.sync.server import (
    AllowAll,
    Authorizer,
    NodeStatus,
    Peer,
    PermissionDeniedError,
    ReportSink,
    SubscriptionStatus,
    SyncServicer,
    UnauthenticatedError,
)
from atoll.sync.table import Item, ResourceTable, TypeSnapshot
from atoll.sync.wire import NodeInfo

__all__ = [
    "AllowAll",
    "Authorizer",
    "ClientStatus",
    "Decision",
    "HeldState",
    "Item",
    "NackRecord",
    "NodeInfo",
    "NodeStatus",
    "Peer",
    "PermissionDeniedError",
    "Push",
    "ReportSink",
    "ResourceTable",
    "Subscription",
    "SubscriptionStatus",
    "SyncClient",
    "SyncServicer",
    "TypeSnapshot",
    "UnauthenticatedError",
    "Validator",
    "apply_delta",
    "schema_validator",
]
