"""Pure derivation of imports, export conditions and cluster health."""

from __future__ import annotations

from atoll.control.actions import Delete, Put, plan_actions
from atoll.control.derive import derive
from atoll.model import (
    AdminState,
    Cluster,
    ClusterSpec,
    Endpoint,
    Metadata,
    ServiceExport,
    ServiceExportSpec,
    ServicePort,
)


def cluster(name: str, region: str = "r1", admin: AdminState = "active") -> Cluster:
    return Cluster(
        metadata=Metadata(name=name, revision=1),
        spec=ClusterSpec(region=region, admin_state=admin),
    )


def export(
    cl: str,
    name: str = "web",
    *,
    port: int = 80,
    created: int = 1,
    healthy: tuple[bool, ...] = (True, True),
) -> ServiceExport:
    return ServiceExport(
        metadata=Metadata(name=name, namespace="demo", revision=created, created_revision=created),
        spec=ServiceExportSpec(
            cluster=cl,
            ports=[ServicePort(port=port)],
            endpoints=[
                Endpoint(address=f"10.0.0.{i + 1}", healthy=h) for i, h in enumerate(healthy)
            ],
        ),
    )


CLUSTERS = {
    c.metadata.name: c for c in [cluster("a", "eu"), cluster("b", "us"), cluster("c", "ap")]
}


def test_union_of_exports_with_health() -> None:
    d = derive([export("a"), export("b", healthy=(False,))], CLUSTERS, {"a", "b", "c"})
    imp = d.imports[("demo", "web")]
    assert [(t.cluster, t.region, t.healthy, t.addresses) for t in imp.spec.targets] == [
        ("a", "eu", True, ["10.0.0.1", "10.0.0.2"]),
        ("b", "us", False, []),
    ]
    assert d.cluster_status["b"].health == "degraded"
    assert d.cluster_status["a"].health == "healthy" and d.cluster_status["a"].exports == 1
    assert d.cluster_status["c"].exports == 0


def test_dead_cluster_is_withdrawn_but_export_kept_with_reason() -> None:
    a, b = export("a"), export("b")
    d = derive([a, b], CLUSTERS, {"b"})
    assert [t.cluster for t in d.imports[("demo", "web")].spec.targets] == ["b"]
    ready = d.export_conditions[a.key()][0]
    assert (ready.status, ready.reason) == ("False", "ClusterUnavailable")
    assert d.cluster_status["a"].health == "unreachable" and not d.cluster_status["a"].alive


def test_no_live_export_means_no_import() -> None:
    assert derive([export("a")], CLUSTERS, set()).imports == {}


def test_drained_cluster_stays_listed_but_unhealthy() -> None:
    clusters = dict(CLUSTERS, a=cluster("a", "eu", admin="drained"))
    t = derive([export("a")], clusters, {"a"}).imports[("demo", "web")].spec.targets[0]
    assert t.admin_state == "drained" and not t.healthy


def test_port_conflict_oldest_wins() -> None:
    old, new = export("b", port=80, created=5), export("a", port=8080, created=9)
    d = derive([new, old], CLUSTERS, {"a", "b"})
    imp = d.imports[("demo", "web")]
    assert [p.port for p in imp.spec.ports] == [80]
    assert [t.cluster for t in imp.spec.targets] == ["b"]
    assert [c.cluster for c in imp.status.conflicts] == ["a"]
    conflict = next(c for c in d.export_conditions[new.key()] if c.type == "Conflict")
    assert conflict.status == "True" and "oldest" in conflict.message
    ok = next(c for c in d.export_conditions[old.key()] if c.type == "Conflict")
    assert ok.status == "False"


def test_equal_age_tie_broken_by_cluster_name() -> None:
    d = derive([export("b", port=81), export("a", port=80)], CLUSTERS, {"a", "b"})
    assert [p.port for p in d.imports[("demo", "web")].spec.ports] == [80]


def test_plan_is_empty_when_store_matches() -> None:
    exports = [export("a")]
    d = derive(exports, CLUSTERS, {"a", "b", "c"})
    stored_imports = {k: v.with_revision(3, 3) for k, v in d.imports.items()}
    stored_exports = [
        e.model_copy(
            update={
                "status": e.status.model_copy(
                    update={"conditions": list(d.export_conditions[e.key()])}
                )
            }
        )
        for e in exports
    ]
    stored_clusters = {
        n: c.model_copy(update={"status": d.cluster_status[n]}) for n, c in CLUSTERS.items()
    }
    assert (
        plan_actions(d, imports=stored_imports, exports=stored_exports, clusters=stored_clusters)
        == []
    )


def test_plan_creates_updates_and_deletes_with_cas() -> None:
    d1 = derive([export("a", "web"), export("a", "api")], CLUSTERS, {"a"})
    stored = {k: v.with_revision(7, 7) for k, v in d1.imports.items()}
    d2 = derive([export("a", "web", healthy=(False,)), export("a", "db")], CLUSTERS, {"a"})
    actions = plan_actions(d2, imports=stored, exports=[], clusters={})
    kinds = sorted(
        (type(a).__name__, a.resource.metadata.name if isinstance(a, Put) else a.key, a.expect)
        for a in actions
    )
    assert kinds == [
        ("Delete", "/atoll/v1/imports/demo/api", 7),
        ("Put", "db", 0),
        ("Put", "web", 7),
    ]
    assert all(isinstance(a, (Put, Delete)) for a in actions)


def test_probe_quorum_makes_a_target_unhealthy_with_the_reason() -> None:
    from atoll.control.quorum import ProbeVerdict

    failed = {"a": ProbeVerdict(target="a", voters=2, down_votes=2, failed=True)}
    d = derive([export("a"), export("b")], CLUSTERS, {"a", "b", "c"}, failed)
    ta, tb = d.imports[("demo", "web")].spec.targets
    assert (ta.healthy, tb.healthy) == (False, True)
    assert "unreachable from 2 of 2 vantage points" in ta.reason
    assert d.cluster_status["a"].health == "unreachable"
    no_quorum = {"a": ProbeVerdict(target="a", voters=2, down_votes=1, failed=False)}
    ta = derive([export("a")], CLUSTERS, {"a"}, no_quorum).imports[("demo", "web")].spec.targets[0]
    assert ta.healthy and ta.reason == ""


def test_unhealthy_reasons() -> None:
    clusters = dict(CLUSTERS, a=cluster("a", "eu", admin="drained"))
    d = derive([export("a"), export("b", healthy=(False,))], clusters, {"a", "b"})
    ta, tb = d.imports[("demo", "web")].spec.targets
    assert ta.reason == "cluster drained by the operator"
    assert tb.reason == "no healthy endpoints"


def test_cordoned_cluster_keeps_what_it_serves_and_joins_nothing_new() -> None:
    clusters = dict(CLUSTERS, a=cluster("a", "eu", admin="cordoned"))
    web, api = export("a", "web"), export("a", "api")
    d = derive(
        [web, api, export("b", "api")], clusters, {"a", "b"}, previous={("demo", "web"): {"a"}}
    )
    assert [t.cluster for t in d.imports[("demo", "web")].spec.targets] == ["a"]
    assert [t.cluster for t in d.imports[("demo", "api")].spec.targets] == ["b"]
    ready = d.export_conditions[api.key()][0]
    assert (ready.status, ready.reason) == ("False", "Cordoned")
