"""The lab's shape, decided purely from a few options.

Each cluster gets its own loopback address ``<prefix>.<n>.1`` (any 127.x.y.z
works on Linux without setup), so every component of a cluster can use the
same well-known port and addresses tell clusters apart — as they would on real
networks. The control plane lives on ``<prefix>.0.1``.

Trust (:mod:`atoll.trusthub`): the federation domain is ``atoll.lab``, each
cluster's ``<cluster>.atoll.lab``. Secrets live under ``<state>/trust/``
(mode 0700): the control plane's KEK and one KEK per cluster agent (0600), and
the federation bundle the agents are started with. Each agent serves the
Workload API to its cluster's DNS server (``dns`` → ``/atoll/dns``), its
east-west gateway (``gateway`` → ``/atoll/gateway``) and a demo workload
(``web`` → ``/demo/web``), on sockets in its state directory.

Gateways (:mod:`atoll_gateway`): each cluster's gateway listens for TLS on
``<prefix>.<n>.1:15443`` (admin ``:15000``) and opens its egress listeners on
``<prefix>.<n>.2`` at each imported service's port, so a local client reaches
``demo/web`` of the federation at ``<prefix>.<n>.2:8080``. ``demo/web`` is
terminated (mTLS between gateways, PROXY v2 to the endpoint) and its
instances are real: a demo server per cluster answers on their addresses with
the caller's SPIFFE ID. ``demo/api`` stays passthrough (registered addresses only).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path

from atoll.errors import InvalidError

__all__ = [
    "DEMO_GATEWAY_SERVICE",
    "DEMO_NAMESPACE",
    "FEDERATION_DOMAIN",
    "LAB_WORKLOADS",
    "ClusterPlan",
    "DemoInstance",
    "DemoService",
    "LabPlan",
    "RegionPlan",
    "plan_lab",
]

DEMO_NAMESPACE = "demo"
FEDERATION_DOMAIN = "atoll.lab"
#: Workload API registrations of every lab agent: name -> SPIFFE ID path
LAB_WORKLOADS = {"dns": "atoll/dns", "gateway": "atoll/gateway", "web": "demo/web"}
#: the demo service whose instances run the demo server, terminated by the gateways
DEMO_GATEWAY_SERVICE = "web"


@dataclass(frozen=True, slots=True)
class RegionPlan:
    name: str
    display_name: str
    latitude: float
    longitude: float
    #: client networks located in the region (geo DNS): the cluster's loopback
    #: /24, so a resolver on it is "in" the region, and a private /16 for ECS demos
    client_networks: tuple[str, ...] = ()


#: the lab's regions, in cluster order; coordinates of the cities named
REGIONS = (
    RegionPlan("eu-west", "Dublin", 53.35, -6.26),
    RegionPlan("us-east", "Ashburn", 39.04, -77.49),
    RegionPlan("ap-south", "Mumbai", 19.08, 72.88),
    RegionPlan("sa-east", "Sao Paulo", -23.55, -46.63),
    RegionPlan("af-south", "Cape Town", -33.92, 18.42),
    RegionPlan("ap-northeast", "Tokyo", 35.68, 139.69),
)


@dataclass(frozen=True, slots=True)
class DemoInstance:
    id: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class DemoService:
    name: str
    port_name: str
    port: int
    instances: tuple[DemoInstance, ...]


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    name: str
    region: str
    zone: str
    ip: str
    registry_port: int
    agent_port: int
    dns_port: int
    dns_admin_port: int
    gateway_port: int
    gateway_admin_port: int
    state_dir: Path
    services: tuple[DemoService, ...]
    #: the agent's key-encryption key (seals the cluster CA)
    kek_file: Path

    @property
    def registry_url(self) -> str:
        return f"http://{self.ip}:{self.registry_port}"

    @property
    def agent_url(self) -> str:
        return f"http://{self.ip}:{self.agent_port}"

    @property
    def dns_listen(self) -> str:
        return f"{self.ip}:{self.dns_port}"

    @property
    def dns_admin_url(self) -> str:
        return f"http://{self.ip}:{self.dns_admin_port}"

    @property
    def gateway_listen(self) -> str:
        return f"{self.ip}:{self.gateway_port}"

    @property
    def gateway_admin_url(self) -> str:
        return f"http://{self.ip}:{self.gateway_admin_port}"

    @property
    def egress_host(self) -> str:
        """Where the gateway opens egress listeners (``<prefix>.<n>.2``)."""
        return self.ip.rsplit(".", 1)[0] + ".2"

    @property
    def nameserver(self) -> str:
        """This cluster's NS name in the federated zone (relative)."""
        return f"ns-{self.name}"

    @property
    def agent_state_dir(self) -> Path:
        return self.state_dir / "agent"

    def workload_socket(self, workload: str) -> Path:
        return self.agent_state_dir / "workload" / f"{workload}.sock"


@dataclass(frozen=True, slots=True)
class LabPlan:
    prefix: str
    state_dir: Path
    control_ip: str
    api_port: int
    sync_port: int
    enroll_port: int
    bundle_port: int
    control_port: int
    lease_ttl: int
    zone: str
    #: job broker URL; None = the embedded filesystem broker in the state dir
    broker: str | None
    regions: tuple[RegionPlan, ...]
    clusters: tuple[ClusterPlan, ...]
    #: DNS answers other clusters' targets with the local gateway egress
    dns_via_gateways: bool = False

    @property
    def api_url(self) -> str:
        return f"http://{self.control_ip}:{self.api_port}"

    @property
    def sync_target(self) -> str:
        return f"{self.control_ip}:{self.sync_port}"

    @property
    def enroll_target(self) -> str:
        return f"{self.control_ip}:{self.enroll_port}"

    @property
    def control_url(self) -> str:
        """The lab's own control API (kill/restart a cluster for chaos drills)."""
        return f"http://{self.control_ip}:{self.control_port}"

    @property
    def broker_url(self) -> str:
        """The job broker; by default embedded: a directory, no server (kombu filesystem)."""
        return self.broker or f"filesystem://{(self.state_dir / 'broker').absolute()}"

    @property
    def bundle_endpoint(self) -> str:
        """The federation's SPIFFE bundle endpoint (https_spiffe profile)."""
        return f"https://{self.control_ip}:{self.bundle_port}/"

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"

    @property
    def kek_file(self) -> Path:
        """The control plane's key-encryption key."""
        return self.trust_dir / "control-plane.kek"

    @property
    def bundle_file(self) -> Path:
        """The federation bundle agents trust the control plane with."""
        return self.trust_dir / "federation-bundle.json"

    @property
    def store_url(self) -> str:
        return f"sqlite://{self.store_path}"

    @property
    def store_path(self) -> Path:
        return (self.state_dir / "control-plane" / "store.db").absolute()


_PREFIX = re.compile(r"127\.(\d{1,3})")


def _demo_services(ip: str) -> tuple[DemoService, ...]:
    base = ip.rsplit(".", 1)[0]
    return (
        DemoService(
            name="web",
            port_name="http",
            port=8080,
            instances=(
                DemoInstance("web-1", f"{base}.11", 8080),
                DemoInstance("web-2", f"{base}.12", 8080),
            ),
        ),
        DemoService(
            name="api",
            port_name="grpc",
            port=9090,
            instances=(
                DemoInstance("api-1", f"{base}.21", 9090),
                DemoInstance("api-2", f"{base}.22", 9090),
            ),
        ),
    )


def plan_lab(
    *,
    state_dir: Path,
    prefix: str = "127.0",
    clusters: int = 3,
    api_port: int = 7070,
    sync_port: int = 7071,
    enroll_port: int = 7072,
    bundle_port: int = 7073,
    control_port: int = 7079,
    registry_port: int = 8500,
    agent_port: int = 8501,
    dns_port: int = 53,
    dns_admin_port: int = 8553,
    gateway_port: int = 15443,
    gateway_admin_port: int = 15000,
    lease_ttl: int = 5,
    zone: str = "atoll.test.",
    broker: str | None = None,
    dns_via_gateways: bool = False,
) -> LabPlan:
    """Plan a lab of ``clusters`` clusters (1-6), one per region."""
    m = _PREFIX.fullmatch(prefix)
    if m is None or int(m.group(1)) > 255:
        raise InvalidError(
            f"--loopback {prefix!r}: give the first two octets of a loopback range, "
            "e.g. 127.0 or 127.42",
            field="loopback",
        )
    if not 1 <= clusters <= len(REGIONS):
        raise InvalidError(f"--clusters must be 1-{len(REGIONS)}", field="clusters")
    for what, port in (
        ("api", api_port),
        ("sync", sync_port),
        ("enroll", enroll_port),
        ("bundle", bundle_port),
        ("lab control", control_port),
        ("registry", registry_port),
        ("agent", agent_port),
        ("dns", dns_port),
        ("dns admin", dns_admin_port),
        ("gateway", gateway_port),
        ("gateway admin", gateway_admin_port),
    ):
        if not 1 <= port <= 65535:
            raise InvalidError(f"{what} port {port} is not 1-65535", field=f"{what}_port")
    control_ip = f"{prefix}.0.1"
    ipaddress.ip_address(control_ip)
    regions = tuple(
        replace(r, client_networks=(f"{prefix}.{i}.0/24", f"10.{i}.0.0/16"))
        for i, r in enumerate(REGIONS[:clusters], start=1)
    )
    plans = []
    for i, region in enumerate(regions, start=1):
        ip = f"{prefix}.{i}.1"
        name = f"{region.name}-1"
        plans.append(
            ClusterPlan(
                name=name,
                region=region.name,
                zone=f"{region.name}-1a",
                ip=ip,
                registry_port=registry_port,
                agent_port=agent_port,
                dns_port=dns_port,
                dns_admin_port=dns_admin_port,
                gateway_port=gateway_port,
                gateway_admin_port=gateway_admin_port,
                state_dir=state_dir / "clusters" / name,
                services=_demo_services(ip),
                kek_file=state_dir / "trust" / f"{name}.kek",
            )
        )
    return LabPlan(
        prefix=prefix,
        state_dir=state_dir,
        control_ip=control_ip,
        api_port=api_port,
        sync_port=sync_port,
        enroll_port=enroll_port,
        bundle_port=bundle_port,
        control_port=control_port,
        lease_ttl=lease_ttl,
        broker=broker,
        zone=zone,
        regions=regions,
        clusters=tuple(plans),
        dns_via_gateways=dns_via_gateways,
    )
