"""Active probes from this cluster (a vantage point) to the other clusters.

Every ``interval`` the agent checks each other cluster's DNS server (any DNS
response, whatever its rcode, proves the server and the path to it are up;
silence or a socket error is down), debounces the raw results with
:class:`~atoll_agent.hysteresis.Hysteresis`, and reports them as its
:class:`~atoll.model.ProbeReport` whenever a debounced state changes. The
control plane decides with a quorum of vantage points; this module only says
what one vantage point sees.

Targets come from the Cluster resources the agent receives
(``spec.addresses["dns"]``). Gateway probes (a TLS handshake through the
east-west gateway) join when gateways exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import dns.asyncquery
import dns.exception
import dns.message

from atoll.model import Metadata, ProbeReport, ProbeReportSpec, ProbeResult
from atoll_agent.hysteresis import Hysteresis

__all__ = ["Check", "Prober", "build_probe_report", "check_dns"]

log = logging.getLogger("atoll.agent.probes")

#: checks one address; returns (up, detail)
Check = Callable[[str], Awaitable[tuple[bool, str]]]


PROBE_TIMEOUT = 0.5


async def check_dns(address: str) -> tuple[bool, str]:
    host, _, port = address.rpartition(":")
    query = dns.message.make_query(".", "SOA")
    try:
        resp = await dns.asyncquery.udp(
            query, host.strip("[]"), port=int(port), timeout=PROBE_TIMEOUT
        )
    except dns.exception.Timeout:
        return False, f"no answer within {PROBE_TIMEOUT}s"
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"answered ({resp.rcode()})"


def build_probe_report(
    vantage: str, h: Hysteresis, details: Mapping[str, str], *, interval: float
) -> ProbeReport:
    """The report for the debounced states in ``h`` (keys are target cluster names)."""
    return ProbeReport(
        metadata=Metadata(name=vantage, owner=f"agent/{vantage}"),
        spec=ProbeReportSpec(
            vantage=vantage,
            interval_seconds=interval,
            rise=h.rise,
            fall=h.fall,
            results=[
                ProbeResult(target=t, path="dns", up=up, detail=details.get(t, "")[:300])
                for t, up in sorted(h.states().items())
            ],
        ),
    )


class Prober:
    def __init__(
        self,
        vantage: str,
        *,
        interval: float = 1.0,
        rise: int = 2,
        fall: int = 3,
        check: Check = check_dns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.vantage = vantage
        self.interval = interval
        self.check = check
        self.sleep = sleep
        self.targets: dict[str, str] = {}
        self.hysteresis = Hysteresis(rise=rise, fall=fall)

    def set_targets(self, targets: Mapping[str, str]) -> None:
        """cluster -> DNS address of every *other* cluster to probe."""
        self.targets = {c: a for c, a in targets.items() if c != self.vantage}

    async def round(self) -> tuple[Hysteresis, dict[str, str]]:
        names = sorted(self.targets)
        results = await asyncio.gather(*(self.check(self.targets[n]) for n in names))
        observed = {n: up for n, (up, _) in zip(names, results, strict=True)}
        details = {n: d for n, (_, d) in zip(names, results, strict=True)}
        return self.hysteresis.observe(observed), details

    async def run(self, report: Callable[[ProbeReport], None]) -> None:
        last: dict[str, bool] | None = None
        while True:
            self.hysteresis, details = await self.round()
            states = self.hysteresis.states()
            if states != last:
                changed = {t for t in states if last is None or last.get(t) != states[t]}
                log.info(
                    "probe states changed",
                    extra={"vantage": self.vantage, "changed": sorted(changed), "states": states},
                )
                report(
                    build_probe_report(
                        self.vantage, self.hysteresis, details, interval=self.interval
                    )
                )
                last = states
            await self.sleep(self.interval)
