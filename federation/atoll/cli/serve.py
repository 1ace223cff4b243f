"""Process commands: ``atoll serve`` (control plane), ``atoll agent``, ``atoll registry``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atoll.cli.common import fail
from atoll.cli.runner import run_component

__all__ = ["agent", "registry", "serve"]

INSECURE_HELP = (
    "development only: plaintext sync channel, no identities or authorization "
    "(never on an untrusted network)"
)
FederationDomain = Annotated[
    str,
    typer.Option(
        envvar="ATOLL_FEDERATION_DOMAIN",
        help="the federation's SPIFFE trust domain (clusters get <cluster>.<this>)",
    ),
]
KekFile = Annotated[
    Path | None,
    typer.Option(
        help="key-encryption key sealing CA keys at rest (default: $ATOLL_TRUST_KEK); "
        "create one with `atoll trust kek`"
    ),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]
LogFormat = Annotated[str, typer.Option("--log-format", help="json (default) or text")]


def hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(f"{what} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:7070")
    return host.strip("[]"), int(port)


def serve(
    store: Annotated[
        str,
        typer.Option(help="sqlite:///path.db (embedded) or etcd://host:port[,host:port...]"),
    ] = "sqlite://atoll.db",
    api: Annotated[str, typer.Option(help="REST API listen address HOST:PORT")] = "127.0.0.1:7070",
    sync: Annotated[
        str, typer.Option(help="sync (gRPC, mTLS) listen address HOST:PORT")
    ] = "127.0.0.1:7071",
    enroll: Annotated[
        str, typer.Option(help="enrollment (gRPC, server-authenticated TLS) address HOST:PORT")
    ] = "127.0.0.1:7072",
    federation_domain: FederationDomain = "atoll.lab",
    kek_file: KekFile = None,
    bundle_endpoint: Annotated[
        str | None,
        typer.Option(help="serve the federation's SPIFFE bundle endpoint on HOST:PORT"),
    ] = None,
    bundle_endpoint_cert: Annotated[
        Path | None,
        typer.Option(help="https_web profile: Web PKI certificate chain (PEM) of the endpoint"),
    ] = None,
    bundle_endpoint_key: Annotated[
        Path | None, typer.Option(help="https_web profile: its private key (PEM)")
    ] = None,
    svid_ttl: Annotated[
        int, typer.Option(min=60, help="lifetime of the SVIDs the federation CA issues, seconds")
    ] = 3600,
    ca_publish_lead: Annotated[
        float,
        typer.Option(
            min=0.0, help="seconds a forced rotation's new CA is published before it signs"
        ),
    ] = 300.0,
    server_id: Annotated[str, typer.Option(help="replica id (default: hostname:api-port)")] = "",
    lease_ttl: Annotated[
        int, typer.Option(min=2, max=300, help="cluster liveness lease, seconds")
    ] = 5,
    leader_ttl: Annotated[int, typer.Option(min=2, max=300, help="leader lease, seconds")] = 5,
    insecure: Annotated[bool, typer.Option("--insecure", help=INSECURE_HELP)] = False,
    broker: Annotated[
        str | None,
        typer.Option(help="job broker for drills: redis://host:port/db or filesystem:///abs/dir"),
    ] = None,
    public_api: Annotated[
        str | None, typer.Option(help="API URL workers call back (default: http://<--api>)")
    ] = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run a global control plane replica: store, REST API, sync server, reconciler, trust hub."""
    import datetime as dt

    from atoll.control.plane import ControlPlane, PlaneConfig
    from atoll.errors import AtollError
    from atoll.trusthub.hub import TrustSettings
    from atoll.trusthub.naming import parse_federation_domain
    from atoll_trust.rotation import RotationPolicy

    api_host, api_port = hostport(api, "--api")
    sync_host, sync_port = hostport(sync, "--sync")
    enroll_host, enroll_port = hostport(enroll, "--enroll")
    endpoint = hostport(bundle_endpoint, "--bundle-endpoint") if bundle_endpoint else None
    if (bundle_endpoint_cert is None) != (bundle_endpoint_key is None):
        fail("--bundle-endpoint-cert and --bundle-endpoint-key go together (https_web profile)")
    try:
        if broker is not None:
            from atoll.jobs.app import parse_broker

            parse_broker(broker)
        parse_federation_domain(federation_domain)
        ttl = dt.timedelta(seconds=svid_ttl)
        policy = RotationPolicy(
            ca_ttl=max(dt.timedelta(hours=24), ttl * 6),
            x509_svid_ttl=ttl,
            min_publish_lead=dt.timedelta(seconds=ca_publish_lead),
        )
    except AtollError as exc:
        fail(str(exc))
    config = PlaneConfig(
        store_url=store,
        api_host=api_host,
        api_port=api_port,
        sync_host=sync_host,
        sync_port=sync_port,
        enroll_host=enroll_host,
        enroll_port=enroll_port,
        server_id=server_id,
        lease_ttl=lease_ttl,
        leader_ttl=leader_ttl,
        insecure=insecure,
        bundle_endpoint=endpoint,
        bundle_web_cert=bundle_endpoint_cert,
        bundle_web_key=bundle_endpoint_key,
        trust=TrustSettings(federation_domain=federation_domain, kek_file=kek_file, policy=policy),
        broker=broker,
        public_api=public_api,
    )
    run_component(
        "control-plane",
        lambda: ControlPlane(config).run(),
        log_level=log_level,
        log_format=log_format,
    )


def agent(
    cluster: Annotated[str, typer.Option(help="this cluster's name (a DNS label)")],
    region: Annotated[str, typer.Option(help="the cluster's region (a DNS label)")],
    control_plane: Annotated[str, typer.Option(help="control plane sync address HOST:PORT")],
    state_dir: Annotated[
        Path, typer.Option(help="where the agent persists its last-known-good state")
    ],
    registry_url: Annotated[
        str | None, typer.Option(help="catalog source: the cluster's registry URL")
    ] = None,
    catalog_file: Annotated[
        Path | None, typer.Option(help="catalog source: a YAML/JSON catalog file")
    ] = None,
    zone: Annotated[str | None, typer.Option(help="the cluster's zone")] = None,
    listen: Annotated[
        str, typer.Option(help="agent API listen address HOST:PORT")
    ] = "127.0.0.1:8501",
    address: Annotated[
        list[str] | None,
        typer.Option(help="a federation-facing address NAME=HOST:PORT (repeatable)"),
    ] = None,
    federation_domain: FederationDomain = "atoll.lab",
    join_token: Annotated[
        str | None,
        typer.Option(
            envvar="ATOLL_JOIN_TOKEN",
            help="first start only: one-time token from `atoll join-token create`",
        ),
    ] = None,
    federation_bundle: Annotated[
        Path | None,
        typer.Option(help="first start only: the federation's SPIFFE bundle JSON"),
    ] = None,
    enroll: Annotated[
        str | None,
        typer.Option(help="first start only: the control plane's enrollment address HOST:PORT"),
    ] = None,
    kek_file: KekFile = None,
    workload: Annotated[
        list[str] | None,
        typer.Option(
            help="serve NAME an SVID for spiffe://<cluster domain>/PATH on "
            "<state-dir>/workload/NAME.sock: NAME=PATH (repeatable)"
        ),
    ] = None,
    federates_with: Annotated[
        list[str] | None,
        typer.Option(help="only these trust domains receive this cluster's bundle (repeatable)"),
    ] = None,
    ca_publish_lead: Annotated[
        float,
        typer.Option(
            min=0.0, help="seconds a forced rotation's new CA is published before it signs"
        ),
    ] = 300.0,
    health_interval: Annotated[
        float, typer.Option(min=0.05, max=60, help="seconds between health samples and probes")
    ] = 1.0,
    rise: Annotated[int, typer.Option(min=1, max=100, help="good samples before up")] = 2,
    fall: Annotated[int, typer.Option(min=1, max=100, help="bad samples before down")] = 3,
    probes: Annotated[
        bool, typer.Option(help="probe the other clusters' DNS servers (active health checks)")
    ] = True,
    insecure: Annotated[bool, typer.Option("--insecure", help=INSECURE_HELP)] = False,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run a cluster agent: report exports, receive imports, run the cluster CA and Workload API."""
    from pydantic import ValidationError

    from atoll.model.base import invalid_from
    from atoll_agent.agent import Agent
    from atoll_agent.config import AgentConfig

    host, port = hostport(listen, "--listen")
    if enroll is not None:
        hostport(enroll, "--enroll")
    addresses: dict[str, str] = {}
    for item in address or []:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"--address {item!r}: expected NAME=HOST:PORT")
        addresses[name] = value
    workloads: dict[str, str] = {}
    for item in workload or []:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"--workload {item!r}: expected NAME=SPIFFE-ID-PATH, e.g. dns=atoll/dns")
        workloads[name] = value
    try:
        config = AgentConfig(
            cluster=cluster,
            region=region,
            zone=zone,
            control_plane=control_plane,
            registry_url=registry_url,
            catalog_file=catalog_file,
            listen_host=host,
            listen_port=port,
            state_dir=state_dir,
            addresses=addresses,
            insecure=insecure,
            federation_domain=federation_domain,
            join_token=join_token,
            federation_bundle_file=federation_bundle,
            enroll_endpoint=enroll,
            kek_file=kek_file,
            workloads=workloads,
            federates_with=tuple(federates_with or ()),
            ca_publish_lead=ca_publish_lead,
            health_interval=health_interval,
            rise=rise,
            fall=fall,
            probes=probes,
        )
    except ValidationError as exc:
        fail(str(invalid_from(exc, "agent configuration")))
    run_component(
        f"agent/{cluster}", lambda: Agent(config).run(), log_level=log_level, log_format=log_format
    )


def registry(
    listen: Annotated[str, typer.Option(help="listen address HOST:PORT")] = "127.0.0.1:8500",
    state_file: Annotated[
        Path | None, typer.Option(help="persist the catalog here (default: memory only)")
    ] = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run a cluster's built-in service registry (HTTP catalog with health)."""
    from atoll_agent.registry import serve_registry

    host, port = hostport(listen, "--listen")
    run_component(
        "registry",
        lambda: serve_registry(host=host, port=port, state_file=state_file),
        log_level=log_level,
        log_format=log_format,
    )
