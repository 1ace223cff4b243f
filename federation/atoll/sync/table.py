"""ResourceTable: the server's current set of one resource type, with a change log.

The sync server pushes deltas to many subscribers. Recomputing each
subscriber's delta by comparing the whole set would cost O(resources) per
subscriber per change; with a thousand agents that is the bottleneck. So the
table numbers every change with a sequence number and keeps an append-only log
of ``(seq, name)``; a subscriber remembers the last sequence it has seen and
asks only for names changed after it (:meth:`TypeSnapshot.changed_since`).
When the log has been trimmed past that point the answer is ``None`` and the
subscriber falls back to a full comparison — correct, just slower.

A :class:`TypeSnapshot` is an immutable view: ``items`` is a fresh mapping per
change (copying the dict is O(n) once per change, not once per subscriber) and
the log view is bounded by the snapshot's own length, so a snapshot never
changes under a reader even as the table moves on.

Tables are fed by whoever owns the data — on the control plane a store watch
(:mod:`atoll.control.feeds`), on a regional plane an upstream subscription —
and notify listeners (the streams) on every change.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Item", "ResourceTable", "TypeSnapshot"]


@dataclass(frozen=True, slots=True)
class Item:
    """One resource as the sync protocol carries it."""

    name: str
    version: str
    body: bytes


@dataclass(frozen=True, slots=True)
class TypeSnapshot:
    type: str
    #: sequence number of the last change included; 0 for an empty, never-fed table
    seq: int
    items: Mapping[str, Item]
    #: False until the feed has delivered its first full listing
    ready: bool
    _log_seqs: list[int] = field(repr=False, compare=False)
    _log_names: list[str] = field(repr=False, compare=False)
    _log_len: int = field(repr=False, compare=False)
    _log_floor: int = field(repr=False, compare=False)

    @property
    def system_version(self) -> str:
        return str(self.seq)

    def changed_since(self, seq: int) -> Iterable[str] | None:
        """Names changed (or removed) after ``seq``, or None if the log no longer
        reaches back that far (the caller must then compare everything)."""
        if seq >= self.seq:
            return ()
        if seq < self._log_floor:
            return None
        start = bisect.bisect_right(self._log_seqs, seq, 0, self._log_len)
        return set(self._log_names[start : self._log_len])


Listener = Callable[[str], None]


class ResourceTable:
    """Mutable owner of one type's current resources; hands out snapshots."""

    def __init__(self, type_: str, *, log_limit: int = 100_000) -> None:
        self.type = type_
        self._items: dict[str, Item] = {}
        self._seq = 0
        self._ready = False
        self._log_seqs: list[int] = []
        self._log_names: list[str] = []
        self._log_floor = 0
        self._log_limit = log_limit
        self._listeners: set[Listener] = set()
        self._snapshot = self._make_snapshot()

    # -- reading -----------------------------------------------------------
    def snapshot(self) -> TypeSnapshot:
        return self._snapshot

    # -- listeners ---------------------------------------------------------
    def listen(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def unlisten(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    # -- writing -----------------------------------------------------------
    def replace_all(self, items: Iterable[Item]) -> None:
        """Set the whole content (a fresh listing); logs only real differences."""
        new = {it.name: it for it in items}
        changed = [n for n, it in new.items() if self._items.get(n) != it]
        changed += [n for n in self._items if n not in new]
        self._items = new
        self._ready = True
        self._commit(changed, force=True)

    def apply(self, upserts: Iterable[Item] = (), removals: Iterable[str] = ()) -> None:
        """Apply a batch of changes atomically (one snapshot, one notification)."""
        changed: list[str] = []
        for it in upserts:
            if self._items.get(it.name) != it:
                self._items[it.name] = it
                changed.append(it.name)
        for name in removals:
            if self._items.pop(name, None) is not None:
                changed.append(name)
        self._commit(changed, force=False)

    def _commit(self, changed: list[str], *, force: bool) -> None:
        if not changed and not force:
            return
        if changed:
            self._seq += 1
            for name in changed:
                self._log_seqs.append(self._seq)
                self._log_names.append(name)
            self._trim()
        self._snapshot = self._make_snapshot()
        for listener in list(self._listeners):
            listener(self.type)

    def _trim(self) -> None:
        excess = len(self._log_seqs) - self._log_limit
        if excess <= 0:
            return
        # Drop whole sequence numbers only, and start new lists so that
        # snapshots holding the old ones keep a consistent view.
        cut = bisect.bisect_right(self._log_seqs, self._log_seqs[excess - 1])
        self._log_floor = self._log_seqs[cut - 1]
        self._log_seqs = self._log_seqs[cut:]
        self._log_names = self._log_names[cut:]

    def _make_snapshot(self) -> TypeSnapshot:
        return TypeSnapshot(
            type=self.type,
            seq=self._seq,
            items=MappingProxyType(dict(self._items)),
            ready=self._ready,
            _log_seqs=self._log_seqs,
            _log_names=self._log_names,
            _log_len=len(self._log_seqs),
            _log_floor=self._log_floor,
        )
