"""Translation of etcd's gRPC failures (pure table) and gRPC target building."""

from __future__ import annotations

import pytest

from atoll.errors import (
    AtollError,
    CompactedError,
    FatalError,
    InvalidError,
    LeaseNotFoundError,
    StoreUnavailableError,
)
from atoll.store.etcd.errors import translate_rpc_error
from atoll.store.etcd.rpc import grpc_target


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        ("UNAVAILABLE", "etcdserver: no leader", StoreUnavailableError),
        ("UNAVAILABLE", "etcdserver: leader changed", StoreUnavailableError),
        ("UNAVAILABLE", "etcdserver: request timed out", StoreUnavailableError),
        ("UNAVAILABLE", "failed to connect to all addresses", StoreUnavailableError),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", StoreUnavailableError),
        ("CANCELLED", "Channel closed", StoreUnavailableError),
        ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded", StoreUnavailableError),
        ("INTERNAL", "Received RST_STREAM", StoreUnavailableError),
        ("NOT_FOUND", "etcdserver: requested lease not found", LeaseNotFoundError),
        ("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted", CompactedError),
        ("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision", InvalidError),
        ("INVALID_ARGUMENT", "etcdserver: request is too large", InvalidError),
        ("INVALID_ARGUMENT", "etcdserver: key is not provided", InvalidError),
        ("PERMISSION_DENIED", "etcdserver: permission denied", FatalError),
        ("UNAUTHENTICATED", "etcdserver: invalid auth token", FatalError),
        ("UNIMPLEMENTED", "unknown service etcdserverpb.KV", FatalError),
    ],
)
def test_translation(code: str, details: str, kind: type[AtollError]) -> None:
    error = translate_rpc_error(code, details, lease=0xABC, revision=7)
    assert type(error) is kind
    assert isinstance(error, AtollError)


def test_translation_fills_in_the_request_fields() -> None:
    lease_error = translate_rpc_error(
        "NOT_FOUND", "etcdserver: requested lease not found", lease=42
    )
    assert isinstance(lease_error, LeaseNotFoundError) and lease_error.lease == 42
    compacted = translate_rpc_error(
        "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted", revision=9
    )
    assert isinstance(compacted, CompactedError) and compacted.requested == 9
    assert "no leader" in str(translate_rpc_error("UNAVAILABLE", "etcdserver: no leader"))


@pytest.mark.parametrize(
    ("endpoints", "target"),
    [
        ([("127.0.0.1", 2379)], "ipv4:127.0.0.1:2379"),
        ([("127.0.0.1", 1), ("127.0.0.2", 2)], "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ([("::1", 2379), ("fe80::1", 2)], "ipv6:[::1]:2379,[fe80::1]:2"),
        ([("etcd.internal", 2379)], "dns:///etcd.internal:2379"),
    ],
)
def test_grpc_target(endpoints: list[tuple[str, int]], target: str) -> None:
    assert grpc_target(endpoints) == target


@pytest.mark.parametrize(
    "endpoints",
    [[], [("a", 1), ("b", 2)], [("127.0.0.1", 1), ("::1", 2)], [("127.0.0.1", 1), ("b", 2)]],
)
def test_grpc_target_refuses(endpoints: list[tuple[str, int]]) -> None:
    with pytest.raises(InvalidError):
        grpc_target(endpoints)
