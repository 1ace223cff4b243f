"""Accepting connections: a non-blocking accept loop with a connection limit.

The listening socket is watched with ``loop.add_reader``; each wake-up
accepts up to a batch of pending connections (cheaper than one
``sock_accept`` coroutine per connection). Over ``max_connections`` a new
connection is *refused clearly*: the refusal callback writes what the
protocol allows (a TLS ``internal_error`` alert on the TLS port), the socket
is closed, and ``atoll_gateway_refused_total{reason="connection_limit"}`` counts it.
:meth:`Listener.close` stops accepting at once (the first step of a drain);
connections already accepted are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from atoll.aio import spawn
from atoll.errors import FatalError
from atoll_gateway import metrics
from atoll_gateway.runtime import Runtime

__all__ = ["Handler", "Listener", "bind_listener"]

log = logging.getLogger("atoll.gateway.listener")

Handler = Callable[[socket.socket, str], Coroutine[Any, Any, None]]
_BATCH = 64


def bind_listener(host: str, port: int, *, what: str, backlog: int = 4096) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        raise FatalError(f"{what} cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


class Listener:
    def __init__(
        self,
        runtime: Runtime,
        sock: socket.socket,
        handler: Handler,
        *,
        name: str,
        listener: str,
        refusal: bytes = b"",
    ) -> None:
        self.runtime = runtime
        self.sock = sock
        self.handler = handler
        self.name = name
        self.listener = listener
        self.refusal = refusal
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._family, self._type = int(sock.family), int(sock.type) & ~socket.SOCK_NONBLOCK
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._accept)
        log.info("listening", extra={"listener": self.name, "address": f"{self.address}"})

    def _accept(self) -> None:
        rt = self.runtime
        for _ in range(_BATCH):
            try:
                conn, addr = self._accept_one()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next wake-up
                log.warning("accept failed", extra={"listener": self.name, "error": str(exc)})
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(rt.connections) >= rt.config.max_connections and not rt.reclaim_idle_tunnel():
                metrics.REFUSED.labels(self.listener, "connection_limit").inc()
                log.warning(
                    "connection refused: connection limit",
                    extra={"listener": self.name, "client": f"{addr[0]}:{addr[1]}",
                           "limit": rt.config.max_connections},
                )  # fmt: skip
                if self.refusal:
                    with contextlib.suppress(OSError):
                        conn.send(self.refusal)
                conn.close()
                continue
            task = spawn(self.handler(conn, f"{addr[0]}:{addr[1]}"), name=f"{self.name}-conn")
            rt.connections.add(task)
            task.add_done_callback(rt.connections.discard)

    def _accept_one(self) -> tuple[socket.socket, tuple[str, int]]:
        """``socket.accept`` without its per-call enum conversions of family and type
        (a few percent of a passthrough connection's CPU)."""
        fd, addr = self.sock._accept()  # type: ignore[attr-defined]
        return socket.socket(self._family, self._type, 0, fileno=fd), addr

    def close(self) -> None:
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
