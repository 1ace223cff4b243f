"""Typed access to resources in the store.

Objects are read with their store revisions filled in (``metadata.revision``
= the entry's mod revision) and written with compare-and-swap on that
revision, so a read-modify-write that lost a race raises
:class:`~atoll.errors.ConflictError` instead of overwriting someone's change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from atoll.errors import ConflictError
from atoll.model import Resource, decode, encode, store_key, store_prefix
from atoll.store import Entry, Store

__all__ = ["Repo", "from_entry", "mutate"]

R = TypeVar("R", bound=Resource)


def from_entry(cls: type[R], entry: Entry) -> R:
    return decode(
        cls, entry.value, revision=entry.mod_revision, created_revision=entry.create_revision
    )


class Repo:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, cls: type[R], path: tuple[str, ...]) -> R | None:
        entry = await self.store.get(store_key(cls, path))
        return None if entry is None else from_entry(cls, entry)

    async def list(self, cls: type[R], *outer: str) -> tuple[list[R], int]:
        listing = await self.store.list(store_prefix(cls, *outer))
        return [from_entry(cls, e) for e in listing.entries], listing.revision

    async def put(self, obj: R, *, expect: int | None) -> R:
        """Write ``obj``; ``expect`` as in :meth:`Store.put` (0 = create only)."""
        entry = await self.store.put(obj.key(), encode(obj), expect=expect)
        return obj.with_revision(entry.mod_revision, entry.create_revision)

    async def replace(self, obj: R) -> R:
        """CAS on ``obj.metadata.revision`` (0 means the object must not exist yet)."""
        return await self.put(obj, expect=obj.metadata.revision)

    async def delete(
        self, cls: type[Resource], path: tuple[str, ...], *, expect: int | None = None
    ) -> bool:
        return await self.store.delete(store_key(cls, path), expect=expect) is not None


async def mutate(
    repo: Repo,
    cls: type[R],
    path: tuple[str, ...],
    change: Callable[[R | None], R | None],
    *,
    attempts: int = 8,
) -> R | None:
    """Read-modify-write one object with CAS, re-reading after a lost race.

    ``change`` gets the current object (or None) and returns the new one, or
    None to leave it alone. It must be pure: it may run more than once.
    Returns the stored object (or None when nothing was written).
    """
    for _ in range(attempts):
        current = await repo.get(cls, path)
        new = change(current)
        if new is None or (current is not None and encode(new) == encode(current)):
            return current
        try:
            return await repo.put(new, expect=current.metadata.revision if current else 0)
        except ConflictError:
            continue
    raise ConflictError(store_key(cls, path), expected=-1, actual_revision=-1)
