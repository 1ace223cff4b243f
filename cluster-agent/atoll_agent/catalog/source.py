"""The catalog source protocol: where the agent reads its cluster's service catalog.

A source yields :class:`~atoll_agent.registry.model.CatalogSnapshot` values:
the current state first, then a new snapshot after every change, forever.
Each snapshot is complete and validated (never a partial catalog), so a
consumer can recompute its exports from the latest one alone — the
level-triggered pattern: a missed intermediate snapshot changes nothing.

Implementations: :class:`~atoll_agent.catalog.registry_source.RegistrySource`
(long-polls Atoll's registry over HTTP) and
:class:`~atoll_agent.catalog.file_source.FileSource` (a YAML or JSON file).
A Kubernetes MCS source would be a third one with the same shape.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from atoll_agent.registry.model import CatalogSnapshot

__all__ = ["CatalogSource"]


@runtime_checkable
class CatalogSource(Protocol):
    """Something that watches a cluster's service catalog."""

    def watch(self) -> AsyncGenerator[CatalogSnapshot, None]:
        """The current catalog, then one snapshot per change; never ends by itself.

        An async generator, so a consumer can close it deterministically
        (``async with contextlib.aclosing(source.watch()) as snapshots: ...``)
        and release its connection or file handle at once.
        """
        ...
