"""Conversions between the generated protobuf messages and the sync dataclasses.

Only this module and the two I/O edges (:mod:`.server`, :mod:`.client`) touch
generated protobuf types; the state machines work on frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from atoll.errors import InvalidError
from atoll.model.names import validate_label
from atoll.sync.pushing import Push
from atoll.sync.table import Item
from atoll.sync.v1 import sync_pb2 as pb

__all__ = [
    "ROLES",
    "NodeInfo",
    "item_from_pb",
    "item_to_pb",
    "node_from_pb",
    "node_to_pb",
    "push_from_pb",
    "push_to_pb",
]

#: roles a node may declare; agents, DNS servers and gateways belong to a cluster
ROLES = frozenset({"agent", "dns", "gateway", "region"})
_CLUSTER_ROLES = frozenset({"agent", "dns", "gateway"})
MAX_NODE_ID = 253


def _no_metadata() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: str
    role: str
    cluster: str = ""
    software_version: str = ""
    metadata: Mapping[str, str] = field(default_factory=_no_metadata)

    def validate(self) -> NodeInfo:
        """Raise InvalidError unless the node identity is well formed."""
        if not self.id or len(self.id) > MAX_NODE_ID or not self.id.isprintable():
            raise InvalidError("node.id must be 1-253 printable characters", field="node.id")
        if self.role not in ROLES:
            raise InvalidError(
                f"node.role {self.role!r} is not one of {sorted(ROLES)}", field="node.role"
            )
        if self.role in _CLUSTER_ROLES:
            try:
                validate_label(self.cluster)
            except ValueError as exc:
                raise InvalidError(f"node.cluster: {exc}", field="node.cluster") from exc
        return self


def node_to_pb(node: NodeInfo) -> pb.Node:
    return pb.Node(
        id=node.id,
        role=node.role,
        cluster=node.cluster,
        software_version=node.software_version,
        metadata=dict(node.metadata),
    )


def node_from_pb(msg: pb.Node) -> NodeInfo:
    return NodeInfo(
        id=msg.id,
        role=msg.role,
        cluster=msg.cluster,
        software_version=msg.software_version,
        metadata=MappingProxyType(dict(msg.metadata)),
    )


def item_to_pb(item: Item) -> pb.Resource:
    return pb.Resource(name=item.name, version=item.version, body=item.body)


def item_from_pb(msg: pb.Resource) -> Item:
    return Item(name=msg.name, version=msg.version, body=msg.body)


def items_to_pb(items: Iterable[Item]) -> list[pb.Resource]:
    return [item_to_pb(it) for it in items]


def push_to_pb(push: Push) -> pb.ServerMessage:
    return pb.ServerMessage(
        delta=pb.Delta(
            type=push.type,
            nonce=push.nonce,
            system_version=push.system_version,
            resources=items_to_pb(push.resources),
            removed=list(push.removed),
        )
    )


def push_from_pb(msg: pb.Delta) -> Push:
    return Push(
        type=msg.type,
        nonce=msg.nonce,
        system_version=msg.system_version,
        resources=tuple(item_from_pb(r) for r in msg.resources),
        removed=tuple(msg.removed),
    )
