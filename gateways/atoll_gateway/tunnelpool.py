"""The egress's idle pooled tunnels, per peer gateway (:mod:`atoll_gateway.tunnelproto`).

A tunnel whose stream ended cleanly is given back (:meth:`TunnelPool.give`)
and the next local connection to the same peer gateway takes it
(:meth:`TunnelPool.take`, most recently used first, so a quiet hour shrinks
the pool from its cold end). A tunnel is closed instead of handed out when:

* it was made with an SSL context that is no longer current — the SVID or
  the bundles rotated, and new streams must use the new ones at once;
* it sat idle longer than ``idle_timeout`` (the serving gateway waits much
  longer, so the egress is the side that closes idle tunnels, and a taken
  tunnel is not one the server is closing at that moment), or is older than
  ``max_age`` (a bound on how long a handshake's decisions are trusted);
* the peer closed it or sent something unasked (a readable idle tunnel is
  never healthy);
* the pool for that peer is full, or the pool was closed (a drain).

A tunnel that still fails when its stream opens is replaced by a fresh one
(:mod:`atoll_gateway.egress`): no client byte has been sent by then.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from atoll_gateway import metrics

__all__ = ["Tunnel", "TunnelPool"]

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


@dataclass(slots=True, eq=False)
class Tunnel:
    """One mTLS connection to a peer gateway speaking the pooled protocol."""

    tls: ssl.SSLSocket
    #: the peer gateway (``<cluster>/<host:port>``)
    key: str
    #: the SSL context it was made with (compared with the current one)
    context: ssl.SSLContext
    born: float
    idle_since: float = 0.0
    #: streams carried so far (0 while the first one opens)
    streams: int = 0
    #: its TLS session has been kept for resumption
    session_kept: bool = field(default=False)

    def close(self) -> None:
        self.tls.close()


def _alive(tls: ssl.SSLSocket) -> bool:
    """An idle tunnel is healthy when nothing at all is waiting to be read on it."""
    if tls.fileno() < 0 or tls.pending():
        return False
    try:
        # the socket itself, under TLS: any record (a close_notify) or a FIN means not reusable
        socket.socket.recv(tls, 1, _PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


class TunnelPool:
    def __init__(
        self,
        *,
        max_idle: int,
        idle_timeout: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.clock = clock
        self.closed = False
        self._idle: dict[str, list[Tunnel]] = {}
        self._gauge = metrics.child(metrics.TUNNELS_IDLE, "egress")

    def __len__(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    def configure(self, *, max_idle: int, idle_timeout: float, max_age: float) -> None:
        """New limits (a config reload); tunnels beyond them go at the next :meth:`expire`."""
        self.max_idle, self.idle_timeout, self.max_age = max_idle, idle_timeout, max_age

    def _usable(self, tunnel: Tunnel, now: float) -> bool:
        return now - tunnel.idle_since < self.idle_timeout and now - tunnel.born < self.max_age

    def take(self, key: str, context: ssl.SSLContext) -> Tunnel | None:
        """The most recently idle healthy tunnel to ``key`` made with ``context``, if any."""
        stack = self._idle.get(key)
        if not stack:
            return None
        now = self.clock()
        while stack:
            tunnel = stack.pop()
            self._gauge.dec()
            if tunnel.context is context and self._usable(tunnel, now) and _alive(tunnel.tls):
                return tunnel
            tunnel.close()
        return None

    def give(self, tunnel: Tunnel) -> None:
        """Keep ``tunnel`` (its stream ended cleanly) for the next stream to its peer."""
        now = self.clock()
        if self.closed or not self.max_idle or now - tunnel.born >= self.max_age:
            tunnel.close()
            return
        stack = self._idle.setdefault(tunnel.key, [])
        if len(stack) >= self.max_idle:  # full: the coldest goes, as in expire()
            stack.pop(0).close()
            self._gauge.dec()
        tunnel.idle_since = now
        stack.append(tunnel)
        self._gauge.inc()

    def expire(self) -> int:
        """Close the tunnels that idled or lived too long (the node's tick); how many."""
        now = self.clock()
        closed = 0
        for stack in self._idle.values():
            usable = [t for t in stack if self._usable(t, now)]
            keep = usable[len(usable) - self.max_idle :] if self.max_idle else []
            kept = {id(t) for t in keep}
            for tunnel in stack:
                if id(tunnel) not in kept:
                    tunnel.close()
                    closed += 1
            stack[:] = keep
        self._idle = {key: stack for key, stack in self._idle.items() if stack}
        self._gauge.dec(closed)
        return closed

    def close(self) -> None:
        """Close every idle tunnel, and every tunnel given back from now on (a drain)."""
        self.closed = True
        for stack in self._idle.values():
            for tunnel in stack:
                with contextlib.suppress(OSError):
                    tunnel.close()
            self._gauge.dec(len(stack))
        self._idle.clear()
