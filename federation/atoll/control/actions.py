"""Plan writes from desired vs observed derived state, and execute them.

:func:`plan_actions` is pure: it compares what :func:`~atoll.control.derive.derive`
wants with what the store holds and returns only real differences, each a
compare-and-swap on the revision it was observed at. :func:`execute` applies
them; a lost CAS is not retried — the change that beat us arrives through the
watch and the reconciler plans again from the new observation (STYLE: a lost
race re-runs the reconcile, never blindly retries the write).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from atoll.control.derive import Derived
from atoll.control.repo import Repo
from atoll.errors import ConflictError
from atoll.model import Cluster, Resource, ServiceExport, ServiceImport, encode

__all__ = ["Delete", "ExecResult", "OnWritten", "Put", "execute", "plan_actions"]

log = logging.getLogger("atoll.control.actions")


@dataclass(frozen=True, slots=True)
class Put:
    resource: Resource
    #: CAS revision: 0 = create, N = the revision observed
    expect: int


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    expect: int


Action = Put | Delete


@dataclass(frozen=True, slots=True)
class ExecResult:
    applied: int
    conflicts: int


def _same(a: Resource, b: Resource) -> bool:
    return encode(a) == encode(b)


def plan_actions(
    derived: Derived,
    *,
    imports: Mapping[tuple[str, str], ServiceImport],
    exports: Iterable[ServiceExport],
    clusters: Mapping[str, Cluster],
) -> list[Action]:
    actions: list[Action] = []
    for key, want in sorted(derived.imports.items()):
        have = imports.get(key)
        if have is None:
            actions.append(Put(want, expect=0))
        elif not _same(want, have):
            actions.append(Put(want, expect=have.metadata.revision))
    for key, have in sorted(imports.items()):
        if key not in derived.imports:
            actions.append(Delete(have.key(), expect=have.metadata.revision))
    for exp in exports:
        conds = derived.export_conditions.get(exp.key())
        if conds is not None and tuple(exp.status.conditions) != conds:
            new = exp.model_copy(
                update={"status": exp.status.model_copy(update={"conditions": list(conds)})}
            )
            actions.append(Put(new, expect=exp.metadata.revision))
    for name, cluster in sorted(clusters.items()):
        status = derived.cluster_status.get(name)
        if status is not None and status != cluster.status:
            actions.append(
                Put(cluster.model_copy(update={"status": status}), expect=cluster.metadata.revision)
            )
    return actions


#: writes in flight at once. Every action is a CAS on its own key, so they are
#: independent; issuing them together lets the store group-commit them (one
#: fsync for the lot in SQLite, pipelined RPCs on etcd). One at a time, the
#: first pass over 20,000 exports took about a minute of fsyncs (measured by
#: tests/bench/bench_sync.py) and delayed every other change behind it.
EXECUTE_CONCURRENCY = 64


#: told (store key, revision) of each write as soon as it is applied
OnWritten = Callable[[str, int], None]


async def _apply(repo: Repo, action: Action, on_written: OnWritten | None) -> bool:
    """Apply one action; False when it lost its CAS race."""
    revision: int | None
    try:
        if isinstance(action, Put):
            stored = await repo.put(action.resource, expect=action.expect)
            key, revision = stored.key(), stored.metadata.revision
        else:
            key, revision = action.key, await repo.store.delete(action.key, expect=action.expect)
    except ConflictError as exc:
        log.debug("lost a CAS race; will re-plan", extra={"key": exc.key})
        return False
    if on_written is not None and revision is not None:
        on_written(key, revision)
    return True


async def execute(
    repo: Repo,
    actions: Sequence[Action],
    *,
    concurrency: int = EXECUTE_CONCURRENCY,
    on_written: OnWritten | None = None,
) -> ExecResult:
    """Apply ``actions`` in waves of ``concurrency``, in plan order between waves.

    A wave always runs to its end; then the first error other than a lost CAS
    (if any) is raised, so no write is left running behind the caller.
    """
    applied = conflicts = 0
    for start in range(0, len(actions), concurrency):
        wave = actions[start : start + concurrency]
        outcomes = await asyncio.gather(
            *(_apply(repo, a, on_written) for a in wave), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        applied += sum(1 for o in outcomes if o is True)
        conflicts += sum(1 for o in outcomes if o is False)
    return ExecResult(applied=applied, conflicts=conflicts)
