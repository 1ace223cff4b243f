"""The etcd v3 backend. Nothing outside :mod:`atoll.store` imports this package
(DESIGN §4): callers get a Store from :func:`atoll.store.open_store`.

``api/`` holds Atoll's own minimal ``.proto`` description of the etcd v3 API
subset we call and the modules generated from it (``python -m
atoll.protogen``); ``rpc`` is the typed channel, ``watch`` the
self-resuming watch, ``store`` the Store adapter, ``errors`` the translation
of gRPC failures.
"""

from atoll.store.etcd.store import EtcdStore

__all__ = ["EtcdStore"]
