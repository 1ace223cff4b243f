"""The janitor: no drill is ever left half-done because its worker died.

Workers heartbeat the drill they run (``status.heartbeat_at``). The leader's
janitor looks at every unfinished drill periodically and decides, purely
(:func:`plan_janitor`):

* a running drill whose heartbeat is older than ``stale_after`` — its worker
  is presumed dead. If a broker is configured and the drill has attempts
  left, it is released (``worker`` cleared) and enqueued again: the next
  worker resumes from the recorded steps. Otherwise it is **rolled back**:
  every cluster's admin state is restored from ``status.restore_states``
  (saved before anything was drained) and the drill ends ``rolled_back``.
  A chaos drill cannot be rolled back from here (its processes were killed);
  it ends ``failed`` with instructions.
* a pending drill nobody claimed within ``pending_timeout`` fails with a hint
  to start a worker — and if it had already drained clusters before it was
  requeued, it is rolled back instead, so no cluster stays drained silently.

A worker that was only slow, not dead, notices at its next status write
(the CAS sees another owner) and stops without rolling anything back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from atoll.control.repo import Repo, mutate
from atoll.errors import AtollError, ConflictError
from atoll.model import Cluster, Drill

__all__ = ["Janitor", "JanitorAction", "plan_janitor"]

log = logging.getLogger("atoll.control.janitor")


@dataclass(frozen=True, slots=True)
class JanitorAction:
    drill: str
    action: Literal["requeue", "rollback", "fail"]
    reason: str


def plan_janitor(
    drills: Sequence[Drill],
    *,
    now: datetime,
    stale_after: float,
    pending_timeout: float,
    max_attempts: int,
    can_enqueue: bool,
) -> list[JanitorAction]:
    out: list[JanitorAction] = []
    for d in drills:
        st = d.status
        if d.finished:
            continue
        name = d.metadata.name
        if st.phase == "pending":
            seen = st.heartbeat_at
            if seen is None:
                continue  # creation time is not recorded here; the API stamps heartbeat_at
            if (now - seen).total_seconds() > pending_timeout and st.worker is None:
                why = (
                    f"no worker picked the drill up within {pending_timeout:.0f}s; "
                    "is `atoll worker` running against the same broker?"
                )
                # a requeued drill may have drained clusters already: undo that
                action: Literal["rollback", "fail"] = (
                    "rollback" if st.restore_states and d.spec.kind != "chaos" else "fail"
                )
                out.append(JanitorAction(name, action, why))
            continue
        beat = st.heartbeat_at
        if beat is not None and (now - beat).total_seconds() <= stale_after:
            continue
        lost = f"worker {st.worker or '?'} stopped heartbeating"
        if can_enqueue and st.attempt < max_attempts:
            out.append(JanitorAction(name, "requeue", f"{lost}; resuming on another worker"))
        elif d.spec.kind == "chaos":
            out.append(
                JanitorAction(
                    name,
                    "fail",
                    f"{lost} during a chaos drill; restart the cluster's processes "
                    "(atoll up restarts them through its control API)",
                )
            )
        else:
            out.append(JanitorAction(name, "rollback", f"{lost}; rolled back by the control plane"))
    return out


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Janitor:
    def __init__(
        self,
        repo: Repo,
        *,
        enqueue: Callable[[str], None] | None,
        interval: float = 2.0,
        stale_after: float = 10.0,
        pending_timeout: float = 60.0,
        max_attempts: int = 3,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.repo = repo
        self.enqueue = enqueue
        self.interval = interval
        self.stale_after = stale_after
        self.pending_timeout = pending_timeout
        self.max_attempts = max_attempts
        self.now = now

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except AtollError as exc:
                log.warning("janitor pass failed", extra={"error": str(exc)})
            await asyncio.sleep(self.interval)

    async def once(self) -> list[JanitorAction]:
        drills, _ = await self.repo.list(Drill)
        actions = plan_janitor(
            drills,
            now=self.now(),
            stale_after=self.stale_after,
            pending_timeout=self.pending_timeout,
            max_attempts=self.max_attempts,
            can_enqueue=self.enqueue is not None,
        )
        by_name = {d.metadata.name: d for d in drills}
        for act in actions:
            try:
                await self._apply(by_name[act.drill], act)
            except ConflictError:
                continue  # the worker came back and wrote first: look again next pass
            log.warning(
                "janitor acted on a drill",
                extra={"drill": act.drill, "action": act.action, "reason": act.reason},
            )
        return actions

    async def _apply(self, drill: Drill, act: JanitorAction) -> None:
        st = drill.status
        if act.action == "requeue":
            new = st.model_copy(update={"worker": None, "heartbeat_at": self.now()})
            await self.repo.replace(drill.model_copy(update={"status": new}))
            assert self.enqueue is not None
            self.enqueue(drill.metadata.name)
            return
        if act.action == "rollback":
            for cluster, state in sorted(st.restore_states.items()):

                def restore(c: Cluster | None, state: str = state) -> Cluster | None:
                    if c is None or c.spec.admin_state == state:
                        return None
                    return c.model_copy(
                        update={"spec": c.spec.model_copy(update={"admin_state": state})}
                    )

                await mutate(self.repo, Cluster, (cluster,), restore)
            phase = "rolled_back" if st.restore_states else "failed"
        else:
            phase = "failed"
        new = st.model_copy(update={"phase": phase, "error": act.reason, "summary": act.reason})
        await self.repo.replace(drill.model_copy(update={"status": new}))
