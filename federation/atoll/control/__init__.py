"""The global control plane: derived state, liveness, reports, and their assembly.

* :mod:`.derive` — pure: exports + clusters + liveness -> imports and statuses.
* :mod:`.actions` — pure diff of desired vs observed into writes; a thin executor.
* :mod:`.repo` — typed access to resources in the store (CAS on metadata.revision).
* :mod:`.liveness` — per-cluster leases renewed by agent heartbeats.
* :mod:`.reports` — stores what agents report over the sync stream.
* :mod:`.reconciler` — the leader's level-triggered loop.
* :mod:`.feeds` — store watches feeding the sync server's tables.
* :mod:`.plane` — wires it all into one process (``atoll serve``).
"""
