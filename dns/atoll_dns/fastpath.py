"""The fast packet path: precomputed wire answers, patched per query.

When a snapshot is applied, :func:`compile_zone` asks the
:class:`~atoll_dns.zoneview.ZoneView` every question whose answer can be known
in advance — each name and type with data, each client region for geo names,
each ring slot for rotating strategies, NODATA per name — and renders it once
with :func:`atoll_dns.answer.render`, keeping only the bytes after the
question plus eight precomputed header variants (RD, CD, EDNS on/off).

Per query, :meth:`FastEngine.handle` does a minimal, validating parse of the
raw bytes (header, one uncompressed question, at most one OPT with options it
understands), looks the lowercased question up, and assembles::

    query ID | header variant | the query's own question bytes | body | OPT

Echoing the query's question keeps its letter case (names in the body are
compression pointers into it, so answers carry that case too). The OPT is
built per query (payload, copied DO bit, ECS echo with the decided scope).
Anything the parser does not recognise — other opcodes, extra records, EDNS
version > 0, an unusual option, class ≠ IN, meta query types, a malformed
ECS — goes to the slow path, which is the reference; a property test checks
both paths produce identical bytes for valid queries.

On top sits an exact-query memo (UDP only): the response bytes after the ID,
keyed by the query bytes after the ID (:class:`MemoEntry`). A repeated query —
the normal case for a resolver population — costs one slice, one dict lookup
and one concatenation; geo answers located by the resolver's address are
memoised per client region and per resolver address (:class:`GeoMemo`).
Rotating answers are never memoised. The memo is per compiled zone, so a
snapshot swap empties it; it starts over when it holds ``memo_size`` queries
or has remembered ``memo_size`` resolver addresses, which bounds its memory
under floods of distinct names or spoofed sources. Hits are counted in the
entries and folded into the engine's counts when the memo is dropped
(:meth:`FastEngine.totals` adds the live ones).

Concurrency: the engine runs on one event loop thread. ``apply`` replaces the
compiled zone reference in one assignment, so each query sees the old or the
new zone, never a mix.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from dataclasses import dataclass

import dns.edns
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from atoll_dns.answer import Reply, SlowContext, render, respond
from atoll_dns.geo import Locator
from atoll_dns.metrics import StatKey
from atoll_dns.strategy import Choice, ring_choices
from atoll_dns.wire import FLAG_CD, FLAG_RD, OPT_TYPE, OPTION_ECS, build_opt
from atoll_dns.zoneview import AAAA, SRV, A, Resolution, ZoneView

__all__ = ["Answer", "CompiledZone", "FastEngine", "GeoMemo", "MemoEntry", "compile_zone"]

#: query types always answered by the slow path (meta and odd types)
SLOW_QTYPES = frozenset({0, OPT_TYPE, 249, 250, 251, 252, 253, 254, 255})
_NODATA_PROBE = dns.rdatatype.NULL
#: EDNS option codes dnspython parses into rich classes (they may reject content);
#: NSID (any content) and COOKIE/ECS (checked here) excepted
_SLOW_OPTIONS = frozenset(
    int(t)
    for t in dns.edns.OptionType
    if dns.edns.get_option_class(t) not in (dns.edns.GenericOption, dns.edns.NSIDOption)
) - {OPTION_ECS, int(dns.edns.OptionType.COOKIE)}
_COUNTS = struct.Struct("!HHHHH")


class Answer:
    """One precomputed response, minus ID, question and OPT."""

    __slots__ = ("body", "dependent", "heads", "rcode", "strategy", "tc")

    def __init__(
        self,
        heads: tuple[bytes, ...],
        body: bytes,
        tc: Answer | None,
        rcode: int,
        strategy: str,
        dependent: bool,
    ) -> None:
        self.heads = heads
        self.body = body
        self.tc = tc
        self.rcode = int(rcode)  # plain int: IntEnum hashing is slow on the hot path
        self.strategy = strategy
        self.dependent = dependent


class Ring:
    """Variants of a rotating answer, served in turn."""

    __slots__ = ("answers", "pos")

    def __init__(self, answers: tuple[Answer, ...]) -> None:
        self.answers = answers
        self.pos = 0

    def next(self) -> Answer:
        pos = self.pos
        self.pos = pos + 1 if pos + 1 < len(self.answers) else 0
        return self.answers[pos]


@dataclass(slots=True)
class Geo:
    """Answers per client region (``None`` = unlocated)."""

    by_region: dict[str | None, Answer | Ring]


Entry = Answer | Ring | Geo


class MemoEntry:
    """A memoised response (after the ID) and how often it was served since last counted.

    Hits are counted here, not in the engine's ``counts`` dict, because an
    integer attribute is cheaper than hashing a label tuple per packet;
    :meth:`FastEngine.totals` adds them up.
    """

    __slots__ = ("key", "n", "tail")

    def __init__(self, tail: bytes, key: StatKey) -> None:
        self.tail = tail
        self.key = key
        self.n = 0


class GeoMemo:
    """Memo of a geo answer located by the resolver's address.

    ``tails`` holds the answer per client region; ``by_address`` short-cuts the
    region lookup per raw resolver address (the batch path keys on the four or
    sixteen address octets it already has). Both are filled lazily.
    """

    __slots__ = ("by_address", "entry", "key", "n", "tails")

    #: resolver addresses remembered per memo entry before starting over
    MAX_ADDRESSES = 256

    def __init__(self, entry: Geo, key: StatKey) -> None:
        self.entry = entry
        self.key = key
        self.n = 0
        self.tails: dict[str | None, bytes] = {}
        self.by_address: dict[bytes, bytes] = {}


def _wire(name: dns.name.Name) -> bytes:
    wire = name.to_wire()
    assert wire is not None
    return wire


def _heads(wire: bytes) -> tuple[bytes, ...]:
    flags, qd, an, ns, ar = _COUNTS.unpack_from(wire, 2)
    out = []
    for idx in range(8):
        f = flags | (FLAG_RD if idx & 1 else 0) | (FLAG_CD if idx & 2 else 0)
        out.append(_COUNTS.pack(f, qd, an, ns, ar + (1 if idx & 4 else 0)))
    return tuple(out)


def _answer(qname: dns.name.Name, qtype: int, res: Resolution) -> Answer:
    qlen = len(_wire(qname)) + 4
    full = render(0, 0, qname, qtype, dns.rdataclass.IN, res, edns=None)
    cut = render(0, 0, qname, qtype, dns.rdataclass.IN, res, edns=None, truncate=True)
    tc = Answer(_heads(cut), cut[12 + qlen :], None, res.rcode, res.strategy, res.client_dependent)
    return Answer(
        _heads(full), full[12 + qlen :], tc, res.rcode, res.strategy, res.client_dependent
    )


def _label_offsets(name: bytes) -> set[int]:
    out = set()
    i = 0
    while i < len(name) and name[i]:
        out.add(i)
        i += name[i] + 1
    out.add(i)
    return out


class CompiledZone:
    """The answer tables of one snapshot (see module docstring)."""

    def __init__(self, view: ZoneView, *, memo_size: int) -> None:
        self.view = view
        self.exact: dict[bytes, Entry] = {}
        self.names: dict[bytes, Answer] = {}
        self.nx: dict[int, Answer] = {}
        self.memo: dict[bytes, MemoEntry | GeoMemo] = {}
        self.memo_size = memo_size
        #: resolver addresses that may still be added to GeoMemo.by_address maps before
        #: the memo starts over (bounds memory under spoofed-source floods)
        self.address_budget = memo_size
        self.zone_wire = _wire(view.origin).lower()
        unsafe: set[bytes] = set()
        for name in view.soa_names:
            while name.is_subdomain(view.origin) and name != view.origin:
                unsafe.add(_wire(name).lower())
                name = name.parent()
        #: NXDOMAIN names ending in these compress differently: slow path
        self.unsafe = tuple(unsafe)
        self.refused = _answer(view.origin, A, Resolution(dns.rcode.REFUSED, False))

    def nxdomain(self, name: bytes) -> Answer:
        hit = self.nx.get(len(name))
        if hit is None:
            qname = dns.name.from_wire(name, 0)[0]
            hit = _answer(qname, A, self.view.resolve(qname, A, region=None))
            self.nx[len(name)] = hit
        return hit


def _entry(view: ZoneView, qname: dns.name.Name, qtype: int) -> Entry:
    node = view.nodes[qname]
    svc = node.service
    if svc is None or (qtype == SRV) != (node.port is not None):
        return _answer(qname, qtype, view.resolve(qname, qtype, region=None))
    choices = ring_choices(svc)
    regions = view.region_keys if view.client_dependent(svc) else (None,)
    per_region: dict[str | None, Answer | Ring] = {}
    for region in regions:
        answers = tuple(
            _answer(qname, qtype, view.resolve(qname, qtype, region=region, choice=c))
            for c in choices
        )
        per_region[region] = answers[0] if len(answers) == 1 else Ring(answers)
    if len(regions) == 1:
        return per_region[None]
    return Geo(per_region)


def compile_zone(view: ZoneView, *, memo_size: int = 65536) -> CompiledZone:
    """Precompute every answer of ``view`` (called off the packet path, per snapshot)."""
    zone = CompiledZone(view, memo_size=memo_size)
    tail = struct.pack("!HH", 0, dns.rdataclass.IN)
    for qname, node in view.nodes.items():
        wire = _wire(qname).lower()
        zone.names[wire] = _answer(
            qname, _NODATA_PROBE, view.resolve(qname, _NODATA_PROBE, region=None)
        )
        types: set[int] = set(node.static)
        if node.service is not None:
            types.update((SRV,) if node.port is not None else (A, AAAA))
        for qtype in sorted(types):
            key = wire + struct.pack("!H", qtype) + tail[2:]
            zone.exact[key] = _entry(view, qname, qtype)
    # a lowercased key never maps onto another key: our types/classes avoid 0x61-0x7a octets
    assert all(not (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A) for k in zone.exact for b in k[-4:])
    return zone


class FastEngine:
    """Answers packets from a :class:`CompiledZone`, falling back to the slow path."""

    def __init__(
        self,
        locator: Locator,
        origin: dns.name.Name,
        *,
        max_udp: int,
        fast: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.zone: CompiledZone | None = None
        self.locator = locator
        self.origin = origin
        self.max_udp = max_udp
        self.fast = fast
        self.rng = rng or random.Random()
        self.counts: defaultdict[StatKey, int] = defaultdict(int)
        #: packets the fast path handed to the slow path (only unusual ones should be)
        self.slow_calls = 0
        self._ctx = SlowContext(None, locator, origin, max_udp)
        self.src_regions: dict[str, str | None] = {}
        self._ecs_loc: dict[bytes, tuple[str | None, int]] = {}
        self._opt_plain = (build_opt(max_udp, False), build_opt(max_udp, True))

    def load(self, zone: CompiledZone | None, locator: Locator) -> None:
        """Swap in a compiled zone (one reference assignment per field group)."""
        if self.zone is not None:
            self._flush(self.zone.memo)
        self.src_regions = {}
        self._ecs_loc = {}
        self.locator = locator
        self._ctx = SlowContext(zone.view if zone else None, locator, self.origin, self.max_udp)
        self.zone = zone

    def _flush(self, memo: dict[bytes, MemoEntry | GeoMemo]) -> None:
        """Move memo hit counts into ``counts`` (before the memo is dropped)."""
        counts = self.counts
        for entry in list(memo.values()):
            if entry.n:
                counts[entry.key] += entry.n
                entry.n = 0

    def reset_memo(self, zone: CompiledZone) -> None:
        """Start the memo over (it is full), keeping its hit counts."""
        self._flush(zone.memo)
        zone.memo.clear()
        zone.address_budget = zone.memo_size

    def totals(self) -> dict[StatKey, int]:
        """Queries answered per (rcode, qtype, strategy), memo hits included.

        Safe to call from another thread (a metrics scrape): it only copies.
        """
        out = dict(list(self.counts.items()))
        zone = self.zone
        if zone is not None:
            for entry in list(zone.memo.values()):
                if entry.n:
                    out[entry.key] = out.get(entry.key, 0) + entry.n
        return out

    # -- slow path -----------------------------------------------------------------

    def slow(self, data: bytes, src: str, tcp: bool) -> bytes | None:
        self.slow_calls += 1
        choice = Choice(rotation=self.rng.randrange(1 << 30), pick=self.rng.random())
        reply: Reply | None = respond(data, client=src, ctx=self._ctx, tcp=tcp, choice=choice)
        if reply is None:
            return None
        self.counts[(reply.rcode, reply.qtype, reply.strategy)] += 1
        return reply.wire

    # -- fast path -----------------------------------------------------------------

    def region_of(self, src: str) -> str | None:
        """Region of a resolver address (memoised per compiled zone)."""
        try:
            return self.src_regions[src]
        except KeyError:
            region = self.locator.locate_ip(src).region
            if len(self.src_regions) > 65536:
                self.src_regions.clear()
            self.src_regions[src] = region
            return region

    def handle(self, data: bytes, src: str, tcp: bool = False) -> bytes | None:
        """The response to one query packet, or None for silence. Never raises on input."""
        zone = self.zone
        if zone is None or not self.fast:
            return self.slow(data, src, tcp)
        if not tcp:
            hit = zone.memo.get(data[2:])
            if hit is not None:
                if hit.__class__ is MemoEntry:
                    hit.n += 1
                    return data[:2] + hit.tail
                geo: GeoMemo = hit  # type: ignore[assignment]
                tail = geo.tails.get(self.region_of(src))
                if tail is not None:
                    geo.n += 1
                    return data[:2] + tail
        n = len(data)
        if n < 17 or data[2] & 0xF8:
            return self.slow(data, src, tcp)
        counts = data[4:12]
        if counts == b"\x00\x01\x00\x00\x00\x00\x00\x00":
            edns = False
        elif counts == b"\x00\x01\x00\x00\x00\x00\x00\x01":
            edns = True
        else:
            return self.slow(data, src, tcp)
        i = 12
        length = data[12]
        while length:
            if length > 63:
                return self.slow(data, src, tcp)
            i += length + 1
            if i >= n:
                return self.slow(data, src, tcp)
            length = data[i]
        qend = i + 5
        if qend > n or i - 11 > 255 or data[i + 3] or data[i + 4] != 1:
            return self.slow(data, src, tcp)
        qtype = (data[i + 1] << 8) | data[i + 2]
        if qtype in SLOW_QTYPES:
            return self.slow(data, src, tcp)
        # EDNS(0): one OPT, version 0, options we understand
        ecs_at = 0
        do = False
        limit = 65535 if tcp else 512
        if edns:
            o = qend
            if (
                o + 11 > n
                or data[o] != 0
                or data[o + 1] != 0
                or data[o + 2] != OPT_TYPE
                or data[o + 5] != 0
                or data[o + 6] != 0
                or o + 11 + ((data[o + 9] << 8) | data[o + 10]) != n
            ):
                return self.slow(data, src, tcp)
            if not tcp:
                limit = max(512, min((data[o + 3] << 8) | data[o + 4], self.max_udp))
            do = data[o + 7] & 0x80 != 0
            j = o + 11
            while j < n:
                if j + 4 > n:
                    return self.slow(data, src, tcp)
                code = (data[j] << 8) | data[j + 1]
                k = j + 4 + ((data[j + 2] << 8) | data[j + 3])
                if k > n:
                    return self.slow(data, src, tcp)
                if code == OPTION_ECS:
                    if ecs_at or not self._valid_ecs(data, j + 4, k):
                        return self.slow(data, src, tcp)
                    ecs_at = j
                elif code == 10:
                    if k - j - 4 != 8 and not 16 <= k - j - 4 <= 40:
                        return self.slow(data, src, tcp)
                elif code in _SLOW_OPTIONS:
                    return self.slow(data, src, tcp)
                j = k
        elif qend != n:
            return self.slow(data, src, tcp)
        key = data[12:qend].lower()
        entry = zone.exact.get(key)
        if entry is None:
            name = key[:-4]
            entry = zone.names.get(name)
            if entry is None:
                entry = self._absent(zone, name)
                if entry is None:
                    return self.slow(data, src, tcp)
        # pick the variant
        scope = 0
        by_source = False
        rotating = False
        region: str | None = None
        if entry.__class__ is Answer:
            ans: Answer = entry
        elif entry.__class__ is Ring:
            ans = entry.next()
            rotating = True
        else:
            if ecs_at and data[ecs_at + 6]:
                region, scope = self._ecs_region(data, ecs_at)
            else:
                region = self.region_of(src)
                by_source = True
            sub = entry.by_region.get(region) or entry.by_region[None]  # type: ignore[union-attr]
            if sub.__class__ is Answer:
                ans = sub
            else:
                ans = sub.next()  # type: ignore[union-attr]
                rotating = True
        if edns:
            if ecs_at:
                end = ecs_at + 4 + ((data[ecs_at + 2] << 8) | data[ecs_at + 3])
                ecs = b"".join(
                    (
                        data[ecs_at : ecs_at + 7],
                        bytes((scope if ans.dependent and data[ecs_at + 6] else 0,)),
                        data[ecs_at + 8 : end],
                    )
                )
                opt = build_opt(self.max_udp, do, ecs)
            else:
                opt = self._opt_plain[do]
        else:
            opt = b""
        if qend + len(ans.body) + len(opt) > limit:
            ans = ans.tc  # type: ignore[assignment]
        hidx = ((data[2] & 1) | ((data[3] & 0x10) >> 3)) + (4 if edns else 0)
        out = b"".join((data[:2], ans.heads[hidx], data[12:qend], ans.body, opt))
        stat: StatKey = (ans.rcode, qtype, ans.strategy)
        self.counts[stat] += 1
        if not tcp and not rotating and zone.memo_size:
            memo = zone.memo
            if len(memo) >= zone.memo_size:
                self.reset_memo(zone)
            if by_source:
                slot = memo.get(data[2:])
                if slot is None or slot.__class__ is MemoEntry:
                    slot = GeoMemo(entry, stat)  # type: ignore[arg-type]
                    memo[data[2:]] = slot
                slot.tails[region] = out[2:]  # type: ignore[union-attr]
            else:
                memo[data[2:]] = MemoEntry(out[2:], stat)
        return out

    def _absent(self, zone: CompiledZone, name: bytes) -> Answer | None:
        """NXDOMAIN (cached by name length) or REFUSED for a name with no node; None = slow."""
        zw = zone.zone_wire
        p = len(name) - len(zw)
        if p < 0 or not name.endswith(zw):
            return zone.refused
        offsets = _label_offsets(name)
        if p not in offsets:
            return zone.refused
        for suffix in zone.unsafe:
            q = len(name) - len(suffix)
            if q >= 0 and name.endswith(suffix) and q in offsets:
                return None
        return zone.nxdomain(name)

    @staticmethod
    def _valid_ecs(data: bytes, s: int, k: int) -> bool:
        """RFC 7871 §6 shape: known family, prefix within it, scope 0, exact, zero padding."""
        if k - s < 4:
            return False
        family = (data[s] << 8) | data[s + 1]
        src = data[s + 2]
        if family == 1:
            if src > 32:
                return False
        elif family != 2 or src > 128:
            return False
        if data[s + 3] != 0 or k - s - 4 != (src + 7) >> 3:
            return False
        rest = src & 7
        return not (rest and data[k - 1] & (0xFF >> rest))

    def _ecs_region(self, data: bytes, at: int) -> tuple[str | None, int]:
        end = at + 4 + ((data[at + 2] << 8) | data[at + 3])
        raw = data[at + 4 : end]
        hit = self._ecs_loc.get(raw)
        if hit is None:
            family = (raw[0] << 8) | raw[1]
            width = 4 if family == 1 else 16
            address = int.from_bytes(raw[4:].ljust(width, b"\x00"), "big")
            loc = self.locator.locate(family, address, raw[2], ecs=True)
            hit = (loc.region, loc.scope)
            if len(self._ecs_loc) > 65536:
                self._ecs_loc.clear()
            self._ecs_loc[raw] = hit
        return hit
