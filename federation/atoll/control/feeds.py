"""Store watches feeding the sync server's resource tables.

One feed per synced kind keeps a :class:`~atoll.sync.ResourceTable` equal to
the store's content under that kind's prefix: a Snapshot replaces the table,
Changes are applied as one batch (one table change, one notification). The
sync name of a resource is its store path below the kind's prefix
(``demo/web``), its version the store's mod revision, and its body the stored
JSON unchanged — no decode/encode on the way from store to wire.
"""

from __future__ import annotations

import logging

from atoll.model import Resource, store_prefix
from atoll.store import EventType, Store
from atoll.store.watching import Snapshot, list_and_watch
from atoll.sync import Item, ResourceTable

__all__ = ["feed_table"]

log = logging.getLogger("atoll.control.feeds")


async def feed_table(store: Store, cls: type[Resource], table: ResourceTable) -> None:
    prefix = store_prefix(cls)
    cut = len(prefix)
    async for obs in list_and_watch(store, prefix):
        if isinstance(obs, Snapshot):
            table.replace_all(
                Item(name=e.key[cut:], version=str(e.mod_revision), body=e.value)
                for e in obs.entries
            )
            log.info(
                "sync table loaded",
                extra={"type": cls.KIND, "resources": len(obs.entries), "resync": obs.resync},
            )
            continue
        upserts: dict[str, Item] = {}
        removals: set[str] = set()
        for ev in obs.events:
            name = ev.key[cut:]
            if ev.type is EventType.PUT:
                upserts[name] = Item(name=name, version=str(ev.revision), body=ev.entry.value)
                removals.discard(name)
            else:
                upserts.pop(name, None)
                removals.add(name)
        table.apply(upserts.values(), removals)
