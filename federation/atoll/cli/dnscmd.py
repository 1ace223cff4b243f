"""``atoll dns``: run a cluster's DNS server; ask every DNS server what it answers, and why."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from atoll.cli.common import Output, console, emit_json, fail, globals_of, user_errors
from atoll.cli.runner import run_component
from atoll.cli.serve import INSECURE_HELP, FederationDomain, LogFormat, LogLevel, hostport

__all__ = ["dns_app"]

dns_app = typer.Typer(help="Federated DNS: serve the zone, query it.", no_args_is_help=True)


@dns_app.command("serve")
def dns_serve(
    cluster: Annotated[str, typer.Option(help="the cluster this DNS server belongs to")],
    control_plane: Annotated[str, typer.Option(help="control plane sync address HOST:PORT")],
    state_dir: Annotated[Path, typer.Option(help="where the last-known-good zone is kept")],
    listen: Annotated[str, typer.Option(help="DNS listen address HOST:PORT (UDP and TCP)")] = (
        "127.0.0.1:53"
    ),
    admin: Annotated[str, typer.Option(help="admin HTTP address HOST:PORT")] = "127.0.0.1:8553",
    zone: Annotated[str, typer.Option(help="the federated zone")] = "atoll.test.",
    workers: Annotated[int, typer.Option(min=1, max=64, help="SO_REUSEPORT processes")] = 1,
    nameserver: Annotated[
        list[str] | None, typer.Option(help="NS record NAME=ADDRESS (repeatable)")
    ] = None,
    workload_socket: Annotated[
        Path | None,
        typer.Option(
            help="the cluster agent's Workload API socket for this server (its SVID for mTLS)"
        ),
    ] = None,
    federation_domain: FederationDomain = "atoll.lab",
    egress_address: Annotated[
        str | None,
        typer.Option(
            help="answer this address (the cluster gateway's egress host) for services' "
            "targets in other clusters, so clients reach them only through the gateways; "
            "default: the targets' endpoint addresses"
        ),
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help=INSECURE_HELP)] = False,
    log_level: LogLevel = "info",
    log_format: LogFormat = "json",
) -> None:
    """Run an authoritative DNS server for the federated zone, fed by the control plane."""
    from pydantic import ValidationError

    from atoll.errors import AtollError
    from atoll.model.base import invalid_from
    from atoll.trusthub.client import WorkloadIdentity
    from atoll.trusthub.naming import parse_federation_domain
    from atoll_dns.config import DnsConfig, NameServerConfig
    from atoll_dns.node import DnsNode
    from atoll_trust.workload_api.client import X509Source

    if insecure == (workload_socket is not None):
        fail(
            "give --workload-socket (the agent's Workload API socket of this DNS server, "
            "for mTLS) or, in development only, --insecure"
        )
    identity: WorkloadIdentity | None = None
    if workload_socket is not None:
        try:
            federation = parse_federation_domain(federation_domain)
        except AtollError as exc:
            fail(str(exc))
        identity = WorkloadIdentity(X509Source(workload_socket), federation=federation)
    host, port = hostport(listen, "--listen")
    admin_host, admin_port = hostport(admin, "--admin")
    servers: list[NameServerConfig] = []
    try:
        for item in nameserver or []:
            name, sep, addr = item.partition("=")
            if not sep:
                fail(f"--nameserver {item!r}: expected NAME=ADDRESS")
            servers.append(NameServerConfig.model_validate({"name": name, "addresses": [addr]}))
        config = DnsConfig.model_validate(
            {
                "zone": zone,
                "listen_host": host,
                "listen_port": port,
                "workers": workers,
                "nameservers": servers,
                "cluster": cluster,
                "egress_address": egress_address,
            }
        )
    except ValidationError as exc:
        fail(str(invalid_from(exc, "DNS configuration")))
    state_dir.mkdir(parents=True, exist_ok=True)
    node = DnsNode(
        config,
        cluster=cluster,
        control_plane=control_plane,
        state_dir=state_dir,
        admin_host=admin_host,
        admin_port=admin_port,
        identity=identity,
    )
    run_component(f"dns/{cluster}", node.run, log_level=log_level, log_format=log_format)


def _dns_servers(ctx: typer.Context) -> list[dict[str, Any]]:
    manifest = globals_of(ctx).state_dir / "lab" / "manifest.json"
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        fail(f"no running lab found ({manifest}: {exc}); start one with `atoll up`")
    servers = [c["dns"] | {"cluster": c["name"]} for c in doc.get("clusters", []) if c.get("dns")]
    if not servers:
        fail("the lab manifest lists no DNS servers")
    return servers


def _ask(server: dict[str, Any], name: str, qtype: str, subnet: str | None) -> dict[str, Any]:
    import dns.edns
    import dns.exception
    import dns.message
    import dns.query

    host, _, port = str(server["listen"]).rpartition(":")
    options: list[dns.edns.Option] = []
    if subnet is not None:
        net = ip_network(subnet, strict=False)
        options.append(dns.edns.ECSOption(str(net.network_address), net.prefixlen))
    query = dns.message.make_query(name, qtype, use_edns=0, options=options)
    row: dict[str, Any] = {"cluster": server["cluster"], "server": server["listen"]}
    try:
        resp = dns.query.udp(query, host, port=int(port), timeout=2.0)
        row["rcode"] = dns.rcode.to_text(resp.rcode())
        row["answer"] = [rr.to_text() for rrset in resp.answer for rr in [rrset]]
    except (dns.exception.DNSException, OSError) as exc:
        row["rcode"] = "ERROR"
        row["answer"] = [f"{type(exc).__name__}: {exc}"]
    params = {"name": name, "type": qtype}
    if subnet is not None:
        params["client_subnet"] = subnet
    try:
        why = httpx.get(f"{server['url']}/v1/explain", params=params, timeout=3.0)
        row["why"] = why.json().get("trace", []) if why.status_code == 200 else [why.text]
    except httpx.HTTPError as exc:
        row["why"] = [f"admin API unreachable: {exc}"]
    return row


@dns_app.command("query")
@user_errors
def dns_query(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the name to resolve, e.g. web.demo.atoll.test")],
    qtype: Annotated[str, typer.Option("--type", "-t", help="record type")] = "A",
    client_subnet: Annotated[
        str | None, typer.Option(help="pretend the client is in this subnet (EDNS Client Subnet)")
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json")] = Output.table,
) -> None:
    """Ask every cluster's DNS server for NAME, with the strategy's reasons."""
    if client_subnet is not None:
        try:
            ip_network(client_subnet, strict=False)
        except ValueError as exc:
            fail(f"--client-subnet: {exc}")
    rows = [_ask(s, name, qtype, client_subnet) for s in _dns_servers(ctx)]
    if output is Output.json:
        emit_json(rows)
        return
    t = Table(title=f"{name} {qtype}" + (f" for client {client_subnet}" if client_subnet else ""))
    for col in ("cluster", "server", "rcode", "answer", "why"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["cluster"], r["server"], r["rcode"], "\n".join(r["answer"]), "\n".join(r["why"])
        )
    console.print(t)
