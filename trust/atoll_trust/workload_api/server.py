"""Serve the Workload API on one unix socket per workload (grpc.aio).

Each registered workload gets its own ``grpc.aio`` server bound to
``unix:<socket_dir>/<workload>.sock``; the servicer behind that socket serves
only that workload's identities (see the package docstring for why). All
servers share the agent's event loop and one :class:`SnapshotHub`, so a
rotation published once reaches every open stream on every socket.

Socket files are created with the requested mode (default 0600) and, when a
``uid``/``gid`` is given, handed to the workload's user: file permissions are
what keep another local user from connecting to someone else's socket.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from atoll_trust.clock import Clock
from atoll_trust.errors import IssuanceError
from atoll_trust.workload_api import workload_pb2_grpc as pb_grpc
from atoll_trust.workload_api.service import WorkloadApiServicer
from atoll_trust.workload_api.state import IdentityManager, SnapshotHub

__all__ = ["WorkloadApiServer", "WorkloadSocket"]

log = logging.getLogger("atoll.trust.workload_api")
# A unix socket path must fit sockaddr_un.sun_path (108 bytes on Linux, incl. NUL).
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class WorkloadSocket:
    """Where a workload's socket lives and who may open it."""

    workload: str
    path: Path
    mode: int = 0o600
    uid: int | None = None
    gid: int | None = None


class WorkloadApiServer:
    """One grpc.aio server per workload socket; start/stop them as workloads come and go."""

    def __init__(self, *, hub: SnapshotHub, identities: IdentityManager, clock: Clock) -> None:
        self._hub = hub
        self._identities = identities
        self._clock = clock
        self._servers: dict[str, tuple[WorkloadSocket, grpc.aio.Server]] = {}

    @property
    def sockets(self) -> tuple[WorkloadSocket, ...]:
        return tuple(sock for sock, _ in self._servers.values())

    async def add_workload(self, sock: WorkloadSocket) -> None:
        """Start serving ``sock.workload`` on ``sock.path`` (replacing a stale socket file)."""
        if sock.workload in self._servers:
            raise IssuanceError(f"workload {sock.workload} already has a socket")
        path = str(sock.path)
        if len(path.encode()) > _MAX_SOCKET_PATH:
            raise IssuanceError(f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes")
        sock.path.parent.mkdir(parents=True, exist_ok=True)
        sock.path.unlink(missing_ok=True)
        server = grpc.aio.server()
        pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(
            WorkloadApiServicer(
                sock.workload, hub=self._hub, identities=self._identities, clock=self._clock
            ),
            server,
        )
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        sock.path.chmod(sock.mode)
        if sock.uid is not None or sock.gid is not None:
            os.chown(
                path, -1 if sock.uid is None else sock.uid, -1 if sock.gid is None else sock.gid
            )
        self._servers[sock.workload] = (sock, server)
        log.info("workload API socket up", extra={"workload": sock.workload, "socket": path})

    async def remove_workload(self, workload: str, *, grace: float = 0.5) -> None:
        entry = self._servers.pop(workload, None)
        if entry is None:
            return
        sock, server = entry
        await server.stop(grace)
        sock.path.unlink(missing_ok=True)
        log.info("workload API socket down", extra={"workload": workload})

    async def stop(self, *, grace: float = 0.5) -> None:
        for workload in list(self._servers):
            await self.remove_workload(workload, grace=grace)
