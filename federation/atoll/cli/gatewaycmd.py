"""``atoll gateway``: run a cluster's east-west gateway; run the lab's demo workload server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atoll.cli.common import fail
from atoll.cli.runner import run_component
from atoll.cli.serve import INSECURE_HELP, FederationDomain, LogFormat, LogLevel, hostport

__all__ = ["gateway_app"]

gateway_app = typer.Typer(
    help="East-west gateways: SNI passthrough, SPIFFE-authorized termination, egress.",
    no_args_is_help=True,
)


@gateway_app.command("serve")
def gateway_serve(
    cluster: Annotated[str, typer.Option(help="the cluster this gateway belongs to")],
    state_dir: Annotated[Path, typer.Option(help="where the last-known-good sync state is kept")],
    control_plane: Annotated[
        str | None, typer.Option(help="control plane sync address HOST:PORT (egress routes)")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="gateway config file (YAML/JSON; reloaded on change and SIGHUP)"),
    ] = None,
    listen: Annotated[str | None, typer.Option(help="TLS listen address HOST:PORT")] = None,
    admin: Annotated[str | None, typer.Option(help="admin HTTP address HOST:PORT")] = None,
    zone: Annotated[str | None, typer.Option(help="the federated zone (SNI suffix)")] = None,
    egress_host: Annotated[
        str | None, typer.Option(help="open an egress listener on HOST at every imported port")
    ] = None,
    registry_url: Annotated[
        str | None, typer.Option(help="the cluster registry (local endpoints), http://HOST:PORT")
    ] = None,
    catalog_file: Annotated[
        Path | None, typer.Option(help="a catalog file instead of a registry")
    ] = None,
    workload_socket: Annotated[
        Path | None,
        typer.Option(help="the agent's Workload API socket for this gateway (its SVID)"),
    ] = None,
    federation_domain: FederationDomain = "atoll.lab",
    loop: Annotated[
        str,
        typer.Option(
            help="event loop: uvloop (default: a faster loop) or asyncio (the standard library's)"
        ),
    ] = "uvloop",
    insecure: Annotated[bool, typer.Option("--insecure", help=INSECURE_HELP)] = False,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run an east-west gateway: one TLS port routing by SNI, plus egress listeners."""
    import asyncio

    from pydantic import ValidationError

    from atoll.errors import AtollError
    from atoll.model.base import invalid_from
    from atoll_agent.catalog import CatalogSource, FileSource, RegistrySource
    from atoll_gateway.config import GatewayConfig, load_config
    from atoll_gateway.identity import ContextSource, StaticSource
    from atoll_gateway.node import GatewayNode
    from atoll_trust.workload_api.client import X509Source

    if (registry_url is None) == (catalog_file is None):
        fail("give exactly one of --registry-url and --catalog-file (the local endpoints)")
    if control_plane is not None and workload_socket is None and not insecure:
        fail("give --workload-socket (the gateway's SVID, for mTLS) or, in development, --insecure")
    for value, what in ((listen, "--listen"), (admin, "--admin")):
        if value is not None:
            hostport(value, what)
    overrides: dict[str, object] = {
        "cluster": cluster,
        "listen": listen,
        "admin": admin,
        "zone": zone,
        "egress_host": egress_host,
        "federation_domain": federation_domain,
    }
    try:
        if config is not None:
            cfg = load_config(config, **overrides)
        else:
            given = {k: v for k, v in overrides.items() if v is not None}
            cfg = GatewayConfig.model_validate(given)
    except AtollError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(str(invalid_from(exc, "gateway configuration")))
    catalog: CatalogSource = (
        RegistrySource(registry_url) if registry_url is not None else FileSource(catalog_file)  # type: ignore[arg-type]
    )
    source: ContextSource = (
        X509Source(workload_socket) if workload_socket is not None else StaticSource(None)
    )
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop != "asyncio":
        fail("--loop: asyncio or uvloop")
    state_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        node = GatewayNode(
            cfg,
            freeze_gc=True,
            catalog=catalog,
            source=source,
            control_plane=control_plane,
            state_dir=state_dir,
            config_path=config,
            config_overrides=overrides,
        )
        await node.run()

    run_component(f"gateway/{cluster}", main, log_level=log_level, log_format=log_format)


@gateway_app.command("demo-server")
def demo_server(
    cluster: Annotated[str, typer.Option(help="the cluster it runs in (echoed back)")],
    service: Annotated[str, typer.Option(help="the service it plays, namespace/name")],
    listen: Annotated[list[str], typer.Option(help="HOST:PORT to listen on (repeatable)")],
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """A demo workload: answers each HTTP request with who the caller is (PROXY v2 aware)."""
    from atoll_gateway.demo import DemoServer

    addresses = [hostport(a, "--listen") for a in listen]
    server = DemoServer(cluster=cluster, service=service)
    run_component(
        f"demo/{cluster}", lambda: server.run(addresses), log_level=log_level, log_format=log_format
    )


@gateway_app.command("compile")
def gateway_compile(
    out: Annotated[
        Path | None,
        typer.Option(help="build directory (default: .atoll-native beside the gateway package)"),
    ] = None,
) -> None:
    """Compile the gateway's relays with mypyc (~18% more keep-alive requests per CPU
    through termination). Gateways use them while they match the sources; needs mypy,
    setuptools and a C compiler (Debian: apt-get install gcc)."""
    from atoll_gateway import native

    typer.echo(f"compiling {', '.join(native.MODULES)} with mypyc (about 15 s)...", err=True)
    try:
        where = native.build(out)
    except native.BuildError as exc:
        fail(f"the compile failed; is a C compiler installed (apt-get install gcc)?\n{exc}")
    except ModuleNotFoundError as exc:
        fail(f"{exc.name} is missing: pip install mypy setuptools")
    typer.echo(f"compiled relays in {where}; gateways started from now on use them")
