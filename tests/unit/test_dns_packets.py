"""Packet semantics on both paths, slow/fast agreement, and fuzzing of the packet path."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll_dns.answer import SlowContext, respond
from atoll_dns.fastpath import FastEngine, compile_zone
from atoll_dns.geo import Locator
from atoll_dns.snapshot import ZoneSnapshot, build_zone
from atoll_dns.strategy import Choice, ring_choices
from atoll_dns.testing import make_import, make_policy, make_region, sample_config, sample_snapshot
from atoll_dns.zoneview import ZoneView

Answerer = Callable[[bytes, str, bool], "bytes | None"]


def big_snapshot() -> ZoneSnapshot:
    """sample_snapshot plus a service with 60 addresses (does not fit in 512 octets)."""
    base = sample_snapshot()
    many = [f"198.51.100.{i}" for i in range(1, 61)]
    imports = [
        make_import(
            "default",
            "web",
            [
                ("eu1", "eu-west", ["192.0.2.1", "2001:db8::1"], True),
                ("us1", "us-east", ["192.0.2.2", "2001:db8::2"], True),
                ("ap1", "ap-south", ["192.0.2.3"], True),
            ],
        ),
        make_import(
            "default",
            "api",
            [("eu1", "eu-west", ["192.0.2.1"], True), ("us1", "us-east", ["192.0.2.2"], True)],
            ports=[("grpc", 9090, "TCP"), ("dns", 53, "UDP")],
        ),
        make_import(
            "default",
            "pool",
            [
                ("eu1", "eu-west", ["192.0.2.1"], True),
                ("us1", "us-east", ["192.0.2.2"], True),
                ("ap1", "ap-south", ["192.0.2.3"], True),
            ],
        ),
        make_import(
            "default",
            "canary",
            [("eu1", "eu-west", ["192.0.2.1"], True), ("us1", "us-east", ["192.0.2.2"], True)],
        ),
        make_import("default", "big", [("eu1", "eu-west", many, True)]),
        make_import("default", "down", [("eu1", "eu-west", [], False)]),
    ]
    policies = [
        make_policy("default", "web", strategy="geo", priorities=[["us-east"], ["eu-west"]]),
        make_policy("default", "api", strategy="failover", priorities=[["eu1"], ["us1"]], ttl=60),
        make_policy("default", "canary", strategy="weighted", weights={"eu1": 3, "us1": 1}),
        make_policy("default", "down", strategy="round_robin", on_all_unhealthy="servfail"),
    ]
    regions = [
        make_region("eu-west", 53.3, -6.3),
        make_region("us-east", 38.9, -77.0),
        make_region("ap-south", 19.1, 72.9),
    ]
    snap = build_zone(sample_config(), imports, policies, regions)
    assert snap.zone == base.zone
    return snap


SNAP = big_snapshot()
VIEW = ZoneView(SNAP)
LOCATOR = Locator(SNAP.client_networks)
CTX = SlowContext(VIEW, LOCATOR, VIEW.origin, 1232)
CHOICES = sorted(
    {c for s in SNAP.services for c in ring_choices(s)}, key=lambda c: (c.rotation, c.pick)
)


def make_engine(snapshot: ZoneSnapshot = SNAP, memo: int = 1024) -> FastEngine:
    view = ZoneView(snapshot)
    loc = Locator(snapshot.client_networks)
    engine = FastEngine(loc, view.origin, max_udp=1232, rng=random.Random(1))
    engine.load(compile_zone(view, memo_size=memo), loc)
    return engine


ENGINE = make_engine()


def fast(wire: bytes, src: str = "10.1.0.1", tcp: bool = False) -> bytes | None:
    return ENGINE.handle(wire, src, tcp)


def slow(wire: bytes, src: str = "10.1.0.1", tcp: bool = False) -> bytes | None:
    reply = respond(wire, client=src, ctx=CTX, tcp=tcp, choice=Choice())
    return None if reply is None else reply.wire


def slow_all(wire: bytes, src: str, tcp: bool) -> set[bytes | None]:
    out: set[bytes | None] = set()
    for choice in CHOICES:
        reply = respond(wire, client=src, ctx=CTX, tcp=tcp, choice=choice)
        out.add(None if reply is None else reply.wire)
    return out


PATHS = [pytest.param(fast, id="fast"), pytest.param(slow, id="slow")]


def query(name: str, rdtype: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]


def parse(wire: bytes | None) -> dns.message.Message:
    assert wire is not None
    return dns.message.from_wire(wire)


def texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(msg, section) for rd in rrset)


# -- answers --------------------------------------------------------------------------


@pytest.mark.parametrize("answer", PATHS)
def test_a_and_aaaa_geo_by_resolver_address(answer: Answerer) -> None:
    msg = parse(answer(query("web.default.atoll.test"), "10.2.9.9", False))
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert texts(msg) == ["192.0.2.2"]
    assert msg.answer[0].ttl == 30
    v6 = parse(answer(query("web.default.atoll.test", "AAAA"), "10.1.9.9", False))
    assert texts(v6) == ["2001:db8::1"]
    # unlocated client: failover order of the geo policy (us-east first)
    assert texts(parse(answer(query("web.default.atoll.test"), "192.168.1.1", False))) == [
        "192.0.2.2"
    ]


@pytest.mark.parametrize("answer", PATHS)
def test_srv_with_additional_addresses(answer: Answerer) -> None:
    msg = parse(answer(query("_grpc._tcp.api.default.atoll.test", "SRV"), "10.2.0.1", False))
    assert texts(msg) == ["0 0 9090 api.default.atoll.test."]
    assert msg.answer[0].ttl == 60
    assert texts(msg, "additional") == ["192.0.2.1"]  # failover: eu1 first
    udp = parse(answer(query("_dns._udp.api.default.atoll.test", "SRV"), "10.2.0.1", False))
    assert texts(udp) == ["0 0 53 api.default.atoll.test."]
    # the port name exists, the protocol label does not
    nx = parse(answer(query("_grpc._udp.api.default.atoll.test", "SRV"), "10.2.0.1", False))
    assert nx.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("answer", PATHS)
def test_apex_soa_and_ns_with_glue(answer: Answerer) -> None:
    soa = parse(answer(query("atoll.test", "SOA"), "10.1.0.1", False))
    assert soa.answer[0].to_text().split()[4:7] == [
        "ns1.atoll.test.",
        "hostmaster.atoll.test.",
        str(SNAP.serial),
    ]
    ns = parse(answer(query("atoll.test", "NS"), "10.1.0.1", False))
    assert texts(ns) == ["ns1.atoll.test."]
    assert texts(ns, "additional") == ["192.0.2.53"]
    glue = parse(answer(query("ns1.atoll.test", "A"), "10.1.0.1", False))
    assert texts(glue) == ["192.0.2.53"]


@pytest.mark.parametrize("answer", PATHS)
@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("nope.atoll.test", "A", dns.rcode.NXDOMAIN),
        ("x.web.default.atoll.test", "A", dns.rcode.NXDOMAIN),
        ("a.b.c.d.e.atoll.test", "AAAA", dns.rcode.NXDOMAIN),
        ("default.atoll.test", "A", dns.rcode.NOERROR),  # empty non-terminal
        ("_tcp.api.default.atoll.test", "SRV", dns.rcode.NOERROR),  # empty non-terminal
        ("web.default.atoll.test", "TXT", dns.rcode.NOERROR),  # other type
        ("web.default.atoll.test", "SRV", dns.rcode.NOERROR),
        ("atoll.test", "A", dns.rcode.NOERROR),
        ("x.ns1.atoll.test", "A", dns.rcode.NXDOMAIN),  # below the SOA MNAME
        ("hostmaster.atoll.test", "A", dns.rcode.NXDOMAIN),  # the SOA RNAME
    ],
)
def test_negative_answers_carry_soa(answer: Answerer, name: str, rdtype: str, rcode: int) -> None:
    msg = parse(answer(query(name, rdtype), "10.1.0.1", False))
    assert msg.rcode() == rcode
    assert msg.answer == []
    assert [r.rdtype for r in msg.authority] == [dns.rdatatype.SOA]
    assert msg.authority[0].ttl == 30  # min(SOA TTL, minimum)
    assert msg.flags & dns.flags.AA


@pytest.mark.parametrize("answer", PATHS)
def test_refused_outside_zone_and_for_other_classes_and_transfers(answer: Answerer) -> None:
    for wire in (
        query("example.com"),
        query("atoll.test.example"),
        query("test"),
        query("atoll.test", "SOA", rdclass=dns.rdataclass.CH),
        query("atoll.test", "AXFR"),
    ):
        msg = parse(answer(wire, "10.1.0.1", False))
        assert msg.rcode() == dns.rcode.REFUSED
        assert not msg.flags & dns.flags.AA


@pytest.mark.parametrize("answer", PATHS)
def test_servfail_when_policy_says_so(answer: Answerer) -> None:
    msg = parse(answer(query("down.default.atoll.test"), "10.1.0.1", False))
    assert msg.rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("answer", PATHS)
def test_case_is_preserved(answer: Answerer) -> None:
    wire = query("wEb.DeFault.ATOLL.test")
    msg = parse(answer(wire, "10.2.0.1", False))
    assert msg.question[0].name.to_text() == "wEb.DeFault.ATOLL.test."
    assert msg.answer[0].name.to_text() == "wEb.DeFault.ATOLL.test."
    raw = answer(wire, "10.2.0.1", False)
    assert raw is not None and b"\x03wEb\x07DeFault\x05ATOLL" in raw


@pytest.mark.parametrize("answer", PATHS)
def test_header_bits_and_edns(answer: Answerer) -> None:
    q = dns.message.make_query(
        "pool.default.atoll.test", "A", use_edns=0, payload=4096, want_dnssec=True
    )
    q.flags |= dns.flags.CD
    q.flags &= ~dns.flags.RD
    msg = parse(answer(q.to_wire(), "10.1.0.1", False))
    assert msg.id == q.id
    assert msg.flags & dns.flags.CD and not msg.flags & dns.flags.RD
    assert msg.edns == 0 and msg.payload == 1232
    assert msg.ednsflags & dns.flags.DO
    plain = parse(answer(query("pool.default.atoll.test"), "10.1.0.1", False))
    assert plain.edns == -1 and plain.flags & dns.flags.RD


@pytest.mark.parametrize("answer", PATHS)
def test_truncation_and_tcp(answer: Answerer) -> None:
    name = "big.default.atoll.test"
    tc = parse(answer(query(name), "10.1.0.1", False))
    assert tc.flags & dns.flags.TC and tc.answer == []
    assert tc.question[0].name == dns.name.from_text(name)
    small_edns = parse(answer(query(name, use_edns=0, payload=512), "10.1.0.1", False))
    assert small_edns.flags & dns.flags.TC and small_edns.edns == 0
    fits = parse(answer(query(name, use_edns=0, payload=4096), "10.1.0.1", False))
    assert not fits.flags & dns.flags.TC and len(texts(fits)) == 60
    full = parse(answer(query(name), "10.1.0.1", True))
    assert not full.flags & dns.flags.TC and len(texts(full)) == 60


@pytest.mark.parametrize("answer", PATHS)
def test_ecs_scope(answer: Answerer) -> None:
    ecs = dns.edns.ECSOption("10.3.7.0", 24)
    geo = parse(
        answer(query("web.default.atoll.test", use_edns=0, options=[ecs]), "10.1.0.1", False)
    )
    assert texts(geo) == ["192.0.2.3"]  # ECS wins over the resolver's address
    (opt,) = geo.options
    assert isinstance(opt, dns.edns.ECSOption)
    assert (opt.address, opt.srclen, opt.scopelen) == ("10.3.7.0", 24, 16)
    static = parse(
        answer(query("api.default.atoll.test", use_edns=0, options=[ecs]), "10.1.0.1", False)
    )
    assert static.options[0].scopelen == 0
    nx = parse(answer(query("nx.atoll.test", use_edns=0, options=[ecs]), "10.1.0.1", False))
    assert nx.options[0].scopelen == 0
    v6 = dns.edns.ECSOption("2001:db8:77::", 48)
    six = parse(
        answer(query("web.default.atoll.test", use_edns=0, options=[v6]), "10.1.0.1", False)
    )
    assert six.options[0].srclen == 48
    # SOURCE PREFIX-LENGTH 0: the resolver's own address decides, scope 0
    zero = dns.edns.ECSOption("0.0.0.0", 0)
    opt_out = parse(
        answer(query("web.default.atoll.test", use_edns=0, options=[zero]), "10.1.0.1", False)
    )
    assert texts(opt_out) == ["192.0.2.1"]
    assert opt_out.options[0].scopelen == 0


def raw_query(
    *,
    flags: int = 0x0100,
    qd: int = 1,
    an: int = 0,
    ns: int = 0,
    ar: int = 0,
    question: bytes = b"\x03web\x07default\x05atoll\x04test\x00\x00\x01\x00\x01",
    tail: bytes = b"",
) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, an, ns, ar) + question + tail


@pytest.mark.parametrize("answer", PATHS)
@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x12\x34",
        raw_query()[:11],
        raw_query(flags=0x8100),  # a response
        raw_query(qd=0, question=b""),
        raw_query(question=b"\xc0\x0c\x00\x01\x00\x01"),  # pointer in the question
        raw_query(question=b"\x03web\x07default"),  # name runs off the end
        raw_query(question=b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"),  # label > 63
    ],
)
def test_garbage_gets_silence(answer: Answerer, wire: bytes) -> None:
    assert answer(wire, "10.1.0.1", False) is None


@pytest.mark.parametrize("answer", PATHS)
@pytest.mark.parametrize(
    "wire",
    [
        raw_query(qd=2),
        raw_query(tail=b"junk"),
        raw_query(an=1),
        raw_query(ar=1),  # promised OPT missing
        raw_query(ar=2, tail=b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2),  # two OPTs
        # ECS with an unknown family, then with non-zero bits past the source prefix
        raw_query(
            ar=1,
            tail=b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0a\x00\x08\x00\x06\x00\x07\x18\x00\x0a\x01",
        ),
        raw_query(
            ar=1,
            tail=b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0b\x00\x08\x00\x07\x00\x01\x14\x00\x0a\x01\x0f",
        ),
        raw_query(question=b"\x03web\x07default\x05atoll\x04test\x00\x00\x29\x00\x01"),  # qtype OPT
    ],
)
def test_malformed_queries_with_a_question_get_formerr(answer: Answerer, wire: bytes) -> None:
    msg = parse(answer(wire, "10.1.0.1", False))
    assert msg.rcode() == dns.rcode.FORMERR
    assert msg.id == 0x1234
    assert msg.edns == -1
    assert len(msg.question) == 1


@pytest.mark.parametrize("answer", PATHS)
def test_other_opcodes_get_notimp(answer: Answerer) -> None:
    wire = raw_query(flags=dns.opcode.to_flags(dns.opcode.UPDATE))
    msg = parse(answer(wire, "10.1.0.1", False))
    assert msg.rcode() == dns.rcode.NOTIMP
    assert msg.opcode() == dns.opcode.UPDATE


@pytest.mark.parametrize("answer", PATHS)
def test_edns_version_above_zero_gets_badvers(answer: Answerer) -> None:
    q = dns.message.make_query("web.default.atoll.test", "A", use_edns=1)
    msg = parse(answer(q.to_wire(), "10.1.0.1", False))
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0
    assert msg.answer == []


def test_no_zone_yet_servfail_inside_refused_outside() -> None:
    engine = FastEngine(Locator([]), dns.name.from_text("atoll.test."), max_udp=1232)
    assert (
        parse(engine.handle(query("web.default.atoll.test"), "10.1.0.1", False)).rcode()
        == dns.rcode.SERVFAIL
    )
    assert (
        parse(engine.handle(query("example.com"), "10.1.0.1", False)).rcode() == dns.rcode.REFUSED
    )


def test_fast_path_rotates_and_honours_weights() -> None:
    engine = make_engine()
    wire = query("pool.default.atoll.test")
    firsts = [texts_first(engine.handle(wire, "10.1.0.1", False)) for _ in range(6)]
    assert firsts == ["192.0.2.3", "192.0.2.1", "192.0.2.2"] * 2  # by cluster name ap1, eu1, us1
    canary = query("canary.default.atoll.test")
    picks = [texts_first(engine.handle(canary, "10.1.0.1", False)) for _ in range(400)]
    assert picks.count("192.0.2.1") == 300 and picks.count("192.0.2.2") == 100


def texts_first(wire: bytes | None) -> str:
    return str(parse(wire).answer[0][0].to_text())


def test_metrics_counts_by_rcode_qtype_strategy() -> None:
    engine = make_engine()
    engine.handle(query("web.default.atoll.test"), "10.1.0.1", False)
    engine.handle(query("web.default.atoll.test"), "10.1.0.1", False)  # memo hit
    engine.handle(query("nope.atoll.test", "AAAA"), "10.1.0.1", False)
    engine.handle(raw_query(qd=2), "10.1.0.1", False)
    counts = engine.totals()
    assert counts[(0, 1, "geo")] == 2
    assert counts[(3, 28, "none")] == 1
    assert counts[(1, 1, "none")] == 1


# -- slow/fast agreement and fuzzing ---------------------------------------------------

ZONE_NAMES = [n.to_text() for n in VIEW.nodes] + [
    "nope.atoll.test.",
    "x.web.default.atoll.test.",
    "example.com.",
    "atoll.test.example.",
    "a.ns1.atoll.test.",
    "foo.hostmaster.atoll.test.",
    ".",
]
QTYPES = ["A", "AAAA", "SRV", "SOA", "NS", "TXT", "MX", "ANY", "HTTPS", "CAA", "NULL", "AXFR"]
SOURCES = ["10.1.0.1", "10.2.3.4", "10.3.3.3", "192.168.0.1", "::1", "2001:db8::5"]


def _mixed_case(rnd: random.Random, name: str) -> str:
    return "".join(c.upper() if rnd.random() < 0.5 else c for c in name)


@st.composite
def valid_queries(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    rnd = random.Random(draw(st.integers(0, 2**32)))
    name = _mixed_case(rnd, draw(st.sampled_from(ZONE_NAMES)))
    if draw(st.booleans()):
        name = draw(st.from_regex(r"[a-zA-Z0-9-]{1,12}", fullmatch=True)) + "." + name.lstrip(".")
    qtype = draw(st.sampled_from(QTYPES))
    kw: dict[str, object] = {}
    if draw(st.booleans()):
        kw["use_edns"] = 0
        kw["payload"] = draw(st.sampled_from([0, 100, 512, 600, 1232, 4096, 65535]))
        kw["want_dnssec"] = draw(st.booleans())
        options: list[dns.edns.Option] = []
        if draw(st.booleans()):
            if draw(st.booleans()):
                addr = f"10.{draw(st.integers(0, 4))}.{draw(st.integers(0, 255))}.0"
                options.append(dns.edns.ECSOption(addr, draw(st.integers(0, 32))))
            else:
                options.append(dns.edns.ECSOption("2001:db8::", draw(st.integers(0, 128))))
        if draw(st.booleans()):
            options.append(
                dns.edns.GenericOption(
                    dns.edns.OptionType.make(65001), b"x" * draw(st.integers(0, 8))
                )
            )
        if draw(st.booleans()):
            options.append(dns.edns.CookieOption(b"c" * 8, b""))
        kw["options"] = options
    msg = dns.message.make_query(name, qtype, **kw)  # type: ignore[arg-type]
    msg.flags = draw(st.sampled_from([0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD]))
    return msg.to_wire(), draw(st.sampled_from(SOURCES)), draw(st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_queries())
def test_fast_and_slow_paths_agree_on_valid_queries(case: tuple[bytes, str, bool]) -> None:
    wire, src, tcp = case
    expected = slow_all(wire, src, tcp)
    for _ in range(2):  # second round is served from the memo
        assert fast(wire, src, tcp) in expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(SOURCES), st.booleans())
def test_random_bytes_never_raise(data: bytes, src: str, tcp: bool) -> None:
    out = fast(data, src, tcp)
    assert out in slow_all(data, src, tcp)
    if out is not None:
        assert out[:2] == data[:2]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    valid_queries(),
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 600), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_queries_never_raise_and_paths_agree(
    case: tuple[bytes, str, bool], edits: list[tuple[int, int, int]]
) -> None:
    wire, src, tcp = case
    data = bytearray(wire)
    for op, pos, value in edits:
        pos = pos % (len(data) + 1)
        if op == 0 and pos < len(data):
            data[pos] = value
        elif op == 1:
            data.insert(pos, value)
        elif data:
            del data[pos % len(data)]
    mutated = bytes(data)
    assert fast(mutated, src, tcp) in slow_all(mutated, src, tcp)


def test_ordinary_queries_stay_on_the_fast_path() -> None:
    engine = make_engine(memo=0)
    wires = [
        query("web.default.atoll.test"),
        query("WEB.default.atoll.test", "AAAA", use_edns=0, want_dnssec=True),
        query("web.default.atoll.test", use_edns=0, options=[dns.edns.ECSOption("10.2.0.0", 24)]),
        query(
            "pool.default.atoll.test", use_edns=0, options=[dns.edns.CookieOption(b"c" * 8, b"")]
        ),
        query("_grpc._tcp.api.default.atoll.test", "SRV"),
        query("nope.atoll.test", "TXT"),
        query("example.org"),
        query("default.atoll.test", "MX"),
        query("big.default.atoll.test"),
    ]
    for wire in wires:
        assert engine.handle(wire, "10.1.0.1", False) == slow(wire)
    assert engine.slow_calls == 0
    assert engine.handle(raw_query(qd=2), "10.1.0.1", False) is not None
    assert engine.slow_calls == 1
