"""The ``atoll`` command: every subcommand, with ``--help`` everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from atoll import __version__
from atoll.cli.common import Globals, default_state_dir
from atoll.cli.dnscmd import dns_app
from atoll.cli.drillcmd import drill_app, what_if, worker
from atoll.cli.gatewaycmd import gateway_app
from atoll.cli.inspect import get_app, status
from atoll.cli.lab import up
from atoll.cli.serve import agent, registry, serve
from atoll.cli.trustcmd import join_token_app, trust_app

__all__ = ["app"]

app = typer.Typer(
    name="atoll",
    help="Atoll: multi-cluster federation — service catalogs, SPIFFE trust, GSLB DNS, gateways.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"atoll {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="ATOLL_STATE_DIR", help="where labs keep state (default ~/.local/state/atoll)"
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(envvar="ATOLL_API", help="control plane API URL (default: the running lab's)"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    ctx.obj = Globals(state_dir=state_dir or default_state_dir(), api=api)


app.command()(up)
app.command()(status)
app.add_typer(get_app, name="get")
app.add_typer(dns_app, name="dns")
app.add_typer(gateway_app, name="gateway")
app.add_typer(trust_app, name="trust")
app.add_typer(join_token_app, name="join-token")
app.add_typer(drill_app, name="drill")
app.command("what-if")(what_if)
app.command(rich_help_panel="Components")(serve)
app.command(rich_help_panel="Components")(agent)
app.command(rich_help_panel="Components")(registry)
app.command(rich_help_panel="Components")(worker)


if __name__ == "__main__":
    app()
