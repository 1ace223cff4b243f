"""One control-plane process: store, sync server, REST API, leader-only reconciler.

``atoll serve`` runs :class:`ControlPlane`. Every replica serves the REST API
and the sync stream (reads come from its own store watches; agent reports are
written by whichever replica the agent is connected to). Derived state —
imports, export conditions, cluster health — has one writer: the replica that
holds the leader lease (:mod:`atoll.store.election`). Losing the lease cancels
the reconciler at once; another replica takes over when the lease expires.

Transport security (:mod:`atoll.trusthub`): unless ``insecure`` (an explicit
development mode), the replica loads the federation CA from the store, serves
the sync stream over mTLS (client SVID required, verified per stream against
its own domain's bundle by :class:`~atoll.trusthub.authz.SpiffeAuthorizer`)
and the Enrollment service on a second, server-authenticated TLS port; both
reload their certificate and roots on every handshake. The leader also
rotates the federation CA and polls foreign bundle endpoints. With
``bundle_endpoint`` set, the replica serves the federation domain's SPIFFE
bundle endpoint (:mod:`atoll.trusthub.endpoint`).

Shutdown is by cancellation (SIGTERM/SIGINT in :mod:`atoll.cli.serve`): the
gRPC server gets a grace period to end streams, the HTTP server lets in-flight
requests finish, then the store is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio

from atoll.aio import spawn
from atoll.api import ApiContext, build_app
from atoll.control import metrics
from atoll.control.bounds import Timings, compute_bounds
from atoll.control.feeds import feed_table
from atoll.control.janitor import Janitor
from atoll.control.liveness import Liveness
from atoll.control.reconciler import Reconciler
from atoll.control.repo import Repo
from atoll.control.reports import REPORTABLE, AgentReports
from atoll.errors import FatalError
from atoll.httpserve import serve_http
from atoll.jobs.app import RUN_DRILL, make_celery
from atoll.model import Cluster, Region, Resource, ServiceImport, TrafficPolicy, TrustDomain
from atoll.store import Store
from atoll.store.election import LeaderElection, LeadershipLostError
from atoll.store.urls import open_store
from atoll.sync import AllowAll, Authorizer, ResourceTable, SyncServicer
from atoll.sync.server import add_sync_servicer
from atoll.sync.v1 import enrollment_pb2_grpc as enroll_grpc
from atoll.trusthub.endpoint import BundleEndpoint
from atoll.trusthub.hub import TrustHub, TrustSettings
from atoll.trusthub.naming import parse_federation_domain

__all__ = ["SYNC_KINDS", "ControlPlane", "PlaneConfig"]

log = logging.getLogger("atoll.control.plane")

#: kinds subscribers can receive over the sync stream
SYNC_KINDS: tuple[type[Resource], ...] = (
    ServiceImport,
    TrafficPolicy,
    Region,
    Cluster,
    TrustDomain,
)
LEADER_KEY = "/atoll/v1/leader"
RECONCILE_DEBOUNCE = 0.05
#: shutdown must end even if a connection is wedged mid-handshake
GRPC_STOP_DEADLINE = 5.0
GRPC_SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True, slots=True)
class PlaneConfig:
    store_url: str
    api_host: str = "127.0.0.1"
    api_port: int = 7070
    sync_host: str = "127.0.0.1"
    sync_port: int = 7071
    #: the Enrollment service's server-authenticated TLS port (mTLS mode only)
    enroll_host: str = "127.0.0.1"
    enroll_port: int = 7072
    server_id: str = ""
    lease_ttl: int = 5
    heartbeat_interval: float = 1.0
    leader_ttl: int = 5
    #: development only: plaintext gRPC on the sync port, no enrollment, AllowAll
    insecure: bool = False
    trust: TrustSettings = field(default_factory=TrustSettings)
    #: the federation domain's SPIFFE bundle endpoint (host, port); None = not served
    bundle_endpoint: tuple[str, int] | None = None
    #: https_web instead of https_spiffe: the endpoint's Web PKI certificate and key
    bundle_web_cert: Path | None = None
    bundle_web_key: Path | None = None
    #: Celery broker for long jobs (redis://... or filesystem:///dir); None = no drills
    broker: str | None = None
    #: the API URL workers call back (default: http://<api_host>:<api_port>)
    public_api: str | None = None

    def resolved_id(self) -> str:
        return self.server_id or f"{socket.gethostname()}:{self.api_port}"


class ControlPlane:
    def __init__(self, config: PlaneConfig, *, store: Store | None = None) -> None:
        self.config = config
        self.server_id = config.resolved_id()
        self._store = store
        self.tables = {cls.KIND: ResourceTable(cls.KIND) for cls in SYNC_KINDS}
        self.api_port: int | None = None
        self.sync_port: int | None = None
        self.enroll_port: int | None = None
        self.bundle_port: int | None = None
        self.trust: TrustHub | None = None
        self.election: LeaderElection | None = None
        self._ready = asyncio.Event()
        for table in self.tables.values():
            table.listen(self._check_ready)

    def ready(self) -> bool:
        return all(t.snapshot().ready for t in self.tables.values()) and self.sync_port is not None

    async def run(self, *, on_ready: Callable[[ControlPlane], None] | None = None) -> None:
        cfg = self.config
        federation = parse_federation_domain(cfg.trust.federation_domain)
        store = self._store or open_store(cfg.store_url)
        repo = Repo(store)
        liveness = Liveness(store, ttl=cfg.lease_ttl, holder=self.server_id)
        hub: TrustHub | None = None
        authorizer: Authorizer = AllowAll()
        if not cfg.insecure:
            self.trust = hub = TrustHub(
                store,
                settings=cfg.trust,
                domains=self.tables[TrustDomain.KIND],
                reportable=REPORTABLE,
            )
            await hub.start()
            authorizer = hub.authorizer
        servicer = SyncServicer(
            server_id=self.server_id,
            tables=self.tables,
            sink=AgentReports(repo, liveness, federation=federation),
            authorizer=authorizer,
            heartbeat_interval=cfg.heartbeat_interval,
            lease_ttl=float(cfg.lease_ttl),
        )
        self.election = election = LeaderElection(
            store, key=LEADER_KEY, candidate_id=self.server_id, ttl=cfg.leader_ttl
        )
        grpc_server = aio.server(options=GRPC_SERVER_OPTIONS)
        add_sync_servicer(servicer, grpc_server)
        if hub is None:
            self.sync_port = _listen(grpc_server, cfg.sync_host, cfg.sync_port, "sync server", None)
        else:
            enroll_grpc.add_EnrollmentServicer_to_server(hub.enrollment, grpc_server)
            self.sync_port = _listen(
                grpc_server,
                cfg.sync_host,
                cfg.sync_port,
                "sync server (mTLS)",
                hub.tls.credentials(require_client_auth=True),
            )
            self.enroll_port = _listen(
                grpc_server,
                cfg.enroll_host,
                cfg.enroll_port,
                "enrollment server (TLS)",
                hub.tls.credentials(require_client_auth=False),
            )
        bounds = compute_bounds(
            Timings(
                lease_ttl=float(cfg.lease_ttl),
                heartbeat_interval=cfg.heartbeat_interval,
                expiry_sweep=_expiry_sweep(store),
                reconcile_debounce=RECONCILE_DEBOUNCE,
            )
        )
        enqueue = self._enqueuer(cfg) if cfg.broker is not None else None
        app = build_app(
            ApiContext(
                repo=repo,
                liveness=liveness,
                server_id=self.server_id,
                nodes=servicer.node_statuses,
                leader=election.current_leader,
                is_leader=lambda: election.is_leader,
                ready=self.ready,
                trust=hub,
                bounds=lambda: bounds,
                enqueue=enqueue,
            )
        )

        def listening(port: int) -> None:
            self.api_port = port
            if on_ready is not None:
                spawn(self._announce_when_ready(on_ready), name="plane-ready")

        await grpc_server.start()
        log.info(
            "control plane starting",
            extra={
                "server_id": self.server_id,
                "store": cfg.store_url,
                "sync_port": self.sync_port,
                "enroll_port": self.enroll_port,
                "mtls": hub is not None,
            },
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for cls in SYNC_KINDS:
                    tg.create_task(
                        feed_table(store, cls, self.tables[cls.KIND]), name=f"feed:{cls.KIND}"
                    )
                tg.create_task(election.run(), name="election")
                janitor = Janitor(repo, enqueue=enqueue)
                reconciler = Reconciler(repo, debounce=RECONCILE_DEBOUNCE)
                tg.create_task(self._lead(election, reconciler, janitor, hub), name="leader")
                if hub is not None:
                    tg.create_task(hub.run(), name="trust")
                if hub is not None and cfg.bundle_endpoint is not None:
                    endpoint = BundleEndpoint(
                        bundle=hub.federation_bundle,
                        svid=lambda: hub.svid if hub is not None else None,
                        web_cert=cfg.bundle_web_cert,
                        web_key=cfg.bundle_web_key,
                    )

                    def bundle_listening(port: int) -> None:
                        self.bundle_port = port

                    tg.create_task(
                        endpoint.serve(*cfg.bundle_endpoint, on_listening=bundle_listening),
                        name="bundle-endpoint",
                    )
                tg.create_task(
                    serve_http(
                        app,
                        host=cfg.api_host,
                        port=cfg.api_port,
                        what="control plane API",
                        on_listening=listening,
                    ),
                    name="api",
                )
        finally:
            try:
                async with asyncio.timeout(GRPC_STOP_DEADLINE):
                    await grpc_server.stop(grace=2.0)
            except TimeoutError:
                log.warning("gRPC server did not stop in time; abandoning its connections")
            if self._store is None:
                await store.close()
            log.info("control plane stopped", extra={"server_id": self.server_id})

    def _check_ready(self, _type: str = "") -> None:
        if self.ready():
            self._ready.set()

    async def _announce_when_ready(self, on_ready: Callable[[ControlPlane], None]) -> None:
        self._check_ready()
        await self._ready.wait()
        on_ready(self)

    def _enqueuer(self, cfg: PlaneConfig) -> Callable[[str], None]:
        assert cfg.broker is not None
        celery = make_celery(cfg.broker)

        def enqueue(drill: str) -> None:
            # resolved per call: with --api on port 0 the bound port is known only later
            api = cfg.public_api or f"http://{cfg.api_host}:{self.api_port or cfg.api_port}"
            celery.send_task(
                RUN_DRILL,
                args=[drill, api],
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
            )
            log.info("drill enqueued", extra={"drill": drill, "broker": cfg.broker})

        return enqueue

    async def _lead(
        self,
        election: LeaderElection,
        reconciler: Reconciler,
        janitor: Janitor,
        hub: TrustHub | None,
    ) -> None:
        """Run the reconciler, the job janitor (and the trust hub's leader work) while leader."""
        while True:
            try:
                async with election.leadership():
                    metrics.IS_LEADER.set(1)
                    log.info("became leader; reconciling", extra={"server_id": self.server_id})
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(reconciler.run(), name="reconciler")
                        tg.create_task(janitor.run(), name="janitor")
                        if hub is not None:
                            tg.create_task(hub.lead(), name="trust-leader")
            except LeadershipLostError as exc:
                log.warning(
                    "stopped reconciling: leadership lost",
                    extra={"server_id": self.server_id, "reason": str(exc)},
                )
            finally:
                metrics.IS_LEADER.set(0)


def _expiry_sweep(store: Store) -> float:
    """How long the store may take to notice an expired lease (for the stated bound)."""
    sweep = getattr(store, "sweep_interval", None)
    # etcd's leader checks lease expiry every 500 ms (lessor revoke loop)
    return float(sweep) if isinstance(sweep, int | float) else 0.5


def _listen(
    server: aio.Server,
    host: str,
    port: int,
    what: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
    address = f"{host}:{port}"
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise FatalError(f"{what} cannot listen on {address}: {exc}") from exc
