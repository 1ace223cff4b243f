"""Test helpers that ship with the package: a tiny MaxMind DB writer and fixtures.

:func:`write_mmdb` writes a MaxMind DB file (format 2.0, as specified in the
"MaxMind DB File Format Specification") holding a few IPv4 networks and their
records, so the geo path can be tested against the real ``maxminddb`` reader
without shipping a GeoIP database. It supports what tests need: IPv4 trees,
24-bit records, non-overlapping networks, and maps/strings/unsigned integers/
doubles/booleans/arrays as values.

:func:`sample_snapshot` builds a small but complete zone (geo, failover,
round-robin and weighted services across three regions) used by the unit,
integration and benchmark code alike.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Network
from pathlib import Path

from atoll.model.cluster import Region
from atoll.model.policy import TrafficPolicy
from atoll.model.service import ServiceImport
from atoll_dns.config import DnsConfig
from atoll_dns.snapshot import ZoneSnapshot, build_zone

__all__ = [
    "MMDB_MARKER",
    "make_import",
    "make_policy",
    "make_region",
    "sample_config",
    "sample_snapshot",
    "write_mmdb",
]

MMDB_MARKER = b"\xab\xcd\xefMaxMind.com"
MmdbValue = str | int | float | bool | list["MmdbValue"] | dict[str, "MmdbValue"]


def _control(kind: int, size: int) -> bytes:
    first, ext = (kind << 5, b"") if kind <= 7 else (0, bytes((kind - 7,)))
    if size < 29:
        return bytes((first | size,)) + ext
    if size < 29 + 256:
        return bytes((first | 29,)) + ext + bytes((size - 29,))
    if size < 285 + 65536:
        return bytes((first | 30,)) + ext + (size - 285).to_bytes(2, "big")
    return bytes((first | 31,)) + ext + (size - 65821).to_bytes(3, "big")


def _uint(value: int, kind: int) -> bytes:
    """An unsigned integer of an explicit MMDB type (5 = uint16, 6 = uint32, 9 = uint64)."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _control(kind, len(raw)) + raw


def _encode(value: MmdbValue) -> bytes:
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, int):
        if value < 0:
            raise ValueError("only unsigned integers are supported")
        return _uint(value, 5 if value < 2**16 else 6 if value < 2**32 else 9)
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(_encode(v) for v in value)
    return _control(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())


def write_mmdb(path: Path, networks: dict[str, dict[str, MmdbValue]]) -> Path:
    """Write an IPv4 MaxMind DB mapping each network ("a.b.c.d/n") to its record."""
    data = bytearray()
    leaves: list[tuple[IPv4Network, int]] = []
    for text, value in networks.items():
        leaves.append((IPv4Network(text), len(data)))
        data += _encode(value)
    # binary trie: node = [left, right]; a child is a node, ("data", offset) or None
    root: list[object] = [None, None]
    for net, offset in leaves:
        node = root
        bits = int(net.network_address)
        for depth in range(net.prefixlen):
            bit = (bits >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                if node[bit] is not None:
                    raise ValueError(f"{net} overlaps another network")
                node[bit] = ("data", offset)
            else:
                child = node[bit]
                if child is None:
                    child = [None, None]
                    node[bit] = child
                if not isinstance(child, list):
                    raise ValueError(f"{net} overlaps another network")
                node = child
    order: list[list[object]] = []
    index: dict[int, int] = {}
    queue = [root]
    while queue:
        node = queue.pop(0)
        index[id(node)] = len(order)
        order.append(node)
        queue.extend(c for c in node if isinstance(c, list))
    count = len(order)

    def record(child: object) -> int:
        if child is None:
            return count
        if isinstance(child, list):
            return index[id(child)]
        assert isinstance(child, tuple)
        return count + 16 + int(child[1])

    tree = b"".join(
        record(node[0]).to_bytes(3, "big") + record(node[1]).to_bytes(3, "big") for node in order
    )
    # metadata keys have fixed types (libmaxminddb checks them)
    fields = [
        ("binary_format_major_version", _uint(2, 5)),
        ("binary_format_minor_version", _uint(0, 5)),
        ("build_epoch", _uint(1_700_000_000, 9)),
        ("database_type", _encode("Atoll-Test-Country")),
        ("description", _encode({"en": "Atoll test database"})),
        ("ip_version", _uint(4, 5)),
        ("languages", _encode(["en"])),
        ("node_count", _uint(count, 6)),
        ("record_size", _uint(24, 5)),
    ]
    metadata = _control(7, len(fields)) + b"".join(_encode(k) + v for k, v in fields)
    path.write_bytes(tree + b"\x00" * 16 + bytes(data) + MMDB_MARKER + metadata)
    return path


def make_import(
    namespace: str,
    name: str,
    targets: list[tuple[str, str, list[str], bool]],
    *,
    ports: list[tuple[str, int, str]] | None = None,
    revision: int = 0,
) -> ServiceImport:
    """A ServiceImport; targets are (cluster, region, addresses, healthy)."""
    return ServiceImport.model_validate(
        {
            "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": namespace, "revision": revision},
            "spec": {
                "ports": [
                    {"name": pname, "port": port, "protocol": proto}
                    for pname, port, proto in (ports or [("http", 8080, "TCP")])
                ],
                "targets": [
                    {
                        "cluster": cluster,
                        "region": region,
                        "addresses": addresses,
                        "healthy": healthy,
                        "endpoints_healthy": len(addresses) if healthy else 0,
                        "endpoints_total": max(1, len(addresses)),
                    }
                    for cluster, region, addresses, healthy in targets
                ],
            },
        }
    )


def make_policy(namespace: str, name: str, **spec: object) -> TrafficPolicy:
    return TrafficPolicy.model_validate(
        {
            "kind": "TrafficPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def make_region(name: str, latitude: float, longitude: float, *networks: str) -> Region:
    return Region.model_validate(
        {
            "kind": "Region",
            "metadata": {"name": name},
            "spec": {
                "latitude": latitude,
                "longitude": longitude,
                "client_networks": list(networks),
            },
        }
    )


def sample_config(**overrides: object) -> DnsConfig:
    base: dict[str, object] = {
        "zone": "atoll.test.",
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "nameservers": [{"name": "ns1", "addresses": ["192.0.2.53"]}],
        "client_networks": [
            {"network": "10.1.0.0/16", "region": "eu-west"},
            {"network": "10.2.0.0/16", "region": "us-east"},
            {"network": "10.3.0.0/16", "region": "ap-south"},
        ],
    }
    base.update(overrides)
    return DnsConfig.model_validate(base)


def sample_snapshot(config: DnsConfig | None = None) -> ZoneSnapshot:
    """Three regions, three clusters; web=geo, api=failover, pool=round_robin, canary=weighted."""
    config = config or sample_config()
    clusters = [
        ("eu1", "eu-west", ["192.0.2.1", "2001:db8::1"], True),
        ("us1", "us-east", ["192.0.2.2", "2001:db8::2"], True),
        ("ap1", "ap-south", ["192.0.2.3"], True),
    ]
    imports = [
        make_import("default", "web", clusters),
        make_import("default", "api", clusters, ports=[("grpc", 9090, "TCP"), ("dns", 53, "UDP")]),
        make_import("default", "pool", clusters),
        make_import("default", "canary", clusters[:2]),
    ]
    policies = [
        make_policy("default", "web", strategy="geo", priorities=[["us-east"], ["eu-west"]]),
        make_policy("default", "api", strategy="failover", priorities=[["eu1"], ["us1"]], ttl=60),
        make_policy("default", "canary", strategy="weighted", weights={"eu1": 3, "us1": 1}),
    ]
    regions = [
        make_region("eu-west", 53.3, -6.3),
        make_region("us-east", 38.9, -77.0),
        make_region("ap-south", 19.1, 72.9),
    ]
    return build_zone(config, imports, policies, regions)
