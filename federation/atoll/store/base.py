"""The Store protocol: a revisioned key-value store with CAS, leases and watch.

It is the etcd v3 data model, reduced to what Atoll needs, so that the
embedded SQLite store and etcd behave the same under one contract test suite
(``tests/contract/test_store_contract.py``):

* Every successful write increments one global *revision*. An entry records
  ``create_revision`` (the write that created it), ``mod_revision`` (the last
  write) and ``version`` (writes since creation, 1 for a new key).
* ``put``/``delete`` take ``expect``: ``None`` writes unconditionally, ``0``
  means "only if the key is absent", ``N > 0`` means "only if its
  ``mod_revision`` is still N". A lost race raises
  :class:`~atoll.errors.ConflictError`; the caller re-reads and re-decides.
* A *lease* has a TTL in whole seconds; keys written with it are deleted
  (producing DELETE events) when it expires or is revoked. ``keepalive``
  restarts the TTL and raises :class:`~atoll.errors.LeaseNotFoundError` once
  the lease is gone.
* ``watch(prefix, start_revision=R)`` yields every change under ``prefix``
  with revision >= R, in revision order, grouped per revision; it raises
  :class:`~atoll.errors.CompactedError` when R is older than the compaction
  point. Implementations resume by themselves after a broken connection
  (from the last delivered revision + 1), so a watcher sees no gap and no
  duplicate. The pattern for a consumer is *list, then watch from
  listing.revision + 1, and on CompactedError list again* (:func:`list_and_watch`).

Errors from a backend are translated into :mod:`atoll.errors` at the seam;
nothing above the store sees sqlite3 or grpc exceptions.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NewType, Protocol, runtime_checkable

__all__ = [
    "Entry",
    "Event",
    "EventType",
    "LeaseId",
    "Listing",
    "Store",
    "WatchBatch",
    "prefix_end",
]

LeaseId = NewType("LeaseId", int)


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: LeaseId | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    entries: tuple[Entry, ...]
    #: the store revision the listing was read at; watch from ``revision + 1``
    revision: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    #: for PUT the new entry; for DELETE an entry with the key, empty value,
    #: ``mod_revision`` = the deleting revision and zero create_revision/version
    entry: Entry

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def revision(self) -> int:
        return self.entry.mod_revision


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one or more consecutive revisions, delivered together."""

    events: tuple[Event, ...]
    #: highest revision covered by this batch
    revision: int


@runtime_checkable
class Store(Protocol):
    """See the module docstring for the semantics every backend must honour."""

    async def get(self, key: str) -> Entry | None: ...

    async def list(self, prefix: str) -> Listing:
        """All entries whose key starts with ``prefix``, sorted by key."""
        ...

    async def revision(self) -> int:
        """The store's current revision."""
        ...

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        expect: int | None = None,
        lease: LeaseId | None = None,
    ) -> Entry:
        """Write ``value``; returns the new entry (with its new revisions)."""
        ...

    async def delete(self, key: str, *, expect: int | None = None) -> int | None:
        """Delete ``key``. Returns the deleting revision, or None if it did not exist
        (with ``expect`` given, a missing key is a ConflictError instead)."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        ...

    async def grant_lease(self, ttl: int) -> LeaseId: ...

    async def keepalive(self, lease: LeaseId) -> int:
        """Restart the lease's TTL; returns the TTL granted."""
        ...

    async def lease_remaining(self, lease: LeaseId) -> float | None:
        """Seconds left on the lease, or None if it is gone."""
        ...

    async def revoke(self, lease: LeaseId) -> None:
        """Revoke the lease (deleting its keys). Revoking a missing lease is a no-op."""
        ...

    def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Changes under ``prefix`` from ``start_revision`` on; see module docstring.

        Use as ``async with atoll.store.watching.watch_closing(store, ...) as batches``
        so the watch is closed (and its server-side resources freed) on exit.
        """
        ...

    async def compact(self, revision: int) -> None:
        """Forget history before ``revision``; watches from older revisions fail."""
        ...

    async def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``
    (etcd's ``range_end`` for a prefix: drop trailing 0xff bytes, add 1 to the last)."""
    raw = bytearray(prefix)
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # etcd: range_end "\0" means "every key >= key"
    raw[-1] += 1
    return bytes(raw)
