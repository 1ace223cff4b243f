"""Conversions between the generated protobuf messages and the sync dataclasses.

Only this module and the two I/O edges (:mod:`.server`, :mod:`.client`) touch
generated protobuf types; the state machines work on frozen dataclasses.
"""

from __future__ import annotations

import functools
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
    "encode_push",
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


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with number ``tag``."""
    return bytes([(tag << 3) | 2]) + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=65_536)
def _resource_field(item: Item) -> bytes:
    """Delta.resources entry (field 4) for ``item``, encoded once per (name, version, body)."""
    return _field(4, item_to_pb(item).SerializeToString())


def encode_push(push: Push) -> bytes:
    """The serialized ``ServerMessage{delta}`` for ``push``.

    Every subscriber is sent the same resource versions, so each resource is
    encoded once (cached) and a push is a concatenation; building and
    serializing a protobuf message per stream cost seconds of CPU per change
    at a thousand subscribers (tests/bench/bench_sync.py). The bytes are the
    protobuf encoding of :func:`push_to_pb` (checked by a property test).
    """
    parts = [
        _field(1, push.type.encode()),
        _field(2, push.nonce.encode()),
        _field(3, push.system_version.encode()),
    ]
    parts.extend(_resource_field(it) for it in push.resources)
    parts.extend(_field(5, name.encode()) for name in push.removed)
    return _field(2, b"".join(parts))


def push_from_pb(msg: pb.Delta) -> Push:
    return Push(
        type=msg.type,
        nonce=msg.nonce,
        system_version=msg.system_version,
        resources=tuple(item_from_pb(r) for r in msg.resources),
        removed=tuple(msg.removed),
    )
