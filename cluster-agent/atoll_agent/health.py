"""Endpoint health as the agent reports it: raw catalog health, debounced.

Each endpoint of an exported service is one key (``namespace/service/address:port``)
in a :class:`~atoll_agent.hysteresis.Hysteresis`. The agent observes every
key at every sampling tick and on every catalog change, and reports the
debounced state, so an endpoint whose health flaps does not flap the
federation's DNS answers, while one that stays down is withdrawn after
``fall`` observations. Pure: exports and hysteresis in, exports and
hysteresis out.
"""

from __future__ import annotations

from collections.abc import Sequence

from atoll.model import Endpoint, ServiceExport
from atoll_agent.hysteresis import Hysteresis

__all__ = ["apply_hysteresis", "endpoint_key"]


def endpoint_key(export: ServiceExport, endpoint: Endpoint) -> str:
    port = endpoint.port or export.spec.ports[0].port
    return f"{export.metadata.namespace}/{export.metadata.name}/{endpoint.address}:{port}"


def apply_hysteresis(
    exports: Sequence[ServiceExport], h: Hysteresis
) -> tuple[list[ServiceExport], Hysteresis]:
    """Observe the raw endpoint health in ``exports``; return them with debounced health."""
    observed = {endpoint_key(x, e): e.healthy for x in exports for e in x.spec.endpoints}
    h = h.observe(observed)
    out: list[ServiceExport] = []
    for x in exports:
        eps = [
            e.model_copy(update={"healthy": bool(h.state(endpoint_key(x, e)))})
            for e in x.spec.endpoints
        ]
        out.append(x.model_copy(update={"spec": x.spec.model_copy(update={"endpoints": eps})}))
    return out, h
