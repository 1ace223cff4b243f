"""Config, build_zone, geo location and snapshot persistence."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address
from pathlib import Path

import maxminddb
import pytest
from pydantic import ValidationError

from atoll_dns.config import DnsConfig, RegionDistance, RegionNetwork
from atoll_dns.explain import explain
from atoll_dns.geo import DistanceTable, Locator, PrefixTrie, great_circle_km
from atoll_dns.persist import STATE_FILE, load_snapshot, save_snapshot
from atoll_dns.snapshot import RegionRecord, build_zone, snapshot_digest
from atoll_dns.testing import (
    make_import,
    make_policy,
    make_region,
    sample_config,
    sample_snapshot,
    write_mmdb,
)

# -- config -------------------------------------------------------------------------


def test_config_defaults_and_names() -> None:
    cfg = DnsConfig(zone="Atoll.Test", listen_host="127.0.30.1")
    assert cfg.zone == "atoll.test."
    ns = cfg.nameserver_list()
    assert [n.name for n in ns] == ["ns1.atoll.test."]
    assert ns[0].addresses == [IPv4Address("127.0.30.1")]
    assert cfg.soa_mname() == "ns1.atoll.test."
    assert cfg.soa_rname() == "hostmaster.atoll.test."
    assert DnsConfig(listen_host="0.0.0.0").nameserver_list()[0].addresses == []


@pytest.mark.parametrize(
    "bad",
    [
        {"zone": "bad..name"},
        {"maxmind_regions": {"eu": "eu-west"}},
        {"nameservers": [{"name": "ns1"}, {"name": "ns1.atoll.test."}]},
        {"edns_udp_payload": 100},
        {"client_networks": [{"network": "10.0.0.1/8", "region": "eu"}]},
        {"workers": 0},
        {"unknown": 1},
    ],
)
def test_config_rejects_bad_input(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DnsConfig.model_validate(bad)


# -- build_zone ---------------------------------------------------------------------


def test_build_zone_health_verdicts_and_records() -> None:
    imp = make_import(
        "shop",
        "cart",
        [
            ("c1", "eu-west", ["192.0.2.1", "2001:db8::1", "not-an-ip"], True),
            ("c2", "us-east", [], False),
            ("c3", "us-east", ["192.0.2.3"], True),
        ],
        ports=[("http", 80, "TCP"), ("dns", 53, "UDP")],
    )
    drained = imp.spec.targets[2].model_copy(update={"admin_state": "drained"})
    imp = imp.model_copy(
        update={"spec": imp.spec.model_copy(update={"targets": [*imp.spec.targets[:2], drained]})}
    )
    snap = build_zone(sample_config(), [imp], [], [])
    svc = snap.service("shop", "cart")
    assert svc is not None
    by = {t.cluster: t for t in svc.targets}
    assert by["c1"].healthy and by["c1"].ipv4 == (IPv4Address("192.0.2.1"),)
    assert len(by["c1"].ipv6) == 1
    assert not by["c2"].healthy and by["c2"].reason == "reported unhealthy"
    assert not by["c3"].healthy and by["c3"].reason == "cluster drained"
    assert svc.policy.strategy == "round_robin" and svc.policy.source == "default"
    assert [(p.name, p.protocol, p.port) for p in svc.ports] == [
        ("dns", "udp", 53),
        ("http", "tcp", 80),
    ]
    assert any("not-an-ip" in w for w in snap.warnings)


def test_min_healthy_endpoints_from_policy() -> None:
    imp = make_import("default", "web", [("c1", "eu-west", ["192.0.2.1"], True)])
    pol = make_policy("default", "web", strategy="round_robin", min_healthy_endpoints=2)
    svc = build_zone(sample_config(), [imp], [pol], []).services[0]
    assert not svc.targets[0].healthy
    assert svc.targets[0].reason == "1 healthy endpoints < 2"


def test_last_healthy_set_is_carried_forward() -> None:
    cfg = sample_config()
    up = make_import("default", "web", [("c1", "eu-west", ["192.0.2.1"], True)])
    down = make_import("default", "web", [("c1", "eu-west", [], False)])
    s1 = build_zone(cfg, [up], [], [])
    assert s1.services[0].last_healthy == ()
    s2 = build_zone(cfg, [down], [], [], previous=s1)
    assert [t.cluster for t in s2.services[0].last_healthy] == ["c1"]
    assert s2.services[0].last_healthy[0].ipv4 == (IPv4Address("192.0.2.1"),)
    s3 = build_zone(cfg, [down], [], [], previous=s2)
    assert s3.services[0].last_healthy == s2.services[0].last_healthy
    # fresh start with nothing healthy and no addresses: nothing to fall back to
    assert build_zone(cfg, [down], [], []).services[0].last_healthy == ()


def test_serial_and_digest() -> None:
    cfg = sample_config()
    imp = make_import("default", "web", [("c1", "eu-west", ["192.0.2.1"], True)], revision=40)
    s1 = build_zone(cfg, [imp], [], [])
    assert s1.serial == 40
    assert s1.digest == snapshot_digest(s1)
    same = build_zone(cfg, [imp], [], [], previous=s1)
    assert same.serial == s1.serial and same.digest == s1.digest
    imp2 = make_import("default", "web", [("c1", "eu-west", ["192.0.2.9"], True)], revision=12)
    s2 = build_zone(cfg, [imp2], [], [], previous=s1)
    assert s2.digest != s1.digest and s2.serial == 41
    assert build_zone(cfg, [imp2], [], [], serial=7).serial == 7


def test_region_networks_merge_after_config_networks() -> None:
    cfg = sample_config()
    regions = [make_region("eu-west", 53, -6, "10.1.0.0/16", "172.16.0.0/12")]
    snap = build_zone(cfg, [], [], regions)
    nets = [(str(n.network), n.region) for n in snap.client_networks]
    assert ("172.16.0.0/12", "eu-west") in nets
    assert nets.count(("10.1.0.0/16", "eu-west")) == 1
    assert any("already mapped" in w for w in snap.warnings)


def test_duplicate_service_import_is_reported() -> None:
    imp = make_import("default", "web", [("c1", "eu-west", ["192.0.2.1"], True)])
    snap = build_zone(sample_config(), [imp, imp], [], [])
    assert len(snap.services) == 1
    assert any("duplicate" in w for w in snap.warnings)


# -- geo ------------------------------------------------------------------------------


def test_prefix_trie_longest_match_and_scope() -> None:
    trie = PrefixTrie(32)
    trie.insert(int(IPv4Address("10.0.0.0")), 8, "wide")
    trie.insert(int(IPv4Address("10.1.0.0")), 16, "narrow")
    assert not trie.insert(int(IPv4Address("10.0.0.0")), 8, "again")

    def ip(s: str) -> int:
        return int(IPv4Address(s))

    assert trie.lookup(ip("10.1.2.0"), 24) == ("narrow", 16)
    # inside 10/8 but off the 10.1/16 branch: valid for the /16 block it falls in
    region, scope = trie.lookup(ip("10.200.0.0"), 24)
    assert region == "wide" and 8 < scope <= 16
    # 11/8 differs from 10/8 in bit 8, 12/8 in bit 6: the unmatched block is that long
    assert trie.lookup(ip("11.0.0.0"), 24) == (None, 8)
    assert trie.lookup(ip("12.0.0.0"), 24) == (None, 6)
    assert trie.lookup(ip("10.1.0.0"), 12) == ("wide", 12)  # source shorter than /16


def test_locator_prefers_config_map_then_maxmind(tmp_path: Path) -> None:
    db = write_mmdb(
        tmp_path / "geo.mmdb",
        {
            "81.0.0.0/8": {"country": {"iso_code": "DE"}, "continent": {"code": "EU"}},
            "82.0.0.0/8": {"country": {"iso_code": "FR"}, "continent": {"code": "EU"}},
            "8.8.8.0/24": {"country": {"iso_code": "US"}, "continent": {"code": "NA"}},
        },
    )
    reader = maxminddb.open_database(str(db))
    loc = Locator(
        [RegionNetwork(network="81.1.0.0/16", region="special")],
        database=reader,
        database_regions={"DE": "eu-central", "EU": "eu-west", "NA": "us-east"},
    )
    assert loc.locate_ip("81.1.2.3").region == "special"
    de = loc.locate_ip("81.2.2.3")
    assert (de.region, de.method) == ("eu-central", "maxmind")
    assert loc.locate_ip("82.2.2.3").region == "eu-west"  # continent fallback
    us = loc.locate(1, int(IPv4Address("8.8.8.0")), 24, ecs=True)
    assert (us.region, us.scope, us.source) == ("us-east", 24, "ecs")
    assert loc.locate_ip("9.9.9.9").region is None
    assert loc.locate_ip("2001:db8::1").region is None  # IPv6 in an IPv4 database
    assert loc.locate_ip("::ffff:81.1.0.1").region == "special"  # IPv4-mapped
    reader.close()


def test_distances_great_circle_and_overrides() -> None:
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(20015, rel=0.001)
    table = DistanceTable(
        [
            RegionRecord(name="a", latitude=0, longitude=0),
            RegionRecord(name="b", latitude=0, longitude=1),
        ],
        [RegionDistance(a="a", b="c", distance=5)],
    )
    assert table.distance("a", "b") == pytest.approx(111.2, rel=0.01)
    assert table.distance("c", "a") == 5
    assert table.distance("b", "c") is None
    assert table.knows("c") and not table.knows("d")
    assert table.distance("d", "d") == 0


def test_explain_reports_location_trace_and_records() -> None:
    snap = sample_snapshot()
    ex = explain(snap, "web.default.atoll.test.", "A", client_subnet="10.3.4.0/24")
    assert ex.rcode == "NOERROR"
    assert ex.location.region == "ap-south"
    assert ex.scope == 16
    assert any("192.0.2.3" in line for line in ex.answer)
    assert "nearest healthy region ap-south" in "\n".join(ex.trace())
    nx = explain(snap, "nope.atoll.test.", resolver="10.1.0.1")
    assert nx.rcode == "NXDOMAIN" and nx.decision is None and nx.authority


# -- persistence ----------------------------------------------------------------------


def test_persist_round_trip(tmp_path: Path) -> None:
    snap = sample_snapshot()
    save_snapshot(tmp_path, snap)
    assert load_snapshot(tmp_path, zone="atoll.test.") == snap


def test_persist_missing_file(tmp_path: Path) -> None:
    assert load_snapshot(tmp_path) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "schema", "digest"])
def test_corrupt_snapshot_is_discarded_with_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    snap = sample_snapshot()
    path = save_snapshot(tmp_path, snap)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data.replace(b"192.0.2.1", b"192.0.2.7", 1))
    else:
        from atoll.statefile import save_state

        payload = json.loads(data)["payload"]
        if damage == "schema":
            payload["services"] = "nope"
        else:
            payload["services"][0]["name"] = "tampered"
        save_state(path, "atoll-dns-zone", payload)
    with caplog.at_level(logging.WARNING):
        assert load_snapshot(tmp_path) is None
    assert not path.exists()
    assert list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_snapshot_of_other_zone_is_ignored(tmp_path: Path) -> None:
    save_snapshot(tmp_path, sample_snapshot())
    assert load_snapshot(tmp_path, zone="other.test.") is None
    assert (tmp_path / STATE_FILE).exists()
