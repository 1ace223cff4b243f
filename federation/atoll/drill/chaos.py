"""``chaos`` drills: kill a lab cluster's processes for real, then bring them back.

Only the lab supervisor (``atoll up``) may kill and restart its children —
processes started by anyone else would outlive the lab — so chaos goes
through the lab's control API (:mod:`atoll.lab.control`), whose address the
worker gets from the lab manifest. Outside a lab there is nothing to kill and
chaos drills are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from atoll.errors import RetryableError, UserError
from atoll.model.cluster import AdminState

__all__ = ["LabChaos"]


class LabChaos:
    kind = "kill"

    def __init__(self, control_url: str, *, timeout: float = 30.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout

    async def _post(self, path: str) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                resp = await http.post(self.control_url + path)
        except httpx.HTTPError as exc:
            raise RetryableError(f"lab control API unreachable: {exc}") from exc
        if resp.status_code >= 400:
            raise UserError(f"lab control API: POST {path}: {resp.status_code} {resp.text[:300]}")

    async def disrupt(self, clusters: Sequence[str]) -> None:
        for c in clusters:
            await self._post(f"/v1/clusters/{c}/kill")

    async def restore(self, states: Mapping[str, AdminState]) -> None:
        for c in sorted(states):
            await self._post(f"/v1/clusters/{c}/start")

    def servers_down(self, clusters: Sequence[str]) -> set[str]:
        return set(clusters)  # the cluster's own DNS server dies with it
