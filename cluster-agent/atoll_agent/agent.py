"""The cluster agent: catalog in, exports out, imports in, served locally.

Three loops run side by side for the life of the process:

* **catalog** — watches the cluster's own control plane (the built-in
  registry over HTTP, or a catalog file), turns each catalog snapshot into the
  cluster's ServiceExports (:func:`atoll_agent.catalog.build_exports`, pure)
  and hands them to the sync client as the current report;
* **sync** — :class:`~atoll.sync.SyncClient`: reports the cluster declaration
  and exports, heartbeats the cluster's liveness lease, and receives the
  federation's ServiceImports, persisted as last-known-good;
* **http** — the agent's API: ``/v1/imports`` serves the held imports, so
  local consumers keep working while the control plane is away (and after an
  agent restart, from the persisted state).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from atoll import __version__
from atoll.httpserve import serve_http
from atoll.model import Cluster, ClusterSpec, Metadata, ServiceImport, decode, encode
from atoll.sync import HeldState, Item, NodeInfo, SyncClient
from atoll_agent import metrics
from atoll_agent.api import build_agent_app
from atoll_agent.catalog import CatalogSource, FileSource, RegistrySource, build_exports
from atoll_agent.config import AgentConfig

__all__ = ["Agent"]

log = logging.getLogger("atoll.agent")


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        source: CatalogSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.source = source or self._default_source()
        self.catalog_index: int | None = None
        self.catalog_updated_at: float | None = None
        self.exports_reported = 0
        self.imports: dict[str, ServiceImport] = {}
        self.sync = SyncClient(
            target=config.control_plane,
            node=NodeInfo(
                id=config.node_id,
                role="agent",
                cluster=config.cluster,
                software_version=__version__,
            ),
            types=config.subscriptions,
            state_file=config.sync_state_file,
            on_update=self._on_update,
            heartbeat=True,
        )
        self.sync.set_report("Cluster", [self._cluster_item()])
        self._apply_held(self.sync.held)

    def _default_source(self) -> CatalogSource:
        if self.config.registry_url is not None:
            return RegistrySource(self.config.registry_url)
        assert self.config.catalog_file is not None
        return FileSource(self.config.catalog_file)

    def _cluster_item(self) -> Item:
        cluster = Cluster(
            metadata=Metadata(name=self.config.cluster),
            spec=ClusterSpec(
                region=self.config.region,
                zone=self.config.zone,
                addresses=self.config.addresses,
            ),
        )
        return Item(name=self.config.cluster, version="", body=encode(cluster))

    # -- imports -------------------------------------------------------------
    def _apply_held(self, state: HeldState) -> None:
        self.imports = {
            name: decode(ServiceImport, item.body)
            for name, item in state.items("ServiceImport").items()
        }
        metrics.IMPORTS.set(len(self.imports))

    async def _on_update(self, state: HeldState, types: frozenset[str]) -> None:
        self._apply_held(state)
        log.info(
            "imports updated",
            extra={"cluster": self.config.cluster, "services": len(self.imports)},
        )

    # -- catalog -------------------------------------------------------------
    async def _catalog_loop(self) -> None:
        async for snapshot in self.source.watch():
            exports = build_exports(self.config.cluster, snapshot, now=self.clock())
            self.sync.set_report(
                "ServiceExport",
                [Item(name="/".join(e.path()), version="", body=encode(e)) for e in exports],
            )
            self.catalog_index = snapshot.index
            self.catalog_updated_at = self.clock()
            self.exports_reported = len(exports)
            metrics.EXPORTS.set(len(exports))
            log.info(
                "catalog changed",
                extra={
                    "cluster": self.config.cluster,
                    "index": snapshot.index,
                    "exports": len(exports),
                },
            )

    # -- run -----------------------------------------------------------------
    async def run(self, *, on_listening: Callable[[int], None] | None = None) -> None:
        app = build_agent_app(self)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.sync.run(), name="agent-sync")
            tg.create_task(self._catalog_loop(), name="agent-catalog")
            tg.create_task(
                serve_http(
                    app,
                    host=self.config.listen_host,
                    port=self.config.listen_port,
                    what=f"agent {self.config.cluster}",
                    on_listening=on_listening,
                ),
                name="agent-http",
            )
