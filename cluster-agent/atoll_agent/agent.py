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

And, unless it runs ``insecure`` without a KEK, the trust duties
(:mod:`atoll_agent.trust`): its federation identity (enrolled once with a join
token, persisted, renewed; the sync stream's client certificate), and its
cluster's own CA with the Workload API. The sync client subscribes to
TrustDomain as well: the federation bundle keeps the identity able to verify
the control plane across its rotations, other domains' bundles go to the
Workload API, and the cluster's own entry carries forced-rotation requests.
The agent reports its cluster's TrustDomain (bundle, sequence, CA expiry,
next rotation) whenever the CA changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from atoll import __version__
from atoll.httpserve import serve_http
from atoll.model import (
    Cluster,
    ClusterSpec,
    Metadata,
    ProbeReport,
    ServiceImport,
    TrustDomain,
    decode,
    encode,
)
from atoll.sync import HeldState, Item, NodeInfo, SyncClient, schema_validator
from atoll.trusthub.naming import parse_federation_domain
from atoll_agent import metrics
from atoll_agent.api import build_agent_app
from atoll_agent.catalog import CatalogSource, FileSource, RegistrySource, build_exports
from atoll_agent.config import AgentConfig
from atoll_agent.health import apply_hysteresis
from atoll_agent.hysteresis import Hysteresis
from atoll_agent.probes import Prober
from atoll_agent.registry import CatalogSnapshot
from atoll_agent.trust.authority import ClusterAuthority
from atoll_agent.trust.bundles import fold_trust_domains, validate_trust_item
from atoll_agent.trust.identity import AgentIdentity
from atoll_trust.bundle import BundleSet
from atoll_trust.clock import system_clock as trust_clock
from atoll_trust.kek import load_key_encryptor
from atoll_trust.rotation import RotationPolicy

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
        self._snapshot: CatalogSnapshot | None = None
        self._endpoint_health = Hysteresis(rise=config.rise, fall=config.fall)
        self.prober = Prober(
            config.cluster, interval=config.health_interval, rise=config.rise, fall=config.fall
        )
        self.federation = parse_federation_domain(config.federation_domain)
        self.identity: AgentIdentity | None = None
        self.authority: ClusterAuthority | None = None
        if not config.insecure:
            self.identity = AgentIdentity(
                cluster=config.cluster,
                federation=self.federation,
                state_dir=config.state_dir,
                sync_target=config.control_plane,
                enroll_target=config.enroll_endpoint,
                join_token=config.join_token,
                bundle_file=config.federation_bundle_file,
                clock=trust_clock,
            )
            self.identity.on_bundle_change(lambda _b: self._publish_bundles())
        if config.trust_enabled:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            self.authority = ClusterAuthority(
                cluster=config.cluster,
                federation=self.federation,
                state_dir=config.state_dir,
                socket_dir=config.socket_dir,
                encryptor=load_key_encryptor(config.kek_file),
                policy=RotationPolicy(
                    min_publish_lead=dt.timedelta(seconds=config.ca_publish_lead)
                ),
                workloads=config.workloads,
                federates_with=config.federates_with,
                clock=trust_clock,
                on_change=self._report_trust_domain,
            )
        self._federated = BundleSet()
        types = config.subscriptions
        if self.authority is not None and TrustDomain.KIND not in types:
            types = (*types, TrustDomain.KIND)
        self.sync = SyncClient(
            target=config.control_plane,
            node=NodeInfo(
                id=config.node_id,
                role="agent",
                cluster=config.cluster,
                software_version=__version__,
            ),
            types=types,
            validate=schema_validator(validate_trust_item),
            state_file=config.sync_state_file,
            on_update=self._on_update,
            credentials=self.identity.credentials if self.identity is not None else None,
            channel_options=self.identity.channel_options() if self.identity is not None else (),
            heartbeat=True,
        )
        self.sync.set_report("Cluster", [self._cluster_item()])
        if self.authority is not None:
            self._report_trust_domain(self.authority.report())
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
                trust_domain=(
                    self.authority.trust_domain.name if self.authority is not None else None
                ),
            ),
        )
        return Item(name=self.config.cluster, version="", body=encode(cluster))

    # -- trust ---------------------------------------------------------------
    def _report_trust_domain(self, resource: TrustDomain) -> None:
        self.sync.set_report(
            TrustDomain.KIND,
            [Item(name="/".join(resource.path()), version="", body=encode(resource))],
        )

    def _apply_trust(self, state: HeldState) -> None:
        if self.authority is None:
            return
        received = fold_trust_domains(
            state.items(TrustDomain.KIND),
            federation=self.federation,
            cluster=self.config.cluster,
            held=self._federated,
        )
        if received.federation_bundle is not None and self.identity is not None:
            self.identity.update_federation_bundle(received.federation_bundle)
        self._federated = received.federated
        self.authority.request_rotation(received.rotate_generation)
        self._publish_bundles()

    def _publish_bundles(self) -> None:
        if self.authority is None:
            return
        bundles = self._federated
        fed = self.identity.federation_bundle if self.identity is not None else None
        if fed is not None:
            bundles = bundles.without(fed.trust_domain).with_bundle(fed)
        self.authority.set_federated(bundles)

    # -- imports -------------------------------------------------------------
    def _apply_held(self, state: HeldState, types: frozenset[str] | None = None) -> None:
        """Take the held state; ``types`` limits the work to what changed (None: all)."""
        if types is None or ServiceImport.KIND in types:
            self.imports = {
                name: decode(ServiceImport, item.body)
                for name, item in state.items(ServiceImport.KIND).items()
            }
            metrics.IMPORTS.set(len(self.imports))
        if types is None or TrustDomain.KIND in types:
            self._apply_trust(state)
        if types is None or Cluster.KIND in types:
            self.prober.set_targets(
                {
                    name: decode(Cluster, item.body).spec.addresses
                    for name, item in state.items(Cluster.KIND).items()
                }
            )

    async def _on_update(self, state: HeldState, types: frozenset[str]) -> None:
        self._apply_held(state, types)
        log.info(
            "imports updated",
            extra={"cluster": self.config.cluster, "services": len(self.imports)},
        )

    # -- catalog -------------------------------------------------------------
    def _sample(self) -> None:
        """Observe endpoint health now and report the debounced exports."""
        if self._snapshot is None:
            return
        raw = build_exports(self.config.cluster, self._snapshot, now=self.clock())
        exports, self._endpoint_health = apply_hysteresis(raw, self._endpoint_health)
        self.sync.set_report(
            "ServiceExport",
            [Item(name="/".join(e.path()), version="", body=encode(e)) for e in exports],
        )
        self.exports_reported = len(exports)
        metrics.EXPORTS.set(len(exports))

    async def _catalog_loop(self) -> None:
        async for snapshot in self.source.watch():
            self._snapshot = snapshot
            self.catalog_index = snapshot.index
            self.catalog_updated_at = self.clock()
            self._sample()
            log.info(
                "catalog changed",
                extra={
                    "cluster": self.config.cluster,
                    "index": snapshot.index,
                    "exports": self.exports_reported,
                },
            )

    async def _health_loop(self) -> None:
        """Sample endpoint health every interval: TTLs lapse and hysteresis counts."""
        while True:
            await asyncio.sleep(self.config.health_interval)
            self._sample()

    def _report_probes(self, report: ProbeReport) -> None:
        self.sync.set_report(
            ProbeReport.KIND,
            [Item(name=report.metadata.name, version="", body=encode(report))],
        )

    # -- run -----------------------------------------------------------------
    async def run(self, *, on_listening: Callable[[int], None] | None = None) -> None:
        app = build_agent_app(self)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sync(), name="agent-sync")
            tg.create_task(self._catalog_loop(), name="agent-catalog")
            tg.create_task(self._health_loop(), name="agent-health")
            if self.config.probes:
                tg.create_task(self.prober.run(self._report_probes), name="agent-probes")
            if self.identity is not None:
                tg.create_task(self.identity.run(), name="agent-identity")
            if self.authority is not None:
                tg.create_task(self.authority.run(), name="agent-ca")
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

    async def _sync(self) -> None:
        if self.identity is not None:
            await self.identity.ensure()
        await self.sync.run()
