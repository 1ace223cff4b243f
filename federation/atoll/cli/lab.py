"""``atoll up``: run a whole federation on this machine until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from atoll import logs
from atoll.aio import cancel_and_wait, spawn
from atoll.cli.common import Output, console, emit_json, err_console, fail, globals_of
from atoll.errors import AtollError
from atoll.httpserve import serve_http
from atoll.lab.control import build_control_app
from atoll.lab.manifest import Manifest
from atoll.lab.topology import plan_lab
from atoll.lab.up import Lab

__all__ = ["up"]


def _running_lab_pid(manifest_path: Path) -> int | None:
    try:
        pid = int(json.loads(manifest_path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if pid != os.getpid() else None


def _table(m: Manifest) -> Table:
    t = Table(title=f"Atoll lab · state in {m.state_dir}", title_justify="left")
    for col in ("component", "cluster", "region", "address", "pid"):
        t.add_column(col)
    cp = m.control_plane
    t.add_row("control plane API", "-", "-", cp.api, str(cp.pid))
    t.add_row("control plane sync (gRPC, mTLS)", "-", "-", cp.sync, str(cp.pid))
    if cp.enroll:
        t.add_row("control plane enrollment (TLS)", "-", "-", cp.enroll, str(cp.pid))
    if cp.bundle_endpoint:
        t.add_row("SPIFFE bundle endpoint", "-", "-", cp.bundle_endpoint, str(cp.pid))
    for c in m.clusters:
        t.add_row("registry", c.name, c.region, c.registry.url, str(c.registry.pid))
        t.add_row("agent", c.name, c.region, c.agent.url, str(c.agent.pid))
        for name, sock in c.workload_sockets.items():
            t.add_row(f"Workload API ({name})", c.name, c.region, str(sock), str(c.agent.pid))
        if c.dns is not None:
            t.add_row("DNS (udp+tcp)", c.name, c.region, c.dns.listen, str(c.dns.pid))
        if c.gateway is not None:
            g = c.gateway
            t.add_row("gateway (TLS, SNI)", c.name, c.region, g.listen, str(g.pid))
            t.add_row("gateway egress", c.name, c.region, f"{g.egress_host}:<port>", str(g.pid))
    return t


async def _serve(lab: Lab, output: Output, within: float) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stop = asyncio.Event()
    starting = True

    def on_signal() -> None:
        stop.set()
        if starting:
            main.cancel()  # Lab.start stops whatever it had started

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        with err_console.status("starting the lab") as status:
            lab.progress = lambda msg: status.update(msg)
            manifest = await lab.start(within=within)
    except asyncio.CancelledError:
        err_console.print("interrupted; stopped what had started")
        return
    starting = False
    control = spawn(
        serve_http(
            build_control_app(lab),
            host=lab.plan.control_ip,
            port=lab.plan.control_port,
            what="lab control API",
        ),
        name="lab-control-api",
    )
    if output is Output.json:
        emit_json(json.loads(manifest.model_dump_json()))
    else:
        console.print(_table(manifest))
        first = manifest.clusters[0]
        dns_hint = (
            f"[bold]dig @{first.dns.listen.rsplit(':', 1)[0]} web.demo.{manifest.zone}[/], "
            if first.dns is not None
            else ""
        )
        console.print(
            f"Try [bold]atoll status[/], [bold]atoll get imports[/], {dns_hint}"
            f"[bold]atoll dns query web.demo.{manifest.zone}[/], or the API docs at "
            f"{manifest.control_plane.api}/docs. Press Ctrl-C to stop."
        )
    reported: set[str] = set()
    while not stop.is_set():
        for child in lab.supervisor.exited():
            if child.name not in reported:
                reported.add(child.name)
                err_console.print(
                    f"[yellow]warning:[/] {child.name} (pid {child.pid}) exited with code "
                    f"{child.proc.returncode}; log: {child.log_path}"
                )
        try:
            async with asyncio.timeout(1.0):
                await stop.wait()
        except TimeoutError:
            pass
    with err_console.status("stopping the lab"):
        await cancel_and_wait(control)
        await lab.stop()
    err_console.print("lab stopped")


def up(
    ctx: typer.Context,
    clusters: Annotated[
        int, typer.Option(min=1, max=6, help="number of clusters (one per region)")
    ] = 3,
    loopback: Annotated[
        str,
        typer.Option(help="loopback range: control plane on <range>.0.1, cluster N on <range>.N.1"),
    ] = "127.0",
    api_port: Annotated[int, typer.Option(help="control plane REST API port")] = 7070,
    sync_port: Annotated[int, typer.Option(help="control plane sync (gRPC, mTLS) port")] = 7071,
    enroll_port: Annotated[
        int, typer.Option(help="control plane enrollment (gRPC, TLS) port")
    ] = 7072,
    bundle_port: Annotated[
        int, typer.Option(help="the federation's SPIFFE bundle endpoint port (https_spiffe)")
    ] = 7073,
    dns_port: Annotated[int, typer.Option(help="DNS port on each cluster's address")] = 53,
    lease_ttl: Annotated[
        int, typer.Option(min=2, max=300, help="cluster liveness lease, seconds")
    ] = 5,
    broker: Annotated[
        str | None,
        typer.Option(help="job broker (e.g. redis://127.0.0.1:6379/0); default: embedded"),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="delete the lab's previous state first")
    ] = False,
    dns_via_gateways: Annotated[
        bool,
        typer.Option(
            "--dns-via-gateways",
            help="each cluster's DNS answers other clusters' services with its gateway "
            "egress, so clients cross clusters only through the gateways (mTLS); drills "
            "then see failover in the gateways' egress routes, not in DNS addresses",
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(help="seconds to wait for the federation to converge")
    ] = 60.0,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json")] = Output.table,
) -> None:
    """Start a control plane and N clusters (registry + agent + demo services) on loopback."""
    g = globals_of(ctx)
    logs.configure("lab", level="warning", fmt="text")
    logging.getLogger("atoll.lab").setLevel(logging.WARNING)
    try:
        if broker is not None:
            from atoll.jobs.app import parse_broker

            parse_broker(broker)
        plan = plan_lab(
            state_dir=g.state_dir / "lab",
            prefix=loopback,
            clusters=clusters,
            api_port=api_port,
            sync_port=sync_port,
            enroll_port=enroll_port,
            bundle_port=bundle_port,
            dns_port=dns_port,
            lease_ttl=lease_ttl,
            broker=broker,
            dns_via_gateways=dns_via_gateways,
        )
    except AtollError as exc:
        fail(str(exc))
    lab = Lab(plan)
    pid = _running_lab_pid(lab.manifest_path)
    if pid is not None:
        fail(
            f"a lab is already running from {plan.state_dir} (pid {pid}); "
            f"stop it first (kill {pid})"
        )
    if fresh:
        lab.wipe()
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_serve(lab, output, wait))
    except AtollError as exc:
        fail(str(exc))
