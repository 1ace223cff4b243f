"""Process commands: ``atoll serve`` (control plane), ``atoll agent``, ``atoll registry``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atoll.cli.common import fail
from atoll.cli.runner import run_component

__all__ = ["agent", "registry", "serve"]

NO_MTLS = (
    "the sync channel has no mTLS yet: pass --insecure to run it in plaintext on a trusted network"
)
NO_MTLS = (
    "the sync channel has no mTLS yet: pass --insecure to run it in plaintext on a trusted network"
)
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
        str, typer.Option(help="sync (gRPC) listen address HOST:PORT")
    ] = "127.0.0.1:7071",
    server_id: Annotated[str, typer.Option(help="replica id (default: hostname:api-port)")] = "",
    lease_ttl: Annotated[
        int, typer.Option(min=2, max=300, help="cluster liveness lease, seconds")
    ] = 5,
    leader_ttl: Annotated[int, typer.Option(min=2, max=300, help="leader lease, seconds")] = 5,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="plaintext sync channel on a trusted network (development; mTLS is not built yet)",
        ),
    ] = False,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run a global control plane replica: store, REST API, sync server, reconciler."""
    from atoll.control.plane import ControlPlane, PlaneConfig

    if not insecure:
        fail(NO_MTLS)
    api_host, api_port = hostport(api, "--api")
    sync_host, sync_port = hostport(sync, "--sync")
    config = PlaneConfig(
        store_url=store,
        api_host=api_host,
        api_port=api_port,
        sync_host=sync_host,
        sync_port=sync_port,
        server_id=server_id,
        lease_ttl=lease_ttl,
        leader_ttl=leader_ttl,
        insecure=insecure,
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
    insecure: Annotated[
        bool, typer.Option("--insecure", help="plaintext sync channel (development; no mTLS yet)")
    ] = False,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run a cluster agent: report the cluster's exports, receive its imports."""
    from pydantic import ValidationError

    from atoll.model.base import invalid_from
    from atoll_agent.agent import Agent
    from atoll_agent.config import AgentConfig

    if not insecure:
        fail(NO_MTLS)
    host, port = hostport(listen, "--listen")
    addresses: dict[str, str] = {}
    for item in address or []:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"--address {item!r}: expected NAME=HOST:PORT")
        addresses[name] = value
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
