"""Serve an ASGI app with uvicorn inside an existing event loop, until cancelled.

Every Atoll process that has an HTTP face (control plane API, agent, registry)
runs it through :func:`serve_http`:

* the socket is bound *here*, before uvicorn starts, so a taken port fails
  with a clear :class:`~atoll.errors.FatalError` (uvicorn would ``sys.exit``),
  and ``port=0`` works (the bound port is reported through ``on_listening``);
* uvicorn's own signal handlers are off: the process's main task owns signals
  and shuts down by *cancelling* the serving task;
* on cancellation, ``before_shutdown`` runs (e.g. to release long polls), then
  uvicorn stops accepting and lets in-flight requests finish within ``grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from atoll.aio import spawn
from atoll.errors import FatalError

__all__ = ["bind", "serve_http"]

log = logging.getLogger("atoll.http")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, *, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise FatalError(
            f"{what} cannot listen on {host}:{port}: {exc.strerror}; "
            "stop whatever holds the port or choose another address"
        ) from exc
    # create_server leaves the socket's proto at 0, so asyncio does not set
    # TCP_NODELAY on accepted connections (it only does for IPPROTO_TCP); with
    # Nagle on, uvicorn's separate header and body writes wait for the client's
    # delayed ACK: ~40 ms on every keep-alive request. Accepted sockets inherit
    # the option from the listener.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def serve_http(
    app: Any,
    *,
    host: str,
    port: int,
    what: str,
    grace: int = 5,
    on_listening: Callable[[int], None] | None = None,
    before_shutdown: Callable[[], None] | None = None,
) -> None:
    sock = bind(host, port, what=what)
    bound: int = sock.getsockname()[1]
    server = _Server(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=grace,
        )
    )
    serving = spawn(server.serve(sockets=[sock]), name=f"http:{what}")
    log.info("listening", extra={"what": what, "host": host, "port": bound})
    if on_listening is not None:
        on_listening(bound)
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        if before_shutdown is not None:
            before_shutdown()
        server.should_exit = True
        await serving
        raise
    finally:
        sock.close()
