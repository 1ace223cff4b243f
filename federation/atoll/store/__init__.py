"""Stores: the :class:`~atoll.store.base.Store` protocol and its backends.

``open_store(url)`` picks the backend from a URL: ``sqlite:///path/to/file.db``
(the embedded default) or ``etcd://host:port[,host:port...]`` (production).
Nothing above this package imports a backend's client library.

* :mod:`atoll.store.base` — the protocol and its data (the contract);
* :mod:`atoll.store.sqlite` — :class:`SqliteStore`, embedded;
* :mod:`atoll.store.etcd` — :class:`EtcdStore`, etcd v3;
* :mod:`atoll.store.watching` — :func:`list_and_watch`, the consumer pattern;
* :mod:`atoll.store.election` — :class:`LeaderElection` over any Store.
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
from atoll.store.election import LeaderElection, LeadershipLostError
from atoll.store.sqlite import SqliteStore
from atoll.store.urls import open_store, parse_store_url
from atoll.store.watching import Changes, Snapshot, apply_observation, list_and_watch

__all__ = [
    "Changes",
    "Entry",
    "Event",
    "EventType",
    "LeaderElection",
    "LeadershipLostError",
    "LeaseId",
    "Listing",
    "Snapshot",
    "SqliteStore",
    "Store",
    "WatchBatch",
    "apply_observation",
    "list_and_watch",
    "open_store",
    "parse_store_url",
    "prefix_end",
]
