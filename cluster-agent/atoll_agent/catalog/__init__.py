"""The agent's view of its cluster's service catalog.

A :class:`CatalogSource` yields complete catalog snapshots (current state
first, then one per change): :class:`RegistrySource` long-polls Atoll's
built-in registry, :class:`FileSource` follows a YAML/JSON file. The pure
:func:`build_exports` turns a snapshot into the ``ServiceExport`` resources the
agent reports to the control plane.
"""

from atoll_agent.catalog.exports import build_exports, export_owner
from atoll_agent.catalog.file_source import FileSource, parse_catalog
from atoll_agent.catalog.registry_source import RegistrySource
from atoll_agent.catalog.source import CatalogSource

__all__ = [
    "CatalogSource",
    "FileSource",
    "RegistrySource",
    "build_exports",
    "export_owner",
    "parse_catalog",
]
