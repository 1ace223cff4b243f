"""Table tests of the pure strategy decision (issue 4 item 2)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from atoll_dns.config import RegionDistance
from atoll_dns.geo import DistanceTable
from atoll_dns.snapshot import PolicyRecord, RegionRecord, ServiceRecord, TargetRecord
from atoll_dns.strategy import Choice, decide, ring_choices

REGIONS = (
    RegionRecord(name="eu-west", latitude=53.3, longitude=-6.3),  # Dublin
    RegionRecord(name="eu-central", latitude=50.1, longitude=8.7),  # Frankfurt
    RegionRecord(name="us-east", latitude=38.9, longitude=-77.0),  # Washington
    RegionRecord(name="ap-south", latitude=19.1, longitude=72.9),  # Mumbai
)
DIST = DistanceTable(REGIONS)


def t(cluster: str, region: str, healthy: bool = True, *addrs: str) -> TargetRecord:
    return TargetRecord(
        cluster=cluster,
        region=region,
        healthy=healthy,
        ipv4=tuple(addrs) or ("192.0.2.1",),
        reason="" if healthy else "reported unhealthy",
    )


def svc(
    strategy: str,
    targets: list[TargetRecord],
    *,
    priorities: tuple[tuple[str, ...], ...] = (),
    weights: tuple[tuple[str, int], ...] = (),
    on_all_unhealthy: str = "last_healthy",
    last_healthy: tuple[TargetRecord, ...] = (),
    ttl: int = 30,
) -> ServiceRecord:
    return ServiceRecord(
        namespace="default",
        name="web",
        policy=PolicyRecord(
            strategy=strategy,
            priorities=priorities,
            weights=weights,
            ttl=ttl,
            on_all_unhealthy=on_all_unhealthy,
            source="policy",
        ),
        targets=tuple(targets),
        last_healthy=last_healthy,
    )


def names(
    service: ServiceRecord, region: str | None = None, choice: Choice = Choice()
) -> list[str]:
    return [
        x.cluster for x in decide(service, region=region, distances=DIST, choice=choice).targets
    ]


FAILOVER_CASES = [
    # (targets, priorities, expected clusters)
    ([t("a", "eu-west"), t("b", "us-east")], (("a",), ("b",)), ["a"]),
    ([t("a", "eu-west", False), t("b", "us-east")], (("a",), ("b",)), ["b"]),
    # a group names two clusters: both healthy ones answer, in the group's order
    ([t("a", "eu-west"), t("b", "us-east"), t("c", "ap-south")], (("b", "a"), ("c",)), ["b", "a"]),
    # region names in groups
    ([t("a", "eu-west"), t("b", "us-east")], (("us-east",), ("eu-west",)), ["b"]),
    # a cluster name wins over its region's name within the same ranking
    ([t("a", "eu-west", False), t("b", "eu-west")], (("eu-west",),), ["b"]),
    # listed groups all down: unlisted healthy target (implicit last group)
    ([t("a", "eu-west", False), t("z", "ap-south")], (("a",),), ["z"]),
]


@pytest.mark.parametrize(("targets", "priorities", "expected"), FAILOVER_CASES)
def test_failover(
    targets: list[TargetRecord], priorities: tuple[tuple[str, ...], ...], expected: list[str]
) -> None:
    assert names(svc("failover", targets, priorities=priorities)) == expected


def test_failover_trace_explains_skipped_groups() -> None:
    s = svc("failover", [t("a", "eu-west", False), t("b", "us-east")], priorities=(("a",), ("b",)))
    d = decide(s, region=None, distances=DIST)
    text = "\n".join(d.trace)
    assert "target a(eu-west) excluded: reported unhealthy" in text
    assert "priority group 1 ['a']: no healthy target" in text
    assert "priority group 2 ['b']: b(us-east)" in text
    assert d.outcome == "answer" and d.ttl == 30


def test_round_robin_rotates_all_healthy_targets() -> None:
    s = svc("round_robin", [t("c", "ap-south"), t("a", "eu-west"), t("b", "us-east", False)])
    assert names(s, choice=Choice(rotation=0)) == ["a", "c"]
    assert names(s, choice=Choice(rotation=1)) == ["c", "a"]
    assert names(s, choice=Choice(rotation=2)) == ["a", "c"]
    d = decide(s, region=None, distances=DIST)
    assert d.uses_choice and not d.uses_region
    assert [c.rotation for c in ring_choices(s)] == [0, 1]


@pytest.mark.parametrize(
    ("weights", "targets", "pick", "expected"),
    [
        ((("a", 3), ("b", 1)), [t("a", "eu-west"), t("b", "us-east")], 0.0, "a"),
        ((("a", 3), ("b", 1)), [t("a", "eu-west"), t("b", "us-east")], 0.74, "a"),
        ((("a", 3), ("b", 1)), [t("a", "eu-west"), t("b", "us-east")], 0.76, "b"),
        ((("a", 3), ("b", 1)), [t("a", "eu-west"), t("b", "us-east")], 0.9999, "b"),
        # unhealthy weighted target: its weight is out of the draw
        ((("a", 3), ("b", 1)), [t("a", "eu-west", False), t("b", "us-east")], 0.1, "b"),
        # zero weight is never drawn while a weighted target is healthy
        ((("a", 0), ("b", 1)), [t("a", "eu-west"), t("b", "us-east")], 0.0, "b"),
        # only zero-weight targets healthy: uniform among them
        ((("b", 1),), [t("a", "eu-west"), t("b", "us-east", False)], 0.3, "a"),
        # b's own weight wins over its region's; the region's weight goes to a alone
        ((("eu-west", 1), ("b", 1)), [t("a", "eu-west"), t("b", "eu-west")], 0.2, "a"),
        ((("eu-west", 1), ("b", 1)), [t("a", "eu-west"), t("b", "eu-west")], 0.7, "b"),
    ],
)
def test_weighted_pick(
    weights: tuple[tuple[str, int], ...], targets: list[TargetRecord], pick: float, expected: str
) -> None:
    s = svc("weighted", targets, weights=weights)
    assert names(s, choice=Choice(pick=pick)) == [expected]


def test_weighted_region_weight_is_split_among_its_clusters() -> None:
    s = svc(
        "weighted",
        [t("a1", "eu-west"), t("a2", "eu-west"), t("b", "us-east")],
        weights=(("eu-west", 2), ("us-east", 2)),
    )
    counts = Counter(names(s, choice=c)[0] for c in ring_choices(s))
    assert counts == {"a1": 1, "a2": 1, "b": 2}


def test_weighted_ring_honours_weights_exactly_and_interleaves() -> None:
    s = svc("weighted", [t("a", "eu-west"), t("b", "us-east")], weights=(("a", 3), ("b", 1)))
    ring = ring_choices(s)
    picks = [names(s, choice=c)[0] for c in ring]
    assert Counter(picks) == {"a": 3, "b": 1}
    s2 = svc("weighted", [t("a", "eu-west"), t("b", "us-east")], weights=(("a", 1), ("b", 1)))
    assert [names(s2, choice=c)[0] for c in ring_choices(s2)] in (["a", "b"], ["b", "a"])


def test_weighted_random_draws_converge_to_weights() -> None:
    s = svc("weighted", [t("a", "eu-west"), t("b", "us-east")], weights=(("a", 9), ("b", 1)))
    rng = random.Random(7)
    counts = Counter(names(s, choice=Choice(pick=rng.random()))[0] for _ in range(5000))
    assert 0.87 < counts["a"] / 5000 < 0.93


def test_geo_picks_own_region_then_nearest() -> None:
    targets = [t("eu", "eu-west"), t("us", "us-east"), t("ap", "ap-south")]
    s = svc("geo", targets)
    assert names(s, "eu-west") == ["eu"]
    assert names(s, "us-east") == ["us"]
    # Frankfurt has no cluster: Dublin is nearer than Washington or Mumbai
    assert names(s, "eu-central") == ["eu"]
    d = decide(s, region="eu-central", distances=DIST)
    assert d.uses_region
    assert "nearest healthy region eu-west" in d.trace[-1]


def test_geo_skips_unhealthy_region() -> None:
    s = svc("geo", [t("eu", "eu-west", False), t("de", "eu-central"), t("us", "us-east")])
    assert names(s, "eu-west") == ["de"]


def test_geo_tie_broken_by_failover_rank_then_name() -> None:
    table = DistanceTable(
        REGIONS,
        [
            RegionDistance(a="eu-west", b="us-east", distance=100),
            RegionDistance(a="eu-west", b="ap-south", distance=100),
        ],
    )
    targets = [t("us", "us-east"), t("ap", "ap-south")]
    by_name = svc("geo", targets)
    assert [x.cluster for x in decide(by_name, region="eu-west", distances=table).targets] == ["ap"]
    ranked = svc("geo", targets, priorities=(("us-east",), ("ap-south",)))
    d = decide(ranked, region="eu-west", distances=table)
    assert [x.cluster for x in d.targets] == ["us"]
    assert "tie with ap-south" in d.trace[-1]


@pytest.mark.parametrize("region", [None, "mars-1"])
def test_geo_unknown_region_falls_back_to_failover_order(region: str | None) -> None:
    targets = [t("eu", "eu-west"), t("us", "us-east")]
    ordered = svc("geo", targets, priorities=(("us-east",), ("eu-west",)))
    assert names(ordered, region) == ["us"]
    unordered = svc("geo", targets)
    assert names(unordered, region) == ["eu", "us"]
    assert "failover order" in decide(ordered, region=region, distances=DIST).trace[1]


def test_geo_multiple_clusters_in_nearest_region() -> None:
    s = svc("geo", [t("eu2", "eu-west"), t("eu1", "eu-west"), t("us", "us-east")])
    assert names(s, "eu-west") == ["eu1", "eu2"]


def test_all_unhealthy_default_serves_last_healthy_set_with_short_ttl() -> None:
    last = (t("eu", "eu-west"),)
    s = svc("failover", [t("eu", "eu-west", False)], priorities=(("eu",),), last_healthy=last)
    d = decide(s, region=None, distances=DIST, unhealthy_ttl=5)
    assert d.outcome == "last_healthy"
    assert [x.cluster for x in d.targets] == ["eu"]
    assert d.ttl == 5
    assert any("last healthy set" in line for line in d.trace)


def test_all_unhealthy_ttl_never_exceeds_policy_ttl() -> None:
    last = (t("eu", "eu-west"),)
    s = svc("round_robin", [t("eu", "eu-west", False)], last_healthy=last, ttl=3)
    assert decide(s, region=None, distances=DIST, unhealthy_ttl=5).ttl == 3


def test_all_unhealthy_without_history_is_empty() -> None:
    s = svc("round_robin", [t("eu", "eu-west", False)])
    d = decide(s, region=None, distances=DIST)
    assert d.outcome == "empty" and d.targets == ()


@pytest.mark.parametrize(("mode", "outcome"), [("servfail", "servfail"), ("empty", "empty")])
def test_all_unhealthy_explicit_modes(mode: str, outcome: str) -> None:
    s = svc(
        "geo",
        [t("eu", "eu-west", False)],
        on_all_unhealthy=mode,
        last_healthy=(t("eu", "eu-west"),),
    )
    d = decide(s, region="eu-west", distances=DIST)
    assert d.outcome == outcome
    assert d.targets == ()


def test_geo_over_last_healthy_set_still_prefers_nearest() -> None:
    last = (t("eu", "eu-west"), t("us", "us-east"))
    s = svc("geo", [t("eu", "eu-west", False), t("us", "us-east", False)], last_healthy=last)
    d = decide(s, region="us-east", distances=DIST)
    assert [x.cluster for x in d.targets] == ["us"]
    assert d.outcome == "last_healthy"


def test_no_targets_at_all() -> None:
    for strategy in ("failover", "round_robin", "weighted", "geo"):
        s = svc(strategy, [], priorities=(("a",),), weights=(("a", 1),))
        d = decide(s, region="eu-west", distances=DIST)
        assert d.outcome == "empty", strategy
