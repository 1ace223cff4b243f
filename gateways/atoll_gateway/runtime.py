"""The state every connection handler reads: current config, routes, identity, balancer.

One :class:`Runtime` per gateway process. The node replaces ``config`` and
``table`` wholesale (immutable values, swapped by assignment, so a handler
sees one consistent version from the moment it looks); ``balancer`` keeps
outlier state across table swaps. ``connections`` holds every handler task,
which is what the connection limit counts and what a drain waits for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atoll_gateway.balancer import Balancer
from atoll_gateway.config import GatewayConfig
from atoll_gateway.identity import GatewayIdentity
from atoll_gateway.routes import RouteTable
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

    def next_decision(self, key: str, n: int) -> int:
        k = self.egress_cursor.get(key, 0)
        self.egress_cursor[key] = k + 1
        return k % n
