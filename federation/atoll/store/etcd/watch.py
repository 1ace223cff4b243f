"""A watch over an etcd key range that resumes itself (no gap, no duplicate).

etcd delivers each watch response with whole revisions (it never splits a
revision unless the watcher asks for fragments, which we do not), in revision
order. The generator remembers the next revision it owes the consumer; when
the stream breaks — the member died, the connection reset, or the member lost
its leader and cancelled the watch (we send ``hasleader``, see
:mod:`atoll.store.etcd.rpc`) — it opens a new stream, normally on another
member, from exactly that revision, and drops anything older it might be sent
again. A start revision below etcd's compaction point ends the watch with
:class:`~atoll.errors.CompactedError` carrying etcd's compact revision: the
consumer must list again (:func:`atoll.store.watching.list_and_watch`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from atoll.aio import Backoff, Sleep
from atoll.errors import CompactedError, StoreUnavailableError
from atoll.store.base import Entry, Event, EventType, LeaseId, WatchBatch
from atoll.store.etcd.api import etcdserver_pb2 as pb
from atoll.store.etcd.api import mvcc_pb2
from atoll.store.etcd.rpc import WATCH, EtcdRpc
from atoll.store.keys import decode_key

__all__ = ["entry_from_kv", "event_from_pb", "watch_range"]

log = logging.getLogger("atoll.store")


def entry_from_kv(kv: mvcc_pb2.KeyValue) -> Entry:
    return Entry(
        key=decode_key(kv.key),
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=LeaseId(kv.lease) if kv.lease else None,
    )


def event_from_pb(event: mvcc_pb2.Event) -> Event:
    if event.type == mvcc_pb2.Event.DELETE:
        return Event(
            type=EventType.DELETE,
            entry=Entry(
                key=decode_key(event.kv.key),
                value=b"",
                create_revision=0,
                mod_revision=event.kv.mod_revision,
                version=0,
            ),
        )
    return Event(type=EventType.PUT, entry=entry_from_kv(event.kv))


async def watch_range(
    rpc: EtcdRpc,
    key: bytes,
    range_end: bytes,
    start_revision: int,
    *,
    sleep: Sleep,
    backoff: Backoff,
) -> AsyncIterator[WatchBatch]:
    """Batches of changes in ``[key, range_end)`` from ``start_revision`` on, forever."""
    next_revision = start_revision
    while not rpc.closed:
        stream = rpc.stream(WATCH)
        try:
            await stream.send(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(
                        key=key, range_end=range_end, start_revision=next_revision
                    )
                )
            )
            while True:
                response = await stream.receive()
                if response is None:
                    raise StoreUnavailableError("etcd ended the watch stream")
                if response.compact_revision:
                    raise CompactedError(next_revision, response.compact_revision)
                if response.canceled:
                    raise StoreUnavailableError(
                        f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}"
                    )
                events = tuple(
                    event_from_pb(e) for e in response.events if e.kv.mod_revision >= next_revision
                )
                if events:
                    backoff.reset()
                    next_revision = events[-1].revision + 1
                    yield WatchBatch(events=events, revision=events[-1].revision)
        except StoreUnavailableError as exc:
            if rpc.closed:
                return
            log.warning(
                "etcd watch interrupted; resuming",
                extra={"from_revision": next_revision, "error": str(exc)},
            )
        finally:
            stream.cancel()
        await sleep(backoff.next_delay())
