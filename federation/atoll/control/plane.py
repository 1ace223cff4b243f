"""One control-plane process: store, sync server, REST API, leader-only reconciler.

``atoll serve`` runs :class:`ControlPlane`. Every replica serves the REST API
and the sync stream (reads come from its own store watches; agent reports are
written by whichever replica the agent is connected to). Derived state —
imports, export conditions, cluster health — has one writer: the replica that
holds the leader lease (:mod:`atoll.store.election`). Losing the lease cancels
the reconciler at once; another replica takes over when the lease expires.

Shutdown is by cancellation (SIGTERM/SIGINT in :mod:`atoll.cli.serve`): the
gRPC server gets a grace period to end streams, the HTTP server lets in-flight
requests finish, then the store is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from grpc import aio

from atoll.aio import spawn
from atoll.api import ApiContext, build_app
from atoll.control import metrics
from atoll.control.feeds import feed_table
from atoll.control.liveness import Liveness
from atoll.control.reconciler import Reconciler
from atoll.control.repo import Repo
from atoll.control.reports import AgentReports
from atoll.errors import FatalError
from atoll.httpserve import serve_http
from atoll.model import Cluster, Region, Resource, ServiceImport, TrafficPolicy
from atoll.store import Store
from atoll.store.election import LeaderElection, LeadershipLostError
from atoll.store.urls import open_store
from atoll.sync import ResourceTable, SyncServicer
from atoll.sync.v1 import sync_pb2_grpc as pb_grpc

__all__ = ["SYNC_KINDS", "ControlPlane", "PlaneConfig"]

log = logging.getLogger("atoll.control.plane")

#: kinds subscribers can receive over the sync stream
SYNC_KINDS: tuple[type[Resource], ...] = (ServiceImport, TrafficPolicy, Region, Cluster)
LEADER_KEY = "/atoll/v1/leader"
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
    server_id: str = ""
    lease_ttl: int = 5
    heartbeat_interval: float = 1.0
    leader_ttl: int = 5
    #: plaintext gRPC on the sync port; the trust work replaces this with mTLS
    insecure: bool = True

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
        self.election: LeaderElection | None = None
        self._ready = asyncio.Event()
        for table in self.tables.values():
            table.listen(self._check_ready)

    def ready(self) -> bool:
        return all(t.snapshot().ready for t in self.tables.values()) and self.sync_port is not None

    async def run(self, *, on_ready: Callable[[ControlPlane], None] | None = None) -> None:
        cfg = self.config
        if not cfg.insecure:
            raise FatalError("mTLS on the sync channel is not built yet; run with --insecure")
        store = self._store or open_store(cfg.store_url)
        repo = Repo(store)
        liveness = Liveness(store, ttl=cfg.lease_ttl, holder=self.server_id)
        servicer = SyncServicer(
            server_id=self.server_id,
            tables=self.tables,
            sink=AgentReports(repo, liveness),
            heartbeat_interval=cfg.heartbeat_interval,
            lease_ttl=float(cfg.lease_ttl),
        )
        self.election = election = LeaderElection(
            store, key=LEADER_KEY, candidate_id=self.server_id, ttl=cfg.leader_ttl
        )
        grpc_server = aio.server(options=GRPC_SERVER_OPTIONS)
        pb_grpc.add_SyncServicer_to_server(servicer, grpc_server)
        try:
            self.sync_port = grpc_server.add_insecure_port(f"{cfg.sync_host}:{cfg.sync_port}")
        except RuntimeError as exc:
            raise FatalError(
                f"sync server cannot listen on {cfg.sync_host}:{cfg.sync_port}: {exc}"
            ) from exc
        app = build_app(
            ApiContext(
                repo=repo,
                liveness=liveness,
                server_id=self.server_id,
                nodes=servicer.node_statuses,
                leader=election.current_leader,
                is_leader=lambda: election.is_leader,
                ready=self.ready,
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
            },
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for cls in SYNC_KINDS:
                    tg.create_task(
                        feed_table(store, cls, self.tables[cls.KIND]), name=f"feed:{cls.KIND}"
                    )
                tg.create_task(election.run(), name="election")
                tg.create_task(self._lead(election, Reconciler(repo)), name="leader")
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
            await grpc_server.stop(grace=2.0)
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

    async def _lead(self, election: LeaderElection, reconciler: Reconciler) -> None:
        """Run the reconciler exactly while this replica is the leader."""
        while True:
            try:
                async with election.leadership():
                    metrics.IS_LEADER.set(1)
                    log.info("became leader; reconciling", extra={"server_id": self.server_id})
                    await reconciler.run()
            except LeadershipLostError as exc:
                log.warning(
                    "stopped reconciling: leadership lost",
                    extra={"server_id": self.server_id, "reason": str(exc)},
                )
            finally:
                metrics.IS_LEADER.set(0)
