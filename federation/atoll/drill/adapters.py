"""The drill runner's collaborators for real: the REST API, DNS, admin-state drains.

Workers talk to the control plane only through its REST API (a worker may
run on another machine, and the embedded SQLite store belongs to the control
plane process alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
import httpx
from pydantic import BaseModel

from atoll.errors import ConflictError, NotFoundError, RetryableError, UserError
from atoll.model import Cluster, Drill, DrillStatus, ServiceImport
from atoll.model.cluster import AdminState

__all__ = ["AdminStateDisruptor", "ApiDrillClient", "DnsResolver", "GatewayRouteProbe"]

M = TypeVar("M", bound=BaseModel)


class ApiDrillClient:
    """:class:`~atoll.drill.runner.DrillApi` over the control plane's REST API."""

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise RetryableError(f"control plane {self.base_url} unreachable: {exc}") from exc
        if resp.status_code == 404:
            raise NotFoundError(f"{method} {path}: not found")
        if resp.status_code == 409:
            raise ConflictError(path, expected=-1, actual_revision=-1)
        if resp.status_code >= 500:
            raise RetryableError(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
        if resp.status_code >= 400:
            raise UserError(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else None

    async def get_drill(self, name: str) -> Drill:
        return Drill.model_validate(await self._call("GET", f"/v1/drills/{name}"))

    async def put_status(self, drill: Drill, status: DrillStatus) -> Drill:
        doc = await self._call(
            "PUT",
            f"/v1/drills/{drill.metadata.name}/status",
            content=status.model_dump_json(),
            headers={
                "content-type": "application/json",
                "if-match": str(drill.metadata.revision),
            },
        )
        return Drill.model_validate(doc)

    async def clusters(self) -> list[Cluster]:
        return [
            Cluster.model_validate(v["cluster"]) for v in await self._call("GET", "/v1/clusters")
        ]

    async def imports(self) -> list[ServiceImport]:
        return [ServiceImport.model_validate(d) for d in await self._call("GET", "/v1/imports")]

    async def bounds(self) -> tuple[float, float]:
        doc = await self._call("GET", "/v1/timings")
        return float(doc["death_withdrawal"]), float(doc["drain_withdrawal"])

    async def set_admin_state(self, cluster: str, state: AdminState, reason: str) -> None:
        await self._call(
            "PUT",
            f"/v1/clusters/{cluster}/admin-state",
            json={"admin_state": state, "reason": reason},
        )


class DnsResolver:
    """Asks one DNS server over UDP (falls back to TCP when truncated)."""

    def __init__(self, *, timeout: float = 0.5) -> None:
        self.timeout = timeout

    async def addresses(self, server: str, qname: str) -> frozenset[str] | None:
        host, _, port = server.rpartition(":")
        query = dns.message.make_query(qname, "A")
        try:
            resp, _ = await dns.asyncquery.udp_with_fallback(
                query, host.strip("[]"), port=int(port), timeout=self.timeout
            )
        except (dns.exception.DNSException, OSError, ValueError):
            return None
        return frozenset(
            rr.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
        )


class GatewayRouteProbe:
    """Reads a gateway's egress decisions from its admin API (``/v1/status``)."""

    def __init__(self, *, timeout: float = 1.0) -> None:
        self.timeout = timeout

    async def routes(self, admin_url: str) -> dict[str, frozenset[str]] | None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                doc = (await http.get(admin_url.rstrip("/") + "/v1/status")).json()
        except (httpx.HTTPError, ValueError):
            return None
        out: dict[str, set[str]] = {}
        for egress in doc.get("egress", []):
            picked = out.setdefault(str(egress["service"]), set())
            for decision in egress.get("decisions", []):
                picked.update(str(c) for c in decision)
        return {svc: frozenset(cs) for svc, cs in out.items()}


class AdminStateDisruptor:
    """``failover`` drills: drain through the API, restore the recorded admin states."""

    kind = "drain"

    def __init__(self, api: ApiDrillClient, *, reason: str) -> None:
        self.api = api
        self.reason = reason

    async def disrupt(self, clusters: Sequence[str]) -> None:
        for c in clusters:
            await self.api.set_admin_state(c, "drained", self.reason)

    async def restore(self, states: Mapping[str, AdminState]) -> None:
        for c, s in sorted(states.items()):
            await self.api.set_admin_state(c, s, f"{self.reason}: restore")

    def servers_down(self, clusters: Sequence[str]) -> set[str]:
        return set()
