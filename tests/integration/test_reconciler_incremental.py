"""The incremental reconciler ends where a full recomputation ends, on a real store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.control.liveness import liveness_key
from atoll.control.reconciler import Reconciler
from atoll.control.repo import Repo
from atoll.model import (
    Cluster,
    ClusterSpec,
    Endpoint,
    Metadata,
    ServiceExport,
    ServiceExportSpec,
    ServiceImport,
    ServicePort,
    decode,
    encode,
    store_prefix,
)
from atoll.store.base import Store
from atoll.store.sqlite import SqliteStore
from atoll.store.watching import Changes, Snapshot

CLUSTERS = ["a", "b", "c"]
SERVICES = ["web", "api", "db"]


def export(cluster: str, svc: str, port: int, healthy: bool) -> ServiceExport:
    return ServiceExport(
        metadata=Metadata(name=svc, namespace="demo"),
        spec=ServiceExportSpec(
            cluster=cluster,
            ports=[ServicePort(port=port)],
            endpoints=[Endpoint(address="10.0.0.1", healthy=healthy)],
        ),
    )


op = st.one_of(
    st.tuples(
        st.just("export"),
        st.sampled_from(CLUSTERS),
        st.sampled_from(SERVICES),
        st.sampled_from([80, 81]),
        st.booleans(),
    ),
    st.tuples(st.just("unexport"), st.sampled_from(CLUSTERS), st.sampled_from(SERVICES)),
    st.tuples(st.just("alive"), st.sampled_from(CLUSTERS), st.booleans()),
    st.tuples(st.just("admin"), st.sampled_from(CLUSTERS), st.sampled_from(["active", "drained"])),
)


async def apply(store: Store, o: tuple[object, ...]) -> None:
    kind = o[0]
    if kind == "export":
        _, c, svc, port, healthy = o
        assert isinstance(port, int)
        e = export(str(c), str(svc), port, bool(healthy))
        await store.put(e.key(), encode(e))
    elif kind == "unexport":
        _, c, svc = o
        await store.delete(f"{store_prefix(ServiceExport)}{c}/demo/{svc}")
    elif kind == "alive":
        _, c, up = o
        if up:
            await store.put(liveness_key(str(c)), b"{}")
        else:
            await store.delete(liveness_key(str(c)))
    else:
        _, c, state = o
        cl = Cluster(
            metadata=Metadata(name=str(c)),
            spec=ClusterSpec(region="r", admin_state=state),
        )
        await store.put(cl.key(), encode(cl))


async def imports_of(store: Store) -> dict[str, bytes]:
    listing = await store.list(store_prefix(ServiceImport))
    return {e.key: encode(decode(ServiceImport, e.value)) for e in listing.entries}


@contextlib.asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(path, synchronous="OFF")
    try:
        yield store
    finally:
        await store.close()


async def catch_up(store: Store, rec: Reconciler, after: int) -> int:
    """Feed the reconciler every change since ``after``, as its watch would."""
    now = await store.revision()
    if now > after:
        from atoll.store.watching import watch_closing

        async with watch_closing(store, "/atoll/v1/", start_revision=after + 1) as batches:
            async for batch in batches:
                rec._fold(Changes(events=batch.events, revision=batch.revision))
                if batch.revision >= now:
                    break
    return now


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(op, min_size=1, max_size=4), min_size=1, max_size=6))
async def test_incremental_passes_equal_a_full_pass(
    tmp_path: Path, rounds: list[list[tuple[object, ...]]]
) -> None:
    await check_rounds(tmp_path, rounds)


async def test_a_drain_alone_recomputes_the_clusters_groups(tmp_path: Path) -> None:
    await check_rounds(
        tmp_path,
        [
            [("export", "a", "web", 80, True), ("export", "b", "web", 80, True)],
            [("admin", "a", "drained")],
            [("alive", "b", False)],
            [("admin", "a", "active"), ("alive", "b", True)],
        ],
    )


async def check_rounds(tmp_path: Path, rounds: list[list[tuple[object, ...]]]) -> None:
    """Apply ``rounds`` of changes with an incremental pass after each; then a fresh
    reconciler's full pass over the same store must find nothing to change."""
    import uuid

    async with open_store(tmp_path / f"{uuid.uuid4().hex}.db") as store:
        for c in CLUSTERS:
            await apply(store, ("admin", c, "active"))
            await apply(store, ("alive", c, True))
        rec = Reconciler(Repo(store))
        listing = await store.list("/atoll/v1/")
        rec._fold(Snapshot(entries=listing.entries, revision=listing.revision))
        await rec.reconcile_once()
        seen = await store.revision()
        for n, ops in enumerate(rounds):
            for o in ops:
                await apply(store, o)
            seen = await catch_up(store, rec, seen)
            await rec.reconcile_once()
            seen = await catch_up(store, rec, seen)  # its own writes echo back
            incremental = await imports_of(store)
            fresh = Reconciler(Repo(store))
            listing = await store.list("/atoll/v1/")
            fresh._fold(Snapshot(entries=listing.entries, revision=listing.revision))
            await fresh.reconcile_once()
            assert await imports_of(store) == incremental, f"stale after round {n}: {ops}"
            seen = await catch_up(store, rec, seen)
