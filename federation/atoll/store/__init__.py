"""Stores: the :class:`~atoll.store.base.Store` protocol and its backends.

``open_store(url)`` picks the backend from a URL: ``sqlite:///path/to/file.db``
(the embedded default) or ``etcd://host:port[,host:port...]`` (production).
Nothing above this package imports a backend's client library.
"""

from atoll.store.base import (
    Entry,
    Event,
    EventType,
    LeaseId,
    Listing,
    Store,
    WatchBatch,
    prefix_end,
)

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
