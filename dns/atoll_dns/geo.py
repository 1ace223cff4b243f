"""Where a client is, and how far regions are from each other.

Locating a client (issue 4, geo strategy). The client address is the EDNS
Client Subnet of the query (RFC 7871) when present with a non-zero source
prefix, else the resolver's own source address. It is looked up in

1. the client-network map (config networks, then ``Region.spec.client_networks``),
   longest prefix wins — a binary trie over address bits;
2. otherwise, when configured, a MaxMind-format database (``maxminddb``):
   its country ISO code, else its continent code, through ``maxmind_regions``.

ECS scope (RFC 7871 §7.2.1: the number of leading address bits the answer is
valid for). The trie walk stops where no more specific network lies in the
client's direction; the block of addresses sharing the bits walked so far (plus
the bit that left the trie) all get the same region, so that length is the
scope. It never exceeds the query's source prefix, except when the MaxMind
record itself is more specific: then its prefix length is returned, which tells
the resolver that a longer source prefix would matter. A client found nowhere
gets the unknown-region answer with the scope of the trie walk as well.

Distances. Default: great-circle kilometres between ``Region`` coordinates
(haversine, mean Earth radius 6371 km); a configured distance overrides a pair,
in both directions. A region with neither coordinates nor an override has no
distance to anything, and the geo strategy treats a client there as unlocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Literal, Protocol

from atoll.errors import InvalidError
from atoll_dns.config import RegionDistance, RegionNetwork
from atoll_dns.snapshot import RegionRecord

__all__ = [
    "EARTH_RADIUS_KM",
    "DistanceTable",
    "GeoDatabase",
    "Location",
    "Locator",
    "PrefixTrie",
    "great_circle_km",
    "open_geo_database",
]

EARTH_RADIUS_KM = 6371.0


class GeoDatabase(Protocol):
    """What Atoll needs of a MaxMind-format reader (``maxminddb.Reader`` fits)."""

    def get_with_prefix_len(self, ip_address: str, /) -> tuple[object, int]: ...


def open_geo_database(path: Path) -> GeoDatabase:
    """Open a MaxMind DB file with the ``maxminddb`` package (memory-mapped).

    Raises :class:`~atoll.errors.InvalidError` when the package is missing or the
    file is not a readable MaxMind DB.
    """
    try:
        import maxminddb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidError(
            "maxmind_db is set but the 'maxminddb' package is not installed",
            field="maxmind_db",
        ) from exc
    try:
        reader: GeoDatabase = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise InvalidError(f"cannot read MaxMind DB {path}: {exc}", field="maxmind_db") from exc
    return reader


@dataclass(frozen=True, slots=True)
class Location:
    """The outcome of locating a client."""

    region: str | None
    method: Literal["cidr", "maxmind", "none"]
    #: ECS scope prefix length for answers that depend on the client's region
    scope: int
    #: the network that was looked up, e.g. "192.0.2.0/24"
    network: str
    source: Literal["ecs", "resolver"]

    def describe(self) -> str:
        where = self.region if self.region is not None else "unknown region"
        via = {"cidr": "client-network map", "maxmind": "MaxMind DB", "none": "no match"}
        return f"client {self.network} ({self.source}) -> {where} via {via[self.method]}"


class PrefixTrie:
    """Longest-prefix match over one address family, with the RFC 7871 scope.

    Nodes are ``[child0, child1, region]`` lists: compact and quick in CPython.
    """

    __slots__ = ("_bits", "_root")

    def __init__(self, bits: int) -> None:
        self._bits = bits
        self._root: list[object] = [None, None, None]

    def insert(self, network: int, prefix_len: int, region: str) -> bool:
        """Add a network; return False (and keep the first) when it is already present."""
        node = self._root
        for depth in range(prefix_len):
            bit = (network >> (self._bits - 1 - depth)) & 1
            child = node[bit]
            if child is None:
                child = [None, None, None]
                node[bit] = child
            node = child  # type: ignore[assignment]
        if node[2] is not None:
            return False
        node[2] = region
        return True

    def lookup(self, address: int, source_len: int) -> tuple[str | None, int]:
        """Region of the longest network containing ``address``/``source_len``, and the scope."""
        bits = self._bits
        node = self._root
        best = node[2]
        depth = 0
        while depth < source_len:
            child = node[(address >> (bits - 1 - depth)) & 1]
            if child is None:
                # Nothing more specific this way: the block one bit longer is uniform,
                # or the whole current block when this node has no children at all.
                if node[0] is None and node[1] is None:
                    return best, depth  # type: ignore[return-value]
                return best, depth + 1  # type: ignore[return-value]
            node = child  # type: ignore[assignment]
            depth += 1
            if node[2] is not None:
                best = node[2]
        return best, source_len  # type: ignore[return-value]


def _database_region(record: object, regions: Mapping[str, str]) -> str | None:
    if not isinstance(record, Mapping):
        return None
    for key, field in (("country", "iso_code"), ("continent", "code")):
        part = record.get(key)
        if isinstance(part, Mapping):
            code = part.get(field)
            if isinstance(code, str) and code in regions:
                return regions[code]
    return None


class Locator:
    """Maps client addresses to regions (pure apart from its memo of past lookups)."""

    def __init__(
        self,
        networks: Sequence[RegionNetwork],
        *,
        database: GeoDatabase | None = None,
        database_regions: Mapping[str, str] | None = None,
        memo_size: int = 65536,
    ) -> None:
        self._v4 = PrefixTrie(32)
        self._v6 = PrefixTrie(128)
        for entry in networks:
            net = entry.network
            trie = self._v4 if isinstance(net, IPv4Network) else self._v6
            trie.insert(int(net.network_address), net.prefixlen, entry.region)
        self._db = database
        self._db_regions = dict(database_regions or {})
        self._memo: dict[tuple[int, int, int, bool], Location] = {}
        self._memo_size = memo_size

    def locate(self, family: int, address: int, source_len: int, *, ecs: bool) -> Location:
        """Locate ``address``/``source_len`` (family 1 = IPv4, 2 = IPv6, as in ECS)."""
        key = (family, address, source_len, ecs)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        loc = self._locate(family, address, source_len, ecs)
        if len(self._memo) >= self._memo_size:
            self._memo.clear()
        self._memo[key] = loc
        return loc

    def locate_ip(self, text: str) -> Location:
        """Locate a resolver by its source address (the whole address is significant)."""
        addr = ip_address(text.split("%", 1)[0])
        if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.version == 4:
            return self.locate(1, int(addr), 32, ecs=False)
        return self.locate(2, int(addr), 128, ecs=False)

    def _locate(self, family: int, address: int, source_len: int, ecs: bool) -> Location:
        bits = 32 if family == 1 else 128
        net = (IPv4Network if family == 1 else IPv6Network)((address, source_len), strict=False)
        source: Literal["ecs", "resolver"] = "ecs" if ecs else "resolver"
        trie = self._v4 if family == 1 else self._v6
        region, scope = trie.lookup(address, source_len)
        if region is not None:
            return Location(region, "cidr", scope, str(net), source)
        if self._db is not None:
            ip = net.network_address
            try:
                record, db_prefix = self._db.get_with_prefix_len(str(ip))
            except (ValueError, OSError):
                record, db_prefix = None, bits
            # maxminddb reports the prefix in the looked-up address's own family.
            # The answer is uniform where both the trie block and the database block
            # agree, i.e. on the longer of the two prefixes.
            scope = max(scope, min(db_prefix, bits))
            found = _database_region(record, self._db_regions)
            if found is not None:
                return Location(found, "maxmind", scope, str(net), source)
        return Location(None, "none", scope, str(net), source)


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a sphere of radius :data:`EARTH_RADIUS_KM`."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class DistanceTable:
    """Distances between regions: overrides first, then great-circle km."""

    def __init__(
        self, regions: Sequence[RegionRecord], overrides: Sequence[RegionDistance] = ()
    ) -> None:
        self._coords = {r.name: (r.latitude, r.longitude) for r in regions}
        self._over: dict[tuple[str, str], float] = {}
        for o in overrides:
            self._over[(o.a, o.b)] = o.distance
            self._over.setdefault((o.b, o.a), o.distance)
        self._known = set(self._coords) | {a for a, _ in self._over}

    def knows(self, region: str) -> bool:
        return region in self._known

    def distance(self, a: str, b: str) -> float | None:
        """Distance from ``a`` to ``b``; ``None`` when neither data source covers the pair."""
        if a == b:
            return 0.0
        over = self._over.get((a, b))
        if over is not None:
            return over
        ca, cb = self._coords.get(a), self._coords.get(b)
        if ca is None or cb is None:
            return None
        return great_circle_km(ca[0], ca[1], cb[0], cb[1])
