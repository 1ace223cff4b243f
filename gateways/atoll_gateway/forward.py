"""Relaying one routed connection with its accounting: the last step of every handler.

:func:`forward` picks the relay — :class:`~atoll_gateway.tunnelrelay.TunnelRelay`
for a stream of a pooled tunnel, :class:`~atoll_gateway.relay.SpliceRelay`
when both sockets are plain TCP and splice is on, otherwise
:class:`~atoll_gateway.relay.CopyRelay` — and wires it to the metrics (active
connections; bytes counted every few seconds while the connection lives, not
only at its end) and to the access record (byte totals, idle timeout, relay
errors).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Literal

from atoll_gateway import metrics
from atoll_gateway.accesslog import AccessRecord
from atoll_gateway.relay import CopyRelay, SpliceRelay
from atoll_gateway.relaywatch import RelayWatch
from atoll_gateway.runtime import Runtime
from atoll_gateway.tunnelrelay import TunnelRelay

__all__ = ["forward"]


async def forward(
    rt: Runtime,
    rec: AccessRecord,
    client: socket.socket,
    upstream: socket.socket,
    *,
    prefix: bytes = b"",
    on_finish: Callable[[], None] | None = None,
    tunnel: Literal["client", "upstream"] | None = None,
    read: bytes = b"",
) -> bool:
    """Relay ``client`` ⇄ ``upstream`` until both ends are done (both sockets are taken over).

    ``on_finish`` runs when the relay ends, before the sockets close (TLS relays only).
    ``tunnel`` names the side that is a pooled tunnel (``read``: its bytes already
    received); True when that tunnel ended the stream cleanly and is still open —
    the caller then owns it again.
    """
    labels = (rec.listener, rec.source_cluster, rec.destination_cluster)
    to_upstream = metrics.child(metrics.BYTES, *labels, "to_upstream")
    to_client = metrics.child(metrics.BYTES, *labels, "to_client")

    def progress(up: int, down: int) -> None:
        to_upstream.inc(up)
        to_client.inc(down)

    idle = rt.config.idle_timeout
    watch = RelayWatch(idle_timeout=idle, on_progress=progress)
    tls = isinstance(client, ssl.SSLSocket) or isinstance(upstream, ssl.SSLSocket)
    relay: SpliceRelay | CopyRelay | TunnelRelay
    if tunnel is not None:
        pair = (upstream, client) if tunnel == "client" else (client, upstream)
        assert isinstance(pair[1], ssl.SSLSocket)
        relay = TunnelRelay(
            pair[0], pair[1], watch, stream_is_client=tunnel == "upstream", prefix=prefix, read=read
        )
    elif rt.splice and not tls and not prefix:
        relay = SpliceRelay(client, upstream, watch)
    else:
        relay = CopyRelay(client, upstream, watch, prefix=prefix, on_finish=on_finish)
    active = metrics.child(metrics.ACTIVE, *labels)
    active.inc()
    try:
        rec.bytes_to_upstream, rec.bytes_to_client = await relay.run()
    finally:
        active.dec()
    if watch.timed_out:
        rec.fail("idle_timeout", f"no bytes in either direction for {idle}s")
    elif relay.error is not None:
        rec.fail("relay_error", f"{type(relay.error).__name__}: {relay.error}")
    elif relay.reset:
        rec.fail("reset", "one side reset the connection; the other was reset too")
    return isinstance(relay, TunnelRelay) and relay.reusable
