"""The state every connection handler reads: current config, routes, identity, balancer.

One :class:`Runtime` per gateway process. The node replaces ``config`` and
``table`` wholesale (immutable values, swapped by assignment, so a handler
sees one consistent version from the moment it looks); ``balancer`` keeps
outlier state across table swaps. ``connections`` holds every handler task,
which is what the connection limit counts and what a drain waits for;
``tunnels`` the egress's idle pooled tunnels (:mod:`atoll_gateway.tunnelpool`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from atoll_gateway.balancer import Balancer
from atoll_gateway.config import GatewayConfig
from atoll_gateway.identity import GatewayIdentity
from atoll_gateway.routes import RouteTable
from atoll_gateway.tunnelpool import TunnelPool
from atoll_trust.spiffe_id import TrustDomain

__all__ = ["Runtime"]


@dataclass(slots=True)
class Runtime:
    config: GatewayConfig
    table: RouteTable
    identity: GatewayIdentity
    balancer: Balancer
    federation: TrustDomain
    #: certificate-validity clock (injected)
    clock: Callable[[], dt.datetime]
    #: use splice for passthrough relays
    splice: bool = True
    connections: set[asyncio.Task[Any]] = field(default_factory=set)
    #: per egress route: next ring position
    egress_cursor: dict[str, int] = field(default_factory=dict)
    #: a drain has begun: pooled tunnels stop taking streams
    draining: bool = False
    #: waits of served tunnels between streams (a drain ends them at once)
    tunnel_waiters: set[asyncio.Future[None]] = field(default_factory=set)
    #: the egress's idle pooled tunnels to peer gateways
    tunnels: TunnelPool = field(init=False)

    def __post_init__(self) -> None:
        self.tunnels = TunnelPool(**_pool_limits(self.config))

    def use_config(self, config: GatewayConfig) -> None:
        """A reloaded configuration: its outlier and pool limits apply at once."""
        self.config = config
        self.balancer.set_config(config.outlier)
        self.tunnels.configure(**_pool_limits(config))

    def reclaim_idle_tunnel(self) -> bool:
        """At the connection limit: close one served tunnel that waits for a stream (its
        peer opens a new one when it needs it) so that a new connection fits; False
        when none waits."""
        for waiter in self.tunnel_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionAbortedError("reclaimed at the connection limit"))
                return True
        return False

    def start_drain(self) -> None:
        """Stop pooling: idle tunnels close on both sides, busy ones after their stream."""
        self.draining = True
        self.tunnels.close()
        for waiter in list(self.tunnel_waiters):
            if not waiter.done():
                waiter.set_result(None)

    def next_decision(self, key: str, n: int) -> int:
        k = self.egress_cursor.get(key, 0)
        self.egress_cursor[key] = k + 1
        return k % n


class _PoolLimits(TypedDict):
    max_idle: int
    idle_timeout: float
    max_age: float


def _pool_limits(config: GatewayConfig) -> _PoolLimits:
    return _PoolLimits(
        max_idle=config.tunnel_pool_size,
        idle_timeout=config.tunnel_idle_timeout,
        max_age=config.tunnel_max_age,
    )
