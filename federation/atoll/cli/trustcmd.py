"""``atoll join-token`` and ``atoll trust``: enrollment tokens, bundles, rotation, federation."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from atoll.cli.common import Output, api_client, console, emit_json, fail, user_errors

__all__ = ["join_token_app", "parse_duration", "trust_app"]

join_token_app = typer.Typer(
    help="One-time tokens that let a new cluster's agent enroll.", no_args_is_help=True
)
trust_app = typer.Typer(
    help="SPIFFE trust: domains, bundles, rotation, federation.", no_args_is_help=True
)

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d`` → a timedelta; ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 30m, 1h or 2d")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _age(value: str | None) -> str:
    if not value:
        return "-"
    secs = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(value)).total_seconds()
    if secs < 0:
        return "in " + _span(-secs)
    return _span(secs) + " ago"


def _span(secs: float) -> str:
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f}m"
    if secs < 172800:
        return f"{secs / 3600:.1f}h"
    return f"{secs / 86400:.1f}d"


@join_token_app.command("create")
@user_errors
def join_token_create(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option(help="the cluster the token enrolls (a DNS label)")],
    ttl: Annotated[str, typer.Option(help="how long the token is valid: 90s, 30m, 1h, 2d")] = "1h",
    output: OutputOpt = Output.table,
) -> None:
    """Create a one-time join token; it is shown only now (the control plane keeps a hash)."""
    try:
        seconds = int(parse_duration(ttl).total_seconds())
    except ValueError as exc:
        fail(f"--ttl: {exc}")
    with api_client(ctx) as api:
        doc = api.request(
            "POST", "/v1/join-tokens", body={"cluster": cluster, "ttl_seconds": seconds}
        )
    if output is Output.json:
        emit_json(doc)
        return
    console.print(doc["token"], soft_wrap=True, highlight=False)
    console.print(
        f"[dim]one-time token for cluster {doc['cluster']}, expires {doc['expires_at']}; "
        f"start the agent with --join-token <token>[/]",
        highlight=False,
    )


@trust_app.command("status")
@user_errors
def trust_status(ctx: typer.Context, output: OutputOpt = Output.table) -> None:
    """Trust domains, bundle sequences and ages, CA expiry, next rotation, federation."""
    with api_client(ctx) as api:
        doc = api.get("/v1/trust/status")
    if output is Output.json:
        emit_json(doc)
        return
    if doc["enabled"]:
        console.print(
            f"federation domain [bold]{doc['federation_domain']}[/] · CA sequence "
            f"{doc['ca_sequence']} · CA expires {_age(doc['ca_not_after'])} · next rotation "
            f"{_age(doc['next_rotation'])}"
        )
        ca = Table(title="Federation CA keys", title_justify="left")
        for col in ("kind", "key id", "state", "published", "expires"):
            ca.add_column(col)
        for a in doc["authorities"]:
            ca.add_row(
                a["kind"],
                a["key_id"][:16],
                a["state"],
                _age(a["published_at"]),
                _age(a["not_after"]),
            )
        console.print(ca)
    else:
        console.print("[yellow]trust is disabled: the control plane runs with --insecure[/]")
    t = Table(title="Trust domains", title_justify="left")
    for col in (
        "name",
        "trust domain",
        "seq",
        "bundle age",
        "CA expires",
        "next rotation",
        "federates with",
        "endpoint",
        "last fetch",
    ):
        t.add_column(col)
    for d in doc["domains"]:
        fetch = "-"
        if d["endpoint"]:
            fetch = (
                f"[red]{d['last_fetch_error']}[/]"
                if d["last_fetch_error"]
                else f"ok {_age(d['last_fetch_success'])}"
            )
        t.add_row(
            d["name"],
            d["trust_domain"],
            str(d["sequence"]),
            _age(d["updated_at"]),
            _age(d["ca_not_after"]),
            _age(d["next_rotation"]),
            ", ".join(d["federates_with"]) or "all",
            f"{d['endpoint']} ({d['profile']})" if d["endpoint"] else "-",
            fetch,
        )
    console.print(t)


@trust_app.command("rotate")
@user_errors
def trust_rotate(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option(help="rotate this cluster's CA")] = None,
    federation: Annotated[
        bool, typer.Option("--federation", help="rotate the federation CA instead")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Force one CA rotation: a new CA is published now and signs after the publish lead."""
    if federation == (cluster is not None):
        fail("name exactly one of --cluster NAME or --federation")
    with api_client(ctx) as api:
        doc = api.request(
            "POST", "/v1/trust/rotate", body={"cluster": cluster, "federation": federation}
        )
    if output is Output.json:
        emit_json(doc)
        return
    console.print(
        f"rotation {doc['spec']['rotate_generation']} requested for {doc['spec']['trust_domain']}"
    )


@trust_app.command("federate")
@user_errors
def trust_federate(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option(help="the foreign trust domain, e.g. example.org")],
    url: Annotated[str, typer.Option(help="its SPIFFE bundle endpoint, https://...")],
    profile: Annotated[str, typer.Option(help="https_web or https_spiffe")],
    spiffe_id: Annotated[
        str | None, typer.Option(help="https_spiffe: the endpoint server's SPIFFE ID")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(help="the domain's current bundle JSON (https_spiffe's trust bootstrap)"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="resource name (default: from the domain)")] = (
        None
    ),
    federates_with: Annotated[
        list[str] | None, typer.Option(help="only these domains receive it (repeatable)")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Register a foreign trust domain and its bundle endpoint (polled by the leader)."""
    from atoll.model.trust import domain_label

    if profile not in ("https_web", "https_spiffe"):
        fail("--profile must be https_web or https_spiffe")
    try:
        label = name or domain_label(domain)
    except ValueError as exc:
        fail(str(exc))
    body: dict[str, Any] = {
        "trust_domain": domain,
        "endpoint": {"url": url, "profile": profile, "spiffe_id": spiffe_id},
        "federates_with": federates_with or [],
    }
    if bundle is not None:
        try:
            body["bundle"] = bundle.read_text()
        except OSError as exc:
            fail(f"--bundle {bundle}: {exc.strerror}")
    with api_client(ctx) as api:
        doc = api.request("PUT", f"/v1/trust/federations/{label}", body=body)
    if output is Output.json:
        emit_json(doc)
        return
    console.print(f"federating with {domain} as foreign/{label} ({profile} {url})")


@trust_app.command("unfederate")
@user_errors
def trust_unfederate(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="the foreign domain's name")]
) -> None:
    """Stop federating with a foreign trust domain."""
    with api_client(ctx) as api:
        api.request("DELETE", f"/v1/trust/federations/{name}")
    console.print(f"foreign/{name} removed")


@trust_app.command("bundle")
@user_errors
def trust_bundle(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="write to FILE")] = None,
) -> None:
    """Print the federation domain's SPIFFE bundle JSON (what agents trust)."""
    with api_client(ctx) as api:
        doc = api.get("/v1/trust/bundle")
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@trust_app.command("kek")
def trust_kek() -> None:
    """Print a new random key-encryption key (base64); store it with mode 0600."""
    from atoll_trust.kek import generate_kek_text

    typer.echo(generate_kek_text())
