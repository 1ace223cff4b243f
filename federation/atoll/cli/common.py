"""Shared CLI plumbing: global options, output format, one-line errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from atoll.cli.client import ApiClient, CliError, default_api_url
from atoll.errors import AtollError

__all__ = [
    "Globals",
    "Output",
    "api_client",
    "default_state_dir",
    "emit_json",
    "fail",
    "globals_of",
    "user_errors",
]

console = Console()
err_console = Console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"


def default_state_dir() -> Path:
    env = os.environ.get("ATOLL_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "atoll"


@dataclass(frozen=True, slots=True)
class Globals:
    state_dir: Path
    api: str | None

    @property
    def api_url(self) -> str:
        return self.api or default_api_url(self.state_dir)


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    if isinstance(obj, Globals):
        return obj
    return Globals(state_dir=default_state_dir(), api=None)


@contextmanager
def api_client(ctx: typer.Context) -> Iterator[ApiClient]:
    client = ApiClient(globals_of(ctx).api_url)
    try:
        yield client
    finally:
        client.close()


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: turn Atoll errors into one clear line and a non-zero exit."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            fail(str(exc))
        except AtollError as exc:
            fail(str(exc))

    return wrapper
