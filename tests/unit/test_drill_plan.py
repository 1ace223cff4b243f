"""Pure drill planning, predictions and the janitor's decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from atoll.control.bounds import Timings, compute_bounds
from atoll.control.janitor import plan_janitor
from atoll.drill.plan import disrupt, plan_failover, predict, what_if
from atoll.model import (
    Drill,
    DrillSpec,
    DrillStatus,
    ImportTarget,
    Metadata,
    Region,
    RegionSpec,
    ServiceImport,
    ServiceImportSpec,
    ServicePort,
    TrafficPolicy,
    TrafficPolicySpec,
)

REGIONS = [
    Region(metadata=Metadata(name="eu"), spec=RegionSpec(latitude=53.3, longitude=-6.3)),
    Region(metadata=Metadata(name="us"), spec=RegionSpec(latitude=39.0, longitude=-77.5)),
    Region(metadata=Metadata(name="ap"), spec=RegionSpec(latitude=19.1, longitude=72.9)),
]
CLUSTER_REGION = {"a": "eu", "b": "us", "c": "ap"}


def target(c: str, eps: int = 2, healthy: bool = True) -> ImportTarget:
    n = "abc".index(c) + 1
    return ImportTarget(
        cluster=c,
        region=CLUSTER_REGION[c],
        addresses=[f"10.0.{n}.{i}" for i in range(1, eps + 1)] if healthy else [],
        endpoints_healthy=eps if healthy else 0,
        endpoints_total=eps,
        healthy=healthy,
    )


def imp(name: str, *targets: ImportTarget) -> ServiceImport:
    return ServiceImport(
        metadata=Metadata(name=name, namespace="demo"),
        spec=ServiceImportSpec(ports=[ServicePort(port=80)], targets=list(targets)),
    )


def geo(name: str) -> TrafficPolicy:
    return TrafficPolicy(
        metadata=Metadata(name=name, namespace="demo"),
        spec=TrafficPolicySpec(strategy="geo", priorities=[["a"], ["b"], ["c"]]),
    )


def test_plan_lists_moves_and_capacity_warnings() -> None:
    rows = plan_failover(
        [imp("web", target("a", 4), target("b", 1)), imp("db", target("c"))], {"a"}
    )
    assert [r.service for r in rows] == ["demo/web"], "db does not involve a"
    r = rows[0]
    assert (r.leaving, r.remaining) == (["a"], ["b"])
    assert (r.healthy_endpoints_leaving, r.healthy_endpoints_remaining) == (4, 1)
    assert any("capacity" in w for w in r.warnings)


def test_disrupt_drain_keeps_targets_fail_withdraws_them() -> None:
    web = imp("web", target("a"), target("b"))
    drained = disrupt([web], {"a"}, "drain")[0].spec.targets
    assert [(t.cluster, t.healthy, t.admin_state) for t in drained] == [
        ("a", False, "drained"),
        ("b", True, "active"),
    ]
    failed = disrupt([web], {"a"}, "fail")[0].spec.targets
    assert [t.cluster for t in failed] == ["b"]
    assert disrupt([imp("solo", target("a"))], {"a"}, "fail") == []


def test_geo_prediction_moves_eu_clients_to_the_nearest_remaining_region() -> None:
    imports = [imp("web", target("a"), target("b"), target("c"))]
    before = {p.client_region: p.clusters for p in predict(imports, [geo("web")], REGIONS)}
    assert before["eu"] == ("a",) and before["us"] == ("b",) and before["ap"] == ("c",)
    rows = what_if(imports, [geo("web")], REGIONS, down={"a"})
    after = {r.client_region: r.after.clusters for r in rows if r.after}
    assert after["eu"] == ("b",), "Dublin's nearest remaining region is us-east, not Mumbai"
    assert after["us"] == ("b",) and after["ap"] == ("c",)
    # clients of no known region follow the failover order, which also started with a
    assert [r.client_region for r in rows if r.changed] == ["eu", None]


def test_everything_down_is_withdrawn_in_what_if() -> None:
    rows = what_if([imp("web", target("a"))], [], REGIONS, down={"a"})
    assert rows and all(r.after is None and r.changed for r in rows)


def test_bounds_follow_the_timings() -> None:
    b = compute_bounds(
        Timings(lease_ttl=5, heartbeat_interval=1, expiry_sweep=0.25, reconcile_debounce=0.05)
    )
    assert b.death_withdrawal == 5.8 and b.drain_withdrawal == 0.55
    try:
        compute_bounds(
            Timings(lease_ttl=2, heartbeat_interval=1.5, expiry_sweep=0.25, reconcile_debounce=0.05)
        )
    except ValueError as exc:
        assert "heartbeat" in str(exc)
    else:
        raise AssertionError("a heartbeat slower than ttl/2 must be refused")


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def drill(
    name: str, *, phase: str, beat_age: float | None, attempt: int = 1, kind: str = "failover"
) -> Drill:
    return Drill(
        metadata=Metadata(name=name),
        spec=DrillSpec.model_validate({"clusters": ["a"], "kind": kind}),
        status=DrillStatus.model_validate(
            {
                "phase": phase,
                "attempt": attempt,
                "worker": None if phase == "pending" else "w1",
                "heartbeat_at": None if beat_age is None else NOW - timedelta(seconds=beat_age),
                "restore_states": {"a": "active"} if phase == "running" else {},
            }
        ),
    )


def test_janitor_decisions() -> None:
    drills = [
        drill("fresh", phase="running", beat_age=3),
        drill("stale", phase="running", beat_age=30),
        drill("tired", phase="running", beat_age=30, attempt=3),
        drill("chaos", phase="running", beat_age=30, attempt=3, kind="chaos"),
        drill("waiting", phase="pending", beat_age=120),
        drill("done", phase="succeeded", beat_age=999),
    ]
    acts = {
        a.drill: a.action
        for a in plan_janitor(
            drills, now=NOW, stale_after=10, pending_timeout=60, max_attempts=3, can_enqueue=True
        )
    }
    assert acts == {"stale": "requeue", "tired": "rollback", "chaos": "fail", "waiting": "fail"}
    no_broker = plan_janitor(
        drills[1:2], now=NOW, stale_after=10, pending_timeout=60, max_attempts=3, can_enqueue=False
    )
    assert [a.action for a in no_broker] == ["rollback"]
    requeued = drill("orphan", phase="pending", beat_age=120).model_copy(
        update={
            "status": DrillStatus.model_validate(
                {"phase": "pending", "heartbeat_at": NOW - timedelta(seconds=120),
                 "restore_states": {"a": "active"}, "attempt": 1}
            )
        }
    )  # fmt: skip
    again = plan_janitor(
        [requeued], now=NOW, stale_after=10, pending_timeout=60, max_attempts=3, can_enqueue=True
    )
    assert [a.action for a in again] == ["rollback"], "never left drained silently"
