"""DNS answering the cluster's gateway egress for other clusters (``egress_address``).

With it, a client never learns another cluster's endpoint addresses: targets in
other clusters answer with this cluster's egress address (the egress then
picks the remote cluster with the same strategy), the server's own cluster
answers its endpoints directly, and health and strategy are the targets' own.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from pydantic import ValidationError

from atoll_dns.explain import explain
from atoll_dns.snapshot import ZoneSnapshot, build_zone
from atoll_dns.testing import make_import, make_policy, make_region, sample_config

EGRESS = "127.0.1.2"
CLUSTERS = [
    ("eu1", "eu-west", ["192.0.2.1", "2001:db8::1"], True),
    ("us1", "us-east", ["192.0.2.2"], True),
    ("ap1", "ap-south", ["192.0.2.3"], False),
]
REGIONS = [make_region("eu-west", 53.3, -6.3), make_region("us-east", 38.9, -77.0)]


def zone(**config: object) -> ZoneSnapshot:
    cfg = sample_config(**config)
    imports = [make_import("default", "web", CLUSTERS), make_import("default", "pool", CLUSTERS)]
    policies = [
        make_policy("default", "web", strategy="failover", priorities=[["us1"], ["eu1"]]),
        make_policy("default", "pool", strategy="failover", priorities=[["eu1", "us1", "ap1"]]),
    ]
    return build_zone(cfg, imports, policies, REGIONS)


def test_other_clusters_answer_the_egress_and_the_own_cluster_its_endpoints() -> None:
    snap = zone(cluster="eu1", egress_address=EGRESS)
    web = snap.service("default", "web")
    assert web is not None
    by = {t.cluster: t for t in web.targets}
    assert by["eu1"].via == "direct"
    assert by["eu1"].ipv4 == (IPv4Address("192.0.2.1"),)
    assert by["eu1"].ipv6 == (IPv6Address("2001:db8::1"),)
    for remote in ("us1", "ap1"):
        assert by[remote].via == "egress"
        assert by[remote].ipv4 == (IPv4Address(EGRESS),) and by[remote].ipv6 == ()
    # health stays the target's own: an unhealthy remote is not resurrected by the egress
    assert by["us1"].healthy and not by["ap1"].healthy


def test_a_remote_first_policy_answers_the_egress_and_says_so() -> None:
    snap = zone(cluster="eu1", egress_address=EGRESS)
    ex = explain(snap, "web.default.atoll.test.", "A")
    assert ex.answer == (f"web.default.atoll.test. 30 IN A {EGRESS}",)
    assert any("us1(us-east) via egress" in line for line in ex.trace())
    # no AAAA through an IPv4 egress: the client is never handed remote endpoints
    assert explain(snap, "web.default.atoll.test.", "AAAA").answer == ()


def test_several_remote_clusters_are_one_egress_record_beside_local_endpoints() -> None:
    def answer(cluster: str) -> list[str]:
        snap = zone(cluster=cluster, egress_address=EGRESS)
        ex = explain(snap, "pool.default.atoll.test.", "A")
        lines = [line for rrset in ex.answer for line in rrset.splitlines()]
        return sorted(line.rsplit(" ", 1)[1] for line in lines)

    # one priority group of all three: every healthy target is answered (ap1 is down)
    assert answer("us1") == sorted([EGRESS, "192.0.2.2"])  # eu1 via egress, us1 direct
    assert answer("ap1") == [EGRESS]  # eu1 and us1 both via egress: one record


def test_without_an_egress_address_answers_are_endpoints_as_before() -> None:
    snap = zone()
    web = snap.service("default", "web")
    assert web is not None and all(t.via == "direct" for t in web.targets)
    assert explain(snap, "web.default.atoll.test.", "A").answer == (
        "web.default.atoll.test. 30 IN A 192.0.2.2",
    )


def test_an_egress_address_needs_the_servers_cluster() -> None:
    with pytest.raises(ValidationError, match="egress_address needs cluster"):
        sample_config(egress_address=EGRESS)
    with pytest.raises(ValidationError):
        sample_config(cluster="eu1", egress_address="not-an-address")
