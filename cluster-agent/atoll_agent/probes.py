"""Active probes from this cluster (a vantage point) to the other clusters.

Every ``interval`` the agent checks each other cluster's federation-facing
components: its DNS server (any DNS response, whatever its rcode, proves the
server and the path to it are up; silence or a socket error is down) and its
east-west gateway (a TLS handshake: any TLS answer — a ServerHello or an
alert for our probe name — proves the gateway is accepting and parsing
ClientHellos; a refused or silent connection is down). It debounces the raw
results per (cluster, path) with
:class:`~atoll_agent.hysteresis.Hysteresis`, and reports them as its
:class:`~atoll.model.ProbeReport` whenever a debounced state changes. The
control plane decides with a quorum of vantage points; this module only says
what one vantage point sees.

Targets come from the Cluster resources the agent receives
(``spec.addresses["dns"]`` and ``["gateway"]``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import dns.asyncquery
import dns.exception
import dns.message

from atoll.model import Metadata, ProbeReport, ProbeReportSpec, ProbeResult
from atoll_agent.hysteresis import Hysteresis

__all__ = ["CHECKS", "Check", "Prober", "build_probe_report", "check_dns", "check_gateway"]

log = logging.getLogger("atoll.agent.probes")

Path = Literal["dns", "gateway"]

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


PROBE_SNI = "atoll-probe.invalid"


async def check_gateway(address: str) -> tuple[bool, str]:
    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(
                host.strip("[]"), int(port), ssl=ctx, server_hostname=PROBE_SNI
            )
    except ssl.SSLError as exc:
        return True, f"TLS answered ({exc.reason or type(exc).__name__})"
    except (ConnectionResetError, asyncio.IncompleteReadError):
        # accepted, read our ClientHello and closed (an alert then a reset): a live
        # process made that decision; a dead one refuses, a hung one stays silent
        return True, "TLS connection answered and closed"
    except TimeoutError:
        return False, f"no TLS answer within {PROBE_TIMEOUT}s"
    except (OSError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    writer.close()
    return True, "TLS handshake completed"


CHECKS: dict[Path, Check] = {"dns": check_dns, "gateway": check_gateway}


def _key(cluster: str, path: Path) -> str:
    return f"{cluster}/{path}"


def build_probe_report(
    vantage: str, h: Hysteresis, details: Mapping[str, str], *, interval: float
) -> ProbeReport:
    """The report for the debounced states in ``h`` (keys are ``cluster/path``)."""
    return ProbeReport(
        metadata=Metadata(name=vantage, owner=f"agent/{vantage}"),
        spec=ProbeReportSpec(
            vantage=vantage,
            interval_seconds=interval,
            rise=h.rise,
            fall=h.fall,
            results=[
                ProbeResult(
                    target=key.split("/")[0],
                    path="gateway" if key.endswith("/gateway") else "dns",
                    up=up,
                    detail=details.get(key, "")[:300],
                )
                for key, up in sorted(h.states().items())
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
        checks: Mapping[Path, Check] = CHECKS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.vantage = vantage
        self.interval = interval
        self.checks = dict(checks)
        self.sleep = sleep
        #: "cluster/path" -> (path, address)
        self.targets: dict[str, tuple[Path, str]] = {}
        self.hysteresis = Hysteresis(rise=rise, fall=fall)

    def set_targets(self, targets: Mapping[str, Mapping[str, str]]) -> None:
        """cluster -> {path: address} of every *other* cluster to probe."""
        self.targets = {
            _key(c, path): (path, addr)
            for c, paths in targets.items()
            if c != self.vantage
            for path in self.checks
            if (addr := paths.get(path)) is not None
        }

    async def round(self) -> tuple[Hysteresis, dict[str, str]]:
        keys = sorted(self.targets)
        results = await asyncio.gather(
            *(self.checks[path](addr) for path, addr in (self.targets[k] for k in keys))
        )
        observed = {k: up for k, (up, _) in zip(keys, results, strict=True)}
        details = {k: d for k, (_, d) in zip(keys, results, strict=True)}
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
