"""``atoll drill``, ``atoll what-if`` and ``atoll worker``: failover exercises and predictions."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from atoll.cli.client import ApiClient
from atoll.cli.common import (
    Output,
    api_client,
    console,
    emit_json,
    err_console,
    fail,
    user_errors,
)
from atoll.model import Drill, Region, ServiceImport, TrafficPolicy

__all__ = ["drill_app", "what_if", "worker"]

drill_app = typer.Typer(help="Failover drills: plan, run, follow, report.", no_args_is_help=True)

ClusterOpt = Annotated[
    list[str] | None, typer.Option("--cluster", "-c", help="cluster to take out (repeatable)")
]
RegionOpt = Annotated[str | None, typer.Option(help="take out every cluster of this region")]
HoldOpt = Annotated[float, typer.Option(min=0, max=3600, help="seconds to hold the failover")]
BoundOpt = Annotated[
    float | None, typer.Option(help="seconds allowed to fail over (default: the stated bound)")
]
ZoneOpt = Annotated[str, typer.Option(help="the federated DNS zone")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table, json or text")]


def _fetch_world(api: ApiClient) -> tuple[list[ServiceImport], list[TrafficPolicy], list[Region]]:
    imports = [ServiceImport.model_validate(d) for d in api.get("/v1/imports")]
    policies = [TrafficPolicy.model_validate(d) for d in api.get("/v1/policies")]
    regions = [Region.model_validate(d) for d in api.get("/v1/regions")]
    return imports, policies, regions


def _targets(api: ApiClient, clusters: list[str] | None, region: str | None) -> list[str]:
    if bool(clusters) == (region is not None):
        fail("give --cluster (one or more) or --region")
    if clusters:
        return clusters
    views = api.get("/v1/clusters")
    found = sorted(
        v["cluster"]["metadata"]["name"] for v in views if v["cluster"]["spec"]["region"] == region
    )
    if not found:
        fail(f"region {region!r} has no clusters")
    return found


def _dry_run(api: ApiClient, down: list[str], how: str, zone: str, output: str) -> None:
    from atoll.drill.plan import plan_failover
    from atoll.drill.plan import what_if as predict_what_if

    imports, policies, regions = _fetch_world(api)
    rows = plan_failover(imports, set(down))
    changes = predict_what_if(
        imports, policies, regions, down=set(down), how="drain" if how == "drain" else "fail",
        zone=zone,
    )  # fmt: skip
    if output == "json":
        emit_json(
            {
                "plan": [r.model_dump() for r in rows],
                "predictions": [
                    {
                        "service": c.service,
                        "client_region": c.client_region,
                        "before": list(c.before.clusters),
                        "after": list(c.after.clusters) if c.after else [],
                        "after_addresses": list(c.after.addresses) if c.after else [],
                        "outcome": c.after.outcome if c.after else "withdrawn",
                        "trace": list(c.after.trace) if c.after else [],
                    }
                    for c in changes
                ],
            }
        )
        return
    console.print(_plan_table(rows))
    state = "drained" if how == "drain" else "down"
    t = Table(title=f"Predicted DNS answers with {', '.join(down)} {state}")
    for col in ("service", "client region", "now", "then", "why"):
        t.add_column(col)
    for c in changes:
        then = ", ".join(c.after.clusters) if c.after and c.after.clusters else "[red]nothing[/]"
        why = c.after.trace[-1] if c.after and c.after.trace else "service withdrawn"
        mark = "" if not c.changed else "[yellow]"
        t.add_row(
            c.service,
            c.client_region or "(unknown)",
            ", ".join(c.before.clusters),
            f"{mark}{then}",
            why,
        )
    console.print(t)


def _plan_table(rows: list[Any]) -> Table:
    t = Table(title="Plan: where traffic moves")
    for col in (
        "service",
        "leaving",
        "remaining",
        "healthy endpoints (leaving -> remaining)",
        "warnings",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r.service,
            ", ".join(r.leaving),
            ", ".join(r.remaining) or "[red]none[/]",
            f"{r.healthy_endpoints_leaving} -> {r.healthy_endpoints_remaining}",
            "\n".join(r.warnings),
        )
    return t


def _steps_table(d: Drill) -> Table:
    t = Table(
        title=f"{d.metadata.name}: {d.spec.kind} of {', '.join(d.spec.clusters)} [{d.status.phase}]"
    )
    for col in ("step", "state", "detail"):
        t.add_column(col)
    icons = {"done": "[green]done[/]", "failed": "[red]failed[/]", "running": "[cyan]running[/]"}
    for s in d.status.steps:
        t.add_row(s.name, icons.get(s.state, s.state), s.detail)
    return t


def _measure_table(d: Drill) -> Table:
    t = Table(title=f"Time to fail over (bound {d.status.bound_seconds or 0:.2f}s)")
    for col in ("DNS server", "phase", "seconds", "within bound", "note"):
        t.add_column(col)
    for m in d.status.measurements:
        t.add_row(
            m.server,
            m.phase,
            "-" if m.seconds is None else f"{m.seconds:.3f}",
            "yes" if m.within_bound else "[red]no[/]",
            m.note,
        )
    return t


def _report(d: Drill, output: str) -> None:
    if output == "json":
        emit_json(d.model_dump(mode="json"))
    elif output == "text":
        console.print(d.status.summary or d.status.error, highlight=False)
    else:
        console.print(_steps_table(d))
        if d.status.plan:
            console.print(_plan_table(d.status.plan))
        if d.status.measurements:
            console.print(_measure_table(d))
        console.print(d.status.summary, highlight=False)
    if d.status.phase != "succeeded":
        raise typer.Exit(1)


def _follow(api: ApiClient, name: str, output: str, within: float) -> Drill:
    deadline = time.monotonic() + within
    drill = Drill.model_validate(api.get(f"/v1/drills/{name}"))
    with Live(Group(_steps_table(drill)), console=err_console, refresh_per_second=4) as live:
        while not drill.finished:
            if time.monotonic() > deadline:
                live.stop()
                fail(
                    f"drill {name} still {drill.status.phase} after {within:.0f}s; "
                    f"follow it with `atoll drill show {name}`"
                )
            time.sleep(0.25)
            drill = Drill.model_validate(api.get(f"/v1/drills/{name}"))
            parts: list[Any] = [_steps_table(drill)]
            if drill.status.phase == "pending" and drill.status.worker is None:
                parts.append("waiting for a worker (is `atoll worker` running?)")
            live.update(Group(*parts))
    return drill


def _start(
    ctx: typer.Context,
    kind: str,
    clusters: list[str] | None,
    region: str | None,
    hold: float,
    bound: float | None,
    zone: str,
    dry_run: bool,
    wait: bool,
    output: str,
) -> None:
    if output not in ("table", "json", "text"):
        fail("--output must be table, json or text")
    with api_client(ctx) as api:
        down = _targets(api, clusters, region)
        if dry_run:
            _dry_run(api, down, "drain" if kind == "failover" else "fail", zone, output)
            return
        body: dict[str, Any] = {
            "kind": kind,
            "hold_seconds": hold,
            "zone": zone,
            "bound_seconds": bound,
        }
        if region is not None:
            body["region"] = region
        else:
            body["clusters"] = down
        created = Drill.model_validate(api.request("POST", "/v1/drills", body=body))
        name = created.metadata.name
        err_console.print(f"drill [bold]{name}[/] created; follow with `atoll drill show {name}`")
        if not wait:
            if output == "json":
                emit_json(created.model_dump(mode="json"))
            return
        done = _follow(api, name, output, within=hold + 600)
    _report(done, output)


@drill_app.command("failover")
@user_errors
def drill_failover(
    ctx: typer.Context,
    cluster: ClusterOpt = None,
    region: RegionOpt = None,
    hold: HoldOpt = 10.0,
    bound: BoundOpt = None,
    zone: ZoneOpt = "atoll.test.",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="predict, change nothing")] = False,
    wait: Annotated[bool, typer.Option(help="follow the drill until it ends")] = True,
    output: OutputOpt = "table",
) -> None:
    """Drain clusters, verify every DNS server fails over in time, hold, restore, verify."""
    _start(ctx, "failover", cluster, region, hold, bound, zone, dry_run, wait, output)


@drill_app.command("chaos")
@user_errors
def drill_chaos(
    ctx: typer.Context,
    cluster: ClusterOpt = None,
    region: RegionOpt = None,
    hold: HoldOpt = 10.0,
    bound: BoundOpt = None,
    zone: ZoneOpt = "atoll.test.",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="predict, change nothing")] = False,
    wait: Annotated[bool, typer.Option(help="follow the drill until it ends")] = True,
    output: OutputOpt = "table",
) -> None:
    """Kill a lab cluster's processes for real (agent, DNS server), measure, restart them."""
    _start(ctx, "chaos", cluster, region, hold, bound, zone, dry_run, wait, output)


@drill_app.command("list")
@user_errors
def drill_list(
    ctx: typer.Context, output: Annotated[Output, typer.Option("--output", "-o")] = Output.table
) -> None:
    """List drills, newest first."""
    with api_client(ctx) as api:
        docs = api.get("/v1/drills")
    if output is Output.json:
        emit_json(docs)
        return
    t = Table()
    for col in ("drill", "kind", "clusters", "phase", "attempt", "error"):
        t.add_column(col)
    for doc in docs:
        d = Drill.model_validate(doc)
        t.add_row(
            d.metadata.name,
            d.spec.kind,
            ", ".join(d.spec.clusters),
            d.status.phase,
            str(d.status.attempt),
            d.status.error[:60],
        )
    console.print(t)


@drill_app.command("show")
@user_errors
def drill_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="drill name")],
    follow: Annotated[bool, typer.Option(help="follow until it ends")] = False,
    output: OutputOpt = "table",
) -> None:
    """Show one drill's steps, measurements and report."""
    with api_client(ctx) as api:
        d = (
            _follow(api, name, output, within=3600)
            if follow
            else Drill.model_validate(api.get(f"/v1/drills/{name}"))
        )
    _report(d, output)


@drill_app.command("cancel")
@user_errors
def drill_cancel(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="drill name")]
) -> None:
    """Ask a running drill to stop holding and restore now."""
    with api_client(ctx) as api:
        api.request("POST", f"/v1/drills/{name}/cancel")
    console.print(f"cancel requested for {name}")


@user_errors
def what_if(
    ctx: typer.Context,
    down: Annotated[str, typer.Option(help="clusters that fail, comma-separated")],
    zone: ZoneOpt = "atoll.test.",
    output: OutputOpt = "table",
) -> None:
    """What clients in each region would get if these clusters failed (nothing is changed)."""
    names = [n.strip() for n in down.split(",") if n.strip()]
    if not names:
        fail("--down needs at least one cluster name")
    with api_client(ctx) as api:
        known = {v["cluster"]["metadata"]["name"] for v in api.get("/v1/clusters")}
        unknown = [n for n in names if n not in known]
        if unknown:
            fail(f"unknown cluster(s): {', '.join(unknown)}")
        _dry_run(api, names, "fail", zone, output)


def worker(
    broker: Annotated[str, typer.Option(help="redis://host:port/db or filesystem:///abs/dir")],
    api: Annotated[
        str | None, typer.Option(help="control plane API URL (default: the one each job names)")
    ] = None,
    lab_control: Annotated[
        str | None, typer.Option(help="the lab's control API (set by atoll up; enables chaos)")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="jobs at once")] = 2,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run a Celery worker for long jobs (drills)."""
    import socket

    from atoll import logs
    from atoll.errors import AtollError
    from atoll.jobs.app import make_celery
    from atoll.jobs.tasks import register_tasks

    logs.configure("worker", level=log_level)
    try:
        celery = make_celery(broker)
    except AtollError as exc:
        fail(str(exc))
    register_tasks(celery, lab_control=lab_control, api_override=api)
    celery.worker_main(
        [
            "worker",
            "--pool", "threads",
            "--concurrency", str(concurrency),
            "--loglevel", log_level.upper(),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname", f"atoll@{socket.gethostname()}",
        ]
    )  # fmt: skip
