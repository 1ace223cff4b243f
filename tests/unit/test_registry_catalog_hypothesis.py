"""Random sequences of catalog operations keep the catalog's invariants (hypothesis).

Invariants after every step: an operation either raises a typed user error,
returns the very same snapshot (no change), or returns one whose index is
exactly one more; services and instances stay sorted and unique; object
indexes never exceed the catalog's; every constructed snapshot is valid under
the schema; and the state file round-trips the final snapshot.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.errors import UserError
from atoll_agent.registry.catalog import (
    DeleteInstance,
    DeleteService,
    ExpireTtls,
    GraceTtls,
    Operation,
    PutInstance,
    PutService,
    SetHealth,
    apply,
    empty_catalog,
)
from atoll_agent.registry.model import CatalogSnapshot, InstanceSpec, Limits, ServiceSpec
from atoll_agent.registry.persistence import load_state, save_state

namespaces = st.sampled_from(["a", "a", "b"])
names = st.sampled_from(["x", "y"])
ids = st.sampled_from(["i1", "i2"])
expects = st.sampled_from([None, None, None, None, 0, 1, 2, 3])
healths = st.sampled_from(["passing", "warning", "critical"])

service_specs = st.builds(
    lambda port, export, labels: ServiceSpec.model_validate(
        {"ports": [{"port": port}], "export": export, "labels": labels}
    ),
    st.integers(1, 3),
    st.booleans(),
    st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["", "v"]), max_size=2),
)
instance_specs = st.builds(
    lambda addr, port, health, ttl: InstanceSpec.model_validate(
        {"address": addr, "port": port, "health": health, "ttl_seconds": ttl}
    ),
    st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]),
    st.one_of(st.none(), st.just(9090)),
    healths,
    st.one_of(st.none(), st.integers(1, 20)),
)


@functools.cache
def operations_on(namespace: str, name: str) -> st.SearchStrategy[Operation]:
    """Any operation on service ``namespace/name``; puts weigh more so catalogs grow."""
    put_service = st.builds(PutService, st.just(namespace), st.just(name), service_specs, expects)
    put_instance = st.builds(
        PutInstance, st.just(namespace), st.just(name), ids, instance_specs, expects
    )
    return st.one_of(
        put_service,
        put_instance,
        put_instance,
        put_instance,
        st.builds(DeleteService, st.just(namespace), st.just(name), expects),
        st.builds(DeleteInstance, st.just(namespace), st.just(name), ids, expects),
        st.builds(SetHealth, st.just(namespace), st.just(name), ids, healths),
        st.builds(SetHealth, st.just(namespace), st.just(name), ids, healths),
        st.just(ExpireTtls()),
        st.just(GraceTtls()),
    )


def run_random_operations(
    data: st.DataObject, check: Callable[[CatalogSnapshot, Operation, CatalogSnapshot], None]
) -> CatalogSnapshot:
    """Apply 10-60 random operations, mostly on services that exist; check each result."""
    snap = empty_catalog("epoch")
    now = 1_000.0
    for _ in range(data.draw(st.integers(10, 60), label="length")):
        keys = [s.key for s in snap.services]
        pick_existing = keys and data.draw(st.integers(0, 2), label="existing") > 0
        key = (
            keys[data.draw(st.integers(0, len(keys) - 1))] if pick_existing else data.draw(ANY_KEY)
        )
        op = data.draw(operations_on(*key))
        now += data.draw(st.floats(0, 15), label="dt")
        try:
            after = apply(snap, op, now=now, limits=LIMITS)
        except UserError:
            continue  # rejected: the old snapshot stays, untouched by construction
        check(snap, op, after)
        snap = after
    return snap


ANY_KEY = st.tuples(namespaces, names)
LIMITS = Limits(max_services=5, max_instances_per_service=2, max_instances_total=8)


def check_invariants(snap: CatalogSnapshot) -> None:
    keys = [s.key for s in snap.services]
    assert keys == sorted(set(keys))
    assert len(snap.services) <= LIMITS.max_services
    assert snap.instance_count <= LIMITS.max_instances_total
    for svc in snap.services:
        assert svc.create_index <= svc.modify_index <= snap.index
        inst_ids = [i.id for i in svc.instances]
        assert inst_ids == sorted(set(inst_ids))
        assert len(inst_ids) <= LIMITS.max_instances_per_service
        for inst in svc.instances:
            assert inst.create_index <= inst.modify_index <= snap.index


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_operations_keep_invariants(data: st.DataObject) -> None:
    def check(before: CatalogSnapshot, op: Operation, after: CatalogSnapshot) -> None:
        if after is not before:
            assert after.index == before.index + 1
            assert after != before
        if isinstance(op, DeleteService):
            assert after.service(op.namespace, op.name) is None
        check_invariants(after)

    snap = run_random_operations(data, check)
    # snapshots are built with model_construct: the schema must still accept them
    assert CatalogSnapshot.model_validate_json(snap.model_dump_json()) == snap


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_state_file_round_trips(data: st.DataObject) -> None:
    snap = run_random_operations(data, lambda before, op, after: None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.json"
        save_state(path, snap)
        assert load_state(path, now=0.0) == snap
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["state.json"]
