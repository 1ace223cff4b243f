"""The server side of one subscription: what to push next, as a pure state machine.

One :class:`Subscription` exists per (stream, resource type). It is fed events
— a new table snapshot, an ACK, a NACK — and answers with the next
:class:`Push` to send, or ``None``. It does no I/O and reads no clock, so its
behaviour is tested by feeding events (``tests/unit/test_sync_pushing.py``).

Rules (Envoy's incremental xDS, with go-control-plane's NACK-loop fix):

* At most one push is in flight; the next is computed when it is answered.
  This is also the flow control: a slow subscriber coalesces many changes into
  one later push instead of queueing every intermediate version.
* ``held`` is what the client holds: its resume versions from Hello, then
  whatever it ACKed. A push carries every visible resource whose version
  differs from ``held`` and every held name that is gone.
* A NACK records the rejected versions; they are never sent again. The
  resource is sent again only when the table has a *newer* version of it.
* An answer whose nonce is not the in-flight nonce is stale and ignored.
* Only names changed since the last snapshot the subscription saw are
  examined (:meth:`TypeSnapshot.changed_since`); a push is capped at
  ``max_resources`` and the remainder waits in a backlog for the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from atoll.sync.table import Item, TypeSnapshot

__all__ = ["NackRecord", "Push", "Subscription"]

#: tombstone version recorded when a removal was NACKed
_REMOVED = ""


@dataclass(frozen=True, slots=True)
class Push:
    type: str
    nonce: str
    system_version: str
    resources: tuple[Item, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NackRecord:
    nonce: str
    system_version: str
    message: str
    resources: tuple[str, ...]


@dataclass(slots=True)
class Subscription:
    type: str
    next_nonce: Callable[[], str]
    #: which names this node may see; None = everything
    visible: Callable[[str], bool] | None = None
    max_resources: int = 500
    held: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    inflight: Push | None = None
    #: seq of the last snapshot examined; -1 = compare everything next time
    seen_seq: int = -1
    backlog: set[str] = field(default_factory=set)
    latest: TypeSnapshot | None = None
    acked_version: str = ""
    last_nack: NackRecord | None = None
    pushes: int = 0
    nacks: int = 0

    @classmethod
    def resume(
        cls,
        type_: str,
        *,
        initial_versions: Mapping[str, str],
        next_nonce: Callable[[], str],
        visible: Callable[[str], bool] | None = None,
        max_resources: int = 500,
    ) -> Subscription:
        """A subscription for a client that says it holds ``initial_versions``."""
        return cls(
            type=type_,
            next_nonce=next_nonce,
            visible=visible,
            max_resources=max_resources,
            held=dict(initial_versions),
        )

    # -- events ------------------------------------------------------------
    def offer(self, snapshot: TypeSnapshot) -> Push | None:
        """A newer snapshot of the table exists."""
        if not snapshot.ready:
            return None  # never tell a client "nothing exists" before the first listing
        self.latest = snapshot
        return None if self.inflight else self._next()

    def ack(self, nonce: str) -> Push | None:
        push = self._answered(nonce)
        if push is None:
            return None
        for it in push.resources:
            self.held[it.name] = it.version
            self.rejected.pop(it.name, None)
        for name in push.removed:
            self.held.pop(name, None)
            self.rejected.pop(name, None)
        self.acked_version = push.system_version
        return self._next()

    def nack(self, nonce: str, message: str) -> Push | None:
        push = self._answered(nonce)
        if push is None:
            return None
        for it in push.resources:
            self.rejected[it.name] = it.version
        for name in push.removed:
            self.rejected[name] = _REMOVED
        self.nacks += 1
        self.last_nack = NackRecord(
            nonce=nonce,
            system_version=push.system_version,
            message=message,
            resources=tuple(it.name for it in push.resources) + push.removed,
        )
        return self._next()

    # -- decisions ---------------------------------------------------------
    def _answered(self, nonce: str) -> Push | None:
        if self.inflight is None or self.inflight.nonce != nonce:
            return None  # stale or unsolicited answer
        push, self.inflight = self.inflight, None
        return push

    def _candidates(self, snap: TypeSnapshot) -> Iterable[str]:
        changed = snap.changed_since(self.seen_seq) if self.seen_seq >= 0 else None
        if changed is None:
            return set(snap.items) | set(self.held) | self.backlog
        return set(changed) | self.backlog

    def _wanted(self, name: str, snap: TypeSnapshot) -> Item | str | None:
        """The item to send for ``name``, ``_REMOVED`` to remove it, or None."""
        item = snap.items.get(name)
        if item is not None and self.visible is not None and not self.visible(name):
            item = None
        if item is not None:
            if self.held.get(name) == item.version or self.rejected.get(name) == item.version:
                return None
            return item
        if name in self.held and self.rejected.get(name) != _REMOVED:
            return _REMOVED
        return None

    def _next(self) -> Push | None:
        snap = self.latest
        if snap is None:
            return None
        send: list[Item] = []
        removed: list[str] = []
        backlog: set[str] = set()
        for name in sorted(self._candidates(snap)):
            want = self._wanted(name, snap)
            if want is None:
                continue
            if len(send) + len(removed) >= self.max_resources:
                backlog.add(name)
            elif isinstance(want, Item):
                send.append(want)
            else:
                removed.append(name)
        self.seen_seq = snap.seq
        self.backlog = backlog
        if not send and not removed:
            return None
        self.inflight = Push(
            type=self.type,
            nonce=self.next_nonce(),
            system_version=snap.system_version,
            resources=tuple(send),
            removed=tuple(removed),
        )
        self.pushes += 1
        return self.inflight
