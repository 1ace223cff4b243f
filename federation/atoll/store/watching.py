"""List, then watch: the consumer pattern for any Store (kopf's, Kubernetes' informers').

:func:`list_and_watch` yields a :class:`Snapshot` (every entry under the
prefix and the revision it was read at), then :class:`Changes` from
``snapshot.revision + 1`` on. When the watch can no longer continue — its
revision was compacted, or the store failed in a retryable way the backend
could not ride out — it lists again and yields a fresh Snapshot. A consumer
therefore handles two things: "here is everything" and "here is what
changed". A *level-triggered* consumer that recomputes from state (fold with
:func:`apply_observation`) converges whatever it missed in between.

A Snapshot always *replaces* the consumer's state (keys absent from it are
gone); Changes apply on top of the latest Snapshot. Revisions only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from atoll.aio import Backoff, Sleep
from atoll.errors import CompactedError, RetryableError
from atoll.store.base import Entry, Event, EventType, Store, WatchBatch

__all__ = [
    "Changes",
    "Observation",
    "Snapshot",
    "apply_observation",
    "list_and_watch",
    "watch_closing",
]

log = logging.getLogger("atoll.store")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything under the prefix at ``revision``; replaces prior state."""

    entries: tuple[Entry, ...]
    revision: int
    #: True when this snapshot follows a lost watch (compaction or failure)
    resync: bool = False


@dataclass(frozen=True, slots=True)
class Changes:
    """Changes after the last Snapshot/Changes, up to ``revision``, in order."""

    events: tuple[Event, ...]
    revision: int


Observation = Snapshot | Changes


@contextlib.asynccontextmanager
async def watch_closing(
    store: Store, prefix: str, *, start_revision: int
) -> AsyncIterator[AsyncIterator[WatchBatch]]:
    """``store.watch(...)`` that is closed (its stream cancelled) on exit.

    ``contextlib.aclosing`` needs an ``aclose`` the protocol's AsyncIterator
    type does not promise; every backend's watch is an async generator, so
    this closes it when it has ``aclose``.
    """
    batches = store.watch(prefix, start_revision=start_revision)
    try:
        yield batches
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()


def apply_observation(state: Mapping[str, Entry], observation: Observation) -> dict[str, Entry]:
    """The state after ``observation`` (pure: returns a new dict)."""
    if isinstance(observation, Snapshot):
        return {e.key: e for e in observation.entries}
    new = dict(state)
    for event in observation.events:
        if event.type is EventType.PUT:
            new[event.key] = event.entry
        else:
            new.pop(event.key, None)
    return new


async def list_and_watch(
    store: Store,
    prefix: str,
    *,
    sleep: Sleep = asyncio.sleep,
    backoff: Backoff | None = None,
) -> AsyncIterator[Observation]:
    """Snapshot, then Changes, re-listing on compaction or retryable failure. Forever."""
    backoff = backoff or Backoff(base=0.1, cap=5.0)
    resync = False
    while True:
        try:
            listing = await store.list(prefix)
        except RetryableError as exc:
            log.warning("listing failed; retrying", extra={"prefix": prefix, "error": str(exc)})
            await sleep(backoff.next_delay())
            continue
        yield Snapshot(entries=listing.entries, revision=listing.revision, resync=resync)
        resync = True
        try:
            async with watch_closing(store, prefix, start_revision=listing.revision + 1) as batches:
                async for batch in batches:
                    backoff.reset()
                    yield Changes(events=batch.events, revision=batch.revision)
        except CompactedError as exc:
            log.info(
                "watch fell behind compaction; listing again",
                extra={"prefix": prefix, "compacted_revision": exc.compacted_revision},
            )
        except RetryableError as exc:
            log.warning("watch failed; listing again", extra={"prefix": prefix, "error": str(exc)})
            await sleep(backoff.next_delay())
        else:
            return  # the store closed the watch (store closed): nothing more will come
