"""Route tables and load balancing: pure decisions, fake time.

The egress side must pick the clusters a DNS answer would name: the tests
compute both from the same resources and compare.
"""

from __future__ import annotations

import pytest

from atoll.model import (
    Cluster,
    ClusterSpec,
    Endpoint,
    ImportTarget,
    Metadata,
    Region,
    RegionSpec,
    ServiceExport,
    ServiceExportSpec,
    ServiceImport,
    ServiceImportSpec,
    ServicePort,
    TrafficPolicy,
    TrafficPolicySpec,
)
from atoll_dns.config import DnsConfig
from atoll_dns.geo import DistanceTable
from atoll_dns.snapshot import build_zone
from atoll_dns.strategy import decide, ring_choices
from atoll_gateway.balancer import Balancer
from atoll_gateway.balancer import Endpoint as Ep
from atoll_gateway.config import GatewayConfig, OutlierConfig, RouteConfig
from atoll_gateway.errors import RouteError
from atoll_gateway.naming import ServiceName
from atoll_gateway.routes import build_routes

PORT = ServicePort(name="http", port=8080)


def cluster(name: str, region: str, gateway: bool = True) -> Cluster:
    addresses = {"gateway": f"10.0.{len(name)}.1:15443"} if gateway else {}
    return Cluster(
        metadata=Metadata(name=name), spec=ClusterSpec(region=region, addresses=addresses)
    )


def target(name: str, region: str, healthy: bool = True) -> ImportTarget:
    return ImportTarget(
        cluster=name, region=region, addresses=["10.1.1.1"], endpoints_healthy=1,
        endpoints_total=1, healthy=healthy, reason="" if healthy else "down",
    )  # fmt: skip


IMPORT = ServiceImport(
    metadata=Metadata(name="web", namespace="demo"),
    spec=ServiceImportSpec(
        ports=[PORT],
        targets=[target("a", "eu"), target("bb", "us"), target("ccc", "ap", healthy=False)],
    ),
)
CLUSTERS = [cluster("a", "eu"), cluster("bb", "us"), cluster("ccc", "ap")]
REGIONS = [
    Region(metadata=Metadata(name="eu"), spec=RegionSpec(latitude=53.0, longitude=-6.0)),
    Region(metadata=Metadata(name="us"), spec=RegionSpec(latitude=39.0, longitude=-77.0)),
    Region(metadata=Metadata(name="ap"), spec=RegionSpec(latitude=19.0, longitude=72.0)),
]
EXPORT = ServiceExport(
    metadata=Metadata(name="web", namespace="demo"),
    spec=ServiceExportSpec(
        cluster="a",
        ports=[PORT],
        endpoints=[
            Endpoint(address="127.0.0.11"),
            Endpoint(address="127.0.0.12", healthy=False),
        ],
    ),
)
CONFIG = GatewayConfig(
    cluster="a", egress_host="127.0.0.2", services={"demo/web": RouteConfig(mode="terminate")}
)


def policy(**spec: object) -> TrafficPolicy:
    return TrafficPolicy(
        metadata=Metadata(name="web", namespace="demo"),
        spec=TrafficPolicySpec.model_validate(spec),
    )


@pytest.mark.parametrize(
    "pol",
    [
        None,
        policy(strategy="failover", priorities=[["ccc"], ["bb"], ["a"]]),
        policy(strategy="weighted", weights={"a": 1, "bb": 3}),
        policy(strategy="geo", priorities=[["a"]]),
    ],
)
def test_egress_picks_what_dns_answers(pol: TrafficPolicy | None) -> None:
    policies = [pol] if pol else []
    table = build_routes(
        CONFIG, exports=[EXPORT], imports=[IMPORT], policies=policies, regions=REGIONS,
        clusters=CLUSTERS,
    )  # fmt: skip
    (route,) = table.egress
    zone = build_zone(DnsConfig(zone="atoll.test"), [IMPORT], policies, REGIONS)
    svc = zone.service("demo", "web")
    assert svc is not None
    dist = DistanceTable(zone.regions, zone.distances)
    dns = [
        [t.cluster for t in decide(svc, region="eu", distances=dist, choice=c).targets]
        for c in ring_choices(svc)
    ]
    assert [[t.cluster for t in d] for d in route.decisions] == dns
    assert "ccc" not in {t.cluster for d in route.decisions for t in d}


def test_local_target_uses_endpoints_and_remote_uses_the_gateway() -> None:
    table = build_routes(CONFIG, exports=[EXPORT], imports=[IMPORT], clusters=CLUSTERS)
    (route,) = table.egress
    assert route.listen == Ep("127.0.0.2", 8080)
    by_cluster = {t.cluster: t.gateway for d in route.decisions for t in d}
    assert by_cluster["a"] is None
    assert by_cluster["bb"] == Ep("10.0.2.1", 15443)


def test_target_without_gateway_address_is_noted_not_routed() -> None:
    clusters = [cluster("a", "eu"), cluster("bb", "us", gateway=False)]
    table = build_routes(CONFIG, exports=[], imports=[IMPORT], clusters=clusters)
    (route,) = table.egress
    assert "bb: no gateway address" in route.notes
    assert all(t.cluster != "bb" for d in route.decisions for t in d)


def test_inbound_routes_healthy_local_endpoints_by_name() -> None:
    table = build_routes(CONFIG, exports=[EXPORT])
    svc, port = table.inbound_route(ServiceName("demo", "web"))
    assert port.port == 8080 and svc.route.mode == "terminate"
    assert svc.endpoints[8080] == (Ep("127.0.0.11", 8080),)
    assert svc.allow.trust_domains == ("*.atoll.lab",)
    for name, reason in [
        (ServiceName("demo", "nope"), "unknown_service"),
        (ServiceName("demo", "web", cluster="bb"), "wrong_cluster"),
        (ServiceName("demo", "web", port=9999), "unknown_port"),
    ]:
        with pytest.raises(RouteError) as err:
            table.inbound_route(name)
        assert err.value.reason == reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


EPS = [Ep("10.0.0.1", 80), Ep("10.0.0.2", 80), Ep("10.0.0.3", 80), Ep("10.0.0.4", 80)]


def test_round_robin_over_endpoints() -> None:
    b = Balancer(OutlierConfig(), clock=FakeClock())
    firsts = [b.order("svc", EPS)[0] for _ in range(8)]
    assert firsts == EPS + EPS


def test_consecutive_failures_eject_for_a_growing_time_then_return() -> None:
    clock = FakeClock()
    b = Balancer(OutlierConfig(consecutive_failures=2, base_ejection_seconds=5), clock=clock)
    bad = EPS[0]
    assert b.failure(bad) is False
    assert b.failure(bad) is True
    assert bad not in b.available(EPS)
    clock.now += 5.1
    assert bad in b.available(EPS)
    b.failure(bad)
    assert b.failure(bad) is True  # second ejection: twice as long
    clock.now += 5.1
    assert bad not in b.available(EPS)
    clock.now += 5.0
    assert bad in b.available(EPS)
    b.success(bad)
    assert b.failure(bad) is False  # a success reset the count


def test_ejection_is_capped_by_max_percent_and_panics_when_all_are_out() -> None:
    clock = FakeClock()
    b = Balancer(OutlierConfig(consecutive_failures=1, max_ejection_percent=50), clock=clock)
    for i, ep in enumerate(EPS[:3]):
        clock.now += 1
        b.failure(ep)
        assert b.is_ejected(ep), i
    ok = b.available(EPS)
    assert len(ok) == 2 and EPS[3] in ok and EPS[0] in ok  # the oldest ejection is released
    one = [EPS[0]]
    b100 = Balancer(OutlierConfig(consecutive_failures=1, max_ejection_percent=100), clock=clock)
    b100.failure(EPS[0])
    assert b100.available(one) == one  # panic: never an empty set
