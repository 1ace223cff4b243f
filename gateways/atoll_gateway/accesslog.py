"""One structured access-log line per connection (logger ``atoll.gateway.access``).

An :class:`AccessRecord` is filled in as the connection progresses and
emitted exactly once when it ends, whatever the outcome. Fields:
``listener``, ``client``, ``sni``, ``service``, ``mode``, ``source_cluster``,
``source_id`` (verified peer SPIFFE ID, terminated connections only),
``destination_cluster``, ``upstream``, ``outcome`` (``ok`` or the failure
reason label), ``detail``, ``bytes_to_upstream``, ``bytes_to_client``,
``duration_ms``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

__all__ = ["AccessRecord"]

log = logging.getLogger("atoll.gateway.access")


@dataclass(slots=True)
class AccessRecord:
    listener: str
    client: str
    started: float = field(default_factory=time.monotonic)
    sni: str | None = None
    service: str | None = None
    mode: str | None = None
    source_cluster: str = "unknown"
    source_id: str | None = None
    destination_cluster: str = "unknown"
    upstream: str | None = None
    outcome: str = "ok"
    detail: str = ""
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0

    def fail(self, reason: str, detail: str) -> None:
        if self.outcome == "ok":
            self.outcome = reason
            self.detail = detail[:300]

    def emit(self) -> None:
        log.info(
            "connection",
            extra={
                "listener": self.listener,
                "client": self.client,
                "sni": self.sni,
                "service": self.service,
                "mode": self.mode,
                "source_cluster": self.source_cluster,
                "source_id": self.source_id,
                "destination_cluster": self.destination_cluster,
                "upstream": self.upstream,
                "outcome": self.outcome,
                "detail": self.detail,
                "bytes_to_upstream": self.bytes_to_upstream,
                "bytes_to_client": self.bytes_to_client,
                "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            },
        )
