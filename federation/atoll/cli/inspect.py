"""Read commands: ``atoll status`` and ``atoll get <kind>``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from atoll.cli.common import Output, api_client, console, emit_json, user_errors

__all__ = ["get_app", "status"]

get_app = typer.Typer(help="List federation resources.", no_args_is_help=True)

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f}s" if secs < 120 else f"{secs / 60:.0f}m"


def _lease(left: float | None) -> str:
    return "[red]expired[/]" if left is None else f"{left:.1f}s"


def cluster_table(views: list[dict[str, Any]]) -> Table:
    t = Table(title="Clusters", title_justify="left")
    for col in (
        "cluster",
        "region",
        "admin",
        "connected",
        "alive",
        "health",
        "exports",
        "last report",
        "lease left",
    ):
        t.add_column(col)
    for v in views:
        c = v["cluster"]
        st = c["status"]
        t.add_row(
            c["metadata"]["name"],
            c["spec"]["region"],
            c["spec"]["admin_state"],
            "yes" if st["connected"] else "[red]no[/]",
            "yes" if st["alive"] else "[red]no[/]",
            st["health"],
            str(st["exports"]),
            (st["last_report"] or "-").replace("T", " ")[:19],
            _lease(v["lease_remaining"]),
        )
    return t


def services_table(rows: list[dict[str, Any]], clusters: list[str]) -> Table:
    t = Table(title="Services x clusters (healthy/total endpoints)", title_justify="left")
    t.add_column("service")
    t.add_column("ports")
    for c in clusters:
        t.add_column(c)
    t.add_column("conflicts")
    for r in rows:
        t.add_row(
            f"{r['namespace']}/{r['name']}",
            ", ".join(r["ports"]),
            *[r["clusters"].get(c, "-") for c in clusters],
            ", ".join(r["conflicts"]) or "",
        )
    return t


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    t = Table(title="Sync nodes", title_justify="left")
    for col in (
        "node",
        "connected",
        "since",
        "type",
        "acked version",
        "pending",
        "pushes",
        "NACKs",
        "last NACK",
    ):
        t.add_column(col)
    for n in nodes:
        subs = n["subscriptions"] or [None]
        for i, s in enumerate(subs):
            first = i == 0
            t.add_row(
                n["id"] if first else "",
                ("yes" if n["connected"] else "[red]no[/]") if first else "",
                _age(n["connected_at"] if n["connected"] else n["disconnected_at"])
                if first
                else "",
                s["type"] if s else "-",
                s["acked_version"] if s else "-",
                (s["pending_nonce"] or "") if s else "",
                str(s["pushes"]) if s else "",
                str(s["nacks"]) if s else "",
                (s["last_nack_message"] or "")[:60] if s else "",
            )
    return t


@user_errors
def status(
    ctx: typer.Context,
    output: OutputOpt = Output.table,
) -> None:
    """Show clusters (connected, last report, lease left), services x clusters, and sync nodes."""
    with api_client(ctx) as api:
        doc = api.get("/v1/status")
    if output is Output.json:
        emit_json(doc)
        return
    leader = doc["leader"] or "none"
    console.print(
        f"control plane [bold]{doc['server_id']}[/] · leader {leader} · "
        f"store revision {doc['store_revision']}"
    )
    t = doc.get("timings")
    if t:
        console.print(
            f"withdrawal bound: dead cluster [bold]{t['death_withdrawal']:.2f}s[/] "
            f"(lease {t['lease_ttl']:g}s + expiry sweep {t['expiry_sweep']:g}s + "
            f"debounce {t['reconcile_debounce']:g}s + push {t['push_allowance']:g}s), "
            f"drained cluster [bold]{t['drain_withdrawal']:.2f}s[/]"
        )
    console.print(cluster_table(doc["clusters"]))
    names = [v["cluster"]["metadata"]["name"] for v in doc["clusters"]]
    console.print(services_table(doc["services"], names))
    console.print(nodes_table(doc["nodes"]))


def _list(
    ctx: typer.Context,
    path: str,
    output: Output,
    columns: list[tuple[str, Any]],
    **params: str | None,
) -> None:
    with api_client(ctx) as api:
        items = api.get(path, **params)
    if output is Output.json:
        emit_json(items)
        return
    t = Table()
    for title, _ in columns:
        t.add_column(title)
    for it in items:
        t.add_row(*[str(fn(it)) for _, fn in columns])
    console.print(t)


@get_app.command("clusters")
@user_errors
def get_clusters(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List clusters with their liveness."""
    with api_client(ctx) as api:
        views = api.get("/v1/clusters")
    if output is Output.json:
        emit_json(views)
    else:
        console.print(cluster_table(views))


def _endpoint_counts(e: dict[str, Any]) -> str:
    eps = e["spec"]["endpoints"]
    return f"{sum(1 for x in eps if x['healthy'])}/{len(eps)}"


@get_app.command("exports")
@user_errors
def get_exports(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option(help="only this cluster's exports")] = None,
    namespace: Annotated[str | None, typer.Option(help="only this namespace")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List ServiceExports (what each cluster exports)."""

    def ready(e: dict[str, Any]) -> str:
        cond = next((c for c in e["status"]["conditions"] if c["type"] == "Ready"), None)
        return "-" if cond is None else f"{cond['status']} ({cond['reason']})"

    _list(
        ctx,
        "/v1/exports",
        output,
        [
            ("cluster", lambda e: e["spec"]["cluster"]),
            ("service", lambda e: f"{e['metadata']['namespace']}/{e['metadata']['name']}"),
            ("ports", lambda e: ",".join(str(p["port"]) for p in e["spec"]["ports"])),
            ("endpoints", _endpoint_counts),
            ("ready", ready),
        ],
        cluster=cluster,
        namespace=namespace,
    )


@get_app.command("imports")
@user_errors
def get_imports(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Option(help="only this namespace")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """List ServiceImports (the federation-wide view of each service)."""
    _list(
        ctx,
        "/v1/imports",
        output,
        [
            ("service", lambda i: f"{i['metadata']['namespace']}/{i['metadata']['name']}"),
            ("ports", lambda i: ",".join(str(p["port"]) for p in i["spec"]["ports"])),
            (
                "clusters",
                lambda i: " ".join(
                    f"{t['cluster']}{'' if t['healthy'] else '(unhealthy)'}"
                    for t in i["spec"]["targets"]
                ),
            ),
            ("conflicts", lambda i: ",".join(c["cluster"] for c in i["status"]["conflicts"])),
        ],
        namespace=namespace,
    )


@get_app.command("regions")
@user_errors
def get_regions(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List regions."""
    _list(
        ctx,
        "/v1/regions",
        output,
        [
            ("region", lambda r: r["metadata"]["name"]),
            ("name", lambda r: r["spec"]["display_name"]),
            ("lat,lon", lambda r: f"{r['spec']['latitude']},{r['spec']['longitude']}"),
            ("client networks", lambda r: ",".join(r["spec"]["client_networks"])),
        ],
    )


@get_app.command("policies")
@user_errors
def get_policies(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List traffic policies."""
    _list(
        ctx,
        "/v1/policies",
        output,
        [
            ("service", lambda p: f"{p['metadata']['namespace']}/{p['metadata']['name']}"),
            ("strategy", lambda p: p["spec"]["strategy"]),
            ("priorities", lambda p: " > ".join(",".join(g) for g in p["spec"]["priorities"])),
            ("ttl", lambda p: p["spec"]["ttl"]),
        ],
    )


@get_app.command("nodes")
@user_errors
def get_nodes(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """List sync nodes with their acked versions and NACKs."""
    with api_client(ctx) as api:
        nodes = api.get("/v1/nodes")
    if output is Output.json:
        emit_json(nodes)
    else:
        console.print(nodes_table(nodes))
